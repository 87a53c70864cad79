"""The float32 originals of a quantised (bfloat16 / int8) index, kept in a file rather
than in RAM: what certified-exact search rescores its few candidate rows from."""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from typing import BinaryIO, Optional

import numpy as np
import torch

# Rows copied per step when originals move between files: never the whole float32
# corpus in RAM at once.
COPY_ROWS = 1 << 16


class Originals:
    """float32 rows [n, dim] in a file.

    A fresh index writes them to an unlinked temporary file (deleted with the index); a
    loaded one keeps them where they are in the index file. Exact search reads the rows
    it rescores with pread (csrc/cpu/topk_scores.h says why not through a mapping);
    view() maps them for everything else (save, remove, other backends). Rows are
    appended with pwrite; older snapshots keep their mapping when the file grows.
    """

    def __init__(self, dim: int, directory: Optional[str] = None):
        self.dim = dim
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory)
        # Closing the descriptor leaves existing mappings valid: snapshots may outlive us.
        weakref.finalize(self, self._file.close)
        self.offset = 0
        self._directory = directory
        self._writable = True
        self._capacity = 0
        self._rows: Optional[torch.Tensor] = None  # [capacity, dim] view of the mapping

    @classmethod
    def in_file(cls, file: BinaryIO, offset: int, rows: torch.Tensor) -> Originals:
        """Originals at byte `offset` of an open index file, already mapped as `rows`."""
        self = cls.__new__(cls)
        self.dim = rows.shape[1]
        self._file = file  # this inode, even if the path is saved over later
        weakref.finalize(self, self._file.close)
        self.offset = offset
        self._directory = None
        self._writable = False
        self._capacity = rows.shape[0]
        self._rows = rows
        return self

    @property
    def fd(self) -> int:
        return self._file.fileno()

    def view(self, n: int) -> torch.Tensor:
        """Rows [0, n) as a [n, dim] float32 tensor over the mapping."""
        if n == 0 or self._rows is None:
            return torch.empty((0, self.dim), dtype=torch.float32)
        return self._rows[:n]

    def write(self, start: int, rows: torch.Tensor) -> Originals:
        """Writes rows at [start, start + len); returns the object to keep in the new
        snapshot (self, or a copy in a new file if this one is a loaded index's)."""
        target = self
        if not self._writable:
            target = Originals(self.dim, self._directory)
            old = self.view(start)
            for s in range(0, start, COPY_ROWS):
                target._write(s, old[s : s + COPY_ROWS])
        target._write(start, rows.contiguous())
        return target

    def reserve(self, rows: int) -> None:
        """Sizes the file for `rows` rows at once (no regrowth while they are written)."""
        if self._writable and rows > self._capacity:
            self._grow(rows)

    def subset(self, rows: torch.Tensor) -> Originals:
        """A new file holding rows `rows` (int64, in the order given) of this one."""
        out = Originals(self.dim, self._directory)
        src = self.view(int(rows.max()) + 1 if rows.numel() else 0)
        for s in range(0, rows.numel(), COPY_ROWS):
            out._write(s, src[rows[s : s + COPY_ROWS]])
        return out

    def _grow(self, cap: int) -> None:
        self._file.truncate(cap * self.dim * 4)
        mm = mmap.mmap(self._file.fileno(), cap * self.dim * 4, access=mmap.ACCESS_WRITE)
        self._rows = torch.from_numpy(np.frombuffer(mm, dtype=np.float32).reshape(cap, self.dim))
        self._capacity = cap

    def _write(self, start: int, rows: torch.Tensor) -> None:
        need = start + rows.shape[0]
        if need > self._capacity:
            self._grow(max(need, int(self._capacity * 1.5), 1024))
        buf = rows.contiguous().numpy().data.cast("B")
        offset = start * self.dim * 4
        while len(buf):
            written = os.pwrite(self._file.fileno(), buf, offset)
            buf, offset = buf[written:], offset + written
