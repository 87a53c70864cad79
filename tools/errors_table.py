"""Print, as a Markdown table, the exception each case of issue 18's list F raises now:
its type (with its pyrag base class) and its message. docs/reliability.md shows the output;
tests/test_reliability_errors.py asserts the same cases.

    python tools/errors_table.py
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import torch

import pyrag

INT64_MAX = 2**63 - 1


def small_index() -> pyrag.DenseIndex:
    index = pyrag.DenseIndex(4, "float32")
    index.add(torch.eye(4)[:3], [3, 7, 11])
    return index


def header_file(path: str, header: Any, text: bytes | None = None) -> str:
    raw = text if text is not None else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(8))
    return path


def automatic_id_past_int64() -> object:
    index = pyrag.DenseIndex(4, "int8")
    index.add(torch.ones(1, 4), [INT64_MAX])
    return index.add(torch.ones(1, 4))


def huge_index() -> object:
    return pyrag.DenseIndex(10**30, "bfloat16")


def huge_manifest(tmp: str) -> object:
    from pyrag.distributed import manifest

    directory = os.path.join(tmp, "sharded")
    os.makedirs(directory)
    shard = {"file": manifest.shard_file(0, 1, 5), "rows": 3, "bytes": 10, "checksum": "c"}
    body = {
        "format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "dim": 10**30, "dtype": "bfloat16",
        "keep_originals": True, "world_size": 1, "count": 3, "version": 2, "step": 0, "token": 5,
        "metadata": {}, "shards": [shard],
    }  # fmt: skip
    manifest.write(directory, body)
    return manifest.read(directory)


def cases(tmp: str) -> list[tuple[str, str, Callable[[], object]]]:
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    meta = torch.empty(2, 4, device="meta")
    u8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
    odd = os.path.join(tmp, "odd")
    return [
        ("a meta tensor", "`index.add(torch.empty(2, 4, device='meta'))`", lambda: small_index().add(meta)),
        ("a meta tensor", "`index.search(meta, 1)`", lambda: small_index().search(meta, 1)),
        ("an automatic id past 2⁶³−1", "`add(x)` after id `2**63-1`", automatic_id_past_int64),
        ("`-(2**63)-1 in index`", "`-(2**63) - 1 in index`", lambda: -(2**63) - 1 in small_index()),
        ("`remove([2**63])`", "`index.remove([2**63])`", lambda: small_index().remove([2**63])),
        ("a directory passed to `load`", "`DenseIndex.load(tmpdir)`", lambda: pyrag.DenseIndex.load(tmp)),
        ("a FIFO passed to `load`", "`DenseIndex.load(fifo)`", lambda: pyrag.DenseIndex.load(fifo)),
        (
            "odd metadata (was `AttributeError`)",
            '`{"__metadata__": ["a"]}`',
            lambda: pyrag.DenseIndex.load(header_file(odd, {"__metadata__": ["a"]})),
        ),
        (
            "odd metadata (was `TypeError`)",
            '`{"__metadata__": {"format": 1}}`',
            lambda: pyrag.DenseIndex.load(header_file(odd, {"__metadata__": {"format": 1}})),
        ),
        (
            "odd header (was `RecursionError`)",
            "`[` × 100,000 then `]` × 100,000",
            lambda: pyrag.DenseIndex.load(header_file(odd, None, b"[" * 100_000 + b"]" * 100_000)),
        ),
        (
            "odd header",
            '`{"t": "x"}`',
            lambda: pyrag.DenseIndex.load(header_file(odd, {"t": "x"})),
        ),
        (
            "odd header",
            '`{"t": {..., "dtype": null}}`',
            lambda: pyrag.DenseIndex.load(header_file(odd, {"t": {**u8, "dtype": None}})),
        ),
        (
            "odd header",
            '`{"t": {..., "data_offsets": [0.0, 4.0]}}`',
            lambda: pyrag.DenseIndex.load(header_file(odd, {"t": {**u8, "data_offsets": [0.0, 4.0]}})),
        ),
        ("not in F: a dim past the largest (was a pybind11 `TypeError`)", "`DenseIndex(10**30)`", huge_index),
        (
            "not in F, found by the fuzzer: a manifest's dim",
            "`dim: 10**30` in manifest.json",
            lambda: huge_manifest(tmp),
        ),
    ]


def kind(e: BaseException) -> str:
    name = type(e).__name__
    bases = [b.__name__ for b in type(e).__mro__[1:] if b.__name__ in ("FormatError", "ValueError")]
    return f"`{name}`" + (f" ({' → '.join(bases)})" if bases else "")


def main() -> None:
    print("| Item of list F | Call | Now raises | Message |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for item, call, run in cases(tmp):
            try:
                result = run()
            except Exception as e:  # the point: show whatever it raises
                raised, message = kind(e), str(e).replace(tmp, "DIR").replace("|", "\\|").replace("\n", " ")
            else:
                raised, message = f"no exception: returns `{result!r}`", ""
            print(f"| {item} | {call} | {raised} | {message} |")


if __name__ == "__main__":
    main()
