"""DenseIndex: an exact inner-product index over the fused top-k kernel.

The API follows FAISS and usearch: add / search / remove / get / save / load,
len(index), `id in index`. Every mutation validates all of its input before it changes
anything, so a bad call leaves the index exactly as it was. Searches read one immutable
snapshot, so a search running on another thread sees the index before or after a
mutation, never a mix; snapshot() hands that snapshot to callers who need several reads
to agree (search, then get).

Storage: the corpus lives in the CPU kernels' packed layout (pyrag/index/packed.py), so
a search streams it with no repacking, and save / load(mmap=True) move that layout as
is. dtype="bfloat16" stores bf16 rows, dtype="int8" symmetric per-row int8 with a
float32 scale per row (pyrag.reference.quantize_int8); their scores are
pyrag.reference.inner_products(..., quantized_queries=True), the queries rounded as the
compact corpus. For these two the float32 originals are also kept, in a file rather
than in RAM, so that search(..., exact=True) can return exactly the float32 top-k.

Ids: int64 >= 0, given by the caller or continuing from the largest id so far. An id ->
row map (a sorted copy of the ids, kept only when the ids do not increase with the row)
makes get, remove and `in` O(log N) per id, and lets the kernels break ties between
equal scores by id: ties go to the smaller id in every dtype, with and without
exact=True, on every backend.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from pyrag._inputs import INT64_MAX, as_cpu_rows, as_ids, as_tensor
from pyrag.index import packed, storage
from pyrag.index.originals import COPY_ROWS, Originals
from pyrag.index.packed import PackedCorpus
from pyrag.ops._checks import check_finite, check_k
from pyrag.ops._registry import compiled_extension

FORMAT = "pyrag.DenseIndex"
# 2: the corpus is saved packed (tensor "packed"), plus scales / norms / errors /
# originals for quantised dtypes. 1: row-major float32 "vectors" (still loaded).
FORMAT_VERSION = "2"
_LAYOUT = "pyrag.packed16x4"  # blocks of 16 rows x 4-byte groups
_USER_META = "user."  # prefix of the caller's metadata in the file
DTYPES = tuple(packed.DTYPES)
_BLOCK = packed.BLOCK_ROWS


class IndexFormatError(storage.FormatError):
    """The file is not a pyrag index, or it is truncated or corrupted."""


class _Snapshot(NamedTuple):
    packed: torch.Tensor  # uint8 [capacity blocks, block bytes]
    ids: torch.Tensor  # int64 [capacity]; rows [0, size) are live
    size: int
    scales: Optional[torch.Tensor]  # int8: float32 [capacity blocks * 16]
    norms: Optional[torch.Tensor]  # with originals: float32 [capacity], >= ||x||
    errors: Optional[torch.Tensor]  # with originals: float32 [capacity], >= ||x - x^||
    originals: Optional[Originals]  # quantised: the float32 rows
    max_norm: float
    max_error: float
    # The id -> row map. None while ids increase with the row (ids[:size] is then sorted
    # and a row's rank is its id's rank); else the ids sorted, and the row of each.
    sorted_ids: Optional[torch.Tensor]
    sorted_rows: Optional[torch.Tensor]
    version: int  # mutations since the index was created

    def corpus(self, dtype: str, dim: int) -> PackedCorpus:
        return PackedCorpus(dtype, dim, self.packed, self.size, self.scales, self.max_norm, self.max_error)

    def ids_sorted(self) -> torch.Tensor:
        return self.ids[: self.size] if self.sorted_ids is None else self.sorted_ids

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of `ids` (int64 [n]); KeyError naming the ids that are not stored."""
        sorted_ids = self.ids_sorted()
        if ids.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        ids = ids.contiguous()
        pos = torch.searchsorted(sorted_ids, ids).clamp(max=max(self.size - 1, 0))
        found = (sorted_ids[pos] == ids) if self.size else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {ids[~found][:5].tolist()}")
        return pos if self.sorted_rows is None else self.sorted_rows[pos]

    def tie_keys(self) -> Optional[torch.Tensor]:
        """Per-row keys that break ties for the kernels: the ids, unless rows are in id order."""
        return None if self.sorted_ids is None else self.ids


