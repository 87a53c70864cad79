"""DenseIndex's file format (safetensors through pyrag/index/storage.py): what a save
writes, and the checks a load makes before it trusts a file.

Format 2: the corpus in the kernels' packed layout (tensor "packed", blocks of 16 rows),
"ids", and for quantised dtypes "scales" (int8) and, with keep_originals, "norms",
"errors" and the float32 "originals" (mapped, never read into RAM). Format 1 (still
loaded): row-major float32 "vectors". Metadata: format, version, layout, dim, dtype, the
index's version, and the caller's strings under "user.".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import torch

from pyrag.index import packed, storage
from pyrag.index.originals import Originals
from pyrag.index.snapshot import Snapshot, id_map
from pyrag.ops._registry import compiled_extension

FORMAT = "pyrag.DenseIndex"
FORMAT_VERSION = "2"
LAYOUT = "pyrag.packed16x4"  # blocks of 16 rows x 4-byte groups
USER_META = "user."  # prefix of the caller's metadata in the file
_BLOCK = packed.BLOCK_ROWS


class IndexFormatError(storage.FormatError):
    """The file is not a pyrag index, or it is truncated or corrupted."""


def saved_tensors(snap: Snapshot, dtype: str, dim: int) -> dict[str, Any]:
    """The tensors a save writes: one immutable view of `snap`. A later add writes rows
    >= n, which share the last, partly filled packed block and its 16 scales with rows
    < n, so those are copied (rows < n only, padding zero); the rest is saved in place."""
    n = snap.size
    full = n // _BLOCK
    tensors: dict[str, Any] = {"packed": [snap.packed[:full]], "ids": snap.ids[:n]}
    if n > full * _BLOCK:
        tail = torch.zeros((1, packed.block_bytes(dtype, dim)), dtype=torch.uint8)
        rows = packed.unpack_rows(dtype, snap.packed, full * _BLOCK, n - full * _BLOCK, dim)
        packed.pack_rows(dtype, rows, tail, 0)
        tensors["packed"].append(tail)
    if snap.scales is not None:
        scales_tail = torch.zeros(packed.num_blocks(n) * _BLOCK - full * _BLOCK, dtype=torch.float32)
        scales_tail[: n - full * _BLOCK] = snap.scales[full * _BLOCK : n]
        tensors["scales"] = [snap.scales[: full * _BLOCK], scales_tail]
    if snap.originals is not None and snap.norms is not None and snap.errors is not None:
        tensors.update(norms=snap.norms[:n], errors=snap.errors[:n], originals=snap.originals.view(n))
    return tensors


def saved_metadata(dim: int, dtype: str, version: int, metadata: Optional[Mapping[str, str]]) -> dict[str, str]:
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "layout": LAYOUT, "dim": str(dim),
        "dtype": dtype, "version": str(version),
    }  # fmt: skip
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
        meta[USER_META + key] = value
    return meta


class Header(NamedTuple):
    """What a file says about the index it holds, checked."""

    format_version: str
    dim: int
    dtype: str
    version: int
    keep_originals: bool
    size: int
    metadata: dict[str, str]  # the caller's, as given to save


def read_header(name: str, stored: storage.StoredTensors) -> Header:
    tensors, meta = stored.tensors, stored.metadata
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{name}: not a pyrag index (format={meta.get('format')!r})")
    fmt = meta.get("format_version")
    if fmt not in ("1", FORMAT_VERSION):
        raise IndexFormatError(f"{name}: unsupported index format version {fmt!r}")
    try:
        dim, dtype, version = int(meta["dim"]), meta["dtype"], int(meta.get("version", "0"))
        ids = tensors["ids"]
    except (KeyError, ValueError):
        raise IndexFormatError(f"{name}: index metadata or tensors are missing") from None
    if dtype not in packed.DTYPES or not 1 <= dim <= packed.max_dim(dtype) or version < 0:
        raise IndexFormatError(f"{name}: index metadata are out of range")
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise IndexFormatError(f"{name}: index tensors do not match its metadata")
    user = {k[len(USER_META) :]: v for k, v in meta.items() if k.startswith(USER_META)}
    return Header(str(fmt), dim, dtype, version, "originals" in tensors, ids.shape[0], user)


def read_rows_v1(name: str, stored: storage.StoredTensors, header: Header) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors, ids) of a format-1 file, copied out of the mapping, for DenseIndex.add."""
    vectors = stored.tensors.get("vectors")
    n, dim = header.size, header.dim
    if header.dtype != "float32" or vectors is None or vectors.shape != (n, dim) or vectors.dtype != torch.float32:
        raise IndexFormatError(f"{name}: index tensors do not match its metadata")
    return vectors.clone(), stored.tensors["ids"].clone()


