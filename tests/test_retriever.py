"""pyrag.Retriever: search without gradient, scores recomputed under autograd. The
gradients that reach the query encoder, and the passage encoder in re-embed mode, are
checked against finite differences of the whole retrieve-then-loss computation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag

DIM, Q_FEATURES, P_FEATURES, N = 8, 5, 6, 30


class PassageEncoder(torch.nn.Module):
    """A tiny passage encoder over texts "p<i>": passage i's features through a linear layer."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.proj = torch.nn.Linear(P_FEATURES, DIM, dtype=torch.float64)
        self.calls = []

    def forward(self, texts):
        self.calls.append(list(texts))
        return self.proj(self.features[[int(t[1:]) for t in texts]])


@pytest.fixture
def setup():
    torch.manual_seed(0)
    query_encoder = torch.nn.Linear(Q_FEATURES, DIM, dtype=torch.float64)
    passage_encoder = PassageEncoder(torch.randn(N, P_FEATURES, dtype=torch.float64))
    ids = torch.arange(N) * 7 + 3  # ids that are not row numbers
    index = pyrag.DenseIndex(DIM)
    with torch.no_grad():
        index.add(passage_encoder.proj(passage_encoder.features).float(), ids=ids)
    passages = {int(i): f"p{row}" for row, i in enumerate(ids)}
    queries = torch.randn(4, Q_FEATURES, dtype=torch.float64)
    return query_encoder, passage_encoder, index, passages, queries


def _loss(result, lm_scores, kind):
    if kind == "lsr":
        return pyrag.lsr_loss(result.scores, lm_scores, mask=result.mask, tau_retriever=result.tau, direction="reverse")
    return pyrag.marginal_nll(result.scores, lm_scores, mask=result.mask, tau_retriever=result.tau)


def _check_against_finite_differences(retriever, queries, k, modules, kind, eps=1e-6):
    g = torch.Generator().manual_seed(1)
    lm_scores = -3 * torch.rand(queries.shape[0], k, generator=g, dtype=torch.float64)
    result = retriever(queries, k)
    _loss(result, lm_scores, kind).backward()
    checked = 0
    for module in modules:
        for p in module.parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), "no gradient reached the encoder"
            for i in range(p.numel()):
                values = []
                for sign in (1, -1):
                    with torch.no_grad():
                        p.view(-1)[i] += sign * eps
                        shifted = retriever(queries, k)
                        values.append(_loss(shifted, lm_scores, kind).item())
                        p.view(-1)[i] -= sign * eps
                    # A step this small must not change which passages are retrieved.
                    assert torch.equal(shifted.ids, result.ids)
                fd = (values[0] - values[1]) / (2 * eps)
                assert math.isclose(p.grad.view(-1)[i].item(), fd, rel_tol=1e-5, abs_tol=1e-7), (i, p.shape)
                checked += 1
    assert checked > 0


@pytest.mark.parametrize("kind", ["lsr", "marginal"])
@pytest.mark.parametrize("score_scale", [None, DIM**-0.5])
def test_gradient_reaches_query_encoder(setup, kind, score_scale):
    query_encoder, passage_encoder, index, passages, queries = setup
    retriever = pyrag.Retriever(query_encoder, index, passages=passages, tau=0.5, score_scale=score_scale)
    _check_against_finite_differences(retriever, queries, 5, [query_encoder], kind)
    assert passage_encoder.proj.weight.grad is None  # stored vectors: the passage encoder is not used


@pytest.mark.parametrize("kind", ["lsr", "marginal"])
def test_gradient_reaches_both_encoders_when_reembedding(setup, kind):
    query_encoder, passage_encoder, index, passages, queries = setup
    retriever = pyrag.Retriever(query_encoder, index, passage_encoder=passage_encoder, passages=passages, tau=0.5)
    _check_against_finite_differences(retriever, queries, 5, [query_encoder, passage_encoder.proj], kind)


def test_stored_scores_equal_the_index_scores(setup):
    query_encoder, _, index, passages, queries = setup
    retriever = pyrag.Retriever(query_encoder, index, passages=passages)
    result = retriever(queries, 6)
    with torch.no_grad():
        scores, ids = index.search(query_encoder(queries).float(), 6)
    assert torch.equal(result.ids, ids)
    torch.testing.assert_close(result.scores.detach().float(), scores)
    assert result.passages == [[passages[i] for i in row] for row in ids.tolist()]
    assert result.index_version == index.version == 1 and result.mask.all()
    torch.testing.assert_close(result.probs().detach(), torch.softmax(result.scores.detach(), dim=1))