class DenseIndex:
    """Exact maximum-inner-product search over vectors of one dimension.

    Args:
        dim: vector dimension.
        dtype: storage dtype of the corpus: "float32", "bfloat16" or "int8". Vectors
            are always added as float32; bf16 and int8 indexes quantise them.
        keep_originals: bf16 / int8 only: keep the float32 vectors in a file for
            search(..., exact=True) (4 bytes per dimension on disk).
        originals_dir: directory for that file (default: the system temp directory).
    """

    def __init__(
        self, dim: int, dtype: str = "float32", *, keep_originals: bool = True, originals_dir: Optional[str] = None
    ):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if dtype not in DTYPES:
            raise TypeError(f"unsupported index dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        if dtype == "int8" and dim > 65536:
            raise ValueError(f"int8 indexes support dim <= 65536, got {dim}")
        self._dim = dim
        self._dtype = dtype
        self._quantised = dtype != "float32"
        self._keep_originals = self._quantised and keep_originals
        self._originals_dir = originals_dir
        self._block_bytes = packed.block_bytes(dtype, dim)
        self._lock = threading.Lock()
        self._frozen = False
        self._view: Optional[DenseIndex] = None  # the last snapshot(), reused while unchanged
        self.metadata: dict[str, str] = {}
        self._snap = self._empty_snapshot()

    def _empty_snapshot(self, version: int = 0) -> _Snapshot:
        keep = self._keep_originals
        return _Snapshot(
            torch.zeros((0, self._block_bytes), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), 0,
            torch.zeros(0) if self._dtype == "int8" else None, torch.zeros(0) if keep else None,
            torch.zeros(0) if keep else None, Originals(self._dim, self._originals_dir) if keep else None,
            0.0, 0.0, None, None, version,
        )  # fmt: skip

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        """The storage dtype: "float32", "bfloat16" or "int8"."""
        return self._dtype

    @property
    def keep_originals(self) -> bool:
        """Whether exact=True search is available (always for float32)."""
        return not self._quantised or self._keep_originals

    @property
    def version(self) -> int:
        """The number of mutations (add, remove) since the index was created; saved and
        restored with it. Equal versions of one index hold the same vectors."""
        return self._snap.version

    def __len__(self) -> int:
        return self._snap.size

    @property
    def ntotal(self) -> int:
        """FAISS's name for len(index)."""
        return len(self)

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids [len] in row (insertion) order."""
        snap = self._snap
        return snap.ids[: snap.size].clone()

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
            raise TypeError(f"ids are integers, got {type(id_).__name__}")
        if not 0 <= int(id_) <= INT64_MAX:
            return False
        try:
            self._snap.rows_of(torch.tensor([int(id_)], dtype=torch.int64))
        except KeyError:
            return False
        return True

    def contains(self, ids: Any) -> torch.Tensor:
        """Whether each id is stored: bool [*ids.shape] (`id in index` for many ids at
        once), O(len(ids) · log N). Ids outside int64 are a ValueError."""
        t = as_tensor(ids, "ids") if isinstance(ids, (torch.Tensor, np.ndarray)) else as_ids(ids)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"ids must be integers, got {t.dtype}")
        shape = tuple(t.shape)
        flat = as_ids(t)
        snap = self._snap
        if snap.size == 0 or flat.numel() == 0:
            return torch.zeros(shape, dtype=torch.bool)
        sorted_ids = snap.ids_sorted()
        pos = torch.searchsorted(sorted_ids, flat).clamp(max=snap.size - 1)
        return (sorted_ids[pos] == flat).reshape(shape)

    def __repr__(self) -> str:
        return f"DenseIndex(dim={self._dim}, dtype={self._dtype!r}, size={len(self)})"

    def empty_like(self) -> DenseIndex:
        """A new, empty index with this one's dim, dtype and options."""
        return DenseIndex(
            self._dim, self._dtype, keep_originals=self._keep_originals, originals_dir=self._originals_dir
        )

    def snapshot(self) -> DenseIndex:
        """A read-only view of the index as it is now: searches and gets on it agree with
        each other whatever is added or removed meanwhile. O(1). Two calls return the same
        object exactly when nothing changed in between."""
        if self._frozen:
            return self
        snap, view = self._snap, self._view
        if view is None or view._snap is not snap:
            view = copy.copy(self)
            view._frozen = True
            view._lock = threading.Lock()
            view._view = None
            self._view = view
        return view

    # ------------------------------------------------------------------ reading vectors
    def get(self, ids: Any) -> torch.Tensor:
        """The stored vectors of `ids` as float32 [*ids.shape, dim], as the index scores
        them: bfloat16 widened, int8 times its row scale. O(len(ids) · dim).

        ids: an int, a sequence, or an integer tensor / array of any shape. -1 (the
        padding of search results) gives a zero vector; any other id not in the index
        is a KeyError naming it.
        """
        t = as_tensor(ids, "ids") if isinstance(ids, (torch.Tensor, np.ndarray)) else as_ids(ids)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"ids must be integers, got {t.dtype}")
        shape = tuple(t.shape)
        flat = t.detach().cpu().reshape(-1).to(torch.int64)
        snap = self._snap
        valid = flat != -1
        out = torch.zeros((flat.numel(), self._dim), dtype=torch.float32)
        if bool(valid.any()):
            rows = snap.rows_of(flat[valid])
            out[valid] = packed.dequantized_rows(snap.corpus(self._dtype, self._dim), rows)
        return out.reshape(*shape, self._dim)

    def vectors(self) -> torch.Tensor:
        """All stored vectors [len, dim] in row order, in the storage dtype (int8: the
        quantised values; see scales()). An O(N) copy: callers that need some vectors
        use get(ids)."""
        snap = self._snap
        return packed.unpack_rows(self._dtype, snap.packed, 0, snap.size, self._dim)

    def scales(self) -> Optional[torch.Tensor]:
        """int8: the per-row scales [len] (vectors() * scales()[:, None] dequantises)."""
        snap = self._snap
        return snap.scales[: snap.size].clone() if snap.scales is not None else None

    # ------------------------------------------------------------------ mutation
    def add(self, vectors: Any, ids: Any = None) -> torch.Tensor:
        """Adds float32 vectors [n, dim] (or one [dim]) and returns their int64 ids.

        Without ids, ids continue from the largest id so far plus one. Vectors are read
        detached, from any device.
        """
        self._check_mutable()
        x = self._check_vectors(vectors, "vectors")
        n = x.shape[0]
        new_ids_given = None if ids is None else self._check_new_ids(ids, n)
        if self._quantised:
            values, scales, norms, errors = packed.encode_rows(self._dtype, x)
        else:
            values, scales, norms, errors = x, None, None, None
        with self._lock:
            snap = self._snap
            if new_ids_given is None:
                start = int(snap.ids_sorted()[-1]) + 1 if snap.size else 0
                if start + n - 1 > INT64_MAX:
                    raise ValueError(f"automatic ids would pass the largest int64 ({INT64_MAX}); pass ids=")
                new_ids = torch.arange(start, start + n, dtype=torch.int64)
            else:
                new_ids = new_ids_given
                self._check_no_clash(snap, new_ids)
            if n == 0:
                return new_ids
            grown = self._appended(self._with_capacity(snap, snap.size + n), values, scales, norms, errors, x, new_ids)
            self._snap = grown._replace(version=snap.version + 1)
        return new_ids

    def add_from(self, other: DenseIndex, ids: Any = None) -> torch.Tensor:
        """Appends rows of `other`, a DenseIndex of the same dim and dtype, as they are
        stored and under their ids: nothing is re-encoded, so a bfloat16 or int8 row keeps
        its values, its scale, its exact-search bound and its float32 original, and scores
        exactly as it did in `other` (FAISS's merge_from). Re-sharding a saved
        pyrag.distributed.ShardedIndex onto another number of ranks is built on it.

        ids: which of other's ids to copy (default all); an id not in `other` is a
        KeyError, one already here a ValueError, and then nothing is added. Rows are
        appended in other's row order. Returns the ids added. One mutation (version + 1).
        """
        self._check_mutable()
        if not isinstance(other, DenseIndex):
            raise TypeError(f"other must be a pyrag.DenseIndex, got {type(other).__name__}")
        if other.dim != self._dim or other.dtype != self._dtype:
            raise ValueError(
                f"other has dim {other.dim} and dtype {other.dtype!r} but this index has dim {self._dim} "
                f"and dtype {self._dtype!r}"
            )
        if self._keep_originals and not other._keep_originals:
            raise ValueError("this index keeps the float32 originals (exact=True) but other has none to copy")
        src = other._snap
        if ids is None:
            rows = torch.arange(src.size, dtype=torch.int64)
        else:
            wanted = as_ids(ids)
            if wanted.unique().numel() != wanted.numel():
                raise ValueError("ids contain duplicates")
            rows = torch.sort(src.rows_of(wanted)).values  # KeyError before anything changes
        take = src.ids[rows]
        with self._lock:
            snap = self._snap
            self._check_no_clash(snap, take)
            n = rows.numel()
            if n == 0:
                return take
            grown = self._with_capacity(snap, snap.size + n)
            for s in range(0, n, COPY_ROWS):  # chunks: never the whole corpus unpacked
                part = rows[s : s + COPY_ROWS]
                lo, hi = int(part[0]), int(part[-1]) + 1
                values = packed.unpack_rows(self._dtype, src.packed, lo, hi - lo, self._dim)[part - lo]
                keep = self._keep_originals
                grown = self._appended(
                    grown, values, src.scales[part] if src.scales is not None else None,
                    src.norms[part] if keep and src.norms is not None else None,
                    src.errors[part] if keep and src.errors is not None else None,
                    src.originals.view(hi)[part] if keep and src.originals is not None else None,
                    take[s : s + part.numel()],
                )  # fmt: skip
            self._snap = grown._replace(version=snap.version + 1)
        return take

    def _appended(
        self,
        snap: _Snapshot,
        values: torch.Tensor,
        scales: Optional[torch.Tensor],
        norms: Optional[torch.Tensor],
        errors: Optional[torch.Tensor],
        originals_rows: Optional[torch.Tensor],
        new_ids: torch.Tensor,
    ) -> _Snapshot:
        """`snap` (with room for them) plus rows already encoded: values in the storage
        dtype, int8 scales, and, when originals are kept, norms, errors and the float32
        rows. The caller holds the lock, has checked the ids and sets the version."""
        old, n = snap.size, values.shape[0]
        need = old + n
        # Rows past the old size are invisible to readers of the old snapshot.
        packed.pack_rows(self._dtype, values, snap.packed, old)
        snap.ids[old:need] = new_ids[:n]
        max_norm, max_error = snap.max_norm, snap.max_error
        if snap.scales is not None and scales is not None:
            snap.scales[old:need] = scales
        if snap.norms is not None and snap.errors is not None and norms is not None and errors is not None:
            snap.norms[old:need] = norms  # exact search's bound
            snap.errors[old:need] = errors
            max_norm = max(max_norm, float(norms.max()))
            max_error = max(max_error, float(errors.max()))
        originals = snap.originals
        if originals is not None and originals_rows is not None:
            originals = originals.write(old, originals_rows)
        sorted_ids, sorted_rows = _merge_id_map(snap, new_ids[:n])
        return snap._replace(
            size=need, originals=originals, max_norm=max_norm, max_error=max_error, sorted_ids=sorted_ids,
            sorted_rows=sorted_rows,
        )  # fmt: skip

    def reserve(self, capacity: int) -> None:
        """Allocates room for `capacity` rows, so that adds up to that size never
        reallocate (an index built chunk by chunk then peaks at its final size)."""
        self._check_mutable()
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        with self._lock:
            snap = self._snap
            self._snap = self._with_capacity(snap, capacity, exact=True)
            if snap.originals is not None:
                snap.originals.reserve(capacity)

    def _with_capacity(self, snap: _Snapshot, need: int, exact: bool = False) -> _Snapshot:
        """The snapshot's buffers if they hold `need` rows and can be written, else
        copies grown geometrically, or to exactly `need` rows (a fresh buffer also
        detaches from a memory map)."""
        buffers = [t for t in (snap.ids, snap.scales, snap.norms, snap.errors) if t is not None]
        cap_rows = min([snap.packed.shape[0] * _BLOCK] + [t.shape[0] for t in buffers])
        if need <= cap_rows and all(_writable(t) for t in [snap.packed] + buffers):
            return snap
        cap = max(need, snap.size) if exact else max(need, int(cap_rows * 1.5), 1024)
        blocks = packed.num_blocks(cap)
        old_blocks = packed.num_blocks(snap.size)
        data = torch.zeros((blocks, self._block_bytes), dtype=torch.uint8)
        data[:old_blocks] = snap.packed[:old_blocks]
        ids = torch.empty(blocks * _BLOCK, dtype=torch.int64)
        ids[: snap.size] = snap.ids[: snap.size]

        def grow(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            out = torch.zeros(blocks * _BLOCK, dtype=t.dtype)
            out[: snap.size] = t[: snap.size]
            return out

        return snap._replace(
            packed=data, ids=ids, scales=grow(snap.scales), norms=grow(snap.norms), errors=grow(snap.errors)
        )

    def remove(self, ids: Any) -> int:
        """Removes the given ids; raises KeyError (and removes nothing) if any is unknown.
        Returns how many were removed. O(N): the corpus is repacked."""
        self._check_mutable()
        rm = as_ids(ids)
        if rm.unique().numel() != rm.numel():
            raise ValueError("ids to remove contain duplicates")
        with self._lock:
            snap = self._snap
            gone = snap.rows_of(rm)  # KeyError before anything changes
            if rm.numel() == 0:
                return 0
            keep = torch.ones(snap.size, dtype=torch.bool)
            keep[gone] = False
            n = int(keep.sum())
            kept_rows = keep.nonzero().squeeze(1)
            # New buffers, so that concurrent searches keep their snapshot.
            data = torch.zeros((packed.num_blocks(n), self._block_bytes), dtype=torch.uint8)
            for s in range(0, n, COPY_ROWS):  # chunks: never the whole corpus unpacked
                part = kept_rows[s : s + COPY_ROWS]
                lo, hi = int(part[0]), int(part[-1]) + 1
                rows = packed.unpack_rows(self._dtype, snap.packed, lo, hi - lo, self._dim)[part - lo]
                packed.pack_rows(self._dtype, rows, data, s)

            def kept(t: Optional[torch.Tensor], pad: bool = False) -> Optional[torch.Tensor]:
                if t is None:
                    return None
                out = t[: snap.size][keep]
                if pad:  # scales are read 16 rows at a time
                    out = torch.cat([out, out.new_zeros(data.shape[0] * _BLOCK - n)])
                return out.clone()

            originals = snap.originals.subset(kept_rows) if snap.originals is not None else None
            norms, errors = kept(snap.norms), kept(snap.errors)
            sorted_ids, sorted_rows = None, None
            if snap.sorted_ids is not None:
                assert snap.sorted_rows is not None
                new_row = torch.cumsum(keep, 0) - 1  # old row -> new row
                still = keep[snap.sorted_rows]
                sorted_ids = snap.sorted_ids[still].clone()
                sorted_rows = new_row[snap.sorted_rows[still]]
            live_ids = kept(snap.ids)
            assert live_ids is not None
            self._snap = _Snapshot(
                data, live_ids, n, kept(snap.scales, pad=True), norms, errors, originals,
                float(norms.max()) if norms is not None and n else 0.0,
                float(errors.max()) if errors is not None and n else 0.0,
                sorted_ids, sorted_rows, snap.version + 1,
            )  # fmt: skip
        return int(rm.numel())

    def _check_mutable(self) -> None:
        if self._frozen:
            raise TypeError("this is a read-only snapshot of a DenseIndex; add and remove on the index itself")

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, *, exact: bool = False, backend: str = "auto") -> tuple[Any, Any]:
        """The k best ids for each query: (scores [B, k] float32, ids [B, k] int64).

        Args:
            queries: float32 [B, dim] or [dim], torch or numpy (the result follows).
            k: results per query; padding with (-inf, -1) when k > len(index).
            exact: bfloat16 / int8 indexes: False returns the quantised scores (on the
                CPU the query is rounded like the rows: pyrag.reference.inner_products
                with quantized_queries=True; other backends score the float32 query
                against the compact rows). True returns exactly what a float32 index of
                the same vectors returns, same scores, order and ties, while scanning only
                the compact copy: the scan keeps every row whose quantised score, plus a
                bound on its error, could still reach the k-th best, and only those rows
                are rescored from the float32 originals.
            backend: "auto", "cpu", "reference", "triton", "cuda" or "cuda_emu".

        Results are sorted by descending score; equal scores go to the smaller id.
        """
        as_numpy = isinstance(queries, np.ndarray)
        q = as_tensor(queries, "queries")
        if backend in ("auto", "cpu"):
            q = q.cpu()  # the corpus lives in host memory
        if q.dim() not in (1, 2) or q.shape[-1] != self._dim:
            raise ValueError(f"queries have shape {tuple(q.shape)} but the index has dim {self._dim}")
        check_k(k)
        if q.dtype != torch.float32:
            raise TypeError(f"queries must be float32, got {q.dtype}; convert them explicitly")
        q = q.detach()
        check_finite(q, "queries")
        snap = self._snap
        if exact and self._quantised and snap.originals is None:
            raise ValueError("exact=True needs the float32 originals; this index was made with keep_originals=False")
        single = q.dim() == 1
        q2 = q.unsqueeze(0) if single else q
        originals = snap.originals if exact and self._quantised else None
        scores, rows = packed.search(
            q2, snap.corpus(self._dtype, self._dim), k, backend=backend, tie_keys=snap.tie_keys(), originals=originals
        )
        ids = rows.clone()  # -1 padding stays
        valid = rows >= 0
        ids[valid] = snap.ids[rows[valid]]
        if single:
            scores, ids = scores[0], ids[0]
        if as_numpy:
            return scores.numpy(), ids.numpy()
        return scores, ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: storage.PathLike, *, metadata: Optional[Mapping[str, str]] = None) -> None:
        """Writes the index atomically (temp file, fsync, rename) with a checksum.
        metadata: strings stored beside it, returned as `.metadata` by load."""
        snap = self._snap
        n = snap.size
        blocks = packed.num_blocks(n)
        tensors = {"packed": snap.packed[:blocks], "ids": snap.ids[:n]}
        if snap.scales is not None:
            tensors["scales"] = snap.scales[: blocks * _BLOCK]
        if snap.originals is not None and snap.norms is not None and snap.errors is not None:
            tensors.update(norms=snap.norms[:n], errors=snap.errors[:n], originals=snap.originals.view(n))
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "layout": _LAYOUT, "dim": str(self._dim),
            "dtype": self._dtype, "version": str(snap.version),
        }  # fmt: skip
        for key, value in (metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, got {key!r}: {type(value).__name__}")
            meta[_USER_META + key] = value
        storage.save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: storage.PathLike, mmap: bool = False, *, verify: bool = True) -> DenseIndex:
        """Opens an index written by save. mmap=True maps the corpus instead of reading it
        into RAM (float32 originals of a quantised index are always mapped, never read);
        verify=False skips the checksum pass over the data. Everything is read through
        one open file, so a save over the same path meanwhile cannot mix two files."""
        name = os.fspath(path)
        try:
            f = storage.open_regular_file(path)
        except storage.FormatError as e:
            raise IndexFormatError(str(e)) from None
        try:
            stored = storage.open_tensors(f, name=name, mmap=True, verify=verify)
            index = cls._from_stored(name, stored, f, mmap)
        except storage.FormatError as e:
            f.close()
            raise IndexFormatError(str(e)) from None
        except BaseException:
            f.close()
            raise
        if index._snap.originals is None:
            f.close()  # the mapped tensors keep their own reference to the file
        return index

    @classmethod
    def _from_stored(cls, name: str, stored: storage.StoredTensors, f: Any, mmap: bool) -> DenseIndex:
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
        if dtype not in DTYPES or not 1 <= dim <= (65536 if dtype == "int8" else 1 << 24) or version < 0:
            raise IndexFormatError(f"{name}: index metadata are out of range")
        if ids.dtype != torch.int64 or ids.dim() != 1:
            raise IndexFormatError(f"{name}: index tensors do not match its metadata")
        index = cls(dim, dtype, keep_originals="originals" in tensors)
        index.metadata = {k[len(_USER_META) :]: v for k, v in meta.items() if k.startswith(_USER_META)}
        n = ids.shape[0]
        if fmt == "1":
            vectors = tensors.get("vectors")
            if dtype != "float32" or vectors is None or vectors.shape != (n, dim) or vectors.dtype != torch.float32:
                raise IndexFormatError(f"{name}: index tensors do not match its metadata")
            index.add(vectors.clone(), ids.clone())
            return index
        index._snap = index._loaded_snapshot(name, stored, f, n, mmap, version)
        return index

    def _loaded_snapshot(
        self, name: str, stored: storage.StoredTensors, f: Any, n: int, mmap: bool, version: int
    ) -> _Snapshot:
        tensors, meta = stored.tensors, stored.metadata
        blocks = packed.num_blocks(n)
        expect = {"packed": ((blocks, self._block_bytes), torch.uint8), "ids": ((n,), torch.int64)}
        if self._dtype == "int8":
            expect["scales"] = ((blocks * _BLOCK,), torch.float32)
        if self._keep_originals:
            expect.update(
                norms=((n,), torch.float32), errors=((n,), torch.float32), originals=((n, self._dim), torch.float32)
            )
        if (
            meta.get("layout") != _LAYOUT
            or set(tensors) != set(expect)
            or any(tuple(tensors[t].shape) != shape or tensors[t].dtype != dt for t, (shape, dt) in expect.items())
        ):
            raise IndexFormatError(f"{name}: index tensors do not match its metadata")
        ids = tensors["ids"]
        if n and int(ids.min()) < 0:
            raise IndexFormatError(f"{name}: negative ids")
        sorted_ids, sorted_rows = _id_map(ids)
        if sorted_ids is not None and n > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
            raise IndexFormatError(f"{name}: duplicate ids")
        if sorted_ids is None and n > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise IndexFormatError(f"{name}: duplicate ids")

        def get(t: str) -> torch.Tensor:
            return tensors[t] if mmap else tensors[t].clone()

        norms = get("norms") if self._keep_originals else None
        errors = get("errors") if self._keep_originals else None
        originals = None
        if self._keep_originals:
            originals = Originals.in_file(f, stored.offsets["originals"], tensors["originals"])
            if n:  # the checksum pass read the mapped originals: give those pages back
                compiled_extension().release_file_pages(originals.view(n).data_ptr(), n * self._dim * 4)
        return _Snapshot(
            get("packed"), get("ids"), n, get("scales") if self._dtype == "int8" else None, norms, errors, originals,
            float(norms.max()) if norms is not None and n else 0.0,
            float(errors.max()) if errors is not None and n else 0.0,
            sorted_ids, sorted_rows, version,
        )  # fmt: skip

    # ------------------------------------------------------------------ checks
    def _check_vectors(self, vectors: Any, what: str) -> torch.Tensor:
        x = as_cpu_rows(vectors, what)
        if x.dim() != 2 or x.shape[1] != self._dim:
            raise ValueError(f"{what} have shape {tuple(x.shape)} but the index has dim {self._dim}")
        if x.dtype != torch.float32:
            raise TypeError(
                f"{what} are {x.dtype} but the index takes float32 vectors (and stores {self._dtype}); "
                f"convert them explicitly"
            )
        if x.numel():
            # One pass, no temporaries (torch.isfinite(x).all() takes ~25x longer on a
            # 1M x 384 batch); check_finite only to name the first bad element.
            lo, hi = (float(v) for v in torch.aminmax(x))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                check_finite(x, what)
            if self._quantised and max(-lo, hi) > 1e30:  # squares must stay finite in float32
                raise ValueError(
                    f"{what} hold values up to {max(-lo, hi):.3g}; a {self._dtype} index takes |x| <= 1e30"
                )
        return x

    @staticmethod
    def _check_new_ids(ids: Any, n: int) -> torch.Tensor:
        new_ids = as_ids(ids)
        if new_ids.numel() != n:
            raise ValueError(f"got {new_ids.numel()} ids for {n} vectors")
        if bool((new_ids < 0).any()):
            raise ValueError("ids must be non-negative (-1 marks padding in results)")
        if new_ids.unique().numel() != n:
            raise ValueError("ids contain duplicates")
        return new_ids.clone()

    @staticmethod
    def _check_no_clash(snap: _Snapshot, new_ids: torch.Tensor) -> None:
        if not snap.size or not new_ids.numel():
            return
        sorted_ids = snap.ids_sorted()
        pos = torch.searchsorted(sorted_ids, new_ids).clamp(max=snap.size - 1)
        clash = sorted_ids[pos] == new_ids
        if bool(clash.any()):
            raise ValueError(f"ids already in the index: {new_ids[clash][:5].tolist()}")


