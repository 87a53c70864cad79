"""AsyncReindexer: keep an index in step with a passage encoder that trains.

While the passage encoder trains, the stored passage embeddings go stale. AsyncReindexer
refreshes them in the background on a schedule (Atlas's "0-100:10,100-:500" syntax):

1. at a due step, snapshot the encoder's weights (a state_dict copy, on the trainer's thread);
2. on a background thread, load the snapshot into a private copy of the encoder and
   re-encode the corpus in chunks (tqdm progress bar; on a GPU, on its own CUDA stream);
3. add the embeddings, chunk by chunk as they are encoded, to a new index with the dtype
   and options of the one in service (space for every row reserved first, so the refresh
   holds the new index and one chunk, never a second float32 copy of the corpus); every
   chunk is checked (shape, dimension, finiteness) before it is added;
4. publish it in a VersionedIndex with one reference assignment: atomic, so every search
   sees the old index or the new one, whole, and returns the version it searched.

Training never waits. A refresh that falls due while another is running is skipped or
queued (the `policy`), and logged. An exception in the background is re-raised on the
trainer's thread at its next call into the reindexer, and the index in service stays the
last good one. `close()` stops the worker (abandoning a refresh in progress) and joins it;
a finalizer (also run at exit) closes a reindexer the user forgot, so nothing is left running at exit.

CPU threads. The worker runs the encoder with its own intra-op thread count, `num_threads`
(default 1), and at a lowered priority (`nice`, default 5). On a 2-core machine a trainer
using both cores and a background encoder that also wanted both would oversubscribe the
cores and stretch every step; with 1 background thread the trainer keeps its OpenMP team,
and the positive niceness makes the scheduler favour the trainer when they contend.
PyTorch's OpenMP thread count is per thread (each thread has its own OpenMP ICV), which is
what makes a per-worker setting possible; see `_pin_worker_threads`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch

from pyrag._inputs import as_ids
from pyrag.index import DenseIndex, VersionedIndex
from pyrag.reindex.schedule import Schedule

log = logging.getLogger("pyrag.reindex")

POLICIES = ("skip", "queue")


# --------------------------------------------------------------------------- reindexer
class ReindexError(RuntimeError):
    """A background refresh failed; `__cause__` is the original exception."""


@dataclass
class ReindexStats:
    started: int = 0  # refreshes begun by the worker
    completed: int = 0  # refreshes swapped in
    failed: int = 0
    skipped: int = 0  # due while busy, dropped (policy="skip")
    queued: int = 0  # due while busy, queued (policy="queue")
    superseded: int = 0  # queued snapshots replaced by a newer one before they ran
    last_duration_s: float = 0.0
    total_duration_s: float = 0.0


class _Job(NamedTuple):
    step: int
    state: dict[str, torch.Tensor]  # snapshot of the encoder's state_dict
    ready: Optional[torch.cuda.Event]  # recorded after the snapshot copy (CUDA encoders)


class AsyncReindexer:
    """Re-encodes a corpus with snapshots of a training passage encoder, in the background.

    Args:
        encoder: the live passage encoder (an nn.Module). It is deep-copied once; the copy
            runs on the worker, loaded with a snapshot of `encoder`'s weights per refresh.
        passages: the corpus, any sequence the encode function accepts slices of.
        encode: `encode(encoder, chunk) -> Tensor [n, dim]`; default `encoder(chunk)`.
        ids: int64 ids of the passages in the index (default 0..N-1).
        index: the index in service at version 0 (a DenseIndex over the same ids); None
            encodes the corpus now, synchronously, with the current weights, into a
            DenseIndex of `dtype`. Refreshes build indexes of its dtype and options.
        dtype: the storage dtype when `index` is None ("float32", "bfloat16", "int8").
        schedule: a Schedule or its string, e.g. "0-100:10,100-:500".
        policy: "skip" drops a refresh that falls due while one is running; "queue" runs
            it after the current one. At most one refresh waits: a newer snapshot
            replaces a queued older one (counted as superseded).
        chunk_size: passages per encoder call.
        num_threads: torch intra-op threads of the worker (CPU encoding).
        nice: niceness added to the worker thread (Linux; 0 leaves it alone).
        device: where the worker's copy of the encoder runs (default: the encoder's
            device). A CUDA device gets its own stream.
        progress: show a tqdm bar per refresh.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        passages: Sequence[Any],
        *,
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
        progress: bool = True,
    ) -> None:
        if not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        if not isinstance(nice, int) or nice < 0:
            raise ValueError(f"nice must be an int >= 0 (a lower priority), got {nice!r}")
        if len(passages) == 0:
            raise ValueError("passages is empty")
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        self.policy = policy
        self.chunk_size = chunk_size
        self.num_threads = num_threads
        self.nice = nice
        self.progress = progress
        self._encoder = encoder
        self._passages = passages
        self._encode = encode if encode is not None else (lambda enc, chunk: enc(chunk))
        self._ids = torch.arange(len(passages), dtype=torch.int64) if ids is None else as_ids(ids).clone()
        if self._ids.numel() != len(passages):
            raise ValueError(f"got {self._ids.numel()} ids for {len(passages)} passages")
        self._device = torch.device(device) if device is not None else _module_device(encoder)
        self._shadow = copy.deepcopy(encoder).to(self._device).eval()
        self._shadow.requires_grad_(False)
        # On a GPU, the worker encodes on a stream of its own, so its kernels interleave
        # with the trainer's instead of queueing behind them on the default stream.
        self._stream = torch.cuda.Stream(self._device) if self._device.type == "cuda" else None
        self.stats = ReindexStats()

        if index is None:
            if self._stream is not None:
                self._stream.wait_stream(torch.cuda.current_stream(self._device))
            index = self._build_index(self._shadow, desc="index v0", stop=None, template=None, dtype=dtype)
            assert index is not None
        else:
            if not isinstance(index, DenseIndex):
                raise TypeError(f"index must be a pyrag.DenseIndex, got {type(index).__name__}")
            if len(index) != len(passages):
                raise ValueError(f"index has {len(index)} vectors but there are {len(passages)} passages")
        self.index = VersionedIndex(index, version=0, step=0)

        # Worker state, guarded by _cond. The worker thread holds no reference to self
        # (only to _state), so a forgotten reindexer can still be collected and closed.
        self._state = _WorkerState()
        self._worker = threading.Thread(
            target=_worker_main, name="pyrag-reindex", daemon=True, args=(weakref.ref(self), self._state)
        )
        main_threads = torch.get_num_threads()  # initialises this thread's OpenMP setting first
        self._worker.start()
        self._state.pinned.wait()
        # The worker's torch.set_num_threads also set torch's process default, which new
        # threads copy; restore it (this thread's own setting is unchanged).
        torch.set_num_threads(main_threads)
        # Runs at close(), when the reindexer is collected, or at interpreter exit
        # (before daemon threads are killed), whichever comes first.
        self._finalizer = weakref.finalize(self, _shutdown, self._state, self._worker)

    # ----------------------------------------------------------------- trainer side
    def step(self, step: int) -> bool:
        """Call once per training step. Re-raises a background failure; starts (or queues)
        a refresh if `step` is due. Returns True when a refresh was started or queued."""
        self._raise_pending()
        if self.schedule.due(step):
            return self.refresh(step)
        return False

    def refresh(self, step: int) -> bool:
        """Snapshots the encoder now and refreshes in the background, subject to `policy`.
        Returns True when the refresh was started or queued, False when skipped."""
        self._raise_pending()
        self._check_open()
        st = self._state
        with st.cond:
            busy = st.running is not None or st.pending is not None
            if busy and self.policy == "skip":
                self.stats.skipped += 1
                log.info("re-index due at step %d skipped: refresh from step %s still running", step, st.running)
                return False
        job = _Job(step, self._snapshot_weights(), self._record_event())
        with st.cond:
            if st.running is not None or st.pending is not None:
                if st.pending is not None:
                    self.stats.superseded += 1
                    log.info("re-index snapshot of step %d replaced by step %d in the queue", st.pending.step, step)
                self.stats.queued += 1
                log.info("re-index due at step %d queued behind the refresh from step %s", step, st.running)
            st.pending = job
            st.cond.notify_all()
        return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until no refresh is running or queued (True), or timeout (False).
        Re-raises a background failure."""
        st = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        with st.cond:
            while (st.running is not None or st.pending is not None) and st.error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                st.cond.wait(left)
            idle = st.running is None and st.pending is None
        self._raise_pending()
        return idle

    def restore(self, index: DenseIndex, *, version: int, step: int) -> None:
        """Puts a saved index back in service under its saved version and snapshot step
        (resuming from a checkpoint). The reindexer must be idle."""
        self._raise_pending()
        if self.busy:
            raise RuntimeError("cannot restore an index while a refresh is running or queued")
        if len(index) != len(self._passages):
            raise ValueError(f"index has {len(index)} vectors but there are {len(self._passages)} passages")
        self.index.restore(index, version=version, step=step)

    @property
    def busy(self) -> bool:
        """A refresh is running or queued."""
        st = self._state
        return st.running is not None or st.pending is not None

    @property
    def version(self) -> int:
        return self.index.version

    def staleness(self, step: int) -> int:
        """Steps between `step` and the snapshot that produced the index in service."""
        return step - self.index.step

    def close(self) -> None:
        """Stops the worker: a queued refresh is dropped, a running one abandoned at its
        next chunk, and the thread joined. Idempotent. Re-raises a failure not yet seen."""
        self._finalizer()
        self._raise_pending()

    def __enter__(self) -> AsyncReindexer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # do not mask the exception already on its way out
            self._finalizer()
            if self._state.error is not None:
                log.error(
                    "background re-index failure while exiting on %s: %r", exc_type.__name__, self._state.error[1]
                )

    def __repr__(self) -> str:
        return (
            f"AsyncReindexer(version={self.version}, schedule={self.schedule.spec!r}, "
            f"policy={self.policy!r}, busy={self.busy})"
        )

    # ----------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._state.closed:
            raise RuntimeError("AsyncReindexer is closed")

    def _raise_pending(self) -> None:
        st = self._state
        with st.cond:
            error, st.error = st.error, None
        if error is not None:
            step, exc = error
            raise ReindexError(
                f"background re-index from the step {step} snapshot failed "
                f"({type(exc).__name__}: {exc}); version {self.version} stays "
                f"in service"
            ) from exc

    def _snapshot_weights(self) -> dict:
        # A copy, not references: the optimiser updates the live tensors in place.
        with torch.no_grad():
            return {k: v.detach().clone() for k, v in self._encoder.state_dict().items()}

    def _record_event(self) -> Optional[torch.cuda.Event]:
        if self._stream is None:
            return None
        event = torch.cuda.Event()
        event.record()  # the worker's stream waits for the snapshot copies to finish
        return event

    def _build_index(
        self,
        encoder: torch.nn.Module,
        *,
        desc: str,
        stop: Optional[threading.Event],
        template: Optional[DenseIndex],
        dtype: str = "float32",
    ) -> Optional[DenseIndex]:
        """Encodes every passage with `encoder` (on the reindexer's CUDA stream when it
        has one) into a new index like `template` (or a DenseIndex of `dtype`), chunk by
        chunk; None if `stop` was set meanwhile. A chunk of the wrong shape, dimension or
        with NaN/Inf is a ValueError, and nothing is published."""
        from tqdm.auto import tqdm

        n = len(self._passages)
        index: Optional[DenseIndex] = None
        with (
            tqdm(total=n, desc=desc, unit="passage", disable=not self.progress, leave=False) as bar,
            torch.no_grad(),
            _on_stream(self._stream),
        ):
            for start in range(0, n, self.chunk_size):
                if stop is not None and stop.is_set():
                    return None
                chunk = self._passages[start : start + self.chunk_size]
                emb = self._encode(encoder, chunk)
                if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != len(chunk):
                    got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                    raise ValueError(f"encode returned {got} for {len(chunk)} passages; expected [{len(chunk)}, dim]")
                if index is None:
                    if template is not None and emb.shape[1] != template.dim:
                        raise ValueError(
                            f"encode returned vectors of dim {emb.shape[1]} but the index in service "
                            f"has dim {template.dim}"
                        )
                    index = template.empty_like() if template is not None else DenseIndex(int(emb.shape[1]), dtype)
                    index.reserve(n)
                index.add(emb.detach().float().cpu(), self._ids[start : start + len(chunk)])
                bar.update(len(chunk))
        assert index is not None
        return index

    def _run(self, job: _Job, stop: threading.Event) -> None:
        """One refresh, on the worker thread."""
        if self._stream is not None:
            assert job.ready is not None
            self._stream.wait_event(job.ready)
            with torch.cuda.stream(self._stream):
                self._shadow.load_state_dict(job.state)
            # The snapshot tensors were allocated on the trainer's stream: finish reading
            # them before they are freed and their memory reused there.
            self._stream.synchronize()
        else:
            self._shadow.load_state_dict(job.state)
        index = self._build_index(
            self._shadow, desc=f"re-index (step {job.step})", stop=stop, template=self.index.snapshot().index
        )
        if index is None:
            log.info("re-index from step %d abandoned: closing", job.step)
            return
        version = self.index.swap(index, step=job.step)
        log.info("re-index from step %d done: version %d in service", job.step, version)


def _on_stream(stream: Optional[torch.cuda.Stream]) -> contextlib.AbstractContextManager[Any]:
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


class _WorkerState:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: Optional[_Job] = None
        self.running: Optional[int] = None  # step of the snapshot being encoded
        self.error: Optional[tuple[int, BaseException]] = None
        self.stop = threading.Event()
        self.pinned = threading.Event()
        self.closed = False


def _pin_worker_threads(num_threads: int, nice: int) -> None:
    """Intra-op threads and priority for the calling (worker) thread only.

    torch.set_num_threads calls omp_set_num_threads, whose setting is per thread, so the
    trainer's OpenMP team keeps its size. os.setpriority on a thread id changes only that
    thread on Linux.
    """
    # torch sets up each thread's OpenMP setting lazily, from its process default, on the
    # thread's first parallel call; trigger that first, or it would later undo ours.
    torch.get_num_threads()
    torch.set_num_threads(num_threads)
    if nice and hasattr(os, "setpriority"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        except OSError as e:  # pragma: no cover - e.g. a sandbox without the permission
            log.warning("could not lower the re-index thread's priority: %s", e)


def _worker_main(owner_ref: Callable[[], Optional[AsyncReindexer]], st: _WorkerState) -> None:
    owner = owner_ref()
    if owner is None:  # pragma: no cover
        st.pinned.set()
        return
    _pin_worker_threads(owner.num_threads, owner.nice)
    del owner
    st.pinned.set()
    while True:
        with st.cond:
            while st.pending is None and not st.stop.is_set():
                st.cond.wait()
            if st.stop.is_set():
                return
            job = st.pending
            assert job is not None
            st.pending = None
            st.running = job.step
        owner = owner_ref()
        if owner is None:
            return
        t0 = time.perf_counter()
        owner.stats.started += 1
        error = None
        try:
            owner._run(job, st.stop)
        except BaseException as e:  # re-raised on the trainer's thread by _raise_pending
            # BaseException too: a KeyboardInterrupt or SystemExit raised in the encoder
            # must not kill the worker silently with its running flag set.
            error = e
            log.error("re-index from step %d failed: %r", job.step, e)
        dt = time.perf_counter() - t0
        with st.cond:
            if error is not None:
                owner.stats.failed += 1
                st.error = (job.step, error)
            elif not st.stop.is_set():
                owner.stats.completed += 1
            owner.stats.last_duration_s = dt
            owner.stats.total_duration_s += dt
            st.running = None
            st.cond.notify_all()
        del owner, job


def _shutdown(st: _WorkerState, worker: threading.Thread) -> None:
    with st.cond:
        st.closed = True
        st.pending = None
        st.stop.set()
        st.cond.notify_all()
    if worker is not threading.current_thread():
        worker.join()  # at most one encoder chunk away


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
