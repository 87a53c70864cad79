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

The state a mutation publishes is a Snapshot (pyrag/index/snapshot.py); the file
format is pyrag/index/dense_file.py.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch

from pyrag._inputs import INT64_MAX, as_cpu_rows, as_ids, as_tensor
from pyrag.index import dense_file, packed, storage
from pyrag.index.dense_file import IndexFormatError
from pyrag.index.originals import COPY_ROWS, Originals
from pyrag.index.packed import max_dim
from pyrag.index.snapshot import Snapshot, merge_id_map
from pyrag.ops._checks import check_finite, check_k

DTYPES = tuple(packed.DTYPES)

_BLOCK = packed.BLOCK_ROWS


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
        if dim > max_dim(dtype):
            raise ValueError(f"{dtype} indexes support dim <= {max_dim(dtype)}, got {dim}")
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

    def _empty_snapshot(self, version: int = 0) -> Snapshot:
        keep = self._keep_originals
        return Snapshot(
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
                new_ids = torch.arange(n, dtype=torch.int64) + start  # arange(start, start + n) overflows at the top
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
        snap: Snapshot,
        values: torch.Tensor,
        scales: Optional[torch.Tensor],
        norms: Optional[torch.Tensor],
        errors: Optional[torch.Tensor],
        originals_rows: Optional[torch.Tensor],
        new_ids: torch.Tensor,
    ) -> Snapshot:
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
        sorted_ids, sorted_rows = merge_id_map(snap, new_ids[:n])
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

    def _with_capacity(self, snap: Snapshot, need: int, exact: bool = False) -> Snapshot:
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
            self._snap = Snapshot(
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
        """Writes the index atomically (temp file, fsync, rename) with a checksum, in the
        format of pyrag/index/dense_file.py. metadata: strings stored beside it, returned
        as `.metadata` by load."""
        snap = self._snap
        meta = dense_file.saved_metadata(self._dim, self._dtype, snap.version, metadata)
        storage.save_tensors(path, dense_file.saved_tensors(snap, self._dtype, self._dim), meta)

    @classmethod
    def load(cls, path: storage.PathLike, mmap: bool = False, *, verify: bool = True) -> DenseIndex:
        """Opens an index written by save. mmap=True maps the corpus instead of reading it
        into RAM (float32 originals of a quantised index are always mapped, never read);
        verify=False skips the pass over the data (the checksum, and NaN / Inf). Everything
        is read through one open file, so a save over the same path meanwhile cannot mix
        two files."""
        name = os.fspath(path)
        try:
            f = storage.open_regular_file(path)
        except storage.FormatError as e:
            raise IndexFormatError(str(e)) from None
        try:
            stored = storage.open_tensors(f, name=name, mmap=True, verify=verify)
            index = cls._from_stored(name, stored, f, mmap, verify)
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
    def _from_stored(cls, name: str, stored: storage.StoredTensors, f: Any, mmap: bool, verify: bool) -> DenseIndex:
        header = dense_file.read_header(name, stored)
        index = cls(header.dim, header.dtype, keep_originals=header.keep_originals)
        index.metadata = header.metadata
        if header.format_version == "1":
            vectors, ids = dense_file.read_rows_v1(name, stored, header)
            try:
                index.add(vectors, ids)
            except (ValueError, TypeError) as e:  # negative or duplicate ids, NaN vectors
                raise IndexFormatError(f"{name}: bad index contents ({e})") from None
            return index
        index._snap = dense_file.read_snapshot(name, stored, f, header, mmap, verify)
        return index

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
    def _check_no_clash(snap: Snapshot, new_ids: torch.Tensor) -> None:
        if not snap.size or not new_ids.numel():
            return
        sorted_ids = snap.ids_sorted()
        pos = torch.searchsorted(sorted_ids, new_ids).clamp(max=snap.size - 1)
        clash = sorted_ids[pos] == new_ids
        if bool(clash.any()):
            raise ValueError(f"ids already in the index: {new_ids[clash][:5].tolist()}")


def _writable(t: torch.Tensor) -> bool:
    # Buffers of a loaded index map the file copy-on-write: writing never reaches it.
    return t.is_contiguous() and bool(t.numpy().flags.writeable)