def _id_map(ids: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(sorted ids, their rows), or (None, None) when the ids increase with the row."""
    if ids.numel() < 2 or bool((ids[1:] > ids[:-1]).all()):
        return None, None
    sorted_ids, rows = torch.sort(ids, stable=True)
    return sorted_ids, rows


def _merge_id_map(snap: _Snapshot, new_ids: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The id -> row map after appending `new_ids` as rows [size, size + n)."""
    n = new_ids.numel()
    increasing = n < 2 or bool((new_ids[1:] > new_ids[:-1]).all())
    if snap.sorted_ids is None and increasing and (snap.size == 0 or int(new_ids[0]) > int(snap.ids[snap.size - 1])):
        return None, None  # still in id order
    old_ids = snap.ids_sorted()
    old_rows = snap.sorted_rows if snap.sorted_rows is not None else torch.arange(snap.size, dtype=torch.int64)
    add_ids, order = torch.sort(new_ids)
    add_rows = snap.size + order
    # Merge two sorted runs in O(N + n log N): each new id's place among the old ones.
    at = torch.searchsorted(old_ids, add_ids) + torch.arange(n)
    total = snap.size + n
    sorted_ids = torch.empty(total, dtype=torch.int64)
    sorted_rows = torch.empty(total, dtype=torch.int64)
    is_new = torch.zeros(total, dtype=torch.bool)
    is_new[at] = True
    sorted_ids[at], sorted_rows[at] = add_ids, add_rows
    sorted_ids[~is_new], sorted_rows[~is_new] = old_ids, old_rows
    return sorted_ids, sorted_rows


def _writable(t: torch.Tensor) -> bool:
    # Buffers of a loaded index map the file copy-on-write: writing never reaches it.
    return t.is_contiguous() and bool(t.numpy().flags.writeable)
