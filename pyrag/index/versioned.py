"""VersionedIndex: an index that is replaced whole rather than mutated, for
asynchronous re-indexing. Readers take the current version with one attribute read
(atomic in Python); writers publish a new one with `swap`."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from pyrag.index.dense import DenseIndex, IndexFormatError

_VERSION_KEY = "versioned.version"
_STEP_KEY = "versioned.step"


@dataclass(frozen=True)
class IndexVersion:
    """One published index: immutable, so a reader holding it sees one whole index. It
    implements the index contract; pin it (VersionedIndex.snapshot()) when several
    reads must agree."""

    index: DenseIndex  # a read-only snapshot
    version: int
    step: int  # the training step whose encoder weights produced the embeddings

    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def dtype(self) -> str:
        return self.index.dtype

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: Any, k: int, *, exact: bool = False, backend: str = "auto") -> tuple[Any, Any]:
        return self.index.search(queries, k, exact=exact, backend=backend)

    def get(self, ids: Any) -> torch.Tensor:
        return self.index.get(ids)

    def snapshot(self) -> IndexVersion:
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the index with its version and step (VersionedIndex.load reads them)."""
        self.index.save(path, metadata={_VERSION_KEY: str(self.version), _STEP_KEY: str(self.step)})


class VersionedIndex:
    """The published version of an index, swapped atomically.

    `search`, `get` and `version` read the version current at the call; for several reads
    that must agree (search, then get), take `snapshot()` once and read from it.
    """

    def __init__(self, index: DenseIndex, *, version: int = 0, step: int = 0):
        self._current = _publish(index, version, step)
        self._write_lock = threading.Lock()

    def snapshot(self) -> IndexVersion:
        return self._current

    def search(self, queries: Any, k: int, *, exact: bool = False, backend: str = "auto") -> tuple[Any, Any]:
        return self._current.search(queries, k, exact=exact, backend=backend)

    def get(self, ids: Any) -> torch.Tensor:
        return self._current.get(ids)

    @property
    def version(self) -> int:
        return self._current.version

    @property
    def step(self) -> int:
        return self._current.step

    @property
    def dim(self) -> int:
        return self._current.dim

    @property
    def dtype(self) -> str:
        return self._current.dtype

    def __len__(self) -> int:
        return len(self._current)

    def __repr__(self) -> str:
        cur = self._current
        return f"VersionedIndex(version={cur.version}, step={cur.step}, index={cur.index!r})"

    def swap(self, index: DenseIndex, *, step: int) -> int:
        """Publishes `index` as the next version and returns that version number."""
        with self._write_lock:
            version = self._current.version + 1
            self._current = _publish(index, version, step)
        return version

    def restore(self, index: DenseIndex, *, version: int, step: int) -> None:
        """Publishes `index` under a given version (resuming from a checkpoint)."""
        with self._write_lock:
            self._current = _publish(index, version, step)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the current version (DenseIndex.save, plus its version and step)."""
        self._current.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = False) -> VersionedIndex:
        """A VersionedIndex serving the index saved at `path`, under its saved version."""
        index = DenseIndex.load(path, mmap=mmap)
        try:
            version, step = int(index.metadata.get(_VERSION_KEY, "0")), int(index.metadata.get(_STEP_KEY, "0"))
        except ValueError:
            raise IndexFormatError(f"{os.fspath(path)}: bad version metadata") from None
        return cls(index, version=version, step=step)


def _publish(index: DenseIndex, version: int, step: int) -> IndexVersion:
    if not isinstance(index, DenseIndex):
        raise TypeError(f"index must be a pyrag.DenseIndex, got {type(index).__name__}")
    return IndexVersion(index.snapshot(), int(version), int(step))
