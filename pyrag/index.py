"""DenseIndex: an exact inner-product index over the fused top-k kernel.

The API follows FAISS and usearch: add / search / remove / save / load, len(index),
`id in index`. Every mutation validates all of its input before it changes anything,
so a bad call leaves the index exactly as it was. Searches read one immutable snapshot,
so a search running on another thread sees the index before or after a mutation,
never a mix.

Storage: the corpus lives in the CPU kernels' packed layout (blocks of 16 rows
interleaved along the dimension; csrc/cpu/packed_layout.h), so a search streams it with
no repacking, and save / load(mmap=True) move that layout as is. dtype="bfloat16"
stores bf16 rows, dtype="int8" symmetric per-row int8 with a float32 scale per row
(pyrag.reference.quantize_int8); their scores are
pyrag.reference.inner_products(..., quantized_queries=True), the queries rounded as the
compact corpus. For these two the float32 originals are also kept, in a memory-mapped
file rather than in RAM, so that search(..., exact=True) can return exactly the float32 top-k: see DenseIndex.search.
"""
from __future__ import annotations

import math
import mmap
import os
import tempfile
import threading
import weakref
from typing import NamedTuple, Optional

import numpy as np
import torch

from pyrag import storage
from pyrag.ops._common import check_finite, compiled_extension
from pyrag.ops.topk_scores import (PackedCorpus, _as_tensor, encode_rows, pack_rows, packed_block_bytes,
                                   topk_packed, topk_packed_exact, topk_scores, unpack_rows)

FORMAT = "pyrag.DenseIndex"
# 2: the corpus is saved packed (tensor "packed"), plus scales / norms / errors /
# originals for quantised dtypes. 1: row-major float32 "vectors" (still loaded).
FORMAT_VERSION = "2"
_LAYOUT = "pyrag.packed16x4"  # blocks of 16 rows x 4-byte groups
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
_BLOCK = 16


class IndexFormatError(storage.FormatError):
    """The file is not a pyrag index, or it is truncated or corrupted."""


class _Originals:
    """float32 rows [n, dim] in a file: a quantised index's exact copy, kept out of RAM.

    A fresh index writes them to an unlinked temporary file (deleted with the index); a
    loaded one keeps them where they are in the index file. Exact search reads the rows
    it rescores with pread (csrc/cpu/topk_scores.h says why not through a mapping);
    view() maps them for everything else (save, remove, other backends). Rows are
    appended with pwrite; older snapshots keep their mapping when the file grows.
    """

    def __init__(self, dim: int, directory: Optional[str] = None):
        self.dim = dim
        self._file = tempfile.TemporaryFile(dir=directory)
        # Closing the descriptor leaves existing mappings valid: snapshots may outlive us.
        weakref.finalize(self, self._file.close)
        self.offset = 0
        self._writable = True
        self._capacity = 0
        self._rows: Optional[torch.Tensor] = None  # [capacity, dim] view of the mapping

    @classmethod
    def in_file(cls, path, offset: int, rows: torch.Tensor) -> "_Originals":
        """Originals at byte `offset` of an index file, already mapped as `rows`."""
        self = cls.__new__(cls)
        self.dim = rows.shape[1]
        self._file = open(path, "rb")  # this inode, even if the path is saved over later
        weakref.finalize(self, self._file.close)
        self.offset = offset
        self._writable = False
        self._capacity = rows.shape[0]
        self._rows = rows
        return self

    @property
    def fd(self) -> int:
        return self._file.fileno()

    def view(self, n: int) -> torch.Tensor:
        """Rows [0, n) as a [n, dim] float32 tensor over the mapping."""
        if n == 0:
            return torch.empty((0, self.dim), dtype=torch.float32)
        return self._rows[:n]

    def write(self, start: int, rows: torch.Tensor) -> "_Originals":
        """Writes rows at [start, start + len); returns the object to keep in the new
        snapshot (self, or a copy in a new file if this one is a loaded index's)."""
        target = self
        if not self._writable:
            target = _Originals(self.dim)
            for s in range(0, start, 1 << 16):  # chunks: never the whole float32 copy in RAM
                target._write(s, self.view(start)[s:s + (1 << 16)])
        target._write(start, rows.contiguous())
        return target

    def _write(self, start: int, rows: torch.Tensor) -> None:
        need = start + rows.shape[0]
        if need > self._capacity:
            cap = max(need, int(self._capacity * 1.5), 1024)
            self._file.truncate(cap * self.dim * 4)
            mm = mmap.mmap(self._file.fileno(), cap * self.dim * 4, access=mmap.ACCESS_WRITE)
            self._rows = torch.from_numpy(np.frombuffer(mm, dtype=np.float32).reshape(cap, self.dim))
            self._capacity = cap
        buf = memoryview(rows.contiguous().numpy()).cast("B")
        offset = start * self.dim * 4
        while len(buf):
            written = os.pwrite(self._file.fileno(), buf, offset)
            buf, offset = buf[written:], offset + written