def test_reembedded_scores_use_the_live_encoder_and_encode_each_passage_once(setup):
    query_encoder, passage_encoder, index, passages, _ = setup
    retriever = pyrag.Retriever(query_encoder, index, passage_encoder=passage_encoder, passages=passages)
    queries = torch.randn(1, Q_FEATURES, dtype=torch.float64).repeat(3, 1)  # three identical queries
    with torch.no_grad():
        passage_encoder.proj.weight.mul_(2)  # the index is now stale
    result = retriever(queries, 4)
    assert len(passage_encoder.calls) == 1 and len(passage_encoder.calls[0]) == 4
    q = query_encoder(queries)
    live = passage_encoder.proj(passage_encoder.features)
    rows = [[int(passages[i][1:]) for i in row] for row in result.ids.tolist()]
    expected = torch.stack([live[r] @ q[b] for b, r in enumerate(rows)])
    torch.testing.assert_close(result.scores, expected)
    stored = retriever(queries, 4, reembed=False)
    assert not torch.allclose(stored.scores, result.scores)


def test_padding_when_k_exceeds_the_index(setup):
    query_encoder, passage_encoder, index, passages, queries = setup
    retriever = pyrag.Retriever(query_encoder, index, passage_encoder=passage_encoder, passages=passages)
    result = retriever(queries, N + 3)
    assert result.mask[:, :N].all() and not result.mask[:, N:].any()
    assert bool((result.ids[:, N:] == -1).all()) and bool(torch.isneginf(result.scores[:, N:]).all())
    assert all(row[N:] == [None] * 3 for row in result.passages)
    loss = pyrag.lsr_loss(result.scores, torch.zeros(4, N + 3, dtype=torch.float64), mask=result.mask)
    loss.backward()
    assert bool(torch.isfinite(query_encoder.weight.grad).all())


def test_default_ids_and_sequence_passages():
    torch.manual_seed(0)
    index = pyrag.DenseIndex(4)
    vectors = torch.randn(10, 4)
    index.add(vectors)
    texts = [f"passage {i}" for i in range(10)]
    retriever = pyrag.Retriever(None, index, passages=texts)
    q = torch.randn(2, 4, requires_grad=True)
    result = retriever(q, 3)
    torch.testing.assert_close(result.scores, torch.stack([vectors[r] @ q[b] for b, r in enumerate(result.ids)]))
    assert result.passages[0] == [texts[i] for i in result.ids[0].tolist()]
    result.scores.sum().backward()
    assert q.grad is not None
    assert retriever(torch.randn(4), 2).ids.shape == (1, 2)  # a single query


def test_reports_the_version_of_the_snapshot_it_searched(setup):
    query_encoder, _, index, passages, queries = setup
    versioned = pyrag.VersionedIndex(index, version=7, step=3)
    assert pyrag.Retriever(query_encoder, versioned)(queries, 2).index_version == 7
    versioned.swap(index, step=4)
    assert pyrag.Retriever(query_encoder, versioned)(queries, 2).index_version == 8
    before = index.version
    index.add(torch.randn(1, index.dim))
    assert pyrag.Retriever(query_encoder, index)(queries, 2).index_version == before + 1


def test_bad_input(setup):
    query_encoder, passage_encoder, index, passages, queries = setup
    with pytest.raises(ValueError, match="needs their texts"):
        pyrag.Retriever(query_encoder, index, passage_encoder=passage_encoder)
    with pytest.raises(ValueError, match="tau"):
        pyrag.Retriever(query_encoder, index, tau=0.0)
    with pytest.raises(ValueError, match="score_scale"):
        pyrag.Retriever(query_encoder, index, score_scale=-1.0)
    with pytest.raises(TypeError, match="DenseIndex"):
        pyrag.Retriever(query_encoder, object())
    retriever = pyrag.Retriever(query_encoder, index, passages=passages)
    with pytest.raises(ValueError, match="reembed=True needs a passage_encoder"):
        retriever(queries, 2, reembed=True)
    with pytest.raises(ValueError, match="index has dim 8"):
        retriever.retrieve(torch.randn(2, 3), 2)
    with pytest.raises(TypeError, match="floating"):
        pyrag.Retriever(None, index)(["a text"], 2)
    with pytest.raises(ValueError, match="k must be"):
        retriever(queries, 0)
    missing = pyrag.Retriever(query_encoder, index, passages={})
    with pytest.raises(KeyError, match="not in passages"):
        missing(queries, 2)


