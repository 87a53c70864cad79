"""pyrag.topk_scores against the reference (pyrag.reference.topk_scores).

Integer-valued float data makes every dot product exact in float32, so ids, order and
ties must agree bit for bit. On random float data, scores agree to 1e-5 relative.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import _C, reference

CPU_ISAS = _C.supported_cpu_isas()


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs the test on every CPU path this machine supports."""
    default = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(default)


def int_data(shape, low=-3, high=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).float()


def assert_matches_reference(q, x, k):
    s, i = pyrag.topk_scores(q, x, k, backend="cpu")
    rs, ri = reference.topk_scores(q, x, k)
    assert torch.equal(i, ri), f"ids differ:\n{i}\n{ri}"
    assert torch.equal(s, rs)


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 17])
@pytest.mark.parametrize("N", [1, 7, 64, 65, 300])
@pytest.mark.parametrize("d", [1, 15, 16, 17, 33, 384])
def test_exact_on_integer_data(cpu_isa, B, N, d):
    q, x = int_data((B, d), seed=1), int_data((N, d), seed=2)
    for k in sorted({1, 3, N, N + 5}):
        assert_matches_reference(q, x, k)


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_ties_go_to_smaller_id(cpu_isa, k):
    # Many duplicate rows: every score appears many times.
    base = int_data((5, 24), seed=3)
    x = base[torch.arange(200) % 5]
    q = int_data((6, 24), seed=4)
    assert_matches_reference(q, x, k)
    s, i = pyrag.topk_scores(q, x, k)
    for row_s, row_i in zip(s, i):
        for a in range(k - 1):
            assert row_s[a] > row_s[a + 1] or (row_s[a] == row_s[a + 1] and row_i[a] < row_i[a + 1])


def test_all_equal_scores_return_first_ids():
    x = torch.ones(1000, 8)
    s, i = pyrag.topk_scores(torch.ones(3, 8), x, 7)
    assert torch.equal(i, torch.arange(7).expand(3, 7))


def test_k_greater_than_n_pads():
    s, i = pyrag.topk_scores(int_data((2, 5)), int_data((3, 5)), 6)
    assert torch.equal(i[:, 3:], torch.full((2, 3), -1))
    assert torch.isinf(s[:, 3:]).all() and (s[:, 3:] < 0).all()


def test_empty_corpus_pads_everything():
    s, i = pyrag.topk_scores(torch.randn(2, 4), torch.empty(0, 4), 3)
    assert torch.equal(i, torch.full((2, 3), -1))


@pytest.mark.parametrize("B,N,d", [(1, 1000, 384), (16, 3001, 100), (33, 5000, 31)])
def test_random_float_data(cpu_isa, B, N, d):
    g = torch.Generator().manual_seed(B * N + d)
    q, x = torch.randn(B, d, generator=g), torch.randn(N, d, generator=g)
    s, i = pyrag.topk_scores(q, x, 10)
    rs, ri = reference.topk_scores(q, x, 10)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-5)
    # Ids may differ only where the reference's scores are within rounding of each other.
    exact = (q.double() @ x.double().T).gather(1, i)
    torch.testing.assert_close(exact.float(), rs, rtol=1e-5, atol=1e-5)


def test_strided_and_transposed_inputs():
    q = int_data((8, 40))[:, ::2]  # non-unit stride on d
    x = int_data((60, 200)).T[::3]  # transposed and sliced: [67, 60]
    x = x[:, :20]
    assert not q.is_contiguous() and not x.is_contiguous()
    assert_matches_reference(q, x, 9)


def test_one_dim_query_gives_one_dim_result():
    x = int_data((50, 16))
    s, i = pyrag.topk_scores(x[3], x, 4)
    assert s.shape == (4,) and i.shape == (4,)
    s2, i2 = pyrag.topk_scores(x[3:4], x, 4)
    assert torch.equal(i, i2[0])


def test_numpy_in_numpy_out():
    x = int_data((50, 16)).numpy()
    s, i = pyrag.topk_scores(x[:3], x, 5)
    assert isinstance(s, np.ndarray) and s.dtype == np.float32
    assert isinstance(i, np.ndarray) and i.dtype == np.int64
    rs, ri = reference.topk_scores(torch.from_numpy(x[:3]), torch.from_numpy(x), 5)
    assert np.array_equal(i, ri.numpy())


def test_threads_agree(monkeypatch):
    q, x = int_data((5, 64), seed=7), int_data((20000, 64), seed=8)
    results = []
    for n in (1, 2, 3):
        pyrag.set_num_threads(n)
        results.append(pyrag.topk_scores(q, x, 25))
    pyrag.set_num_threads(None)
    for s, i in results[1:]:
        assert torch.equal(i, results[0][1]) and torch.equal(s, results[0][0])


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 9),
    N=st.integers(1, 150),
    d=st.integers(1, 40),
    k=st.integers(1, 160),
    seed=st.integers(0, 2**31 - 1),
    span=st.integers(1, 4),
)
def test_property_matches_reference(B, N, d, k, seed, span):
    assert_matches_reference(int_data((B, d), -span, span + 1, seed), int_data((N, d), -span, span + 1, seed + 1), k)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_input(backend):
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="dim 7 but the corpus has dim 8"):
        pyrag.topk_scores(torch.randn(2, 7), x, 3, backend=backend)
    with pytest.raises(ValueError, match="k must be"):
        pyrag.topk_scores(torch.randn(2, 8), x, 0, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        pyrag.topk_scores(torch.randn(2, 2, 8), x, 3, backend=backend)
    with pytest.raises(ValueError, match="NaN or Inf"):
        pyrag.topk_scores(torch.full((1, 8), float("nan")), x, 3, backend=backend)
    with pytest.raises(TypeError):
        pyrag.topk_scores(torch.ones(2, 8, dtype=torch.int64), x, 3, backend=backend)


def test_nonfinite_corpus_is_an_error(cpu_isa):
    x = torch.randn(100, 8)
    x[57, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        pyrag.topk_scores(torch.randn(2, 8), x, 3)


def test_cpu_backend_never_converts_dtype():
    with pytest.raises(TypeError, match="float64"):
        pyrag.topk_scores(torch.randn(2, 8, dtype=torch.float64), torch.randn(10, 8), 3, backend="cpu")


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="unknown backend"):
        pyrag.topk_scores(torch.randn(2, 8), torch.randn(10, 8), 3, backend="gpu")
    with pytest.raises(pyrag.BackendUnavailableError):
        pyrag.topk_scores(torch.randn(2, 8), torch.randn(10, 8), 3, backend="cuda")


# ------------------------------------------------------------------ torch.library
def test_opcheck():
    q, x = torch.randn(3, 16), torch.randn(40, 16)
    torch.library.opcheck(torch.ops.pyrag.topk_scores.default, (q, x, 5, None, "cpu"))


def test_torch_compile_traces_the_op():
    x = int_data((500, 32), seed=9)

    @torch.compile(backend="eager", fullgraph=True)
    def search(q):
        s, i = torch.ops.pyrag.topk_scores(q * 2, x, 5, None, "auto")
        return s + 1, i

    q = int_data((4, 32), seed=10)
    s, i = search(q)
    rs, ri = reference.topk_scores(q * 2, x, 5)
    assert torch.equal(i, ri) and torch.equal(s, rs + 1)
