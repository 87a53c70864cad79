"""A saved ShardedIndex: one DenseIndex file per shard, and manifest.json, written last.

    directory/
        manifest.json                              world size, dim, dtype, counts, each
                                                   shard file's size and checksum; last
        shard-00000-of-00002-<token>.safetensors   rank 0's DenseIndex.save
        shard-00001-of-00002-<token>.safetensors

A save writes its shard files under names no earlier save used (a fresh token), then the
manifest atomically (temp file, fsync, rename, directory fsync), then removes the shard
files no manifest names. A save interrupted at any point leaves the previous manifest and
every file it names in place: the previous save stays loadable.

Loading on M ranks from N files deals the rows out in file order: rank r gets the global
rows [r * total // M, (r + 1) * total // M), copied as stored (DenseIndex.add_from).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import zlib
from typing import Any

from pyrag.index import IndexFormatError, storage
from pyrag.index.dense import DTYPES

FORMAT = "pyrag.ShardedIndex"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD = re.compile(r"^shard-\d{5,}-of-\d{5,}-[0-9a-f]+\.safetensors$")


def new_token() -> int:
    """A random 62-bit number (names one save's files; identifies an index in messages)."""
    return secrets.randbits(62) + 1


def shard_file(rank: int, world: int, token: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}-{token:016x}.safetensors"


def describe(path: str) -> tuple[int, str]:
    """(size in bytes, the checksum in its header) of a file written by storage.save_tensors."""
    with storage.open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        stored = storage.open_tensors(f, name=path, mmap=True, verify=False)
    return size, stored.metadata.get("checksum", "")


def _body_checksum(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return f"crc32:{zlib.crc32(text.encode()):08x}"


def write(directory: str, body: dict[str, Any]) -> None:
    """Writes the manifest atomically: a crash leaves the old one or the new one, whole."""
    doc = dict(body, checksum=_body_checksum(body))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-manifest-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, MANIFEST))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    storage.fsync_directory(directory)


def read(directory: str) -> dict[str, Any]:
    """The manifest in `directory`, checked; FileNotFoundError if there is none,
    IndexFormatError if it is not a ShardedIndex manifest or is corrupted."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved ShardedIndex in {directory} (no {MANIFEST})")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{path}: not a ShardedIndex manifest ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not a ShardedIndex manifest")
    if doc.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: unsupported manifest version {doc.get('format_version')!r}")
    checksum = doc.pop("checksum", None)
    if checksum != _body_checksum(doc):
        raise IndexFormatError(f"{path}: checksum mismatch; the manifest is corrupted")
    try:
        ok = (
            doc["dtype"] in DTYPES and _count(doc["dim"]) > 0 and isinstance(doc["keep_originals"], bool)
            and _count(doc["world_size"]) == len(doc["shards"]) > 0 and _count(doc["version"]) >= 0
            and isinstance(doc["step"], int) and _count(doc["token"]) > 0
            and isinstance(doc["metadata"], dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in doc["metadata"].items())
            and all(
                _SHARD.match(s["file"]) and _count(s["rows"]) >= 0 and _count(s["bytes"]) > 0
                and isinstance(s["checksum"], str)
                for s in doc["shards"]
            )
            and sum(s["rows"] for s in doc["shards"]) == _count(doc["count"])
        )  # fmt: skip
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise IndexFormatError(f"{path}: manifest fields are missing or out of range")
    return doc


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError
    return v


def deal(rows: list[int], world: int, rank: int) -> list[tuple[int, int, int]]:
    """The parts of the files (with `rows[f]` rows each, in order) that rank `rank` of
    `world` holds: [(file, first row, end row)], for the global rows
    [rank * total // world, (rank + 1) * total // world)."""
    total = sum(rows)
    lo, hi = rank * total // world, (rank + 1) * total // world
    parts, start = [], 0
    for f, n in enumerate(rows):
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            parts.append((f, a - start, b - start))
        start += n
    return parts


def stale_files(directory: str, keep: set[str]) -> list[str]:
    """Shard files of earlier or interrupted saves (those `keep` does not name), and
    manifest temp files a crash left behind."""
    out = []
    for entry in os.listdir(directory):
        if (_SHARD.match(entry) and entry not in keep) or entry.startswith(".tmp-manifest-"):
            out.append(os.path.join(directory, entry))
    return out
