"""Atomic, verified persistence of named tensors in the safetensors format.

save_tensors writes a temp file in the target's directory, fsyncs it, renames it over the
target and fsyncs the directory: a crash at any point leaves the previous file intact.
The metadata carries a CRC32 over every tensor's bytes, checked on load, so a truncated
or corrupted file is reported instead of silently returning garbage.

open_tensors reads one open file: the header, the tensors (mapped copy-on-write, or
read into RAM) and their byte offsets all come from that one descriptor, so a file
renamed over the path meanwhile cannot mix two files.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
import zlib
from typing import BinaryIO, NamedTuple, Union

import numpy as np
import torch
from safetensors.torch import save_file

_CHUNK = 16 << 20
_MAX_HEADER = 100 << 20

# safetensors dtype tag -> (numpy dtype to map the bytes, torch dtype to view them as)
_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.int16, torch.bfloat16),
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8),
    "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}

PathLike = Union[str, "os.PathLike[str]"]


class FormatError(ValueError):
    """The file is not what it claims to be: wrong format, truncated or corrupted."""


class StoredTensors(NamedTuple):
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    offsets: dict[str, int]  # byte offset of each tensor's data in the file


def _crc_tensor(t: torch.Tensor, crc: int) -> int:
    # reshape first: view(uint8) needs at least one dimension (0-d tensors have none)
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    for start in range(0, data.size, _CHUNK):
        crc = zlib.crc32(data[start : start + _CHUNK].data, crc)
    return crc


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(name.encode(), crc)
        crc = _crc_tensor(tensors[name], crc)
    return f"crc32:{crc:08x}"


def save_tensors(path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Writes `tensors` and `metadata` (plus their checksum) to `path`, atomically."""
    path = os.fspath(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(metadata)
    meta["checksum"] = checksum(tensors)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Makes a rename inside `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_regular_file(path: PathLike) -> BinaryIO:
    """Opens `path` for reading; FileNotFoundError if missing, FormatError if it is not a
    regular file (a directory, a FIFO: opened without blocking, then refused)."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_header(f: BinaryIO, name: str) -> tuple[dict, int]:
    size = os.fstat(f.fileno()).st_size
    head = os.pread(f.fileno(), 8, 0)
    if len(head) < 8:
        raise FormatError(f"{name}: too short to be a safetensors file")
    (hlen,) = struct.unpack("<Q", head)
    if hlen > min(size - 8, _MAX_HEADER):
        raise FormatError(f"{name}: not a safetensors file (bad header length)")
    raw = os.pread(f.fileno(), hlen, 8)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{name}: not a safetensors file ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{name}: not a safetensors file")
    data_start = 8 + hlen
    metadata = header.get("__metadata__", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError(f"{name}: bad metadata (must map strings to strings)")
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            tag = info["dtype"]
            shape = info["shape"]
            if not (isinstance(begin, int) and isinstance(end, int) and isinstance(tag, str)):
                raise TypeError
            if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
            ):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{name}: bad entry for tensor {tname!r}") from None
        if tag not in _DTYPES:
            raise FormatError(f"{name}: tensor {tname!r} has unsupported dtype {tag}")
        count = 1
        for s in shape:
            count *= s
        nbytes = count * np.dtype(_DTYPES[tag][0]).itemsize
        if end - begin != nbytes or begin < 0:
            raise FormatError(f"{name}: tensor {tname!r} has inconsistent size")
        if data_start + end > size:
            raise FormatError(f"{name}: file is truncated ({size} bytes, tensor {tname!r} ends at {data_start + end})")
    return header, data_start


def open_tensors(f: BinaryIO, *, name: str = "file", mmap: bool = False, verify: bool = True) -> StoredTensors:
    """Tensors, metadata and data offsets of a file written by save_tensors, read from the
    open file `f` only.

    mmap=True maps the file copy-on-write: nothing is read until used, and writes to the
    tensors never reach the file. verify=True checks the CRC (a streaming read).
    """
    header, data_start = _read_header(f, name)
    metadata = dict(header.get("__metadata__") or {})
    tensors, offsets = {}, {}
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        np_dtype, torch_dtype = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        begin = data_start + info["data_offsets"][0]
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            arr = np.empty(shape, dtype=np_dtype)
        elif mmap:
            arr = np.memmap(f, dtype=np_dtype, mode="c", offset=begin, shape=shape)
        else:
            arr = np.empty(shape, dtype=np_dtype)
            _read_into(f, begin, arr.reshape(-1).view(np.uint8).data, name)
        t = torch.from_numpy(arr)
        tensors[tname] = t.view(torch_dtype) if t.dtype != torch_dtype else t
        offsets[tname] = begin
    if verify:
        expected = metadata.get("checksum")
        if expected is None:
            raise FormatError(f"{name}: no checksum in the metadata; not written by pyrag")
        if checksum(tensors) != expected:
            raise FormatError(f"{name}: checksum mismatch; the file is corrupted")
    return StoredTensors(tensors, metadata, offsets)


def _read_into(f: BinaryIO, offset: int, out: memoryview, name: str) -> None:
    done = 0
    while done < len(out):
        got = os.preadv(f.fileno(), [out[done:]], offset + done)
        if got == 0:
            raise FormatError(f"{name}: file is truncated")
        done += got


def load_tensors(
    path: PathLike, *, mmap: bool = False, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the file at `path` (see open_tensors)."""
    with open_regular_file(path) as f:
        stored = open_tensors(f, name=os.fspath(path), mmap=mmap, verify=verify)
    return stored.tensors, stored.metadata
