"""CoalescingSearcher: concurrent searches answered by fused scans are exactly lone
searches (scores, ids, ties; every dtype, exact=True, mixed k), errors reach only the
caller that caused them, shutdown never hangs, and no worker thread outlives its searcher.

Data are integer-valued so that every score is exact and ties are real. Where a test
needs callers to be queued together, a GatedIndex (a real DenseIndex whose search first
waits on an event) holds the worker in its scan while the test queues them.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import _C
from pyrag.index import coalescing

DTYPES = ["float32", "bfloat16", "int8"]
D = 12
WORKER = "pyrag-coalescing-searcher"
LIMIT_S = 20.0  # any wait longer than this is a hang


def integer_rows(n, d=D, seed=0, high=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-high, high + 1, (n, d), generator=g).float()


def make_index(dtype, n=300, seed=0, cls=pyrag.DenseIndex, user_ids=True):
    index = cls(D, dtype)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) * 3 + 5 if user_ids else None
    index.add(integer_rows(n, seed=seed), ids)
    return index


class GatedIndex(pyrag.DenseIndex):
    """A DenseIndex whose searches wait for `gate` and record the number of query rows;
    a query whose first element is POISON is refused, as a stricter index might."""

    POISON = 77.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.batches: list[int] = []

    def search(self, queries, k, *, exact=False, backend="auto"):
        q = torch.as_tensor(queries)
        self.batches.append(1 if q.dim() == 1 else q.shape[0])
        self.entered.release()
        assert self.gate.wait(LIMIT_S), "the test never opened the gate"
        if q.numel() and bool((q.reshape(-1, D)[:, 0] == self.POISON).any()):
            raise ValueError("this index refuses the poison query")
        return super().search(queries, k, exact=exact, backend=backend)


def hold_worker(searcher, index):
    """Closes the gate and parks the worker in a scan of one throwaway query, so that
    what is submitted next queues up; returns that query's future."""
    index.gate.clear()
    first = searcher.submit(integer_rows(1, seed=99)[0], 1)
    assert index.entered.acquire(timeout=LIMIT_S), "the worker never started the scan"
    return first


def workers():
    return [t for t in threading.enumerate() if t.name == WORKER]


