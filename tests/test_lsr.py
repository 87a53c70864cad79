"""pyrag.lsr_weights / pyrag.lsr_loss and the ops under them (pyrag::lsr_weights,
pyrag::lsr_kl, pyrag::lsr_kl_backward) against pyrag.reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import reference

# Backends that run on CPU tensors in every build. The Triton and CUDA-emulation test
# files cover their own backends against the same reference.
BACKENDS = ["cpu", "reference"]
KS = [1, 2, 3, 7, 64, 129, 1024]
# (dtype, atol, rtol): outputs are computed in float32 and rounded to the input dtype.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-2, 1.6e-2), (torch.float16, 2e-3, 2e-3)]
TAUS = (0.7, 1.9)  # tau_retriever, tau_lm


def make_inputs(b, k, dtype=torch.float32, *, masked=True, seed=0):
    """Retriever and LM scores [b, k], and a mask with one empty row whose masked
    entries hold garbage (-inf, NaN) that the ops must never read."""
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(b, k, generator=g)).to(dtype)
    lm = (2 * torch.randn(b, k, generator=g) - 5).to(dtype)
    if not masked:
        return s, lm, None
    mask = torch.rand(b, k, generator=g) < 0.7
    mask[:, 0] = True
    if b > 1:
        mask[1] = False  # a row with no valid context
    s = s.masked_fill(~mask & (torch.rand(b, k, generator=g) < 0.5), float("-inf"))
    lm = lm.masked_fill(~mask & (torch.rand(b, k, generator=g) < 0.5), float("nan"))
    return s, lm, mask


# ------------------------------------------------------------------ forward vs reference
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("masked", [False, True])
def test_lsr_weights_matches_reference(backend, dtype, atol, rtol, k, masked):
    _, lm, mask = make_inputs(5, k, dtype, masked=masked)
    out = pyrag.lsr_weights(lm, TAUS[1], mask, backend=backend)
    assert out.dtype == dtype and out.shape == lm.shape
    torch.testing.assert_close(out, reference.lsr_weights(lm, TAUS[1], mask), atol=atol, rtol=rtol)
    if mask is not None:
        assert bool((out[~mask] == 0).all())
        assert bool((out[1] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("masked", [False, True])
def test_lsr_kl_matches_reference(backend, dtype, atol, rtol, k, direction, masked):
    s, lm, mask = make_inputs(5, k, dtype, masked=masked)
    out = torch.ops.pyrag.lsr_kl(s, lm, *TAUS, mask, direction, backend)
    assert out.dtype == dtype and out.shape == (5,)
    expected = reference.lsr_kl(s, lm, *TAUS, mask, direction)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    if mask is not None:
        assert out[1].item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lsr_kl_gradient_matches_autograd_of_reference(backend, dtype, atol, rtol, k, direction):
    s, lm, mask = make_inputs(6, k, dtype)
    grad_out = torch.randn(6).to(dtype)
    s1 = s.clone().requires_grad_()
    torch.ops.pyrag.lsr_kl(s1, lm, *TAUS, mask, direction, backend).backward(grad_out)
    s2 = s.clone().requires_grad_()
    reference.lsr_kl(s2, lm, *TAUS, mask, direction).backward(grad_out)
    assert s1.grad.dtype == dtype
    torch.testing.assert_close(s1.grad, s2.grad, atol=atol, rtol=rtol)
    assert bool((s1.grad[~mask] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lsr_kl_backward_op_matches_closed_form_reference(backend, direction):
    s, lm, mask = make_inputs(4, 33)
    grad = torch.randn(4)
    out = torch.ops.pyrag.lsr_kl_backward(grad, s, lm, *TAUS, mask, direction, backend)
    torch.testing.assert_close(out, reference.lsr_kl_backward(grad, s, lm, *TAUS, mask, direction))


def test_closed_form_reference_backward_is_autograd_of_reference():
    s, lm, mask = make_inputs(4, 17, torch.float64)
    grad = torch.randn(4, dtype=torch.float64)
    for direction in ("forward", "reverse"):
        x = s.clone().requires_grad_()
        (auto,) = torch.autograd.grad(reference.lsr_kl(x, lm, *TAUS, mask, direction), x, grad)
        torch.testing.assert_close(reference.lsr_kl_backward(grad, s, lm, *TAUS, mask, direction), auto)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6),
    k=st.integers(1, 40),
    tau_r=st.floats(1e-2, 10),
    tau_l=st.floats(1e-2, 10),
    scale=st.floats(0.1, 100),
    direction=st.sampled_from(["forward", "reverse"]),
    seed=st.integers(0, 2**16),
)
def test_lsr_kl_cpu_matches_reference_property(b, k, tau_r, tau_l, scale, direction, seed):
    s, lm, mask = make_inputs(b, k, seed=seed)
    s, lm = s * scale, lm * scale
    out = torch.ops.pyrag.lsr_kl(s, lm, tau_r, tau_l, mask, direction, "cpu")
    expected = reference.lsr_kl(s, lm, tau_r, tau_l, mask, direction)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert bool((out > -1e-4).all()), "a KL divergence is never negative"


# ------------------------------------------------------------------ gradcheck and opcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
def test_lsr_weights_gradcheck(backend, masked):
    _, lm, mask = make_inputs(4, 6, torch.float64, masked=masked)
    x = lm.nan_to_num(0.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pyrag.lsr_weights(t, 0.8, mask, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("masked", [False, True])
def test_lsr_kl_gradcheck(backend, direction, masked):
    s, lm, mask = make_inputs(4, 6, torch.float64, masked=masked)
    x = s.nan_to_num(0.0, neginf=0.0).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: pyrag.lsr_loss(
            t, lm, tau_retriever=0.8, tau_lm=1.7, mask=mask, direction=direction, reduction="none", backend=backend
        ),
        (x,),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(backend, dtype, masked):
    s, lm, mask = make_inputs(3, 5, dtype, masked=masked)
    s = s.nan_to_num(0.0, neginf=0.0).requires_grad_()
    lm = lm.nan_to_num(0.0)
    torch.library.opcheck(torch.ops.pyrag.lsr_weights.default, (s, 0.7, mask, backend))
    for direction in ("forward", "reverse"):
        torch.library.opcheck(torch.ops.pyrag.lsr_kl.default, (s, lm, 0.7, 1.3, mask, direction, backend))
        torch.library.opcheck(
            torch.ops.pyrag.lsr_kl_backward.default,
            (torch.randn(3, dtype=dtype), s.detach(), lm, 0.7, 1.3, mask, direction, backend),
        )


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_all_masked_rows_give_zero_without_nan(backend, direction):
    s, lm, _ = make_inputs(3, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    x = s.requires_grad_()
    loss = pyrag.lsr_loss(x, lm, mask=mask, direction=direction, reduction="none", backend=backend)
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0, 0.0]
    assert bool((x.grad == 0).all())
    assert bool((pyrag.lsr_weights(lm, mask=mask, backend=backend) == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_stable_at_large_scores_and_small_tau(backend, dtype, direction):
    # Scores of +-1e4 at tau = 1e-3 are logits of +-1e7: exp before max would overflow.
    # The divergences and their gradients (~ KL / tau) stay within float16's 65504.
    base = torch.tensor([[1e4, 1e4, -1e4, 0.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 9999.99, 3.0, -1e4]])
    lm = torch.tensor([[1e4, 1e4, 0.0, -1e4], [0.0, 0.01, 0.02, 0.03], [1e4, 1e4, 0.001, -0.001]])
    s = base.to(dtype).requires_grad_()
    loss = pyrag.lsr_loss(
        s, lm.to(dtype), tau_retriever=1e-3, tau_lm=1e-3, direction=direction, reduction="none", backend=backend
    )
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(s.grad).all())
    # The float64 reference on the same (rounded) inputs is the truth.
    truth = reference.lsr_kl(base.to(dtype).double(), lm.to(dtype).double(), 1e-3, 1e-3, None, direction)
    torch.testing.assert_close(loss.double(), truth.to(dtype).double(), rtol=2e-2, atol=1e-2)
    w = pyrag.lsr_weights(lm.to(dtype), 1e-3, backend=backend)
    assert bool(torch.isfinite(w).all())
    torch.testing.assert_close(w.float().sum(dim=1), torch.ones(3), atol=1e-2, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_is_zero_for_equal_distributions(backend):
    s = torch.randn(4, 9)
    # softmax(s / 0.5) == softmax(2s / 1.0): the divergence vanishes in both directions.
    for direction in ("forward", "reverse"):
        kl = pyrag.lsr_loss(
            s, 2 * s, tau_retriever=0.5, tau_lm=1.0, direction=direction, reduction="none", backend=backend
        )
        torch.testing.assert_close(kl, torch.zeros(4), atol=1e-6, rtol=0)


def test_lm_scores_get_no_gradient():
    s = torch.randn(3, 4, requires_grad=True)
    lm = torch.randn(3, 4, requires_grad=True)
    pyrag.lsr_loss(s, lm).backward()
    assert s.grad is not None and lm.grad is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lsr_loss_reductions(reduction):
    s, lm, mask = make_inputs(5, 12)
    per_row = reference.lsr_kl(s, lm, 1.0, 1.0, mask, "forward")
    expected = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    torch.testing.assert_close(pyrag.lsr_loss(s, lm, mask=mask, reduction=reduction), expected)


def test_empty_batch_gives_zero():
    s = torch.empty(0, 4, requires_grad=True)
    loss = pyrag.lsr_loss(s, torch.empty(0, 4))
    loss.backward()
    assert loss.item() == 0 and s.grad.shape == (0, 4)
    assert pyrag.lsr_weights(torch.empty(0, 4)).shape == (0, 4)


def test_mixed_dtypes_promote():
    s = torch.randn(2, 5, dtype=torch.float32, requires_grad=True)
    lm = torch.randn(2, 5, dtype=torch.bfloat16)
    loss = pyrag.lsr_loss(s, lm, reduction="none")
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert s.grad.dtype == torch.float32


def test_noncontiguous_inputs():
    s, lm, mask = make_inputs(7, 5)
    st, lmt, mt = s.T.contiguous().T, lm.T.contiguous().T, mask.T.contiguous().T
    assert not st.is_contiguous()
    torch.testing.assert_close(
        pyrag.lsr_loss(st, lmt, mask=mt, reduction="none", backend="cpu"),
        reference.lsr_kl(s, lm, 1.0, 1.0, mask, "forward"),
    )


def test_cpu_kernel_threads_give_identical_results():
    s, lm, mask = make_inputs(256, 513)
    try:
        pyrag.set_num_threads(1)
        one = pyrag.lsr_loss(s, lm, mask=mask, reduction="none", backend="cpu")
        pyrag.set_num_threads(4)
        four = pyrag.lsr_loss(s, lm, mask=mask, reduction="none", backend="cpu")
    finally:
        pyrag.set_num_threads(None)
    assert torch.equal(one, four)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf, True])
def test_bad_tau(tau):
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="tau_retriever"):
        pyrag.lsr_loss(s, s, tau_retriever=tau)
    with pytest.raises(ValueError, match="tau_lm"):
        pyrag.lsr_loss(s, s, tau_lm=tau)
    with pytest.raises(ValueError, match="tau"):
        pyrag.lsr_weights(s, tau)


@pytest.mark.parametrize("s_shape,lm_shape", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((6,), (6,)), ((2, 3, 1), (2, 3, 1))])
def test_shape_mismatch(s_shape, lm_shape):
    with pytest.raises(ValueError, match="shape"):
        pyrag.lsr_loss(torch.randn(s_shape), torch.randn(lm_shape))


def test_bad_direction_and_reduction():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="direction"):
        pyrag.lsr_loss(s, s, direction="backward")
    with pytest.raises(ValueError, match="reduction"):
        pyrag.lsr_loss(s, s, reduction="avg")
    with pytest.raises(ValueError, match="direction"):
        torch.ops.pyrag.lsr_kl(s, s, 1.0, 1.0, None, "sideways", "cpu")


def test_bad_mask():
    s = torch.randn(2, 3)
    with pytest.raises(TypeError, match="bool"):
        pyrag.lsr_loss(s, s, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask has shape"):
        pyrag.lsr_loss(s, s, mask=torch.ones(2, 4, dtype=torch.bool))


def test_non_finite_valid_entries_are_rejected():
    s = torch.randn(2, 3)
    s[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"retriever_scores hold NaN or Inf at the valid entry \(1, 2\)"):
        pyrag.lsr_loss(s, torch.randn(2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert bool(torch.isfinite(pyrag.lsr_loss(s, torch.randn(2, 3), mask=mask)))


def test_bad_types_and_backend():
    with pytest.raises(TypeError, match="floating"):
        pyrag.lsr_weights(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown backend"):
        pyrag.lsr_weights(torch.randn(2, 3), backend="gpu")


def test_compiled_kernels_check_their_arguments():
    from pyrag import _C

    with pytest.raises(ValueError, match="bad sizes"):
        _C.lsr_kl_f32(0, 0, 0, -1, 3, 1.0, 1.0, False, 1, 0)
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        _C.lsr_weights_f64(0, 0, 1, 3, 0.0, 1, 0)
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        _C.marginal_nll_f32(0, 0, 0, 0, 1, 3, 1, float("nan"), 1, 0)


def test_torch_compile_traces_lsr_loss_and_its_backward():
    """The public loss under torch.compile(fullgraph=True): no graph break, and the same
    value and gradient as the reference."""
    g = torch.Generator().manual_seed(21)
    s = torch.randn(3, 7, generator=g, dtype=torch.float64)
    lm = torch.randn(3, 7, generator=g, dtype=torch.float64)

    @torch.compile(backend="eager", fullgraph=True)
    def loss(scores):
        return pyrag.lsr_loss(scores * 2, lm, tau_retriever=0.5, direction="reverse")

    x = s.clone().requires_grad_()
    loss(x).backward()
    r = s.clone().requires_grad_()
    want = reference.lsr_kl(r * 2, lm, 0.5, 1.0, None, "reverse").mean()
    want.backward()
    assert torch.allclose(loss(s), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(x.grad, r.grad, rtol=1e-12, atol=1e-12)
