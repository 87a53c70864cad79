"""AsyncReindexer, VersionedIndex and Schedule: the guarantees of issue 5.

The corpus is a feature table [N, F] and the passage encoder a bias-free Linear, so the
index every version must hold is known exactly: features @ W.T for that version's W.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import pyrag
from pyrag.index import VersionedIndex
from pyrag.reindex import AsyncReindexer, ReindexError, Schedule

N, F, D = 300, 12, 8


def features(n=N, seed=0):
    return torch.randn(n, F, generator=torch.Generator().manual_seed(seed))


def linear(seed):
    enc = torch.nn.Linear(F, D, bias=False)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(D, F, generator=torch.Generator().manual_seed(1000 + seed)))
    return enc


def expected_vectors(x, enc):
    with torch.no_grad():
        return enc(x)


class Gate:
    """An encode function that blocks inside the worker until released, to hold a
    refresh 'running' for as long as a test needs."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.armed = False

    def __call__(self, enc, chunk):
        if self.armed:
            self.entered.set()
            assert self.release.wait(30), "test never released the gate"
        return enc(chunk)


# One torch thread for every test here: the models are tiny (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def corpus():
    return features()


# ----------------------------------------------------------------------------- Schedule
@pytest.mark.parametrize(
    "spec, due, not_due",
    [
        ("0-100:10,100-:500", [0, 10, 90, 100, 600, 1100], [1, 5, 95, 101, 110, 500, 1000]),
        ("0-:1", [0, 1, 2, 77], []),
        ("5-20:5", [5, 10, 15], [0, 4, 20, 25]),
        ("10-:3", [10, 13, 16], [0, 9, 11, 12]),
        ("", [], [0, 1, 100]),
        ("none", [], [0, 1, 100]),
    ],
)
def test_schedule_due_steps(spec, due, not_due):
    s = Schedule(spec)
    assert [s.due(t) for t in due] == [True] * len(due)
    assert [s.due(t) for t in not_due] == [False] * len(not_due)


@pytest.mark.parametrize(
    "spec", ["0-100", "a-b:1", "0-100:0", "100-50:5", "0-:10,50-:10", "0-100:10,50-200:10", "0-100:10;100-:5"]
)
def test_schedule_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        Schedule(spec)


def test_schedule_rejects_non_string():
    with pytest.raises(TypeError):
        Schedule(10)


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(policy="drop"), ValueError),
        (dict(chunk_size=0), ValueError),
        (dict(num_threads=0), ValueError),
        (dict(nice=-1), ValueError),
        (dict(schedule="0-10"), ValueError),
        (dict(ids=list(range(N - 1))), ValueError),
    ],
)
def test_bad_arguments_are_rejected(corpus, kwargs, error):
    with pytest.raises(error):
        AsyncReindexer(linear(0), corpus, progress=False, **kwargs)


def test_encoder_must_be_a_module(corpus):
    with pytest.raises(TypeError):
        AsyncReindexer(lambda x: x, corpus, progress=False)


def test_index_size_must_match_the_corpus(corpus):
    with pytest.raises(ValueError, match="passages"):
        AsyncReindexer(linear(0), corpus, index=pyrag.DenseIndex(D), progress=False)


def test_initial_index_encodes_the_corpus_with_the_current_weights(corpus):
    enc = linear(0)
    with AsyncReindexer(enc, corpus, progress=False) as r:
        assert r.version == 0
        torch.testing.assert_close(r.index.snapshot().index.vectors(), expected_vectors(corpus, enc))
        assert r.index.snapshot().index.ids.tolist() == list(range(N))


def test_custom_ids_are_kept(corpus):
    ids = torch.arange(N) * 3 + 7
    with AsyncReindexer(linear(0), corpus, ids=ids, progress=False) as r:
        r.refresh(1)
        r.wait()
        assert r.index.snapshot().index.ids.tolist() == ids.tolist()