@pytest.fixture(autouse=True)
def no_leaked_worker():
    before = set(workers())
    yield
    if set(workers()) - before:
        gc.collect()  # a searcher nobody holds any more: its finalizer stops the worker
    deadline = time.monotonic() + LIMIT_S
    while set(workers()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(workers()) - before, "a CoalescingSearcher's worker thread outlived the test"


def assert_same(got, want):
    gs, gi = got
    ws, wi = want
    assert type(gs) is type(ws) and type(gi) is type(wi)
    gs, gi, ws, wi = (torch.as_tensor(t) for t in (gs, gi, ws, wi))
    assert gs.shape == ws.shape and gi.shape == wi.shape
    assert gs.dtype == ws.dtype and gi.dtype == wi.dtype
    assert torch.equal(gs, ws), (gs, ws)
    assert torch.equal(gi, wi), (gi, wi)


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_fused_scan_answers_mixed_callers_exactly_as_lone_searches(dtype):
    index = make_index(dtype, cls=GatedIndex)
    rng = random.Random(1)
    calls = []
    for j in range(24):
        q = integer_rows(rng.choice([1, 1, 1, 3]), seed=100 + j)
        if rng.random() < 0.3:
            q = q[0]  # one [dim] query
        if rng.random() < 0.3:
            q = q.numpy()
        calls.append((q, rng.choice([1, 2, 5, 10, 400]), rng.random() < 0.4))  # k=400 > len: padding
    with pyrag.CoalescingSearcher(index, window_ms=0, max_batch=1000) as searcher:
        first = hold_worker(searcher, index)
        futures = [searcher.submit(q, k, exact=exact) for q, k, exact in calls]
        index.batches.clear()
        index.gate.set()
        first.result(timeout=LIMIT_S)
        got = [f.result(timeout=LIMIT_S) for f in futures]
        stats = searcher.stats()
    # The 24 callers went in two fused scans: exact=False and exact=True.
    assert sorted(index.batches) == sorted(
        [sum(np.atleast_2d(q).shape[0] for q, _, e in calls if e == flag) for flag in (False, True)]
    )
    assert stats["scans"] == 3 and stats["fallbacks"] == 0
    for (q, k, exact), result in zip(calls, got):
        assert_same(result, index.search(q, k, exact=exact))


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    exact=st.booleans(),
    n=st.integers(1, 60),
    ks=st.lists(st.integers(1, 70), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_the_first_k_columns_of_a_larger_k_are_the_k_search(dtype, exact, n, ks, seed):
    """Why callers with different k may share a scan: results are sorted by score, ties
    to the smaller id, so a search for K cut to k columns is the search for k (padding
    included when k > len)."""
    index = pyrag.DenseIndex(D, dtype)
    g = torch.Generator().manual_seed(seed)
    index.add(torch.randint(-1, 2, (n, D), generator=g).float(), torch.randperm(n, generator=g) * 2)  # many ties
    q = torch.randint(-1, 2, (3, D), generator=g).float()
    big_k = max(ks)
    scores, ids = index.search(q, big_k, exact=exact)
    for k in ks:
        s, i = index.search(q, k, exact=exact)
        assert torch.equal(scores[:, :k], s) and torch.equal(ids[:, :k], i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_threads_get_exactly_their_lone_results(dtype):
    index = make_index(dtype, n=2000)
    threads, per_thread = 16, 12
    work = [
        [(integer_rows(1, seed=1000 * t + j)[0], 1 + (t + j) % 12, (t + j) % 3 == 0) for j in range(per_thread)]
        for t in range(threads)
    ]
    want = [[index.search(q, k, exact=e) for q, k, e in w] for w in work]
    got: list[list] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)
    with pyrag.CoalescingSearcher(index, window_ms=20) as searcher:

        def caller(t):
            start.wait()
            for q, k, e in work[t]:
                got[t].append(searcher.search(q, k, exact=e))

        pool = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(LIMIT_S * 3)
        assert not any(th.is_alive() for th in pool), "a caller hung"
        stats = searcher.stats()
    assert stats["queries"] == threads * per_thread
    assert stats["scans"] < stats["queries"] // 2, stats  # the callers did share scans
    for t in range(threads):
        assert len(got[t]) == per_thread
        for g_, w_ in zip(got[t], want[t]):
            assert_same(g_, w_)


@pytest.fixture(params=_C.supported_cpu_isas())
def isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_fused_scan_scores_each_query_as_a_lone_scan_on_float_data(isa, dtype):
    """Why a fused scan may answer for lone searches beyond integer data: on every ISA
    path the kernels score each query the same way whatever else is in its batch, so
    the scores are bit-identical, not merely close."""
    g = torch.Generator().manual_seed(5)
    index = pyrag.DenseIndex(37, dtype)
    index.add(torch.randn(1500, 37, generator=g))
    q = torch.randn(19, 37, generator=g)
    for exact in (False, True):
        scores, ids = index.search(q, 10, exact=exact)
        for i in range(q.shape[0]):
            s, j = index.search(q[i], 10, exact=exact)
            assert torch.equal(s, scores[i]) and torch.equal(j, ids[i]), (isa, exact, i)


def test_results_follow_the_callers_kind_and_shape():
    index = make_index("float32")
    q = integer_rows(4, seed=3)
    with pyrag.CoalescingSearcher(index) as searcher:
        for queries in (q, q[0], q.numpy(), q[1].numpy(), q[:0], q.T.contiguous().T):
            assert_same(searcher.search(queries, 7), index.search(queries, 7))
        s, i = searcher.search(q.requires_grad_(), 3)
        assert not s.requires_grad and s.is_contiguous() and i.is_contiguous()


# ----------------------------------------------------------------------------- snapshots
def test_the_searcher_and_its_snapshots_implement_the_contract(tmp_path):
    index = make_index("int8")
    with pyrag.CoalescingSearcher(index) as searcher:
        snap = searcher.snapshot()
        for obj in (searcher, snap):
            assert isinstance(obj, pyrag.Index)
            assert (obj.dim, obj.dtype, len(obj), obj.version) == (D, "int8", 300, index.version)
            assert torch.equal(obj.get([5, 8, -1]), index.get([5, 8, -1]))
        assert snap.snapshot() is snap
        searcher.save(tmp_path / "a.idx")
        snap.save(tmp_path / "b.idx")
        for name in ("a.idx", "b.idx"):
            loaded = pyrag.DenseIndex.load(tmp_path / name)
            assert loaded.version == index.version and torch.equal(loaded.ids, index.ids)


def test_a_snapshot_answers_from_its_state_while_the_index_changes():
    index = make_index("float32", n=50)
    with pyrag.CoalescingSearcher(index) as searcher:
        snap = searcher.snapshot()
        before = index.snapshot()
        index.add(integer_rows(50, seed=7) * 10)  # would win every search
        index.remove(torch.tensor([5, 8]))
        q = integer_rows(3, seed=8)
        assert snap.version == before.version != searcher.version == index.version
        assert_same(snap.search(q, 5), before.search(q, 5))
        assert_same(searcher.search(q, 5), index.search(q, 5))
        assert torch.equal(snap.get([5]), before.get([5]))


def test_concurrent_adds_and_removes_each_batch_searches_one_state():
    index = make_index("float32", n=200, user_ids=False)
    states = {index.version: index.snapshot()}
    stop = threading.Event()

    def writer():
        for j in range(40):
            if j % 4 == 3:
                index.remove(index.ids[:5])
            else:
                index.add(integer_rows(50, seed=500 + j))
            states[index.version] = index.snapshot()
        stop.set()

    def state(v):  # the writer records a state just after making it
        deadline = time.monotonic() + LIMIT_S
        while v not in states and time.monotonic() < deadline:
            time.sleep(0.001)
        return states[v]

    def same(a, b):
        return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    failures = []
    with pyrag.CoalescingSearcher(index, window_ms=5) as searcher:

        def reader(t):
            j = 0
            while not stop.is_set() or j < 3:
                q, k = integer_rows(2, seed=10_000 * t + j), 1 + j % 9
                snap = searcher.snapshot()
                if not same(snap.search(q, k), state(snap.version).search(q, k)):
                    failures.append(("pinned", snap.version))
                low = index.version
                got = searcher.search(q, k)
                high = index.version
                if not any(same(got, state(v).search(q, k)) for v in range(low, high + 1)):
                    failures.append(("unpinned", low, high))
                j += 1

        pool = [threading.Thread(target=reader, args=(t,)) for t in range(6)]
        for th in pool:
            th.start()
        writer()
        for th in pool:
            th.join(LIMIT_S * 3)
        assert not any(th.is_alive() for th in pool), "a reader hung"
    assert not failures, failures[:5]


def test_a_retriever_searches_through_the_searcher():
    index = make_index("bfloat16")
    q = integer_rows(5, seed=11)
    with pyrag.CoalescingSearcher(index) as searcher:
        got = pyrag.Retriever(None, searcher).retrieve(q, 6)
    want = pyrag.Retriever(None, index).retrieve(q, 6)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores)
    assert got.index_version == want.index_version == index.version


def test_a_versioned_index_is_searched_through_its_published_version():
    index = make_index("float32")
    versioned = pyrag.VersionedIndex(index, version=4)
    q = integer_rows(3, seed=12)
    with pyrag.CoalescingSearcher(versioned) as searcher:
        assert searcher.version == searcher.snapshot().version == 4
        assert_same(searcher.search(q, 4), versioned.search(q, 4))
        versioned.swap(make_index("float32", seed=1), step=10)
        assert searcher.snapshot().version == 5
        assert_same(searcher.search(q, 4), versioned.search(q, 4))


# ----------------------------------------------------------------------------- errors
def test_bad_queries_fail_their_own_caller_before_anything_is_queued():
    index = make_index("float32", cls=GatedIndex)
    good = integer_rows(2, seed=13)
    nan = good.clone()
    nan[1, 3] = float("nan")
    bad = [
        (integer_rows(1, d=D + 1), 3, False, ValueError, "dim"),
        (good.double(), 3, False, TypeError, "float32"),
        (nan, 3, False, ValueError, "NaN"),
        (good.clone().fill_(float("inf")), 3, False, ValueError, "NaN or Inf"),
        (good, 0, False, ValueError, "k must be"),
        (good, 2.0, False, ValueError, "k must be"),
        (good, 3, "yes", TypeError, "exact"),
        ([[0.0] * D], 3, False, TypeError, "torch.Tensor or numpy"),
        (torch.zeros(2, 2, D), 3, False, ValueError, "shape"),
    ]
    with pyrag.CoalescingSearcher(index, window_ms=0) as searcher:
        first = hold_worker(searcher, index)
        ok = searcher.submit(good, 3)
        for q, k, exact, err, words in bad:
            with pytest.raises(err, match=words):
                searcher.submit(q, k, exact=exact)
            with pytest.raises(err, match=words):
                searcher.snapshot().search(q, k, exact=exact)
        index.batches.clear()
        index.gate.set()
        first.result(timeout=LIMIT_S)
        got = ok.result(timeout=LIMIT_S)
        assert index.batches == [2]  # only the good caller's rows were scanned
        assert_same(got, index.search(good, 3))


def test_a_failed_fused_scan_is_redone_caller_by_caller():
    index = make_index("float32", cls=GatedIndex)
    qs = [integer_rows(1 + j % 2, seed=20 + j) for j in range(6)]
    qs[2] = qs[2].clone()
    qs[2][0, 0] = GatedIndex.POISON
    with pyrag.CoalescingSearcher(index, window_ms=0) as searcher:
        first = hold_worker(searcher, index)
        futures = [searcher.submit(q, 3 + j) for j, q in enumerate(qs)]
        index.gate.set()
        first.result(timeout=LIMIT_S)
        for j, (q, f) in enumerate(zip(qs, futures)):
            if j == 2:
                with pytest.raises(ValueError, match="poison"):
                    f.result(timeout=LIMIT_S)
            else:
                assert_same(f.result(timeout=LIMIT_S), index.search(q, 3 + j))
        assert searcher.stats()["fallbacks"] == 1
        # and the searcher keeps serving
        assert_same(searcher.search(qs[0], 2), index.search(qs[0], 2))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_exact_without_originals_fails_only_the_exact_callers(dtype):
    index = GatedIndex(D, dtype, keep_originals=False)
    index.add(integer_rows(100))
    q = integer_rows(3, seed=30)
    with pyrag.CoalescingSearcher(index, window_ms=0) as searcher:
        first = hold_worker(searcher, index)
        futures = [searcher.submit(q[j], 4, exact=j == 1) for j in range(3)]
        index.gate.set()
        first.result(timeout=LIMIT_S)
        with pytest.raises(ValueError, match="originals"):
            futures[1].result(timeout=LIMIT_S)
        for j in (0, 2):
            assert_same(futures[j].result(timeout=LIMIT_S), index.search(q[j], 4))


def test_settings_are_checked():
    index = make_index("float32", n=10)
    for bad in (-1, float("nan"), True, "2", 20_000):
        with pytest.raises(ValueError, match="window_ms"):
            pyrag.CoalescingSearcher(index, window_ms=bad)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            pyrag.CoalescingSearcher(index, max_batch=bad)
    with pytest.raises(TypeError, match="index contract"):
        pyrag.CoalescingSearcher(torch.zeros(3, D))


# ----------------------------------------------------------------------------- batching
def test_max_batch_bounds_the_rows_of_a_scan():
    index = make_index("float32", cls=GatedIndex)
    sizes = [1, 1, 2, 1, 6, 1, 1, 1, 3]
    with pyrag.CoalescingSearcher(index, window_ms=0, max_batch=4) as searcher:
        first = hold_worker(searcher, index)
        futures = [searcher.submit(integer_rows(b, seed=40 + j), 5) for j, b in enumerate(sizes)]
        index.batches.clear()
        index.gate.set()
        first.result(timeout=LIMIT_S)
        got = [f.result(timeout=LIMIT_S) for f in futures]
    # oldest first, at most 4 rows, and the 6-row caller alone
    assert index.batches == [4, 1, 6, 3, 3], index.batches
    for j, result in enumerate(got):
        assert_same(result, index.search(integer_rows(sizes[j], seed=40 + j), 5))


def test_a_lone_caller_does_not_wait_for_the_window():
    index = make_index("float32")
    q = integer_rows(1, seed=50)
    with pyrag.CoalescingSearcher(index, window_ms=10_000) as searcher:
        for _ in range(3):
            t0 = time.monotonic()
            searcher.search(q, 3)
            assert time.monotonic() - t0 < 5.0  # not the 10 s window


@pytest.fixture
def wait_by_window_only(monkeypatch):
    """Lifts the cap of a batch's wait at a quarter of the previous scan (this tiny
    index scans in microseconds), so that window_ms alone bounds it."""
    monkeypatch.setattr(coalescing, "_WAIT_PER_SCAN", float("inf"))


def test_after_a_burst_a_lone_caller_waits_at_most_the_window(wait_by_window_only):
    index = make_index("float32", cls=GatedIndex)
    q = integer_rows(1, seed=51)
    with pyrag.CoalescingSearcher(index, window_ms=300) as searcher:
        first = hold_worker(searcher, index)
        burst = [searcher.submit(integer_rows(1, seed=52 + j), 3) for j in range(5)]
        index.gate.set()
        for f in [first] + burst:
            f.result(timeout=LIMIT_S)
        # The worker now expects 5 callers: one alone waits for the window, then goes.
        t0 = time.monotonic()
        searcher.search(q, 3)
        waited = time.monotonic() - t0
        assert 0.25 <= waited < 5.0, waited
        t0 = time.monotonic()
        searcher.search(q, 3)  # the last batch held one caller: no wait
        assert time.monotonic() - t0 < 0.25


def test_a_batch_waits_for_the_callers_it_just_answered(wait_by_window_only):
    """Callers in a closed loop come straight back: the batch after a scan waits for the
    callers that queued during it and for those it answered, so the two groups merge
    rather than take turns (the old rule, as many as the previous batch held, scanned the
    three queued callers at once: batches [1, 3, 1])."""
    index = make_index("float32", cls=GatedIndex)
    with pyrag.CoalescingSearcher(index, window_ms=10_000) as searcher:
        index.gate.clear()
        got: dict[str, object] = {}

        def returning_caller():
            got["first"] = searcher.search(integer_rows(1, seed=100), 3)
            got["again"] = searcher.search(integer_rows(1, seed=101), 3)

        caller = threading.Thread(target=returning_caller)
        caller.start()
        assert index.entered.acquire(timeout=LIMIT_S), "the worker never started the scan"
        queued = [searcher.submit(integer_rows(1, seed=102 + j), 3) for j in range(3)]
        t0 = time.monotonic()
        index.gate.set()
        caller.join(LIMIT_S)
        assert not caller.is_alive()
        assert time.monotonic() - t0 < 5.0  # not the 10 s window: the batch filled
        assert index.batches == [1, 4], index.batches
        assert_same(got["first"], index.search(integer_rows(1, seed=100), 3))
        assert_same(got["again"], index.search(integer_rows(1, seed=101), 3))
        for j, f in enumerate(queued):
            assert_same(f.result(timeout=0), index.search(integer_rows(1, seed=102 + j), 3))


def test_a_cancelled_submission_is_skipped():
    index = make_index("float32", cls=GatedIndex)
    with pyrag.CoalescingSearcher(index, window_ms=0) as searcher:
        first = hold_worker(searcher, index)
        a = searcher.submit(integer_rows(1, seed=60), 2)
        b = searcher.submit(integer_rows(1, seed=61), 2)
        assert a.cancel()
        index.batches.clear()
        index.gate.set()
        first.result(timeout=LIMIT_S)
        got = b.result(timeout=LIMIT_S)
        assert index.batches == [1]
        assert_same(got, index.search(integer_rows(1, seed=61), 2))


# ----------------------------------------------------------------------------- shutdown
def test_close_answers_queued_callers_and_refuses_later_ones():
    index = make_index("float32", cls=GatedIndex)
    searcher = pyrag.CoalescingSearcher(index, window_ms=0)
    first = hold_worker(searcher, index)
    results: dict[int, object] = {}

    def caller(j):
        try:
            results[j] = searcher.search(integer_rows(1, seed=70 + j), 4)
        except Exception as e:  # recorded, checked below
            results[j] = e

    pool = [threading.Thread(target=caller, args=(j,)) for j in range(8)]
    for th in pool:
        th.start()
    deadline = time.monotonic() + LIMIT_S
    while searcher._batcher._queue.__len__() < 8 and time.monotonic() < deadline:
        time.sleep(0.001)
    closer = threading.Thread(target=searcher.close)
    closer.start()
    while not searcher.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    assert searcher.closed
    with pytest.raises(pyrag.SearcherClosedError, match="closed"):
        searcher.search(integer_rows(1), 2)
    with pytest.raises(pyrag.SearcherClosedError):
        searcher.snapshot().search(integer_rows(1), 2)
    index.gate.set()  # the scan in progress ends; close then answers the queue and returns
    closer.join(LIMIT_S)
    for th in pool:
        th.join(LIMIT_S)
    assert not closer.is_alive() and not any(th.is_alive() for th in pool), "shutdown hung"
    first.result(timeout=0)
    for j in range(8):
        assert_same(results[j], index.search(integer_rows(1, seed=70 + j), 4))
    assert not searcher._batcher._thread.is_alive()
    searcher.close()  # idempotent
    assert "closed" in repr(searcher)


def test_a_batch_waits_at_most_a_quarter_of_the_previous_scan():
    index = make_index("float32", cls=GatedIndex)
    with pyrag.CoalescingSearcher(index, window_ms=10_000) as searcher:
        first = hold_worker(searcher, index)
        burst = [searcher.submit(integer_rows(1, seed=53 + j), 3) for j in range(5)]
        index.gate.set()
        for f in [first] + burst:
            f.result(timeout=LIMIT_S)
        t0 = time.monotonic()
        searcher.search(integer_rows(1, seed=58), 3)  # expects 5 callers, but scans take microseconds
        assert time.monotonic() - t0 < 5.0


def test_close_cuts_the_window_short(wait_by_window_only):
    index = make_index("float32", cls=GatedIndex)
    searcher = pyrag.CoalescingSearcher(index, window_ms=10_000)
    first = hold_worker(searcher, index)
    burst = [searcher.submit(integer_rows(1, seed=80 + j), 3) for j in range(4)]
    index.gate.set()
    for f in [first] + burst:
        f.result(timeout=LIMIT_S)
    lone = searcher.submit(integer_rows(1, seed=90), 3)  # waits for 4 callers, up to 10 s
    time.sleep(0.05)
    t0 = time.monotonic()
    searcher.close()
    assert time.monotonic() - t0 < 5.0
    assert_same(lone.result(timeout=0), index.search(integer_rows(1, seed=90), 3))


def test_a_dropped_searcher_stops_its_worker_and_still_answers_its_queue():
    index = make_index("float32", cls=GatedIndex)
    searcher = pyrag.CoalescingSearcher(index, window_ms=0)
    thread = searcher._batcher._thread
    first = hold_worker(searcher, index)
    pending = searcher.submit(integer_rows(1, seed=95), 3)
    index.gate.set()
    del searcher
    gc.collect()
    thread.join(LIMIT_S)
    assert not thread.is_alive()
    first.result(timeout=0)
    assert_same(pending.result(timeout=0), index.search(integer_rows(1, seed=95), 3))


def test_a_forked_child_gets_an_error_not_a_hang():
    index = make_index("float32")
    q = integer_rows(1, seed=97)
    with pyrag.CoalescingSearcher(index) as searcher:
        searcher.search(q, 3)
        pid = os.fork()
        if pid == 0:  # the child: its copy of the searcher has no worker thread
            code = 1
            try:
                searcher.search(q, 3)
            except pyrag.SearcherClosedError as e:
                code = 0 if "fork" in str(e) else 2
            finally:
                searcher.close()  # and closing it there neither hangs nor fails
                os._exit(code)
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0
        assert_same(searcher.search(q, 3), index.search(q, 3))  # the parent's is unaffected


def test_the_searcher_copies_queries_the_caller_may_reuse():
    index = make_index("float32", cls=GatedIndex)
    buffer = integer_rows(1, seed=98)
    want = index.search(buffer.clone(), 4)
    with pyrag.CoalescingSearcher(index, window_ms=0) as searcher:
        first = hold_worker(searcher, index)
        pending = searcher.submit(buffer, 4)
        buffer.fill_(3.0)  # reused for the next query before the scan ran
        index.gate.set()
        first.result(timeout=LIMIT_S)
        assert_same(pending.result(timeout=LIMIT_S), want)


def test_a_held_snapshot_keeps_its_searcher_open():
    index = make_index("float32")
    snap = pyrag.CoalescingSearcher(index).snapshot()
    gc.collect()
    q = integer_rows(2, seed=96)
    assert_same(snap.search(q, 3), index.search(q, 3))
    del snap  # the fixture checks that the worker then ends


# ----------------------------------------------------------------------------- the benchmark
def test_the_concurrency_benchmark_runs_end_to_end(capsys):
    import bench_concurrent

    rows = bench_concurrent.main(
        ["--n", "3000", "--d", "16", "--callers", "4", "--seconds", "0.2", "--windows", "0,2", "--repeats", "1",
         "--lone-reps", "2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "ISA path: " + pyrag.cpu_isa() in out and "median / lone" in out
    assert [r["window_ms"] for r in rows] == [0.0, 2.0]
    for r in rows:
        assert r["qps"] > 0 and r["direct_qps"] > 0 and 1 <= r["batch"] <= 4 and r["p99"] >= r["median"] > 0
