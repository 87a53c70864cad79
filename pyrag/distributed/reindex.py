"""ShardedReindexer: asynchronous re-indexing of a ShardedIndex, with every rank switching
to a new version at the same training step.

Each rank runs an AsyncReindexer over its own passages (its shard): the re-encoding runs
in the background, on the rank's own schedule of chunks. What must agree across ranks is
decided at step boundaries, in `step()`, with one small exchange of every rank's status:

- A refresh starts only when it is due and no rank is still busy with the previous one,
  on every rank at once: the ranks then run the same refreshes, in the same order, and
  the refresh started at step S is the one whose embeddings come from step S's weights
  on every rank. A due refresh while a rank is busy is skipped (policy "skip") or started
  at the first step every rank is idle, with that step's weights ("queue").
- A finished refresh goes into service when every rank has finished it: each rank
  reports the start step of its newest finished refresh, and when all report the same
  one, every rank serves its own new shard from this step on. A step never waits for a
  slow rank: until it finishes, every rank keeps serving the previous version.
- A search is collective and happens between two steps, so every rank searches the same
  version (the version travels in the search's status exchange, and a mismatch raises).
- A refresh that fails on one rank raises ReindexError on every rank at the next step;
  that refresh never goes into service anywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from pyrag._inputs import as_ids
from pyrag.distributed import manifest
from pyrag.distributed.collective import Comm
from pyrag.distributed.sharded import ShardedIndex
from pyrag.index import DenseIndex
from pyrag.reindex import AsyncReindexer, ReindexError, Schedule
from pyrag.reindex.reindexer import POLICIES, ReindexStats

log = logging.getLogger("pyrag.distributed")


class ShardedReindexer:
    """Keeps a ShardedIndex in step with a training passage encoder, each rank
    re-encoding its own passages in the background (see the module's docstring).

    Construction, step(), restore() and save_index() are collective.

    Args:
        encoder: the live passage encoder (the same weights on every rank, e.g. under DDP).
        passages: this rank's passages (at least one).
        group: the process group (default: the default group).
        encode: `encode(encoder, chunk) -> Tensor [n, dim]`; default `encoder(chunk)`.
        ids: this rank's passage ids; default: every rank's passages numbered in rank
            order (rank 0's first). Ids must be unique across ranks (checked).
        index: this rank's shard at version 0 (a DenseIndex over the same ids); None
            encodes the passages now, with the current weights, into a DenseIndex of `dtype`.
        dtype, schedule, policy, chunk_size, num_threads, nice, device, progress: as
            AsyncReindexer (schedule and policy are applied across ranks, as above).
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        passages: Sequence[Any],
        *,
        group: Any = None,
        encode: Optional[Callable[[torch.nn.Module, Any], torch.Tensor]] = None,
        ids: Any = None,
        index: Optional[DenseIndex] = None,
        dtype: str = "float32",
        schedule: str | Schedule = "0-:1000",
        policy: str = "skip",
        chunk_size: int = 256,
        num_threads: int = 1,
        nice: int = 5,
        device: Any = None,
        progress: bool = False,
    ) -> None:
        comm = Comm(group)
        n, error = 0, None
        try:
            self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
            if policy not in POLICIES:
                raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
            n = len(passages)
        except Exception as e:
            error = e
        table = comm.exchange("refresh", [n], error)
        self.policy = policy
        start = int(table[: comm.rank, 0].sum())
        local: Optional[AsyncReindexer] = None
        shard: Optional[DenseIndex] = None
        error = None
        try:
            self._ids = torch.arange(start, start + n, dtype=torch.int64) if ids is None else as_ids(ids).clone()
            # The local reindexer never refreshes on its own: step() starts its refreshes.
            local = AsyncReindexer(
                encoder, passages, encode=encode, ids=self._ids, index=index, dtype=dtype, schedule="none",
                policy="skip", chunk_size=chunk_size, num_threads=num_threads, nice=nice, device=device,
                progress=progress,
            )  # fmt: skip
            shard = local.index.snapshot().index
        except Exception as e:
            error = e
        sharded = ShardedIndex.__new__(ShardedIndex)
        try:
            sharded._start(comm, shard, error, check_ids=True)
        except BaseException:
            if local is not None:
                local.close()
            raise
        assert local is not None
        sharded._kept_by = "ShardedReindexer"
        self.index = sharded
        self.stats = ReindexStats()
        self._local = local
        self._comm = comm
        self._served = -1  # start step of the refresh in service; -1: the first index
        self._owed = False  # policy "queue": a refresh fell due while a rank was busy
        self._failure: Optional[ReindexError] = None  # seen by wait(), raised by step()

    # ----------------------------------------------------------------- trainer side
    def step(self, step: int) -> bool:
        """Collective; call once per training step on every rank, with the same step.

        Puts the newest refresh that every rank has finished into service (on every
        rank, in this call), re-raises a background failure of any rank as ReindexError
        on every rank, and starts a refresh on every rank if one is due (or owed) and no
        rank is busy. Returns True when a refresh was started."""
        comm = self._comm
        with comm.lock:
            idle, key, current, error = True, -1, None, None
            try:
                if isinstance(step, bool) or not isinstance(step, int):
                    raise TypeError(f"step must be an int, got {type(step).__name__}")
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                idle = self._local.wait(timeout=0)  # busy first: a refresh finishing now shows next step
                current = self._local.index.snapshot()
                key = current.step if current.version > 0 else -1
            except Exception as e:
                error = e
            try:
                table = comm.exchange("refresh", [step if error is None else 0, int(not idle), key], error)
            except ReindexError:
                self.stats.failed += 1
                raise
            if bool((table[:, 0] != table[0, 0]).any()):
                raise ValueError(f"the ranks are at different steps: {table[:, 0].tolist()} (by rank)")
            keys = table[:, 2]
            if bool((keys == keys[0]).all()) and int(keys[0]) != self._served:
                assert current is not None
                self.index._install(current.index, step=current.step)
                self._served = int(keys[0])
                self.stats.completed += 1
                log.info("refresh from step %d in service on every rank: version %d", current.step, self.version)
            if not (self.schedule.due(step) or self._owed):
                return False
            if bool(table[:, 1].any()):
                if self.policy == "skip":
                    self.stats.skipped += 1
                    log.info("refresh due at step %d skipped: a rank is still busy", step)
                elif not self._owed:
                    self._owed = True
                    self.stats.queued += 1
                    log.info("refresh due at step %d queued: a rank is still busy", step)
                return False
            error = None
            try:
                self._local.refresh(step)
            except Exception as e:
                error = e
            self._owed = False
            comm.exchange("refresh", [], error)
            self.stats.started += 1
            return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Local: blocks until this rank's refresh is done (True) or timeout (False). The
        next step() serves it once every rank is done, or raises its failure on every rank."""
        try:
            return self._local.wait(timeout)
        except ReindexError as e:  # kept for step(), which raises it on every rank
            self._failure = e
            return True

    @property
    def busy(self) -> bool:
        """This rank's refresh is running, or one is owed (policy "queue")."""
        return self._local.busy or self._owed

    @property
    def version(self) -> int:
        return self.index.version

    def staleness(self, step: int) -> int:
        """Steps between `step` and the snapshot that produced the index in service."""
        return step - self.index.step

    # ----------------------------------------------------------------- checkpoints
    def save_index(self, directory: str | os.PathLike[str], prefix: str, then: Callable[[str], None]) -> str:
        """Collective: saves the index in service (ShardedIndex.save) into a new folder
        `prefix` + a fresh token under `directory`, then calls `then(name)` on rank 0
        (what names the folder, e.g. a trainer state written last), and returns the
        folder's name once every rank knows both succeeded."""
        comm = self._comm
        with comm.lock:
            table = comm.exchange("checkpoint", [manifest.new_token()])
            name = f"{prefix}{int(table[0, 0]):016x}"
            self.index.snapshot().save(os.path.join(os.fspath(directory), name))
            error = None
            if comm.rank == 0:
                try:
                    then(name)
                except Exception as e:
                    error = e
            comm.exchange("checkpoint", [], error)
        return name

    def restore(self, index: ShardedIndex) -> None:
        """Collective: serves a loaded ShardedIndex (ShardedIndex.load of this reindexer's
        save, on the same ranks) under its saved version and step, resuming from a
        checkpoint. Every rank must be idle, and each rank's shard must hold exactly its
        passages' ids."""
        comm = self._comm
        with comm.lock:
            error, shard = None, None
            try:
                if not isinstance(index, ShardedIndex):
                    raise TypeError(f"index must be a ShardedIndex, got {type(index).__name__}")
                if self.busy:
                    raise RuntimeError("cannot restore an index while a refresh is running or queued")
                shard = index.shard
                if len(shard) != self._ids.numel() or not bool(shard.contains(self._ids).all()):
                    raise ValueError(
                        f"the loaded shard of rank {comm.rank} holds other ids than this rank's passages; "
                        f"load the checkpoint on as many ranks, with the same passages on each"
                    )
            except Exception as e:
                error = e
            comm.exchange("refresh", [], error)
            assert shard is not None
            self._local.restore(shard, version=0, step=index.step)  # checked above: cannot fail
            self.index._install(shard, step=index.step, version=index.version)
            self._served = -1
            self._owed = False

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stops this rank's background worker (local; idempotent)."""
        self._local.close()

    def __enter__(self) -> ShardedReindexer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._local.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return (
            f"ShardedReindexer(version={self.version}, rank={self.index.rank}, schedule={self.schedule.spec!r}, "
            f"policy={self.policy!r}, busy={self.busy})"
        )