def read_snapshot(
    name: str, stored: storage.StoredTensors, f: Any, header: Header, mmap: bool, verify: bool
) -> Snapshot:
    """The Snapshot of a format-2 file, after checking every tensor against the header;
    mmap=False copies the corpus into RAM (the float32 originals always stay mapped)."""
    tensors, meta = stored.tensors, stored.metadata
    n, dim, dtype, keep_originals = header.size, header.dim, header.dtype, header.keep_originals
    blocks = packed.num_blocks(n)
    expect = {"packed": ((blocks, packed.block_bytes(dtype, dim)), torch.uint8), "ids": ((n,), torch.int64)}
    if dtype == "int8":
        expect["scales"] = ((blocks * _BLOCK,), torch.float32)
    if keep_originals:
        expect.update(norms=((n,), torch.float32), errors=((n,), torch.float32), originals=((n, dim), torch.float32))
    if (
        meta.get("layout") != LAYOUT
        or set(tensors) != set(expect)
        or any(tuple(tensors[t].shape) != shape or tensors[t].dtype != dt for t, (shape, dt) in expect.items())
    ):
        raise IndexFormatError(f"{name}: index tensors do not match its metadata")
    ids = tensors["ids"]
    if n and int(ids.min()) < 0:
        raise IndexFormatError(f"{name}: negative ids")
    sorted_ids, sorted_rows = id_map(ids)
    if sorted_ids is not None and n > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        raise IndexFormatError(f"{name}: duplicate ids")
    if sorted_ids is None and n > 1 and bool((ids[1:] == ids[:-1]).any()):
        raise IndexFormatError(f"{name}: duplicate ids")

    for t in ("scales", "norms", "errors"):
        v = tensors.get(t)
        if v is not None and v.numel() and not bool(torch.isfinite(v).all() and (v >= 0).all()):
            raise IndexFormatError(f"{name}: index tensor {t!r} holds negative or non-finite values")
    if verify:  # the data were just read for the checksum: check them as add checks vectors
        data = tensors["packed"]
        values = data.view(packed.DTYPES[dtype]) if data.numel() and dtype != "int8" else None
        for t, v, bound in (("packed", values, math.inf), ("originals", tensors.get("originals"), 1e30)):
            if v is not None and v.numel():
                lo, hi = (float(x) for x in torch.aminmax(v))
                if not (math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= bound):
                    raise IndexFormatError(f"{name}: index tensor {t!r} holds NaN, Inf or values past {bound:g}")

    def get(t: str) -> torch.Tensor:
        return tensors[t] if mmap else tensors[t].clone()

    norms = get("norms") if keep_originals else None
    errors = get("errors") if keep_originals else None
    originals = None
    if keep_originals:
        originals = Originals.in_file(f, stored.offsets["originals"], tensors["originals"])
        if n:  # the checksum pass read the mapped originals: give those pages back
            compiled_extension().release_file_pages(originals.view(n).data_ptr(), n * dim * 4)
    return Snapshot(
        get("packed"), get("ids"), n, get("scales") if dtype == "int8" else None, norms, errors, originals,
        float(norms.max()) if norms is not None and n else 0.0,
        float(errors.max()) if errors is not None and n else 0.0,
        sorted_ids, sorted_rows, header.version,
    )  # fmt: skip
