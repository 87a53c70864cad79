"""The index contract: what a Retriever, an AsyncReindexer, a Trainer, a checkpoint or a
framework adapter may ask of an index. DenseIndex, VersionedIndex and its snapshots (and
ShardedIndex) implement it; callers use nothing else."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Index(Protocol):
    """An inner-product index of float32 vectors with int64 ids.

    - `dim`, `dtype` ("float32", "bfloat16" or "int8"), `len(index)`.
    - `version`: an integer that changes whenever the stored vectors change (a
      DenseIndex counts its mutations, a VersionedIndex its published refreshes).
    - `search(queries, k, *, exact=False) -> (scores [B, k] float32, ids [B, k] int64)`,
      sorted by score, ties to the smaller id, padded with (-inf, -1).
    - `get(ids) -> float32 [*ids.shape, dim]`: the vectors as the index scores them
      (bfloat16 widened, int8 dequantised), in O(len(ids) · dim); -1 gives zeros, an
      unknown id is a KeyError.
    - `snapshot()`: a read-only view whose search, get and version agree with each other
      while the index changes.
    - `save(path)` and the class's `load(path)`: the same dtype, ids, version and options.
    """

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    @property
    def version(self) -> int: ...

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int, *, exact: bool = False) -> tuple[Any, Any]: ...

    def get(self, ids: Any) -> torch.Tensor: ...

    def snapshot(self) -> Index: ...

    def save(self, path: Any) -> None: ...
