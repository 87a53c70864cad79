"""Atomic, verified persistence of named tensors in the safetensors format.

save_tensors writes a temp file in the target's directory, fsyncs it, renames it over the
target and fsyncs the directory: a crash at any point leaves the previous file intact.
The metadata carries a CRC32 over every tensor's bytes, checked on load, so a truncated
or corrupted file is reported instead of silently returning garbage. load_tensors can
memory-map: tensors then page in from disk on use instead of being read into RAM.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

import numpy as np
import torch
from safetensors.torch import save_file

_CHUNK = 16 << 20

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


class FormatError(ValueError):
    """The file is not what it claims to be: wrong format, truncated or corrupted."""


def _crc_tensor(t: torch.Tensor, crc: int) -> int:
    # reshape first: view(uint8) needs at least one dimension (0-d tensors have none)
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    for start in range(0, data.size, _CHUNK):
        crc = zlib.crc32(data[start:start + _CHUNK], crc)
    return crc


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(name.encode(), crc)
        crc = _crc_tensor(tensors[name], crc)
    return f"crc32:{crc:08x}"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
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
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_header(path: str) -> tuple[dict, int]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: too short to be a safetensors file")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > min(size - 8, 100 << 20):
                raise FormatError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(hlen))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file")
    data_start = 8 + hlen
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            tag = info["dtype"]
            shape = info["shape"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: bad entry for tensor {name!r}") from None
        if tag not in _DTYPES:
            raise FormatError(f"{path}: tensor {name!r} has unsupported dtype {tag}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[tag][0]).itemsize
        if end - begin != nbytes or begin < 0:
            raise FormatError(f"{path}: tensor {name!r} has inconsistent size")
        if data_start + end > size:
            raise FormatError(f"{path}: file is truncated ({size} bytes, tensor {name!r} ends at "
                              f"{data_start + end})")
    return header, data_start


def load_tensors(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file written by save_tensors.

    mmap=True maps the file copy-on-write: nothing is read until used, and writes to the
    tensors never reach the file. verify=True checks the CRC (a streaming read).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    header, data_start = _read_header(path)
    metadata = header.get("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dtype, torch_dtype = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        begin = info["data_offsets"][0]
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            arr = np.empty(shape, dtype=np_dtype)
        elif mmap:
            arr = np.memmap(path, dtype=np_dtype, mode="c", offset=data_start + begin, shape=shape)
        else:
            arr = np.fromfile(path, dtype=np_dtype, count=count, offset=data_start + begin).reshape(shape)
        t = torch.from_numpy(arr)
        tensors[name] = t.view(torch_dtype) if t.dtype != torch_dtype else t
    if verify:
        expected = metadata.get("checksum")
        if expected is None:
            raise FormatError(f"{path}: no checksum in the metadata; not written by pyrag")
        if checksum(tensors) != expected:
            raise FormatError(f"{path}: checksum mismatch; the file is corrupted")
    return tensors, metadata
