"""Atomic, verified persistence of named tensors in the safetensors format.

save_tensors writes a temp file in the target's directory (the header with a CRC32 over
every tensor's bytes, then the tensors, streamed from their memory), fsyncs it, renames it
over the target and fsyncs the directory: a crash at any point leaves the previous file
intact, and load checks the CRC, so a truncated or corrupted file is reported instead of
silently returning garbage. A tensor may be handed over as parts (concatenated along dim
0): a caller can save a buffer whose last block it copied without copying the rest.

Temp files of a writer that died (SIGKILL, power loss) are removed by the next writer in
the same directory; see atomic_file for the lock that keeps a live writer's temp file safe.

open_tensors reads one open file: the header, the tensors (mapped copy-on-write, or read
into RAM) and their byte offsets all come from that one descriptor, so a file renamed over
the path meanwhile cannot mix two files. Every malformed file is a FormatError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple, Union

import numpy as np
import torch

_CHUNK = 16 << 20
_MAX_HEADER = 100 << 20
_MAX_RANK = 16

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
_TAGS = {torch_dtype: tag for tag, (_, torch_dtype) in _DTYPES.items()}

# Temp files of save_tensors / atomic_file: ".pyrag-tmp-<random><suffix>" beside the target.
TEMP_PREFIX = ".pyrag-tmp-"

PathLike = Union[str, "os.PathLike[str]"]
TensorParts = Union[torch.Tensor, Sequence[torch.Tensor]]


class FormatError(ValueError):
    """The file is not what it claims to be: wrong format, truncated or corrupted."""


class StoredTensors(NamedTuple):
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    offsets: dict[str, int]  # byte offset of each tensor's data in the file


# ----------------------------------------------------------------------------- checksum
def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor, as a flat uint8 array (no copy)."""
    if not t.numel():
        return np.empty(0, np.uint8)
    # reshape first: view(uint8) needs at least one dimension (0-d tensors have none)
    return t.reshape(-1).view(torch.uint8).numpy()


def _crc_tensor(t: torch.Tensor, crc: int) -> int:
    data = _bytes_of(t.contiguous())
    for start in range(0, data.size, _CHUNK):
        crc = zlib.crc32(data[start : start + _CHUNK].data, crc)
    return crc


def _crc_text(text: str, crc: int) -> int:
    # surrogatepass: a header may hold any JSON string, lone surrogates included
    return zlib.crc32(text.encode("utf-8", "surrogatepass") + b"\0", crc)


def _crc_metadata(metadata: Mapping[str, str], crc: int) -> int:
    for key in sorted(metadata):
        if key != "checksum":
            crc = _crc_text(metadata[key], _crc_text(key, crc))
    return crc


def _crc_entry(name: str, dtype: torch.dtype, shape: Sequence[int], crc: int) -> int:
    return _crc_text(f"{_TAGS[dtype]}{list(shape)}", _crc_text(name, crc))


def checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The checksum save_tensors stores ("crc32h:"): CRC32 over the metadata (but the
    checksum itself), then each tensor's name, dtype, shape and bytes, by name. So a
    damaged header value (a step, a version, a shape) is caught like damaged data."""
    crc = _crc_metadata(metadata, 0)
    for name in sorted(tensors):
        t = tensors[name]
        crc = _crc_tensor(t, _crc_entry(name, t.dtype, t.shape, crc))
    return f"crc32h:{crc:08x}"


def _checksum_v1(tensors: Mapping[str, torch.Tensor]) -> str:
    """The checksum of files written before the header was covered ("crc32:"): each
    tensor's name and bytes, by name."""
    crc = 0
    for name in sorted(tensors):
        crc = _crc_tensor(tensors[name], zlib.crc32(name.encode(), crc))
    return f"crc32:{crc:08x}"


