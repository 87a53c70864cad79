"""CoalescingSearcher: serves many concurrent callers at batched speed by scanning their
queries together, one fused scan per batch, and handing each caller its own rows.

A scan of a large index is bound by reading the corpus, so one scan for 16 queries costs
about two scans for one (docs/serving.md). Each caller's queries are checked in its own
thread and queued; a worker thread takes what has queued, pins one snapshot of the index,
stacks the queries of each (snapshot, exact, device) group and searches them once with
the group's largest k. Results are sorted by score with ties to the smaller id, so the
first k columns of a larger k's result are exactly the k result.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from pyrag._inputs import as_tensor
from pyrag.index.contract import Index
from pyrag.ops._checks import check_finite, check_k

# A batch waits for more callers at most this fraction of the previous scan's time.
_WAIT_PER_SCAN = 0.25


class SearcherClosedError(ValueError):
    """The CoalescingSearcher is closed: it takes no more searches."""


class CoalescingSearcher:
    """Answers concurrent `search` calls on an index with one fused scan per batch.

    Concurrent callers that each search a few queries (a RAG service answering one user
    query per thread) make an index scan its corpus once per call. This searcher queues
    their queries and scans them together: 16 callers cost about two scans, not 16.
    Results are exactly a lone search's (scores, ids, order, ties), for every index
    dtype, exact=True included.

    It implements the index contract (pyrag.Index) by delegation, so it can stand where
    an index is searched (a Retriever). Mutate the index itself (`searcher.index`):
    each batch searches one snapshot of it, so a search sees the index before or after
    a concurrent add or remove, never a mix. `snapshot()` pins one state: searches on it
    are coalesced too, and are answered by exactly that state.

    When a batch starts: once the previous batch is answered, a worker thread waits
    until the callers that queued during its scan and the callers it just answered
    (they tend to come straight back with their next query) are all queued, but never
    longer than `window_ms`, nor than a quarter of the previous scan's time, after the
    later of that answer and the first waiting query's arrival; then it scans whatever
    has queued. So a lone caller is not held back (its previous batch held one caller),
    and a query waits at most for the scan in progress when it arrived, plus that
    bounded wait, plus the scans of queries queued before it past max_batch rows.

    Args:
        index: any index of the contract: a DenseIndex of any dtype, a VersionedIndex.
        window_ms: the longest a query waits for others to join its batch (0: never
            wait; scan whatever queued while the previous scan ran). 5 ms is a few
            percent of a 1M x 384 float32 scan on 2 cores, and lets callers that come
            straight back join the batch (docs/serving.md).
        max_batch: the most query rows one scan takes; later callers wait for the next
            scan (a caller with more rows than this is scanned alone).

    Callers with different k share a scan (the largest k, cut per caller); callers with
    different `exact` do not. Close the searcher (`close()`, or a `with` block) to stop
    its worker thread: queries already queued are answered, later ones raise
    SearcherClosedError. A searcher garbage-collected or still open at interpreter exit
    is closed the same way.
    """

    def __init__(self, index: Index, *, window_ms: float = 5.0, max_batch: int = 64):
        if not isinstance(index, Index):
            raise TypeError(
                f"index must implement pyrag's index contract (pyrag.Index: a DenseIndex or VersionedIndex), "
                f"got {type(index).__name__}"
            )
        if isinstance(window_ms, bool) or not isinstance(window_ms, (int, float)) or not 0 <= window_ms <= 10_000:
            raise ValueError(f"window_ms must be a number of milliseconds in [0, 10000], got {window_ms!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self._index = index
        self._window_ms = float(window_ms)
        self._max_batch = max_batch
        # The worker thread holds the batcher, never the searcher, so that a searcher
        # nobody holds is collected and its finalizer stops the worker.
        self._batcher = _Batcher(index, self._window_ms / 1000.0, max_batch)
        self._finalizer = weakref.finalize(self, self._batcher.close)

    @property
    def index(self) -> Index:
        """The index searched (add to and remove from it directly)."""
        return self._index

    @property
    def window_ms(self) -> float:
        return self._window_ms

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def dtype(self) -> str:
        return self._index.dtype

    @property
    def version(self) -> int:
        """The index's version now; a snapshot's `version` names the state that answers it."""
        return self._index.version

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"CoalescingSearcher({self._index!r}, window_ms={self._window_ms:g}, max_batch={self._max_batch}, {state})"
        )

    def search(self, queries: Any, k: int, *, exact: bool = False) -> tuple[Any, Any]:
        """The k best ids for each query, exactly as the index's own search returns
        them (scores [B, k] float32, ids [B, k] int64; [k] for one [dim] query; numpy in,
        numpy out), from a scan shared with concurrent callers. A bad query raises here,
        in its caller's thread, and never reaches the others' scan."""
        return self.submit(queries, k, exact=exact).result()

    def submit(self, queries: Any, k: int, *, exact: bool = False) -> Future[tuple[Any, Any]]:
        """search without blocking: a concurrent.futures.Future of its result (in an
        asyncio server, `await asyncio.wrap_future(searcher.submit(q, k))`)."""
        return self._batcher.submit(_check_request(queries, k, exact, self._index.dim, None))

    def get(self, ids: Any) -> torch.Tensor:
        return self._index.get(ids)

    def snapshot(self) -> SearcherSnapshot:
        """A read-only view of the index as it is now whose searches are still
        coalesced: its search and get agree with each other, and its `version` names the
        state that answers them."""
        return SearcherSnapshot(self, self._batcher.pin())

    def save(self, path: Any) -> None:
        """Saves the index (the index's own save)."""
        self._index.save(path)

    def stats(self) -> dict[str, float]:
        """Counters since creation: "queries" (query rows taken into batches), "scans"
        (fused scans), "fallbacks" (fused scans that failed and were redone caller by
        caller), "scan_seconds" (time spent in fused scans). queries / scans is the mean
        batch; scan_seconds / scans the mean scan."""
        return self._batcher.stats()

    @property
    def closed(self) -> bool:
        return self._batcher.closed

    def close(self) -> None:
        """Stops taking searches, answers those already queued, and waits for the worker
        thread to end. Idempotent."""
        self._finalizer()

    def __enter__(self) -> CoalescingSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SearcherSnapshot:
    """One state of a CoalescingSearcher's index (its snapshot()), searched through the
    searcher: implements the index contract."""

    def __init__(self, searcher: CoalescingSearcher, snap: Index):
        self._searcher = searcher  # keeps the searcher, and so its worker, open
        self._snap = snap

    @property
    def dim(self) -> int:
        return self._snap.dim

    @property
    def dtype(self) -> str:
        return self._snap.dtype

    @property
    def version(self) -> int:
        return self._snap.version

    def __len__(self) -> int:
        return len(self._snap)

    def __repr__(self) -> str:
        return f"SearcherSnapshot(version={self.version}, index={self._snap!r})"

    def search(self, queries: Any, k: int, *, exact: bool = False) -> tuple[Any, Any]:
        """As CoalescingSearcher.search, answered by this state."""
        return self.submit(queries, k, exact=exact).result()

    def submit(self, queries: Any, k: int, *, exact: bool = False) -> Future[tuple[Any, Any]]:
        """As CoalescingSearcher.submit, answered by this state."""
        return self._searcher._batcher.submit(_check_request(queries, k, exact, self._snap.dim, self._snap))

    def get(self, ids: Any) -> torch.Tensor:
        return self._snap.get(ids)

    def snapshot(self) -> SearcherSnapshot:
        return self

    def save(self, path: Any) -> None:
        self._snap.save(path)


@dataclass
class _Request:
    queries: torch.Tensor  # float32 [b, dim], checked
    k: int
    exact: bool
    single: bool  # the caller passed one [dim] query
    as_numpy: bool
    snap: Optional[Index]  # None: the batch's snapshot answers
    queued_at: float = 0.0
    future: Future[tuple[Any, Any]] = field(default_factory=Future)


def _check_request(queries: Any, k: Any, exact: Any, dim: int, snap: Optional[Index]) -> _Request:
    """The caller's queries checked as DenseIndex.search checks them, so that a bad query
    fails its own caller before anything is stacked."""
    as_numpy = isinstance(queries, np.ndarray)
    q = as_tensor(queries, "queries")
    if q.dim() not in (1, 2) or q.shape[-1] != dim:
        raise ValueError(f"queries have shape {tuple(q.shape)} but the index has dim {dim}")
    check_k(k)
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    if q.dtype != torch.float32:
        raise TypeError(f"queries must be float32, got {q.dtype}; convert them explicitly")
    # A copy: the caller may reuse its buffer before the scan runs (submit returns at once).
    q = q.detach().clone()
    check_finite(q, "queries")
    single = q.dim() == 1
    return _Request(q.unsqueeze(0) if single else q, k, exact, single, as_numpy, snap)


class _Batcher:
    """The queue, and the worker thread that empties it one fused scan per group."""

    def __init__(self, index: Index, window_s: float, max_batch: int):
        self._index = index
        self._window_s = window_s
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._closed = False
        self._last_batch = 1  # callers in the previous batch
        self._expected = 1  # callers the next batch waits for (up to the window)
        self._answered_at: Optional[float] = None  # the batch's first answer (worker only)
        self._last_scan_s = float("inf")  # the previous fused scan's time (the worker's own)
        self._counts: dict[str, float] = {"queries": 0, "scans": 0, "fallbacks": 0, "scan_seconds": 0.0}
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="pyrag-coalescing-searcher", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, float]:
        with self._cond:
            return dict(self._counts)

    def pin(self) -> Index:
        """A snapshot of the index now. An index returns the same snapshot object while it
        has not changed, so callers pinning at about the same time share a scan."""
        return self._index.snapshot()

    def submit(self, request: _Request) -> Future[tuple[Any, Any]]:
        if os.getpid() != self._pid:
            raise SearcherClosedError(
                f"this CoalescingSearcher was created in process {self._pid}, and its worker thread did not survive "
                f"the fork into this one; create a CoalescingSearcher in this process"
            )
        with self._cond:
            if self._closed:
                raise SearcherClosedError("this CoalescingSearcher is closed")
            request.queued_at = time.monotonic()
            self._queue.append(request)
            self._queued_rows += request.queries.shape[0]
            if self._batch_ready() or len(self._queue) == 1:  # else the worker sleeps on
                self._cond.notify()
        return request.future

    def close(self) -> None:
        if os.getpid() != self._pid:  # a forked child: no worker here, and the lock may be stale
            self._closed = True
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:  # the collector may run anywhere
            self._thread.join()

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._answer(batch)
            except BaseException as e:  # a bug: never leave a caller waiting on a dead worker
                with self._cond:
                    self._closed = True
                    batch += self._queue
                    self._queue.clear()
                    self._queued_rows = 0
                for r in batch:
                    _fail(r, SearcherClosedError(f"the CoalescingSearcher's worker failed: {e!r}"))
                return

    def _next_batch(self) -> Optional[list[_Request]]:
        """The next requests to scan (oldest first, up to max_batch rows), or None once
        closed and answered."""
        with self._cond:
            free_at = time.monotonic()  # the previous batch has been answered
            # Those who queued before the previous batch's first answer, and that batch's
            # callers, who tend to come straight back with their next query: wait for all
            # of them. (Waiting only for as many as the previous batch held let two halves
            # of the callers take turns, each scanning while the other came back: 16
            # callers made batches of 10 and 6 instead of 16.)
            answered_at = self._answered_at if self._answered_at is not None else free_at
            self._answered_at = None
            earlier = sum(1 for r in self._queue if r.queued_at < answered_at)
            self._expected = earlier + self._last_batch
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            # Waiting longer than a fraction of a scan costs the waiting callers more than
            # a straggler saves by joining: it would wait one more scan at worst.
            wait = min(self._window_s, _WAIT_PER_SCAN * self._last_scan_s)
            deadline = max(self._queue[0].queued_at, free_at) + wait
            while not self._batch_ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Request] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].queries.shape[0] <= self._max_batch):
                r = self._queue.popleft()
                self._queued_rows -= r.queries.shape[0]
                batch.append(r)
                rows += r.queries.shape[0]
            self._last_batch = len(batch)
            self._counts["queries"] += rows
            return batch

    def _batch_ready(self) -> bool:
        """Whether to scan now rather than wait for more callers (under the lock)."""
        return self._closed or len(self._queue) >= self._expected or self._queued_rows >= self._max_batch

    def _answer(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        now: Optional[Index] = None
        if any(r.snap is None for r in live):
            try:
                now = self.pin()
            except Exception as e:  # the index cannot be read: every caller's error
                for r in live:
                    _fail(r, e)
                return
        groups: dict[tuple[int, bool, torch.device], list[_Request]] = {}
        snaps: dict[int, Index] = {}
        for r in live:
            snap = r.snap if r.snap is not None else now
            assert snap is not None
            snaps[id(snap)] = snap
            groups.setdefault((id(snap), r.exact, r.queries.device), []).append(r)
        for (snap_id, exact, _), members in groups.items():
            self._scan(snaps[snap_id], exact, members)

    def _scan(self, snap: Index, exact: bool, members: list[_Request]) -> None:
        """One fused scan for the group. If it fails, each caller is scanned alone, so
        that an error reaches only the caller whose query caused it."""
        k = max(r.k for r in members)
        queries = members[0].queries if len(members) == 1 else torch.cat([r.queries for r in members])
        start = time.perf_counter()
        try:
            scores, ids = snap.search(queries, k, exact=exact)
            error: Optional[Exception] = None
        except Exception as e:
            error = e
        took = time.perf_counter() - start
        if self._answered_at is None:
            self._answered_at = time.monotonic()  # (queued_at is monotonic too)
        if error is None:
            self._last_scan_s = took
        with self._cond:
            self._counts["scans"] += 1
            self._counts["scan_seconds"] += took
            if error is not None and len(members) > 1:
                self._counts["fallbacks"] += 1
        if error is None:
            row = 0
            for r in members:
                _deliver(r, scores, ids, row)
                row += r.queries.shape[0]
        elif len(members) == 1:
            _fail(members[0], error)
        else:
            for r in members:
                try:
                    scores, ids = snap.search(r.queries, r.k, exact=exact)
                except Exception as e_alone:
                    _fail(r, e_alone)
                else:
                    _deliver(r, scores, ids, 0)


def _deliver(r: _Request, scores: Any, ids: Any, row: int) -> None:
    """The caller's rows [row, row + b) and first k columns, shaped as a lone search's."""
    scores, ids = torch.as_tensor(scores), torch.as_tensor(ids)  # an index may answer in numpy
    b = r.queries.shape[0]
    s, i = scores[row : row + b, : r.k].clone(), ids[row : row + b, : r.k].clone()
    if r.single:
        s, i = s[0], i[0]
    r.future.set_result((s.numpy(), i.numpy()) if r.as_numpy else (s, i))


def _fail(r: _Request, e: BaseException) -> None:
    if not r.future.done():
        r.future.set_exception(e)
