"""DenseIndex: an exact inner-product index over the fused top-k kernel.

The API follows FAISS and usearch: add / search / remove / save / load, len(index),
`id in index`. Every mutation validates all of its input before it changes anything,
so a bad call leaves the index exactly as it was. Searches read one immutable snapshot
(vectors, ids), so a search running on another thread sees the index before or after
a mutation, never a mix.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

import numpy as np
import torch

from pyrag import storage
from pyrag.ops._common import check_finite
from pyrag.ops.topk_scores import _as_tensor

FORMAT = "pyrag.DenseIndex"
FORMAT_VERSION = "1"
_DTYPES = {"float32": torch.float32}


class IndexFormatError(storage.FormatError):
    """The file is not a pyrag index, or it is truncated or corrupted."""


class _Snapshot(NamedTuple):
    vectors: torch.Tensor  # [capacity, dim]; rows [0, size) are live
    ids: torch.Tensor      # [capacity] int64
    size: int


class DenseIndex:
    """Exact maximum-inner-product search over vectors of one dimension.

    Args:
        dim: vector dimension.
        dtype: storage dtype of the corpus ("float32").
    """

    def __init__(self, dim: int, dtype: str = "float32"):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if dtype not in _DTYPES:
            raise TypeError(f"unsupported index dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
        self._dim = dim
        self._dtype = dtype
        self._lock = threading.Lock()
        self._snap = _Snapshot(torch.empty((0, dim), dtype=_DTYPES[dtype]),
                               torch.empty(0, dtype=torch.int64), 0)

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
        """The stored vectors [len, dim] in insertion order (a view: do not modify)."""
        snap = self._snap
        return snap.vectors[:snap.size]

    # ------------------------------------------------------------------ mutation
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Adds vectors [n, dim] (or one [dim]) and returns their int64 ids.

        Without ids, ids continue from the largest id so far plus one.
        """
        x = self._check_vectors(vectors, "vectors")
        n = x.shape[0]
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
            need = snap.size + n
            if need <= snap.vectors.shape[0] and snap.vectors.is_contiguous() and snap.vectors.numpy().flags.writeable:
                vec, idv = snap.vectors, snap.ids
            else:  # grow geometrically; a fresh buffer also detaches from a memory map
                cap = max(need, int(snap.vectors.shape[0] * 1.5), 1024)
                vec = torch.empty((cap, self._dim), dtype=snap.vectors.dtype)
                idv = torch.empty(cap, dtype=torch.int64)
                vec[:snap.size] = snap.vectors[:snap.size]
                idv[:snap.size] = snap.ids[:snap.size]
            # Rows past the old size are invisible to readers of the old snapshot.
            vec[snap.size:need] = x
            idv[snap.size:need] = new_ids
            self._snap = _Snapshot(vec, idv, need)
        return new_ids

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
            vec = snap.vectors[:snap.size][keep].clone()
            idv = live[keep].clone()
            self._snap = _Snapshot(vec, idv, vec.shape[0])
        return int(rm.numel())

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int, *, backend: str = "auto"):
        """The k best ids for each query: (scores [B, k] float32, ids [B, k] int64).

        queries: [B, dim] or [dim], torch or numpy (the result follows). Padding with
        (-inf, -1) when k > len(index).
        """
        from pyrag.ops.topk_scores import topk_scores

        as_numpy = isinstance(queries, np.ndarray)
        q = _as_tensor(queries, "queries")
        if q.dim() not in (1, 2) or q.shape[-1] != self._dim:
            raise ValueError(f"queries have shape {tuple(q.shape)} but the index has dim {self._dim}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        snap = self._snap
        scores, rows = topk_scores(q, snap.vectors[:snap.size], k, backend=backend)
        hit = rows >= 0
        ids = torch.full_like(rows, -1)
        ids[hit] = snap.ids[rows[hit]]
        if as_numpy:
            return scores.numpy(), ids.numpy()
        return scores, ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Writes the index atomically (temp file, fsync, rename) with a checksum."""
        snap = self._snap
        storage.save_tensors(path, {"vectors": snap.vectors[:snap.size], "ids": snap.ids[:snap.size]},
                             {"format": FORMAT, "format_version": FORMAT_VERSION,
                              "dim": str(self._dim), "dtype": self._dtype})

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, *, verify: bool = True) -> "DenseIndex":
        """Opens an index written by save. mmap=True maps the vectors instead of reading
        them into RAM; verify=False skips the checksum pass over the data."""
        try:
            tensors, meta = storage.load_tensors(path, mmap=mmap, verify=verify)
        except storage.FormatError as e:
            raise IndexFormatError(str(e)) from None
        if meta.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a pyrag index (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: unsupported index format version {meta.get('format_version')!r}")
        try:
            dim, dtype = int(meta["dim"]), meta["dtype"]
            vectors, ids = tensors["vectors"], tensors["ids"]
        except (KeyError, ValueError):
            raise IndexFormatError(f"{path}: index metadata or tensors are missing") from None
        if dtype not in _DTYPES or vectors.dtype != _DTYPES[dtype] or vectors.dim() != 2 \
                or vectors.shape[1] != dim or ids.shape != (vectors.shape[0],):
            raise IndexFormatError(f"{path}: index tensors do not match its metadata")
        index = cls(dim, dtype)
        index._snap = _Snapshot(vectors, ids, vectors.shape[0])
        return index

    # ------------------------------------------------------------------ checks
    def _check_vectors(self, vectors, what: str) -> torch.Tensor:
        x = _as_tensor(vectors, what)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self._dim:
            raise ValueError(f"{what} have shape {tuple(x.shape)} but the index has dim {self._dim}")
        if x.dtype != _DTYPES[self._dtype]:
            raise TypeError(f"{what} are {x.dtype} but the index stores {self._dtype}; convert them explicitly")
        check_finite(x, what)
        return x

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