# ----------------------------------------------------------------------------- writing
def save_tensors(path: PathLike, tensors: Mapping[str, TensorParts], metadata: Mapping[str, str]) -> None:
    """Writes `tensors` and `metadata` (plus their checksum) to `path`, atomically.

    A value may be one tensor or a sequence of parts of one tensor (same dtype and
    trailing shape), written one after the other as if concatenated along dim 0.
    """
    parts = {name: _as_parts(name, value) for name, value in tensors.items()}
    meta = dict(metadata)
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
    with atomic_file(path, suffix=".safetensors") as f:
        _write_safetensors(f, parts, meta)


def _as_parts(name: str, value: TensorParts) -> list[torch.Tensor]:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__}")
    items = [value] if isinstance(value, torch.Tensor) else list(value)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(f"tensor {name!r} must be a torch.Tensor or a non-empty sequence of them")
    out = [t.detach().cpu().contiguous() for t in items]
    first = out[0]
    if first.dtype not in _TAGS:
        raise TypeError(f"tensor {name!r} has dtype {first.dtype}, which the file format does not store")
    if len(out) > 1 and any(t.dim() == 0 or t.dtype != first.dtype or t.shape[1:] != first.shape[1:] for t in out):
        raise ValueError(f"the parts of tensor {name!r} differ in dtype or trailing shape")
    return out


def _write_safetensors(f: BinaryIO, tensors: dict[str, list[torch.Tensor]], metadata: dict[str, str]) -> None:
    """The safetensors layout: 8-byte header length, the JSON header padded to 8 bytes,
    then the data back to back, widest element first (then by name) so that every tensor
    is aligned to its element size, as the safetensors library lays them out. The
    checksum is computed first, over the same bytes: the caller's tensors must not change
    meanwhile (DenseIndex.save hands over only rows no later add writes)."""
    shapes = {}
    for name, parts in tensors.items():
        shapes[name] = list(parts[0].shape)
        if len(parts) > 1:
            shapes[name][0] = sum(p.shape[0] for p in parts)
    crc = _crc_metadata(metadata, 0)
    for name in sorted(tensors):
        crc = _crc_entry(name, tensors[name][0].dtype, shapes[name], crc)
        for part in tensors[name]:
            crc = _crc_tensor(part, crc)
    order = sorted(tensors, key=lambda n: (-tensors[n][0].element_size(), n))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        nbytes = sum(p.numel() * p.element_size() for p in tensors[name])
        tag = _TAGS[tensors[name][0].dtype]
        entries[name] = {"dtype": tag, "shape": shapes[name], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = {"__metadata__": {**metadata, "checksum": f"crc32h:{crc:08x}"}, **entries}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for name in order:
        for part in tensors[name]:
            data = _bytes_of(part)
            for start in range(0, data.size, _CHUNK):
                f.write(data[start : start + _CHUNK].data)


@contextlib.contextmanager
def atomic_file(path: PathLike, *, suffix: str = "") -> Iterator[BinaryIO]:
    """A new file to write `path`'s next contents into: on a clean exit it is fsynced,
    renamed over `path` and the directory fsynced; on an exception it is removed and
    `path` is left as it was.

    The temp file lives beside `path` (TEMP_PREFIX + random + suffix). A writer that dies
    leaves it behind; the next writer in the directory removes such files. While writing,
    each writer holds a shared flock on the directory; a writer that gets the lock
    exclusively knows that no other writer is live, and only then removes temp files.
    (Where flock is unsupported, nothing is removed.)
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    lock = _lock_directory(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_directory(directory)
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock


def _lock_directory(directory: str) -> int | None:
    """A descriptor of `directory` holding a shared flock, after removing stale temp
    files if no other writer holds the lock. None if the directory cannot be locked."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None  # mkstemp will report the real problem
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another writer is live: its temp files are not stale
        else:
            remove_stale_temp_files(directory)
        fcntl.flock(fd, fcntl.LOCK_SH)  # converts (or waits for a cleaner to finish)
        return fd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP):
            return None  # no flock on this filesystem: write without cleaning
        raise