# ----------------------------------------------------------------------------- every dtype
def _index_of(dtype, n=600, dim=DIM, user_ids=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, dim), generator=g).float()
    index = pyrag.DenseIndex(dim, dtype)
    ids = torch.randperm(n, generator=g) * 5 + 2 if user_ids else None
    index.add(x, ids)
    return index, x


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("user_ids", [False, True])
@pytest.mark.parametrize("removals", [False, True])
def test_every_dtype_ids_match_the_search_and_scores_are_q_dot_get(dtype, user_ids, removals):
    index, _ = _index_of(dtype, user_ids=user_ids)
    if removals:
        index.remove(index.ids[::7])
    query_encoder = torch.nn.Linear(Q_FEATURES, DIM)
    queries = torch.randn(5, Q_FEATURES)
    retriever = pyrag.Retriever(query_encoder, index, score_scale=0.5)
    result = retriever(queries, 9)
    q = query_encoder(queries)
    with torch.no_grad():
        scores, ids = index.search(q.float(), 9)
    assert torch.equal(result.ids, ids) and result.mask.all()
    expected = (q.unsqueeze(1) * index.get(ids)).sum(-1) * 0.5
    torch.testing.assert_close(result.scores, expected)
    # The index's own scores round the query like its rows (bf16, int8): they agree
    # with q · get(ids) to that rounding, and exactly for float32.
    tol = {"float32": 1e-5, "bfloat16": 2e-2, "int8": 5e-2}[dtype]
    torch.testing.assert_close(result.scores.detach(), scores * 0.5, rtol=tol, atol=tol * float(scores.abs().max()))
    result.scores.sum().backward()
    assert query_encoder.weight.grad is not None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_padding_of_every_dtype_when_k_exceeds_the_index(dtype):
    index, _ = _index_of(dtype, n=4)
    result = pyrag.Retriever(None, index)(torch.randn(2, DIM), 6)
    assert result.mask.sum(1).tolist() == [4, 4] and (result.ids[:, 4:] == -1).all()
    assert torch.isinf(result.scores[:, 4:]).all() and torch.isfinite(result.scores[:, :4]).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_a_call_reads_k_rows_never_the_corpus(dtype, monkeypatch):
    from pyrag.index import packed

    index, _ = _index_of(dtype, n=5000)

    def full_read(*args, **kwargs):
        raise AssertionError("the Retriever read the whole corpus")

    monkeypatch.setattr(packed, "unpack_rows", full_read)
    monkeypatch.setattr(pyrag.DenseIndex, "vectors", full_read)
    result = pyrag.Retriever(None, index)(torch.randn(3, DIM), 32)
    assert result.ids.shape == (3, 32)


@given(st.data())
@settings(max_examples=30, deadline=None)
def test_property_ids_are_the_search_and_scores_are_q_dot_get(data):
    dtype = data.draw(st.sampled_from(["float32", "bfloat16", "int8"]))
    n = data.draw(st.integers(1, 80))
    k = data.draw(st.integers(1, 12))
    b = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 10_000))
    index, _ = _index_of(dtype, n=n, user_ids=data.draw(st.booleans()), seed=seed)
    q = torch.randn(b, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    result = pyrag.Retriever(None, index)(q, k)
    _, ids = index.search(q.float(), k)
    assert torch.equal(result.ids, ids)
    valid = ids >= 0
    expected = (q.unsqueeze(1) * index.get(ids).double()).sum(-1)
    torch.testing.assert_close(result.scores[valid], expected[valid])
    assert torch.isinf(result.scores[~valid]).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_over_a_versioned_index_while_refreshes_swap_it(dtype):
    first, _ = _index_of(dtype, seed=1)
    second, _ = _index_of(dtype, seed=2)
    versioned = pyrag.VersionedIndex(first)
    retriever = pyrag.Retriever(None, versioned)
    q = torch.randn(2, DIM)
    before = retriever(q, 5)
    versioned.swap(second, step=3)
    after = retriever(q, 5)
    assert (before.index_version, after.index_version) == (0, 1)
    torch.testing.assert_close(after.scores, (q.unsqueeze(1) * second.get(after.ids)).sum(-1))