# ----------------------------------------------------------------------------- refresh
def test_refresh_uses_the_weights_at_the_snapshot_step(corpus):
    enc = linear(0)
    gate = Gate()
    with AsyncReindexer(enc, corpus, encode=gate, chunk_size=64, progress=False) as r:
        gate.armed = True
        w_at_step = enc.weight.detach().clone()
        assert r.refresh(7)
        assert gate.entered.wait(10)
        with torch.no_grad():
            enc.weight.mul_(-3.0)  # the optimiser moves on while the refresh runs
        gate.release.set()
        assert r.wait(30)
        assert (r.version, r.index.step) == (1, 7)
        torch.testing.assert_close(r.index.snapshot().index.vectors(), corpus @ w_at_step.T)
        assert r.staleness(12) == 5


def test_step_follows_the_schedule(corpus):
    with AsyncReindexer(linear(0), corpus, schedule="0-10:5,10-:20", policy="queue", progress=False) as r:
        started = [s for s in range(45) if r.step(s) and r.wait(30)]
        assert started == [0, 5, 10, 30]
        assert r.version == 4 and r.stats.completed == 4


def test_skip_policy_drops_and_logs_a_refresh_due_while_busy(corpus, caplog):
    gate = Gate()
    with AsyncReindexer(linear(0), corpus, encode=gate, policy="skip", progress=False) as r:
        gate.armed = True
        assert r.refresh(1)
        assert gate.entered.wait(10)
        with caplog.at_level(logging.INFO, logger="pyrag.reindex"):
            assert not r.refresh(2)
        assert "skipped" in caplog.text
        gate.release.set()
        r.wait(30)
        assert (r.version, r.index.step) == (1, 1)
        assert (r.stats.completed, r.stats.skipped) == (1, 1)


def test_queue_policy_runs_the_newest_due_refresh_next(corpus, caplog):
    enc = linear(0)
    gate = Gate()
    with AsyncReindexer(enc, corpus, encode=gate, policy="queue", progress=False) as r:
        gate.armed = True
        assert r.refresh(1)
        assert gate.entered.wait(10)
        with caplog.at_level(logging.INFO, logger="pyrag.reindex"):
            assert r.refresh(2)
            with torch.no_grad():
                enc.weight.add_(1.0)
            w3 = enc.weight.detach().clone()
            assert r.refresh(3)  # replaces the queued step-2 snapshot
        assert "queued" in caplog.text and "replaced" in caplog.text
        gate.armed = False
        gate.release.set()
        r.wait(30)
        assert (r.version, r.index.step) == (2, 3)
        assert (r.stats.completed, r.stats.queued, r.stats.superseded) == (2, 2, 1)
        torch.testing.assert_close(r.index.snapshot().index.vectors(), corpus @ w3.T)


def test_training_does_not_wait_for_a_refresh(corpus):
    gate = Gate()
    with AsyncReindexer(linear(0), corpus, encode=gate, progress=False) as r:
        gate.armed = True
        t0 = time.perf_counter()
        r.refresh(1)
        for s in range(2, 50):
            r.step(s)
        elapsed = time.perf_counter() - t0
        assert r.busy and r.version == 0
        gate.release.set()
        r.wait(30)
        assert elapsed < 5.0  # the worker is still blocked, so any wait would hang


# ----------------------------------------------------------------------------- failures
class FailOnce:
    def __init__(self, fail_at_call):
        self.calls = 0
        self.fail_at_call = fail_at_call

    def __call__(self, enc, chunk):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("encoder blew up")
        return enc(chunk)


def test_background_failure_is_raised_at_the_next_call_and_keeps_the_index(corpus):
    enc = linear(0)
    n_chunks = N // 100
    fail = FailOnce(fail_at_call=n_chunks + 2)  # the 2nd chunk of the first refresh
    with AsyncReindexer(enc, corpus, encode=fail, chunk_size=100, schedule="0-:1", progress=False) as r:
        before = r.index.snapshot()
        r.refresh(3)
        while r.busy:
            time.sleep(0.01)
        with pytest.raises(ReindexError, match="encoder blew up") as info:
            r.step(4)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert r.index.snapshot() is before  # the failed refresh published nothing
        assert r.stats.failed == 1
        r.step(5)  # raised once; the reindexer keeps working
        r.wait(30)
        assert (r.version, r.index.step) == (1, 5)


