"""The concurrency contract of docs/reliability.md, pair by pair, under threads: search, get,
add, remove, save and refresh run concurrently with each other, and every result equals
what one whole version of the index gives. Vectors are integer-valued (see
tools/stress_save_load.py), so every score, and so every result, is checked exactly."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch
from stress_save_load import check_index, expected_search, queries, vectors

import pyrag
from pyrag.reindex import AsyncReindexer

DTYPES = ["float32", "bfloat16", "int8"]
DIM = 16
SECONDS = 0.5  # per test: how long the threads race


@pytest.fixture(autouse=True)
def _switch_often():
    """More thread switches per second: more interleavings to catch."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Race:
    """Runs functions on threads until `seconds` pass or one fails; re-raises its error."""

    def __init__(self, seconds: float = SECONDS):
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.seconds = seconds

    def run(self, *loops) -> None:
        def wrap(loop):
            try:
                while not self.stop.is_set():
                    loop()
            except BaseException as e:
                self.errors.append(e)
                self.stop.set()

        threads = [threading.Thread(target=wrap, args=(f,), daemon=True) for f in loops]
        for t in threads:
            t.start()
        self.stop.wait(self.seconds)
        self.stop.set()
        for t in threads:
            t.join(60)
        if self.errors:
            raise self.errors[0]


class Mutator:
    """Adds batches of rows with ids counting up and removes the oldest half past a size,
    recording before each mutation the id range [lo, hi) its version will hold."""

    def __init__(self, index: pyrag.DenseIndex, batch: int = 5, max_rows: int = 300):
        self.index, self.batch, self.max_rows = index, batch, max_rows
        self.lo = self.hi = 0
        self.history = {index.version: (0, 0)}

    def step(self) -> None:
        index = self.index
        if self.hi - self.lo > self.max_rows:
            cut = (self.lo + self.hi) // 2
            self.history[index.version + 1] = (cut, self.hi)
            index.remove(range(self.lo, cut))
            self.lo = cut
        else:
            ids = torch.arange(self.hi, self.hi + self.batch)
            self.history[index.version + 1] = (self.lo, self.hi + self.batch)
            index.add(vectors(ids, 0, DIM), ids)
            self.hi += self.batch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exact", [False, True])
def test_search_during_add_and_remove_sees_one_whole_version(dtype, exact):
    index = pyrag.DenseIndex(DIM, dtype)
    mutator = Mutator(index)
    q = queries(3, DIM)
    checked = [0]

    def search():
        v0 = index.version
        scores, ids = index.search(q, 4, exact=exact)
        v1 = index.version
        for v in range(v0, v1 + 1):  # the search ran on one of these versions
            lo, hi = mutator.history[v]
            want = expected_search(torch.arange(lo, hi), 0, q, 4)
            if torch.equal(scores, want[0]) and torch.equal(ids, want[1]):
                checked[0] += 1
                return
        raise AssertionError(f"a search result matches no version in {v0}..{v1}")

    Race().run(mutator.step, search)
    assert checked[0] > 10 and index.version > 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_snapshot_agrees_with_itself_while_the_index_changes(dtype):
    index = pyrag.DenseIndex(DIM, dtype)
    mutator = Mutator(index)
    q = queries(2, DIM)

    def read():
        snap = index.snapshot()
        ids = snap.ids
        lo, hi = mutator.history[snap.version]
        assert torch.equal(ids, torch.arange(lo, hi))
        scores, found = snap.search(q, 3)
        assert torch.equal(found, expected_search(ids, 0, q, 3)[1])
        if ids.numel():
            assert torch.equal(snap.get(found[found >= 0]), vectors(found[found >= 0], 0, DIM))

    Race().run(mutator.step, read)


