"""pyrag.eval: the per-query measures agree with ir-measures (trec_eval's implementations,
the oracle), evaluation runs in eval mode without gradient and restores the caller's
modes, answer judgements match a brute-force scan, and the paired bootstrap interval is
the percentile interval it claims to be (against scipy's) and covers the true mean about
as often as its confidence says."""

from __future__ import annotations

import random

import ir_measures
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_measures import RR, R, Success, nDCG

import pyrag
from pyrag.eval import eval_mode, evaluate, paired_bootstrap, relevant_passages, score_run, standard_error
from pyrag.train import Example
from pyrag.train.example import words

# Small tensors: one torch thread (tests/conftest.py), or OpenMP barriers dominate on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def oracle(ids: torch.Tensor, relevant, k: int) -> dict[str, list[float]]:
    """ir-measures' R@k, Success@k, RR@k and nDCG@k per query (every query has a hit list
    and at least one relevant passage)."""
    qrels = [ir_measures.Qrel(str(q), str(d), 1) for q, rel in enumerate(relevant) for d in rel]
    run = [
        ir_measures.ScoredDoc(str(q), str(d), float(len(row) - r))  # strictly decreasing: no ties
        for q, row in enumerate(ids.tolist())
        for r, d in enumerate(row)
        if d >= 0
    ]
    names = {R @ k: "recall", Success @ k: "success", RR @ k: "mrr", nDCG @ k: "ndcg"}
    out = {name: [0.0] * len(relevant) for name in names.values()}
    for m in ir_measures.iter_calc(list(names), qrels, run):
        out[names[m.measure]][int(m.query_id)] = m.value
    return out


def random_run(rng: random.Random, n_queries: int, depth: int, pool: int):
    ids, relevant = [], []
    for _ in range(n_queries):
        row = rng.sample(range(pool), depth)
        pad = rng.randint(0, depth // 3)  # some queries got fewer hits than k
        ids.append(row[: depth - pad] + [-1] * pad)
        relevant.append(frozenset(rng.sample(range(pool), rng.randint(1, 6))))
    return torch.tensor(ids), relevant


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measures_match_ir_measures(k, seed):
    rng = random.Random(seed)
    ids, relevant = random_run(rng, 60, 10, 25)
    ours = score_run(ids, relevant, k)
    theirs = oracle(ids[:, :k], relevant, k)
    for name, values in theirs.items():
        torch.testing.assert_close(ours.measure(name), torch.tensor(values, dtype=torch.float64), msg=name)
    assert ours.k == k and ours.ids.shape == (60, k)
    assert ours.n_relevant.tolist() == [len(r) for r in relevant]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 12), min_size=1, max_size=8, unique=True),
            st.frozensets(st.integers(0, 12), min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 8),
)
def test_measures_match_ir_measures_on_any_run(rows, k):
    depth = max(len(r) for r, _ in rows)
    k = min(k, depth)
    ids = torch.tensor([r + [-1] * (depth - len(r)) for r, _ in rows])
    relevant = [rel for _, rel in rows]
    ours = score_run(ids, relevant, k)
    theirs = oracle(ids[:, :k], relevant, k)
    for name, values in theirs.items():
        torch.testing.assert_close(ours.measure(name), torch.tensor(values, dtype=torch.float64), msg=name)


def test_edge_cases_of_the_measures():
    # A query with no relevant passage scores 0 everywhere; padding is never relevant.
    out = score_run(torch.tensor([[4, 2, -1], [-1, -1, -1], [7, 8, 9]]), [frozenset(), {-1, 3}, {9, 7}], 3)
    assert out.recall.tolist() == [0.0, 0.0, 1.0]
    assert out.success.tolist() == [0.0, 0.0, 1.0] and out.mrr.tolist() == [0.0, 0.0, 1.0]
    assert out.ndcg[2].item() == pytest.approx((1 + 1 / 2) / (1 + 1 / torch.log2(torch.tensor(3.0)).item()))
    # More relevant passages than k: the ideal DCG counts only k of them.
    full = score_run(torch.tensor([[1, 2]]), [{1, 2, 3, 4}], 2)
    assert full.ndcg.item() == pytest.approx(1.0) and full.recall.item() == 0.5
    assert set(full.means()) == {"recall@2", "success@2", "mrr@2", "ndcg@2"}
    with pytest.raises(ValueError, match="k must be"):
        score_run(torch.tensor([[1, 2]]), [{1}], 3)
    with pytest.raises(ValueError, match="rows"):
        score_run(torch.tensor([[1, 2]]), [{1}, {2}])
    with pytest.raises(TypeError):
        score_run(torch.tensor([[1.0, 2.0]]), [{1}])
    with pytest.raises(ValueError, match="measure"):
        full.measure("map")