def test_wait_raises_a_background_failure(corpus):
    r = AsyncReindexer(linear(0), corpus, encode=FailOnce(fail_at_call=2), chunk_size=N, progress=False)
    r.refresh(1)
    with pytest.raises(ReindexError):
        r.wait(30)
    r.close()


def test_close_raises_a_failure_not_yet_seen(corpus):
    def bad_shape(enc, chunk):
        return enc(chunk)[:, None]

    enc = linear(0)
    calls = []

    def encode(e, chunk):
        calls.append(1)
        return e(chunk) if len(calls) == 1 else bad_shape(e, chunk)

    r = AsyncReindexer(enc, corpus, encode=encode, chunk_size=N, progress=False)
    r.refresh(1)
    while r.busy:
        time.sleep(0.01)
    with pytest.raises(ReindexError, match="encode returned"):
        r.close()
    assert not r._worker.is_alive()


# ----------------------------------------------------------------------------- shutdown
def test_close_abandons_a_running_refresh_and_joins_the_worker(corpus):
    gate = Gate()
    r = AsyncReindexer(linear(0), corpus, encode=gate, chunk_size=10, progress=False)
    gate.armed = True
    r.refresh(1)
    assert gate.entered.wait(10)
    threading.Timer(0.2, gate.release.set).start()
    r.close()
    assert not r._worker.is_alive()
    assert r.version == 0 and r.stats.completed == 0
    r.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.refresh(2)


def test_context_manager_closes_even_on_error(corpus):
    with pytest.raises(KeyError):
        with AsyncReindexer(linear(0), corpus, progress=False) as r:
            r.refresh(1)
            raise KeyError("boom")
    assert not r._worker.is_alive()


def test_interpreter_exits_cleanly_without_close():
    script = textwrap.dedent("""
        import logging, sys, time, torch
        from pyrag import DenseIndex
        from pyrag.reindex import AsyncReindexer
        logging.basicConfig(stream=sys.stderr, level=logging.INFO)
        def slow(enc, chunk):
            time.sleep(0.05)
            return enc(chunk)
        index = DenseIndex(3)
        index.add(torch.zeros(2000, 3))
        r = AsyncReindexer(torch.nn.Linear(4, 3), torch.randn(2000, 4), encode=slow, index=index,
                           chunk_size=1, progress=False)
        r.refresh(1)
        time.sleep(0.2)
        assert r.busy
        print("exiting")
    """)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting"
    # The worker was stopped at its next chunk and joined, not killed mid-refresh ...
    assert "re-index from step 1 abandoned" in out.stderr
    assert "Fatal" not in out.stderr and "Traceback" not in out.stderr
    # ... and long before the refresh (2000 chunks x 50 ms = 100 s) could have finished.
    assert time.perf_counter() - t0 < 60


def test_collected_reindexer_stops_its_worker(corpus):
    r = AsyncReindexer(linear(0), corpus, progress=False)
    worker = r._worker
    del r
    import gc

    gc.collect()
    worker.join(10)
    assert not worker.is_alive()