class _Snapshot(NamedTuple):
    packed: torch.Tensor              # uint8 [capacity blocks, block bytes]
    ids: torch.Tensor                 # int64 [capacity]; rows [0, size) are live
    size: int
    scales: Optional[torch.Tensor]    # int8: float32 [capacity blocks * 16]
    norms: Optional[torch.Tensor]     # quantised: float32 [capacity], >= ||x||
    errors: Optional[torch.Tensor]    # quantised: float32 [capacity], >= ||x - x^||
    originals: Optional[_Originals]   # quantised: the float32 rows
    max_norm: float = 0.0
    max_error: float = 0.0


class DenseIndex:
    """Exact maximum-inner-product search over vectors of one dimension.

    Args:
        dim: vector dimension.
        dtype: storage dtype of the corpus: "float32", "bfloat16" or "int8". Vectors
            are always added as float32; bf16 and int8 indexes quantise them.
        keep_originals: bf16 / int8 only: keep the float32 vectors in a memory-mapped
            file for search(..., exact=True) (4 bytes per dimension on disk).
        originals_dir: directory for that file (default: the system temp directory).
    """

    def __init__(self, dim: int, dtype: str = "float32", *, keep_originals: bool = True,
                 originals_dir: Optional[str] = None):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if dtype not in _DTYPES:
            raise TypeError(f"unsupported index dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
        if dtype == "int8" and dim > 65536:
            raise ValueError(f"int8 indexes support dim <= 65536, got {dim}")
        self._dim = dim
        self._dtype = dtype
        self._quantised = dtype != "float32"
        self._keep_originals = self._quantised and keep_originals
        self._originals_dir = originals_dir
        self._block_bytes = packed_block_bytes(dtype, dim)
        self._lock = threading.Lock()
        self._snap = self._empty_snapshot()

    def _empty_snapshot(self) -> _Snapshot:
        q, keep = self._quantised, self._keep_originals
        return _Snapshot(torch.zeros((0, self._block_bytes), dtype=torch.uint8),
                         torch.empty(0, dtype=torch.int64), 0,
                         torch.zeros(0) if self._dtype == "int8" else None,
                         torch.zeros(0) if q else None, torch.zeros(0) if q else None,
                         _Originals(self._dim, self._originals_dir) if keep else None)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        return self._snap.size

    @property
    def ntotal(self) -> int:
        """FAISS's name for len(index)."""
        return len(self)

    @property
    def ids(self) -> torch.Tensor:
        snap = self._snap
        return snap.ids[:snap.size].clone()

    def __contains__(self, id_) -> bool:
        snap = self._snap
        return bool((snap.ids[:snap.size] == int(id_)).any())

    def __repr__(self) -> str:
        return f"DenseIndex(dim={self._dim}, dtype={self._dtype!r}, size={len(self)})"

    def vectors(self) -> torch.Tensor:
        """The stored vectors [len, dim] in insertion order, in the index's dtype (int8:
        the quantised values; see scales()). A copy: the index stores them packed."""
        snap = self._snap
        return unpack_rows(self._dtype, snap.packed, 0, snap.size, self._dim)

    def scales(self) -> Optional[torch.Tensor]:
        """int8: the per-row scales [len] (vectors() * scales()[:, None] dequantises)."""
        snap = self._snap
        return snap.scales[:snap.size].clone() if snap.scales is not None else None

    # ------------------------------------------------------------------ mutation
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Adds float32 vectors [n, dim] (or one [dim]) and returns their int64 ids.

        Without ids, ids continue from the largest id so far plus one.
        """
        x = self._check_vectors(vectors, "vectors")
        n = x.shape[0]
        if self._quantised:
            values, scales, norms, errors = encode_rows(self._dtype, x)
        else:
            values = x
        with self._lock:
            snap = self._snap
            live_ids = snap.ids[:snap.size]
            if ids is None:
                start = int(live_ids.max()) + 1 if snap.size else 0
                new_ids = torch.arange(start, start + n, dtype=torch.int64)
            else:
                new_ids = self._check_new_ids(ids, n, live_ids)
            if n == 0:
                return new_ids
            old, need = snap.size, snap.size + n
            grown = self._with_capacity(snap, need)
            # Rows past the old size are invisible to readers of the old snapshot.
            pack_rows(self._dtype, values, grown.packed, old)
            grown.ids[old:need] = new_ids
            max_norm, max_error = snap.max_norm, snap.max_error
            if self._quantised:
                if grown.scales is not None:
                    grown.scales[old:need] = scales
                grown.norms[old:need] = norms
                grown.errors[old:need] = errors
                max_norm = max(max_norm, float(norms.max()))
                max_error = max(max_error, float(errors.max()))
            originals = grown.originals.write(old, x) if grown.originals is not None else None
            self._snap = grown._replace(size=need, originals=originals, max_norm=max_norm,
                                        max_error=max_error)
        return new_ids

    def _with_capacity(self, snap: _Snapshot, need: int) -> _Snapshot:
        """The snapshot's buffers if they hold `need` rows and can be written, else
        copies grown geometrically (a fresh buffer also detaches from a memory map)."""
        buffers = [t for t in (snap.ids, snap.scales, snap.norms, snap.errors) if t is not None]
        cap_rows = min([snap.packed.shape[0] * _BLOCK] + [t.shape[0] for t in buffers])
        if need <= cap_rows and all(_writable(t) for t in [snap.packed] + buffers):
            return snap
        cap = max(need, int(cap_rows * 1.5), 1024)
        blocks = -(-cap // _BLOCK)
        old_blocks = -(-snap.size // _BLOCK)
        packed = torch.zeros((blocks, self._block_bytes), dtype=torch.uint8)
        packed[:old_blocks] = snap.packed[:old_blocks]
        ids = torch.empty(blocks * _BLOCK, dtype=torch.int64)
        ids[:snap.size] = snap.ids[:snap.size]

        def grow(t):
            if t is None:
                return None
            out = torch.zeros(blocks * _BLOCK, dtype=t.dtype)
            out[:snap.size] = t[:snap.size]
            return out

        return snap._replace(packed=packed, ids=ids, scales=grow(snap.scales), norms=grow(snap.norms),
                             errors=grow(snap.errors))

    def remove(self, ids) -> int:
        """Removes the given ids; raises KeyError (and removes nothing) if any is unknown."""
        rm = self._as_ids(ids)
        if rm.unique().numel() != rm.numel():
            raise ValueError("ids to remove contain duplicates")
        with self._lock:
            snap = self._snap
            live = snap.ids[:snap.size]
            found = torch.isin(rm, live)
            if not bool(found.all()):
                missing = rm[~found][:5].tolist()
                raise KeyError(f"ids not in the index: {missing}")
            keep = ~torch.isin(live, rm)
            # New buffers, so that concurrent searches keep their snapshot.
            n = int(keep.sum())
            rows = unpack_rows(self._dtype, snap.packed, 0, snap.size, self._dim)[keep]
            packed = torch.zeros((-(-n // _BLOCK), self._block_bytes), dtype=torch.uint8)
            pack_rows(self._dtype, rows, packed, 0)

            def kept(t, pad=False):
                if t is None:
                    return None
                out = t[:snap.size][keep]
                if pad:  # scales are read 16 rows at a time
                    out = torch.cat([out, out.new_zeros(packed.shape[0] * _BLOCK - n)])
                return out.clone()

            originals = None
            if snap.originals is not None:
                originals = _Originals(self._dim, self._originals_dir)
                src = snap.originals.view(snap.size)
                kept_rows = keep.nonzero().squeeze(1)
                for s in range(0, n, 1 << 16):  # chunks: never the whole float32 copy in RAM
                    originals._write(s, src[kept_rows[s:s + (1 << 16)]])
            norms, errors = kept(snap.norms), kept(snap.errors)
            self._snap = _Snapshot(packed, kept(live), n, kept(snap.scales, pad=True), norms, errors,
                                   originals,
                                   float(norms.max()) if norms is not None and n else 0.0,
                                   float(errors.max()) if errors is not None and n else 0.0)
        return int(rm.numel())

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int, *, exact: bool = False, backend: str = "auto"):
        """The k best ids for each query: (scores [B, k] float32, ids [B, k] int64).

        queries: float32 [B, dim] or [dim], torch or numpy (the result follows). Padding
        with (-inf, -1) when k > len(index).

        exact (bfloat16 / int8 indexes): False returns the quantised scores: on the
        CPU the query is rounded like the rows (pyrag.reference.inner_products with
        quantized_queries=True); other backends score the float32 query against the
        compact rows. True returns exactly what a float32 index of the same vectors
        returns, same scores, order and ties, while scanning only the compact copy:
        the scan keeps every row whose quantised score, plus a bound on its error
        derived from the norms and quantisation errors of the query and the rows, could
        still reach the k-th best; only those rows are rescored from the
        float32 originals (memory-mapped; their pages are released after use).
        """
        as_numpy = isinstance(queries, np.ndarray)
        q = _as_tensor(queries, "queries")
        if q.dim() not in (1, 2) or q.shape[-1] != self._dim:
            raise ValueError(f"queries have shape {tuple(q.shape)} but the index has dim {self._dim}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if q.dtype != torch.float32:
            raise TypeError(f"queries must be float32, got {q.dtype}; convert them explicitly")
        check_finite(q, "queries")
        snap = self._snap
        if exact and self._quantised and snap.originals is None:
            raise ValueError("exact=True needs the float32 originals; this index was made with "
                             "keep_originals=False")
        single = q.dim() == 1
        q2 = q.unsqueeze(0) if single else q
        scores, rows = self._search(snap, q2, k, exact and self._quantised, backend)
        ids = rows.clone()  # -1 padding stays
        valid = rows >= 0
        ids[valid] = snap.ids[rows[valid]]
        if single:
            scores, ids = scores[0], ids[0]
        if as_numpy:
            return scores.numpy(), ids.numpy()
        return scores, ids

    def _search(self, snap: _Snapshot, q: torch.Tensor, k: int, exact: bool, backend: str):
        n = snap.size
        if backend in ("auto", "cpu") and q.device.type == "cpu":
            if exact:
                corpus = PackedCorpus(self._dtype, self._dim, snap.packed, n, snap.scales)
                scores, rows, _ = topk_packed_exact(q, corpus, snap.originals.fd, snap.originals.offset,
                                                    snap.max_norm, snap.max_error, k)
                return scores, rows
            return topk_packed(q, PackedCorpus(self._dtype, self._dim, snap.packed, n, snap.scales), k)
        # Other backends take row-major tensors.
        if exact:
            return topk_scores(q, snap.originals.view(n), k, backend=backend)
        vectors = unpack_rows(self._dtype, snap.packed, 0, n, self._dim)
        scales = snap.scales[:n] if snap.scales is not None else None
        return topk_scores(q, vectors, k, scales=scales, backend=backend)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Writes the index atomically (temp file, fsync, rename) with a checksum."""
        snap = self._snap
        n = snap.size
        tensors = {"packed": snap.packed[:-(-n // _BLOCK)], "ids": snap.ids[:n]}
        if snap.scales is not None:
            tensors["scales"] = snap.scales[:-(-n // _BLOCK) * _BLOCK]
        if snap.originals is not None:
            tensors.update(norms=snap.norms[:n], errors=snap.errors[:n], originals=snap.originals.view(n))
        storage.save_tensors(path, tensors,
                             {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": _LAYOUT,
                              "dim": str(self._dim), "dtype": self._dtype})

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, *, verify: bool = True) -> "DenseIndex":
        """Opens an index written by save. mmap=True maps the corpus instead of reading it
        into RAM (float32 originals of a quantised index are always mapped, never read);
        verify=False skips the checksum pass over the data."""
        try:
            tensors, meta = storage.load_tensors(path, mmap=True, verify=verify)
        except storage.FormatError as e:
            raise IndexFormatError(str(e)) from None
        if meta.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a pyrag index (format={meta.get('format')!r})")
        version = meta.get("format_version")
        if version not in ("1", FORMAT_VERSION):
            raise IndexFormatError(f"{path}: unsupported index format version {version!r}")
        try:
            dim, dtype = int(meta["dim"]), meta["dtype"]
            ids = tensors["ids"]
        except (KeyError, ValueError):
            raise IndexFormatError(f"{path}: index metadata or tensors are missing") from None
        if dtype not in _DTYPES or dim < 1 or ids.dtype != torch.int64 or ids.dim() != 1:
            raise IndexFormatError(f"{path}: index tensors do not match its metadata")
        index = cls(dim, dtype, keep_originals="originals" in tensors)
        n = ids.shape[0]
        if version == "1":
            vectors = tensors.get("vectors")
            if dtype != "float32" or vectors is None or vectors.shape != (n, dim) \
                    or vectors.dtype != torch.float32:
                raise IndexFormatError(f"{path}: index tensors do not match its metadata")
            index.add(vectors, ids)
            return index
        index._snap = index._loaded_snapshot(path, tensors, meta, n, mmap)
        return index

    def _loaded_snapshot(self, path, tensors: dict, meta: dict, n: int, mmap: bool) -> _Snapshot:
        blocks = -(-n // _BLOCK)
        expect = {"packed": ((blocks, self._block_bytes), torch.uint8), "ids": ((n,), torch.int64)}
        if self._dtype == "int8":
            expect["scales"] = ((blocks * _BLOCK,), torch.float32)
        if self._keep_originals:
            expect.update(norms=((n,), torch.float32), errors=((n,), torch.float32),
                          originals=((n, self._dim), torch.float32))
        if meta.get("layout") != _LAYOUT or set(tensors) != set(expect) or any(
                tuple(tensors[name].shape) != shape or tensors[name].dtype != dt
                for name, (shape, dt) in expect.items()):
            raise IndexFormatError(f"{path}: index tensors do not match its metadata")
        get = (lambda name: tensors[name]) if mmap else (lambda name: tensors[name].clone())
        norms = get("norms") if self._keep_originals else None
        errors = get("errors") if self._keep_originals else None
        originals = None
        if self._keep_originals:
            offset = storage.tensor_offset(path, "originals")
            originals = _Originals.in_file(path, offset, tensors["originals"])
            if n:  # the checksum pass read the mapped originals: give those pages back
                compiled_extension().release_file_pages(originals.view(n).data_ptr(), n * self._dim * 4)
        return _Snapshot(get("packed"), get("ids"), n, get("scales") if self._dtype == "int8" else None,
                         norms, errors, originals,
                         float(norms.max()) if norms is not None and n else 0.0,
                         float(errors.max()) if errors is not None and n else 0.0)

    # ------------------------------------------------------------------ checks
    def _check_vectors(self, vectors, what: str) -> torch.Tensor:
        x = _as_tensor(vectors, what)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self._dim:
            raise ValueError(f"{what} have shape {tuple(x.shape)} but the index has dim {self._dim}")
        if x.dtype != torch.float32:
            raise TypeError(f"{what} are {x.dtype} but the index takes float32 vectors "
                            f"(and stores {self._dtype}); convert them explicitly")
        if x.numel():
            # One pass, no temporaries (torch.isfinite(x).all() takes ~25x longer on a
            # 1M x 384 batch); check_finite only to name the first bad element.
            lo, hi = (float(v) for v in torch.aminmax(x))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                check_finite(x, what)
            if self._quantised and max(-lo, hi) > 1e30:  # squares must stay finite in float32
                raise ValueError(f"{what} hold values up to {max(-lo, hi):.3g}; a {self._dtype} index "
                                 f"takes |x| <= 1e30")
        return x.contiguous()

    @staticmethod
    def _as_ids(ids) -> torch.Tensor:
        t = _as_tensor(np.asarray(ids) if isinstance(ids, (list, tuple, int, np.integer)) else ids, "ids")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise TypeError(f"ids must be integers, got {t.dtype}")
        return t.reshape(-1).to(torch.int64)

    def _check_new_ids(self, ids, n: int, live_ids: torch.Tensor) -> torch.Tensor:
        new_ids = self._as_ids(ids)
        if new_ids.numel() != n:
            raise ValueError(f"got {new_ids.numel()} ids for {n} vectors")
        if bool((new_ids < 0).any()):
            raise ValueError("ids must be non-negative (-1 marks padding in results)")
        if new_ids.unique().numel() != n:
            raise ValueError("ids contain duplicates")
        clash = torch.isin(new_ids, live_ids)
        if bool(clash.any()):
            raise ValueError(f"ids already in the index: {new_ids[clash][:5].tolist()}")
        return new_ids.clone()


def _writable(t: torch.Tensor) -> bool:
    # Buffers of a loaded index map the file copy-on-write: writing never reaches it.
    return t.is_contiguous() and t.numpy().flags.writeable