def remove_stale_temp_files(directory: PathLike) -> int:
    """Removes the temp files of dead writers in `directory`; returns how many. Call only
    while holding the directory's flock exclusively (atomic_file does)."""
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def fsync_directory(directory: str) -> None:
    """Makes a rename inside `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------- reading
def open_regular_file(path: PathLike) -> BinaryIO:
    """Opens `path` for reading; FileNotFoundError if missing, FormatError if it is not a
    regular file (a directory, a FIFO: opened without blocking, then refused)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise FormatError(f"{path}: is {kind}, not a file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_header(f: BinaryIO, name: str) -> tuple[dict[str, Any], int]:
    """The parsed and validated header (every tensor entry well-typed, in bounds, of a
    known dtype) and the offset where the data start. FormatError for anything else."""
    size = os.fstat(f.fileno()).st_size
    head = os.pread(f.fileno(), 8, 0)
    if len(head) < 8:
        raise FormatError(f"{name}: too short to be a safetensors file ({size} bytes)")
    (hlen,) = struct.unpack("<Q", head)
    if hlen > min(size - 8, _MAX_HEADER):
        raise FormatError(f"{name}: not a safetensors file (header length {hlen}, file size {size})")
    raw = os.pread(f.fileno(), hlen, 8)
    if len(raw) != hlen:
        raise FormatError(f"{name}: file is truncated (header)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too-long ints
        raise FormatError(f"{name}: not a safetensors file (header is not JSON: {type(e).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{name}: not a safetensors file (header is a JSON {type(header).__name__}, not an object)")
    data_start = 8 + hlen
    metadata = header.get("__metadata__", {})
    if metadata is None:
        metadata = header["__metadata__"] = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{name}: bad metadata (must map strings to strings)")
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise FormatError(f"{name}: bad entry for tensor {tname!r} (not an object)")
        offsets, tag, shape = info.get("data_offsets"), info.get("dtype"), info.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise FormatError(f"{name}: bad entry for tensor {tname!r} (data_offsets must be two ints)")
        if not isinstance(tag, str) or tag not in _DTYPES:
            raise FormatError(f"{name}: tensor {tname!r} has unsupported dtype {tag!r}")
        if not (isinstance(shape, list) and len(shape) <= _MAX_RANK and all(_is_int(s) and s >= 0 for s in shape)):
            raise FormatError(f"{name}: bad entry for tensor {tname!r} (shape must be up to {_MAX_RANK} ints >= 0)")
        begin, end = offsets
        count = 1
        for s in shape:
            count *= s
        if begin < 0 or end - begin != count * np.dtype(_DTYPES[tag][0]).itemsize:
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
    metadata = dict(header["__metadata__"]) if "__metadata__" in header else {}
    tensors, offsets = {}, {}
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        np_dtype, torch_dtype = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        begin = data_start + info["data_offsets"][0]
        if begin % np.dtype(np_dtype).itemsize:
            raise FormatError(f"{name}: tensor {tname!r} is not aligned to its element size")
        arr: np.ndarray
        if mmap and math.prod(shape):
            arr = np.memmap(f, dtype=np_dtype, mode="c", offset=begin, shape=shape)
        else:
            arr = np.empty(shape, dtype=np_dtype)
            if arr.size:
                _read_into(f, begin, arr.reshape(-1).view(np.uint8).data, name)
        t = torch.from_numpy(arr)
        tensors[tname] = t.view(torch_dtype) if t.dtype != torch_dtype else t
        offsets[tname] = begin
    if verify:
        expected = metadata.get("checksum")
        if expected is None:
            raise FormatError(f"{name}: no checksum in the metadata; not written by pyrag")
        if expected.startswith("crc32h:"):
            actual = checksum(tensors, metadata)
        elif expected.startswith("crc32:"):
            actual = _checksum_v1(tensors)
        else:
            raise FormatError(f"{name}: unknown checksum {expected[:20]!r}")
        if actual != expected:
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
