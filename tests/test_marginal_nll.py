"""pyrag.marginal_nll and the ops under it (pyrag::marginal_nll, pyrag::marginal_nll_backward)
against pyrag.reference, in the sequence form [B, K] and the token form [B, K, T]."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import reference

# Backends that run on CPU tensors in every build (the Triton and CUDA-emulation test
# files cover theirs against the same reference).
BACKENDS = ["cpu", "reference"]
KS = [1, 2, 3, 7, 64, 129, 1024]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 1.6e-2), (torch.float16, 2e-3, 2e-3)]
TAU = 0.8


def make_inputs(b, k, t=None, dtype=torch.float32, *, masked=True, seed=0):
    """Retriever scores [b, k], LM log-probs [b, k] or [b, k, t], a context mask with one
    empty row and a token mask; masked entries hold garbage (-inf, NaN) the ops must
    never read."""
    g = torch.Generator().manual_seed(seed)
    s = 3 * torch.randn(b, k, generator=g)
    shape = (b, k) if t is None else (b, k, t)
    lm = -torch.rand(shape, generator=g) * 6  # log-probs <= 0
    if not masked:
        return s.to(dtype), lm.to(dtype), None, None
    mask = torch.rand(b, k, generator=g) < 0.7
    mask[:, 0] = True
    if b > 1:
        mask[1] = False
    s = s.masked_fill(~mask & (torch.rand(b, k, generator=g) < 0.5), float("-inf"))
    ctx_masked = ~mask if t is None else ~mask.unsqueeze(-1).expand(shape)
    lm = lm.masked_fill(ctx_masked & (torch.rand(shape, generator=g) < 0.5), float("nan"))
    token_mask = None
    if t is not None:
        token_mask = torch.rand(b, t, generator=g) < 0.75
        token_mask[0] = True
        lm = lm.masked_fill(~token_mask.unsqueeze(1) & (torch.rand(shape, generator=g) < 0.5), float("inf"))
    return s.to(dtype), lm.to(dtype), mask, token_mask


# ------------------------------------------------------------------ forward vs reference
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("tokens", [None, 1, 5])
@pytest.mark.parametrize("masked", [False, True])
def test_marginal_nll_matches_reference(backend, dtype, atol, rtol, k, tokens, masked):
    s, lm, mask, token_mask = make_inputs(5, k, tokens, dtype, masked=masked)
    out = torch.ops.pyrag.marginal_nll(s, lm, TAU, mask, token_mask, backend)
    assert out.dtype == dtype and out.shape == (5,)
    torch.testing.assert_close(out, reference.marginal_nll(s, lm, TAU, mask, token_mask), atol=atol, rtol=rtol)
    if masked:
        assert out[1].item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("tokens", [None, 5])
def test_marginal_nll_gradients_match_autograd_of_reference(backend, dtype, atol, rtol, k, tokens):
    s, lm, mask, token_mask = make_inputs(6, k, tokens, dtype)
    grad_out = torch.randn(6).to(dtype)
    s1, lm1 = s.clone().requires_grad_(), lm.clone().requires_grad_()
    torch.ops.pyrag.marginal_nll(s1, lm1, TAU, mask, token_mask, backend).backward(grad_out)
    s2, lm2 = s.clone().requires_grad_(), lm.clone().requires_grad_()
    reference.marginal_nll(s2, lm2, TAU, mask, token_mask).backward(grad_out)
    assert s1.grad.dtype == dtype and lm1.grad.dtype == dtype
    torch.testing.assert_close(s1.grad, s2.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(lm1.grad, lm2.grad, atol=atol, rtol=rtol)
    assert bool(torch.isfinite(lm1.grad).all()), "garbage in masked entries must not leak into gradients"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [None, 4])
def test_backward_op_matches_closed_form_reference(backend, tokens):
    s, lm, mask, token_mask = make_inputs(4, 9, tokens)
    grad = torch.randn(4)
    got = torch.ops.pyrag.marginal_nll_backward(grad, s, lm, TAU, mask, token_mask, backend)
    expected = reference.marginal_nll_backward(grad, s, lm, TAU, mask, token_mask)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("tokens", [None, 4])
def test_closed_form_reference_backward_is_autograd_of_reference(tokens):
    s, lm, mask, token_mask = make_inputs(4, 9, tokens, torch.float64)
    grad = torch.randn(4, dtype=torch.float64)
    x, y = s.clone().requires_grad_(), lm.clone().requires_grad_()
    auto = torch.autograd.grad(reference.marginal_nll(x, y, TAU, mask, token_mask), (x, y), grad)
    closed = reference.marginal_nll_backward(grad, s, lm, TAU, mask, token_mask)
    for a, c in zip(auto, closed, strict=True):
        torch.testing.assert_close(c, a)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5),
    k=st.integers(1, 30),
    t=st.one_of(st.none(), st.integers(0, 6)),
    tau=st.floats(1e-2, 10),
    seed=st.integers(0, 2**16),
)
def test_marginal_nll_cpu_matches_reference_property(b, k, t, tau, seed):
    s, lm, mask, token_mask = make_inputs(b, k, t, seed=seed)
    out = torch.ops.pyrag.marginal_nll(s, lm, tau, mask, token_mask, "cpu")
    torch.testing.assert_close(out, reference.marginal_nll(s, lm, tau, mask, token_mask), atol=1e-4, rtol=1e-4)
    # log-probs <= 0 make every likelihood <= 1, so the NLL is never negative.
    assert bool((out > -1e-4).all())


# ------------------------------------------------------------------ meaning
def test_one_context_gives_the_lm_nll():
    lm = -torch.rand(4, 1) * 5
    torch.testing.assert_close(pyrag.marginal_nll(torch.randn(4, 1), lm, reduction="none"), -lm[:, 0])


def test_single_token_form_equals_sequence_form():
    s, lm, mask, _ = make_inputs(5, 8)
    torch.testing.assert_close(
        pyrag.marginal_nll(s, lm.unsqueeze(-1), mask=mask, reduction="none"),
        pyrag.marginal_nll(s, lm, mask=mask, reduction="none"),
    )


def test_zero_padded_tokens_contribute_nothing():
    # GeneratorAdapter.score(reduction="none") pads short targets with log-prob 0: a
    # certain token under every context, whose marginal is log 1 = 0 with zero gradient.
    s, lm, mask, _ = make_inputs(3, 6, 4)
    lm = lm.nan_to_num(0.0)
    padded = torch.cat([lm, torch.zeros(3, 6, 2)], dim=-1)
    x1, x2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    a = pyrag.marginal_nll(x1, padded, mask=mask, reduction="sum")
    b = pyrag.marginal_nll(x2, lm, mask=mask, reduction="sum")
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    s, lm, mask, token_mask = make_inputs(5, 12, 3)
    per_row = reference.marginal_nll(s, lm, 1.0, mask, token_mask)
    expected = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    torch.testing.assert_close(
        pyrag.marginal_nll(s, lm, mask=mask, token_mask=token_mask, reduction=reduction), expected
    )


# ------------------------------------------------------------------ gradcheck and opcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [None, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(backend, tokens, masked):
    s, lm, mask, token_mask = make_inputs(4, 5, tokens, torch.float64, masked=masked)
    x = s.nan_to_num(0.0, neginf=0.0).requires_grad_()
    y = lm.nan_to_num(0.0, posinf=0.0).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: pyrag.marginal_nll(
            a, b, tau_retriever=0.6, mask=mask, token_mask=token_mask, reduction="none", backend=backend
        ),
        (x, y),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tokens", [None, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(backend, dtype, tokens, masked):
    s, lm, mask, token_mask = make_inputs(3, 4, tokens, dtype, masked=masked)
    s = s.nan_to_num(0.0, neginf=0.0).requires_grad_()
    lm = lm.nan_to_num(0.0, posinf=0.0).requires_grad_()
    torch.library.opcheck(torch.ops.pyrag.marginal_nll.default, (s, lm, 0.7, mask, token_mask, backend))
    torch.library.opcheck(
        torch.ops.pyrag.marginal_nll_backward.default,
        (torch.randn(3, dtype=dtype), s.detach(), lm.detach(), 0.7, mask, token_mask, backend),
    )


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [None, 3, 0])
def test_all_masked_rows_give_zero_without_nan(backend, tokens):
    s, lm, _, _ = make_inputs(3, 6, tokens)
    x, y = s.requires_grad_(), lm.requires_grad_()
    loss = pyrag.marginal_nll(x, y, mask=torch.zeros(3, 6, dtype=torch.bool), reduction="none", backend=backend)
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0, 0.0]
    assert bool((x.grad == 0).all()) and bool((y.grad == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [None, 2])
def test_stable_at_large_scores_and_small_tau(backend, dtype, tokens):
    s = torch.tensor([[1e4, -1e4, 9999.99, 0.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, 3.0, -1e4]])
    lm = torch.tensor([[-3.0, -1e4, -2.0, 0.0], [-1e4, -1e4, -1e4, -1e4], [-1e4, -5.0, 0.0, -0.5]])
    if tokens:
        lm = torch.stack([lm, lm.flip(-1)], dim=-1)
    x, y = s.to(dtype).requires_grad_(), lm.to(dtype).requires_grad_()
    loss = pyrag.marginal_nll(x, y, tau_retriever=1e-3, reduction="none", backend=backend)
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all())
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())
    truth = reference.marginal_nll(s.to(dtype).double(), lm.to(dtype).double(), 1e-3)
    torch.testing.assert_close(loss.double(), truth.to(dtype).double(), rtol=2e-2, atol=1e-2)


def test_empty_batch_and_no_tokens():
    assert pyrag.marginal_nll(torch.empty(0, 3), torch.empty(0, 3)).item() == 0
    x = torch.randn(2, 3, requires_grad=True)
    loss = pyrag.marginal_nll(x, torch.empty(2, 3, 0), reduction="none")
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0] and bool((x.grad == 0).all())


def test_mixed_dtypes_promote():
    s = torch.randn(2, 5, requires_grad=True)
    lm = (-torch.rand(2, 5, 3)).to(torch.bfloat16).requires_grad_()
    loss = pyrag.marginal_nll(s, lm, reduction="none")
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert s.grad.dtype == torch.float32 and lm.grad.dtype == torch.bfloat16


def test_cpu_kernel_threads_give_identical_results():
    s, lm, mask, token_mask = make_inputs(128, 100, 16)
    try:
        pyrag.set_num_threads(1)
        one = pyrag.marginal_nll(s, lm, mask=mask, token_mask=token_mask, reduction="none", backend="cpu")
        pyrag.set_num_threads(4)
        four = pyrag.marginal_nll(s, lm, mask=mask, token_mask=token_mask, reduction="none", backend="cpu")
    finally:
        pyrag.set_num_threads(None)
    assert torch.equal(one, four)


def test_noncontiguous_inputs():
    s, lm, mask, token_mask = make_inputs(4, 6, 3)
    lm_t = lm.transpose(1, 2).contiguous().transpose(1, 2)
    assert not lm_t.is_contiguous()
    torch.testing.assert_close(
        pyrag.marginal_nll(s, lm_t, mask=mask, token_mask=token_mask, reduction="none", backend="cpu"),
        reference.marginal_nll(s, lm, 1.0, mask, token_mask),
    )


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("tau", [0.0, -2.0, math.nan, math.inf])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau_retriever"):
        pyrag.marginal_nll(torch.randn(2, 3), torch.randn(2, 3), tau_retriever=tau)


@pytest.mark.parametrize(
    "s_shape,lm_shape",
    [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((2, 3), (2, 4, 5)), ((2, 3), (2,)), ((2, 3), (2, 3, 4, 5))],
)
def test_shape_mismatch(s_shape, lm_shape):
    with pytest.raises(ValueError, match="shape|lm_logprobs must be"):
        pyrag.marginal_nll(torch.randn(s_shape), torch.randn(lm_shape))


def test_bad_token_mask():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="token_mask needs per-token"):
        pyrag.marginal_nll(s, torch.randn(2, 3), token_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_mask has shape"):
        pyrag.marginal_nll(s, torch.randn(2, 3, 4), token_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="token_mask must be a bool"):
        pyrag.marginal_nll(s, torch.randn(2, 3, 4), token_mask=torch.ones(2, 4))


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        pyrag.marginal_nll(torch.randn(2, 3), torch.randn(2, 3), reduction="batchmean")


def test_non_finite_valid_entries_are_rejected():
    lm = -torch.rand(2, 3, 4)
    lm[0, 1, 2] = float("-inf")
    with pytest.raises(ValueError, match=r"lm_logprobs hold NaN or Inf at the valid entry \(0, 1, 2\)"):
        pyrag.marginal_nll(torch.randn(2, 3), lm)
    token_mask = torch.ones(2, 4, dtype=torch.bool)
    token_mask[0, 2] = False
    assert bool(torch.isfinite(pyrag.marginal_nll(torch.randn(2, 3), lm, token_mask=token_mask)))


def test_torch_compile_traces_marginal_nll_and_its_backward():
    """The public loss under torch.compile(fullgraph=True): no graph break, and the same
    value and gradients (both inputs) as the reference."""
    g = torch.Generator().manual_seed(22)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    lp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4

    @torch.compile(backend="eager", fullgraph=True)
    def loss(scores, logprobs):
        return pyrag.marginal_nll(scores, logprobs + 0, tau_retriever=0.5)

    a, b = s.clone().requires_grad_(), lp.clone().requires_grad_()
    got = loss(a, b)
    got.backward()
    ra, rb = s.clone().requires_grad_(), lp.clone().requires_grad_()
    want = reference.marginal_nll(ra, rb, 0.5, None, None).mean()
    want.backward()
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(a.grad, ra.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(b.grad, rb.grad, rtol=1e-12, atol=1e-12)