# ----------------------------------------------------------------------------- threads
def test_worker_uses_its_own_thread_count_and_the_trainer_keeps_its_own(corpus):
    seen = []

    def encode(enc, chunk):
        seen.append(torch.get_num_threads())
        return enc(chunk)

    torch.set_num_threads(2)  # the trainer's; the autouse fixture restores it
    before = torch.get_num_threads()
    with AsyncReindexer(linear(0), corpus, encode=encode, num_threads=1, progress=False) as r:
        seen.clear()
        r.refresh(1)
        r.wait(30)
        assert torch.get_num_threads() == before
        new_thread = []
        t = threading.Thread(target=lambda: new_thread.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert new_thread == [before]  # torch's process default was restored
    assert seen and set(seen) == {1}


# ----------------------------------------------------------------------------- versions
def test_versioned_index_swap_and_snapshots_pin_a_version():
    a, b = pyrag.DenseIndex(D), pyrag.DenseIndex(D)
    a.add(torch.randn(20, D))
    b.add(torch.randn(30, D))
    v = VersionedIndex(a)
    assert isinstance(v, pyrag.Index) and isinstance(v.snapshot(), pyrag.Index)
    scores, ids = v.search(torch.randn(2, D), 5)
    assert scores.shape == ids.shape == (2, 5)
    pinned = v.snapshot()
    assert v.swap(b, step=9) == 1
    assert (v.version, v.step, len(v)) == (1, 9, 30)
    assert pinned.version == 0 and len(pinned) == 20  # a pinned reader keeps its index
    with pytest.raises(TypeError):
        v.swap(torch.randn(3, D), step=1)


def test_concurrent_searches_each_see_exactly_one_index_version(corpus):
    """Several threads search while refreshes swap indexes. Each version v holds the
    embeddings of a different random encoder W_v, so every result can be checked against
    each version: it must match the version it reports, and no other."""
    k, refreshes, n_threads = 10, 12, 4
    x = features(2000, seed=1)
    enc = linear(0)
    weights = {0: enc.weight.detach().clone()}
    queries = torch.randn(3, D, generator=torch.Generator().manual_seed(5))
    results: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    errors = []
    done = threading.Event()

    with AsyncReindexer(enc, x, chunk_size=100, policy="queue", progress=False) as r:

        def hammer():
            try:
                while not done.is_set():
                    snap = r.index.snapshot()
                    results.append((snap.version, *snap.search(queries, k)))
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for v in range(1, refreshes + 1):
            with torch.no_grad():
                enc.weight.copy_(linear(v).weight)
            weights[v] = enc.weight.detach().clone()
            r.refresh(v)
            r.wait(30)  # one refresh at a time, so version v is exactly W_v
            time.sleep(0.01)
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert r.version == refreshes

    expected = {}
    for v, w in weights.items():
        expected[v] = pyrag.reference.topk_scores(queries, x @ w.T, k)
    seen_versions = set()
    for version, scores, ids in results:
        matches = [
            v
            for v, (es, ei) in expected.items()
            if torch.equal(ei, ids) and torch.allclose(es, scores, rtol=1e-5, atol=1e-5)
        ]
        assert matches == [version]
        seen_versions.add(version)
    assert len(results) > 100 and len(seen_versions) >= 4, (len(results), seen_versions)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refresh_on_a_cuda_stream(corpus):
    enc = linear(0).cuda()
    with AsyncReindexer(enc, corpus.cuda(), progress=False) as r:
        assert r._stream is not None
        with torch.no_grad():
            enc.weight.mul_(2.0)
        w = enc.weight.detach().clone()
        r.refresh(1)
        r.wait(60)
        torch.testing.assert_close(r.index.snapshot().index.vectors(), (corpus.cuda() @ w.T).cpu())


# ----------------------------------------------------------------------------- Hugging Face
class _LSRModel(torch.nn.Module):
    """A model for transformers.Trainer: query and passage encoders (Linear over the
    feature table) trained by LSR against a fixed 'LM' that prefers low passage ids."""

    def __init__(self, reindexer, passage_encoder):
        super().__init__()
        self.query_encoder = torch.nn.Linear(F, D, bias=False)
        self.passage_encoder = passage_encoder
        self.retriever = pyrag.Retriever(self.query_encoder, reindexer.index)
        self.corpus = reindexer._passages

    def forward(self, query_features):
        hits = self.retriever(query_features, k=5)
        live = self.passage_encoder(self.corpus[hits.ids.clamp(min=0)])  # gradient to the passage encoder
        scores = (self.retriever.encode_queries(query_features)[:, None, :] * live).sum(-1)
        lm_scores = -hits.ids.float()
        return {"loss": pyrag.lsr_loss(scores, lm_scores, mask=hits.mask)}


def _hf_trainer(tmp_path, reindexer, passage_encoder, **callback_kwargs):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from pyrag.integrations.hf import AsyncReindexCallback

    data = [{"query_features": row} for row in features(64, seed=9)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        logging_steps=4,
        save_strategy="steps",
        save_steps=6,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return transformers.Trainer(
        model=_LSRModel(reindexer, passage_encoder),
        args=args,
        train_dataset=data,
        callbacks=[AsyncReindexCallback(reindexer, **callback_kwargs)],
    )


def test_hf_trainer_callback_drives_the_reindexer(tmp_path, corpus):
    passage_encoder = linear(0)
    reindexer = AsyncReindexer(passage_encoder, corpus, schedule="0-:4", policy="queue", progress=False)
    trainer = _hf_trainer(tmp_path, reindexer, passage_encoder, wait_at_end=True)
    trainer.train()
    assert reindexer.stats.completed >= 2 and reindexer.version >= 2
    assert not reindexer._worker.is_alive()  # closed at the end of training
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all("index_version" in e and "index_staleness" in e for e in logged)
    # each checkpoint folder carries the index in service then; load_index restores it
    from pyrag.integrations.hf import INDEX_FILE, load_index, save_index

    assert (tmp_path / "checkpoint-6" / INDEX_FILE).is_file()
    assert (tmp_path / "checkpoint-12" / INDEX_FILE).is_file()
    save_index(reindexer, tmp_path)  # the final one, now that no refresh runs
    fresh = AsyncReindexer(passage_encoder, corpus, progress=False)
    with fresh:
        load_index(fresh, tmp_path)
        assert (fresh.version, fresh.index.step) == (reindexer.version, reindexer.index.step)
        torch.testing.assert_close(fresh.index.snapshot().index.vectors(), reindexer.index.snapshot().index.vectors())


def test_hf_trainer_sees_a_background_failure(tmp_path, corpus):
    passage_encoder = linear(0)
    reindexer = AsyncReindexer(
        passage_encoder, corpus, encode=FailOnce(fail_at_call=2), chunk_size=N, schedule="0-:2", progress=False
    )
    trainer = _hf_trainer(tmp_path, reindexer, passage_encoder)
    # raised at the first step after the failure, or at the latest when training ends
    with pytest.raises(ReindexError, match="encoder blew up"):
        trainer.train()
    assert reindexer.version == 0  # the failed refresh published nothing
    reindexer.close()


# ----------------------------------------------------------------------------- every dtype
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("keep_originals", [True, False])
def test_a_refresh_keeps_the_dtype_options_and_ids_of_the_index_in_service(corpus, dtype, keep_originals):
    enc = linear(0)
    ids = torch.arange(N) * 3 + 11
    start = pyrag.DenseIndex(D, dtype, keep_originals=keep_originals)
    start.add(expected_vectors(corpus, enc), ids)
    with AsyncReindexer(enc, corpus, ids=ids, index=start, chunk_size=64, progress=False) as r:
        with torch.no_grad():
            enc.weight.mul_(2)
        r.refresh(1)
        assert r.wait(30)
        current = r.index.snapshot().index
        assert (r.version, current.dtype, current.keep_originals) == (1, dtype, start.keep_originals)
        assert torch.equal(current.ids, ids)
        reference = pyrag.DenseIndex(D, dtype, keep_originals=keep_originals)
        reference.add(expected_vectors(corpus, enc), ids)
        assert torch.equal(current.get(ids), reference.get(ids))
        q = torch.randn(3, D)
        assert all(torch.equal(a, b) for a, b in zip(current.search(q, 7), reference.search(q, 7)))
        if keep_originals and dtype != "float32":
            assert all(
                torch.equal(a, b) for a, b in zip(current.search(q, 7, exact=True), reference.search(q, 7, exact=True))
            )


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_the_initial_index_has_the_dtype_asked_for(corpus, dtype):
    with AsyncReindexer(linear(0), corpus, dtype=dtype, progress=False) as r:
        assert r.index.dtype == dtype and len(r.index) == N


def test_a_refresh_adds_chunks_as_they_come_into_a_reserved_index(corpus, monkeypatch):
    """The new index is sized once (reserve) and filled chunk by chunk: the refresh holds
    no list of the corpus's embeddings and no second float32 copy."""
    calls = []
    add = pyrag.DenseIndex.add

    def spy(self, vectors, ids=None):
        calls.append((len(self), tuple(vectors.shape), self._snap.packed.data_ptr()))
        return add(self, vectors, ids)

    with AsyncReindexer(linear(0), corpus, dtype="int8", chunk_size=50, progress=False) as r:
        monkeypatch.setattr(pyrag.DenseIndex, "add", spy)
        r.refresh(1)
        assert r.wait(30)
    assert [c[0] for c in calls] == list(range(0, N, 50)) and all(c[1] == (50, D) for c in calls)
    assert len({c[2] for c in calls}) == 1  # one buffer throughout: no regrowth


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda enc, chunk: enc(chunk)[:, :3], "dim 3 but the index in service has dim 8"),
        (lambda enc, chunk: enc(chunk)[:-1], r"for \d+ passages"),
        (lambda enc, chunk: enc(chunk) * float("nan"), "NaN or Inf"),
        (lambda enc, chunk: [1, 2], "list"),
    ],
)
def test_a_bad_refresh_is_never_published(corpus, bad, match):
    state = {"bad": False}

    def encode(enc, chunk):
        return bad(enc, chunk) if state["bad"] else enc(chunk)

    with AsyncReindexer(linear(0), corpus, encode=encode, dtype="int8", progress=False) as r:
        state["bad"] = True
        r.refresh(1)
        with pytest.raises(ReindexError, match=match):
            r.wait(30)
        assert r.version == 0 and r.index.dim == D
        r.index.search(torch.randn(1, D), 3)  # still serves


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_in_the_encoder_is_reported_and_never_wedges(corpus, exc):
    state = {"raise": False}

    def encode(enc, chunk):
        if state["raise"]:
            raise exc("stop")
        return enc(chunk)

    with AsyncReindexer(linear(0), corpus, encode=encode, progress=False) as r:
        state["raise"] = True
        r.refresh(1)
        with pytest.raises(ReindexError, match=exc.__name__):
            r.wait(30)
        assert not r.busy and r._worker.is_alive()
        state["raise"] = False
        r.refresh(2)
        assert r.wait(30) and r.version == 1


def test_concurrent_searches_on_an_int8_index_each_see_one_version(corpus):
    x = features(1500, seed=3)
    enc = linear(0)
    weights = {0: enc.weight.detach().clone()}
    queries = torch.randn(3, D, generator=torch.Generator().manual_seed(6))
    results, errors = [], []
    done = threading.Event()
    with AsyncReindexer(enc, x, dtype="int8", chunk_size=100, policy="queue", progress=False) as r:

        def hammer():
            try:
                while not done.is_set():
                    snap = r.index.snapshot()
                    results.append((snap.version, *snap.search(queries, 10)))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        for v in range(1, 7):
            with torch.no_grad():
                enc.weight.copy_(linear(v).weight)
            weights[v] = enc.weight.detach().clone()
            r.refresh(v)
            r.wait(30)
            time.sleep(0.01)
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    expected = {}
    for v, w in weights.items():
        index = pyrag.DenseIndex(D, "int8")
        index.add(x @ w.T)
        expected[v] = index.search(queries, 10)
    for version, scores, ids in results:
        matches = [v for v, (es, ei) in expected.items() if torch.equal(ei, ids) and torch.equal(es, scores)]
        assert matches == [version]
    assert len({v for v, _, _ in results}) >= 3