# ----------------------------------------------------------------------------- judgements
PASSAGES = [
    "The quick brown fox jumps.",
    "A lazy dog sleeps all day.",
    "Brown dogs and brown foxes.",
    "Nothing here at all.",
]


def test_answer_judgements_are_every_passage_holding_the_answer():
    examples = [Example("q ____", "brown", 0), Example("q ____", "lazy dog", 1), Example("q ____", "zebra", 2)]
    got = relevant_passages(examples, "answer", PASSAGES)
    brute = [frozenset(i for i, p in enumerate(PASSAGES) if set(words(e.answer)) <= set(words(p))) for e in examples]
    assert got == brute == [frozenset({0, 2}), frozenset({1}), frozenset()]
    assert relevant_passages(examples, "answer", dict(enumerate(PASSAGES))) == got  # a mapping id -> text
    assert relevant_passages(examples) == [frozenset({0}), frozenset({1}), frozenset({2})]
    with pytest.raises(ValueError, match="positive"):
        relevant_passages([Example("q", "a")])
    with pytest.raises(ValueError, match="passage texts"):
        relevant_passages(examples, "answer")
    with pytest.raises(ValueError, match="match"):
        relevant_passages(examples, "gold")


# ----------------------------------------------------------------------------- evaluate
class NoisyEncoder(torch.nn.Module):
    """Hashed bag of words with dropout: different on every call in train mode."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(64, 16)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(64, 16, generator=g))
        self.inner = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(16, 16))

    def forward(self, texts):
        rows = [self.embed(torch.tensor([hash(w) % 64 for w in words(t)] or [0])).mean(0) for t in texts]
        return torch.nn.functional.normalize(self.inner(torch.stack(rows)), dim=-1)


def make_retriever():
    torch.manual_seed(0)
    encoder = NoisyEncoder()
    passages = [f"topic{i % 7} word{i} common" for i in range(50)]
    index = pyrag.DenseIndex(16)
    with torch.no_grad():
        encoder.eval()
        index.add(encoder(passages))
    return pyrag.Retriever(encoder, index, passages=passages), passages


def test_evaluate_runs_in_eval_mode_without_gradient_and_restores_modes():
    retriever, passages = make_retriever()
    encoder = retriever.query_encoder
    queries = [f"topic{i % 7} word{i}" for i in range(0, 50, 3)]
    relevant = [frozenset({i}) for i in range(0, 50, 3)]
    encoder.train()
    encoder.inner[1].eval()  # a mixed state the caller chose: it comes back as it was
    first = evaluate(retriever, queries, relevant, k=5, batch_size=4)
    second = evaluate(retriever, queries, relevant, k=5, batch_size=7)
    assert torch.equal(first.ids, second.ids)  # no dropout: the same ranking every time
    assert encoder.training and encoder.inner.training and encoder.inner[0].training
    assert not encoder.inner[1].training
    # It is what a search in eval mode gives.
    encoder.eval()
    with torch.no_grad():
        _, ids = retriever.index.search(encoder(queries), 5)
    assert torch.equal(first.ids, ids)
    assert torch.equal(first.success, score_run(ids, relevant, 5).success)
    # In train mode two encodings differ: the evaluation really switched.
    encoder.train()
    assert not torch.equal(encoder(queries[:4]), encoder(queries[:4]))
    # The result never carries gradient, and grad mode is restored.
    assert not first.recall.requires_grad and torch.is_grad_enabled()


def test_eval_mode_restores_modes_when_the_body_fails():
    retriever, _ = make_retriever()
    encoder = retriever.query_encoder
    encoder.train()
    with pytest.raises(RuntimeError), eval_mode(encoder, None, "not a module"):
        assert not encoder.training and not torch.is_grad_enabled()
        raise RuntimeError
    assert encoder.training and torch.is_grad_enabled()


def test_evaluate_rejects_bad_input():
    retriever, _ = make_retriever()
    with pytest.raises(ValueError, match="at least one"):
        evaluate(retriever, [], [])
    with pytest.raises(ValueError, match="relevance sets"):
        evaluate(retriever, ["a"], [])
    with pytest.raises(ValueError, match="k must"):
        evaluate(retriever, ["a"], [{1}], k=0)


def test_recall_at_k_is_evaluated_in_eval_mode():
    retriever, passages = make_retriever()
    retriever.query_encoder.train()
    examples = [Example(f"topic{i % 7} word{i}", f"word{i}", i) for i in range(0, 50, 2)]
    values = {pyrag.train.recall_at_k(retriever, examples, 3) for _ in range(4)}
    assert len(values) == 1 and retriever.query_encoder.training


# ----------------------------------------------------------------------------- bootstrap
def test_paired_bootstrap_of_a_constant_difference_is_that_constant():
    a = torch.rand(50, generator=torch.Generator().manual_seed(0))
    ci = paired_bootstrap(a, a + 0.25)
    assert ci.mean == pytest.approx(0.25) and ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)
    assert (ci.gained, ci.lost, ci.tied, ci.n_queries) == (50, 0, 0, 50)


def test_paired_bootstrap_is_the_percentile_interval_scipy_computes():
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(400, generator=g) < 0.55).double()
    b = torch.where(torch.rand(400, generator=g) < 0.2, 1 - a, a)  # 20% of queries flip
    ours = paired_bootstrap(a, b, n_resamples=20_000, seed=3)
    theirs = scipy.stats.bootstrap(
        (a.numpy(), b.numpy()),
        lambda x, y, axis: (y - x).mean(axis=axis),
        paired=True,
        n_resamples=20_000,
        method="percentile",
        random_state=0,
    ).confidence_interval
    # Two Monte Carlo estimates of the same quantiles: within a few thousandths.
    assert ours.low == pytest.approx(theirs.low, abs=0.004)
    assert ours.high == pytest.approx(theirs.high, abs=0.004)
    assert ours.low < ours.mean < ours.high
    assert paired_bootstrap(a, b, n_resamples=20_000, seed=3) == ours  # deterministic per seed
    assert ours.gained + ours.lost + ours.tied == 400 and ours.gained == int(((b - a) > 0).sum())


def test_paired_bootstrap_covers_the_true_mean_at_its_confidence():
    """Queries drawn from a population with a known mean gain of 0.085: the 90% interval
    holds it in about 90% of 200 draws (binomial sd 2.1 points)."""
    g = torch.Generator().manual_seed(2)
    covered = 0
    for trial in range(200):
        a = (torch.rand(150, generator=g) < 0.5).double()
        b = torch.clamp(a + (torch.rand(150, generator=g) < 0.3).double(), max=1.0)
        b = torch.where(torch.rand(150, generator=g) < 0.1, 0.0, b)
        # b = 1 iff (a = 1 or u < 0.3) and v >= 0.1: P(b = 1) = 0.9 * 0.65, E[b - a] = 0.585 - 0.5
        ci = paired_bootstrap(a, b, confidence=0.9, n_resamples=500, seed=trial)
        covered += ci.low <= 0.085 <= ci.high
    assert 0.83 <= covered / 200 <= 0.96, covered


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap([0.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([0.0, 1.0], [1.0, 1.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([0.0, 1.0], [1.0, 1.0], n_resamples=10)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([0.0, float("nan")], [1.0, 1.0])
    assert standard_error([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.2886751, rel=1e-6)


def test_evaluate_takes_embeddings_for_a_retriever_without_encoder():
    index = pyrag.DenseIndex(4)
    index.add(torch.eye(4))
    out = evaluate(pyrag.Retriever(None, index), torch.eye(4)[[2, 0, 3]], [{2}, {1}, {3}], k=1, batch_size=2)
    assert out.ids.flatten().tolist() == [2, 0, 3] and out.success.tolist() == [1.0, 0.0, 1.0]