@pytest.mark.parametrize("dtype", DTYPES)
def test_get_during_remove_returns_the_right_vectors_or_a_key_error(dtype):
    index = pyrag.DenseIndex(DIM, dtype)
    mutator = Mutator(index, max_rows=60)
    outcomes = {"found": 0, "gone": 0}

    def get():
        lo, hi = mutator.lo, mutator.hi
        if hi == lo:
            return
        ids = torch.tensor([lo, (lo + hi) // 2, hi - 1])
        try:
            got = index.get(ids)
        except KeyError:
            outcomes["gone"] += 1
            return
        assert torch.equal(got, vectors(ids, 0, DIM))
        outcomes["found"] += 1

    Race().run(mutator.step, get)
    assert outcomes["found"] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_concurrent_adds_are_each_atomic(dtype):
    """Four threads add: two with explicit ids, two with automatic ids. Every add gets
    its own ids, each row its own vector, and the index ends holding exactly the union."""
    index = pyrag.DenseIndex(DIM, dtype)
    auto: list[torch.Tensor] = []
    top = torch.tensor([10**12])
    index.add(vectors(top, 0, DIM), top)  # automatic ids go up from the largest id: past it
    explicit: list[torch.Tensor] = [top]
    lock = threading.Lock()
    counting_down = iter(range(10**12 - 1, 10**11, -3))  # below it: never where automatic ids go

    def add_auto():
        ids = index.add(torch.zeros(3, DIM))
        with lock:
            auto.append(ids)

    def add_explicit():
        with lock:
            ids = torch.tensor([next(counting_down) for _ in range(3)])
        index.add(vectors(ids, 0, DIM), ids)
        with lock:
            explicit.append(ids)

    Race().run(add_auto, add_auto, add_explicit, add_explicit)
    all_ids = torch.cat(auto + explicit)
    assert all_ids.unique().numel() == all_ids.numel() == len(index)
    assert torch.equal(torch.sort(index.ids).values, torch.sort(all_ids).values)
    assert torch.equal(index.get(torch.cat(explicit)), vectors(torch.cat(explicit), 0, DIM))
    assert not index.get(torch.cat(auto)).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_and_remove_on_two_threads_end_in_the_serial_state(dtype):
    index = pyrag.DenseIndex(DIM, dtype)
    next_id = [0]
    present: list[int] = []
    lock = threading.Lock()

    def add():
        with lock:
            ids = list(range(next_id[0], next_id[0] + 4))
            next_id[0] += 4
        t = torch.tensor(ids)
        index.add(vectors(t, 0, DIM), t)
        with lock:
            present.extend(ids)

    def remove():
        with lock:
            if len(present) < 3:
                return
            ids = [present.pop(0) for _ in range(3)]
        assert index.remove(ids) == 3

    Race().run(add, remove)
    assert sorted(index.ids.tolist()) == sorted(present)
    assert check_index(index, index.ids, 0) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_saves_during_add_and_remove_write_whole_versions(tmp_path, dtype):
    index = pyrag.DenseIndex(DIM, dtype)
    mutator = Mutator(index)
    n = [0]

    def save():
        path = tmp_path / f"i{n[0] % 3}"
        n[0] += 1
        index.save(path)
        loaded = pyrag.DenseIndex.load(path, mmap=bool(n[0] % 2))
        lo, hi = mutator.history[loaded.version]
        assert check_index(loaded, torch.arange(lo, hi), 0) is None

    Race().run(mutator.step, save)
    assert n[0] > 5


def test_two_threads_saving_over_one_path_leave_one_whole_file(tmp_path):
    states = []
    for salt in (1, 2):
        index = pyrag.DenseIndex(DIM, "int8")
        ids = torch.arange(50 * salt)
        index.add(vectors(ids, salt, DIM), ids)
        states.append(index)
    path = tmp_path / "shared"
    checked = [0]

    def saver(i):
        return lambda: states[i].save(path, metadata={"salt": str(i + 1)})

    def loader():
        if path.exists():
            loaded = pyrag.DenseIndex.load(path)
            salt = int(loaded.metadata["salt"])
            assert check_index(loaded, torch.arange(50 * salt), salt) is None
            checked[0] += 1

    Race().run(saver(0), saver(1), loader)
    assert checked[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no temp file left


def test_refreshes_during_searches_and_saves_publish_whole_versions(tmp_path):
    """A reindexer refreshes (integer weights and features: exact vectors) while threads
    search the VersionedIndex and save it; each result and each saved file is one version."""
    features = torch.randint(-3, 4, (200, 6)).float()
    encoder = torch.nn.Linear(6, DIM, bias=False)
    weights = {}

    def set_weights(step):
        with torch.no_grad():
            encoder.weight.copy_(torch.randint(-3, 4, (DIM, 6), generator=torch.Generator().manual_seed(step)))
        weights[step] = encoder.weight.detach().clone()

    set_weights(0)
    q = queries(2, DIM)
    n = [0]

    def expected(step):
        x = features @ weights[step].T
        s = q @ x.T
        order = torch.argsort(-s, dim=1, stable=True)[:, :3]
        return torch.gather(s, 1, order), order

    with AsyncReindexer(encoder, features, schedule="none", chunk_size=32, progress=False) as reindexer:
        versioned = reindexer.index

        def refresh():
            step = len(weights)
            set_weights(step)
            reindexer.refresh(step)
            reindexer.wait(60)

        def search():
            snap = versioned.snapshot()
            scores, ids = snap.search(q, 3)
            want = expected(snap.step)
            assert torch.equal(scores, want[0]) and torch.equal(ids, want[1])

        def save():
            path = tmp_path / f"v{n[0] % 2}"
            n[0] += 1
            versioned.save(path)
            loaded = pyrag.VersionedIndex.load(path)
            want = features @ weights[loaded.step].T
            assert torch.equal(loaded.get(torch.arange(200)), want)

        Race(2 * SECONDS).run(refresh, search, save)
        assert reindexer.version >= 2 and n[0] > 2


def test_races_run_long_enough_to_interleave():
    """A guard on the harness: a mutator and a reader do overlap within SECONDS."""
    index = pyrag.DenseIndex(DIM)
    mutator = Mutator(index)
    seen = set()
    t0 = time.perf_counter()
    Race(0.3).run(mutator.step, lambda: seen.add(index.version))
    assert len(seen) > 3 and time.perf_counter() - t0 < 30


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_coalesced_searches_during_add_and_remove_see_one_whole_version(dtype):
    """The CoalescingSearcher pins one snapshot per batch: each caller's result is one
    version's, as for a direct search."""
    index = pyrag.DenseIndex(DIM, dtype)
    mutator = Mutator(index)
    q = queries(2, DIM)
    checked = [0]
    with pyrag.CoalescingSearcher(index, window_ms=1) as searcher:

        def search():
            v0 = index.version
            scores, ids = searcher.search(q, 4, exact=dtype != "float32")
            v1 = index.version
            for v in range(v0, v1 + 1):
                lo, hi = mutator.history[v]
                want = expected_search(torch.arange(lo, hi), 0, q, 4)
                if torch.equal(scores, want[0]) and torch.equal(ids, want[1]):
                    checked[0] += 1
                    return
            raise AssertionError(f"a coalesced result matches no version in {v0}..{v1}")

        Race().run(mutator.step, search, search)
    assert checked[0] > 10
