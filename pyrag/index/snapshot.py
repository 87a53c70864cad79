"""The immutable state of a DenseIndex: its packed corpus, ids, row scales, the exact-search
bounds and the id -> row map. A mutation builds a new Snapshot and publishes it with one
assignment, so a reader holding one sees a consistent index (pyrag/index/dense.py)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from pyrag.index.originals import Originals
from pyrag.index.packed import PackedCorpus


class Snapshot(NamedTuple):
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


def id_map(ids: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(sorted ids, their rows), or (None, None) when the ids increase with the row."""
    if ids.numel() < 2 or bool((ids[1:] > ids[:-1]).all()):
        return None, None
    sorted_ids, rows = torch.sort(ids, stable=True)
    return sorted_ids, rows


def merge_id_map(snap: Snapshot, new_ids: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
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
