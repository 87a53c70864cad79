"""The Triton kernels (pyrag.kernels) under the Triton interpreter, against pyrag.reference.

Triton decides at import time whether @triton.jit compiles or interprets, for its own
tl.* helpers too, so TRITON_INTERPRET=1 must be set before triton is first imported.
In a normal run this module therefore holds one test, which runs this same file in a
child pytest with TRITON_INTERPRET=1; there the cases below run (they are skipped in
the parent). The variable never reaches the other test modules, which keep the CPU
behaviour of a machine without a GPU.

The interpreter runs the kernels through numpy, one program at a time and one bitonic
stage at a time, so the shapes are small and the tile configuration is small too; each
shape is chosen to hit an edge: B = 1, partial query blocks, partial corpus and d tiles,
k not a power of two, k > N, several corpus splits (whose shared threshold must let
ties through), many flushes of the candidate buffer.

bf16: the interpreter stores bf16 as raw uint16, so a bf16 tl.dot would multiply bit
patterns. topk_scores' launcher therefore upcasts bf16 tiles to fp32 when interpreted
(exact: bf16 -> fp32 is lossless, and integer-valued data keeps the sums exact); the GPU
path keeps bf16 tensor cores and is covered by the ahead-of-time compilation in
tests/test_gpu_report.py. The loss kernels widen bf16 loads to fp32 in the kernel on
every path, so bf16 runs the same code here as on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag import reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(INTERPRETED, reason="this is the child run")
def test_kernels_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider"]
    run = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, (
        f"child pytest with TRITON_INTERPRET=1 failed:\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
    )


interpreter_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child (test_kernels_under_the_triton_interpreter)"
)


@pytest.fixture(scope="module")
def kern():
    """The kernel modules (interpreted) and two small tile configurations."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    from pyrag.kernels import lsr, marginal_nll, topk_scores

    assert isinstance(topk_scores._topk_scan_kernel, InterpretedFunction)
    ns = type("Kernels", (), {})()
    ns.topk, ns.lsr, ns.marginal = topk_scores, lsr, marginal_nll
    # Small tiles for the interpreter. `small` also shrinks the rare paths' row chunks
    # (4 rows to append, 2 to merge) so that their loops run several times.
    ns.small = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "APPEND_ELEMENTS": 64, "FLUSH_ELEMENTS": 64})
    ns.wide = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16})
    return ns


def int_data(shape, dtype, seed, lo=-3, hi=4):
    """Small integers: exact in every dtype and in fp32 sums, and full of ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def assert_topk_equal(got, want):
    assert torch.equal(got[1], want[1]), f"ids differ:\n{got[1]}\n{want[1]}"
    assert torch.equal(got[0], want[0]), f"scores differ:\n{got[0]}\n{want[0]}"


# ------------------------------------------------------------------ topk_scores
TOPK_CASES = [
    # B, N, d, k, dtype, splits
    (1, 50, 8, 5, torch.float32, None),  # one query: 15 of the 16 block rows are padding
    (3, 300, 20, 10, torch.float16, 2),  # partial corpus tile and partial d tile, two splits
    (17, 100, 16, 3, torch.bfloat16, 2),  # partial second query block
    (5, 200, 33, 20, torch.float32, 3),  # k not a power of two, three splits
    (2, 40, 16, 100, torch.float32, None),  # k > N: padded with (-inf, -1)
    (4, 1, 8, 3, torch.float16, None),  # N = 1
    (2, 700, 16, 1, torch.float32, 4),  # k = 1
]


@interpreter_only
@pytest.mark.parametrize("b,n,d,k,dtype,splits", TOPK_CASES)
def test_topk_scores_matches_reference(kern, b, n, d, k, dtype, splits):
    q, x = int_data((b, d), dtype, 1), int_data((n, d), dtype, 2)
    got = kern.topk.topk_scores(q, x, k, config=kern.small, num_splits=splits)
    assert_topk_equal(got, reference.topk_scores(q, x, k))


@interpreter_only
@pytest.mark.parametrize("config,splits", [("small", 3), ("wide", 1)])
def test_topk_scores_is_the_same_for_every_tiling(kern, config, splits):
    # Values in {-1, 0, 1}: nearly every score ties, within and across splits. Each
    # split publishes its k-th best to the others; a tie with it must still pass.
    q, x = int_data((20, 12), torch.float32, 3, -1, 2), int_data((300, 12), torch.float32, 4, -1, 2)
    got = kern.topk.topk_scores(q, x, 9, config=getattr(kern, config), num_splits=splits)
    assert_topk_equal(got, reference.topk_scores(q, x, 9))


@interpreter_only
def test_topk_scores_ties_go_to_the_smaller_id_and_signed_zeros_tie(kern):
    # q = 0 gives +0.0 against non-negative rows and -0.0 against negative rows.
    q = torch.zeros(2, 8)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    x = torch.cat([-torch.ones(30, 8), torch.ones(30, 8)])[order]
    scores, ids = kern.topk.topk_scores(q, x, 17, config=kern.small, num_splits=2)
    assert torch.equal(ids, torch.arange(17).expand(2, 17))
    assert bool((scores == 0).all())


@interpreter_only
def test_topk_scores_int8_corpus_with_scales(kern):
    q = int_data((3, 16), torch.float16, 5)
    x = int_data((90, 16), torch.int8, 6, -100, 100)
    scales = int_data((90,), torch.float32, 7, 1, 5) / 4  # multiples of 1/4: still exact
    got = kern.topk.topk_scores(q, x, 7, scales, config=kern.small, num_splits=2)
    assert_topk_equal(got, reference.topk_scores(q, x, 7, scales=scales))


@interpreter_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's matmul, interpreted
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_topk_scores_raises_on_a_non_finite_score(kern, bad):
    x = torch.randn(40, 8)
    x[29, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        kern.topk.topk_scores(torch.randn(2, 8), x, 3, config=kern.small)


@interpreter_only
@pytest.mark.parametrize(
    "args,error",
    [
        (dict(k=1025), ValueError),
        (dict(corpus_dtype=torch.float64), TypeError),
        (dict(query_dtype=torch.int32), TypeError),
    ],
)
def test_topk_scores_rejects_what_it_cannot_run(kern, args, error):
    q = torch.ones(2, 8, dtype=args.get("query_dtype", torch.float32))
    x = torch.ones(20, 8, dtype=args.get("corpus_dtype", torch.float32))
    with pytest.raises(error):
        kern.topk.topk_scores(q, x, args.get("k", 3))


@interpreter_only
@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 20),
    n=st.integers(1, 150),
    d=st.integers(1, 40),
    k=st.integers(1, 24),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    splits=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_topk_scores_property(kern, b, n, d, k, dtype, splits, seed):
    q, x = int_data((b, d), dtype, seed), int_data((n, d), dtype, seed + 1)
    got = kern.topk.topk_scores(q, x, k, config=kern.small, num_splits=splits)
    assert_topk_equal(got, reference.topk_scores(q, x, k))


@interpreter_only
def test_topk_scores_op_routes_backend_triton(kern):
    q, x = int_data((1, 16), torch.float32, 8), int_data((70, 16), torch.float32, 9)
    got = pyrag.topk_scores(q, x, 6, backend="triton")
    assert_topk_equal(got, reference.topk_scores(q, x, 6))


# ------------------------------------------------------------------ losses
# The oracle is the reference computed in float64; tolerances are per input dtype.
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-3}
SHAPES = [(1, 1), (3, 37), (2, 5000)]  # 5000 > 4096: several chunks per row in lsr


def loss_inputs(b, k, dtype, seed, masked=True):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, k, generator=g) * 3).to(dtype)
    l = (torch.randn(b, k, generator=g) * 2).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(b, k, generator=g) > 0.3
        mask[0, 0] = True
        if b > 2:
            mask[-1] = False  # a fully masked row: 0, never NaN
    return s, l, mask


def poison(t, mask):
    """Masked entries may hold anything; NaN proves they are never read."""
    return t if mask is None else t.masked_fill(~mask, float("nan"))


def close(got, want, dtype):
    torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype], rtol=TOL[dtype])


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("b,k", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_lsr_weights_matches_reference(kern, dtype, b, k, masked):
    _, l, mask = loss_inputs(b, k, dtype, 10, masked)
    got = kern.lsr.lsr_weights(poison(l, mask), 0.7, mask)
    assert got.dtype == dtype
    close(got, reference.lsr_weights(l.double(), 0.7, mask), dtype)


@interpreter_only
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("b,k", SHAPES)
def test_lsr_kl_and_its_gradient_match_autograd_through_the_reference(kern, direction, dtype, b, k):
    s, l, mask = loss_inputs(b, k, dtype, 11)
    grad = torch.randn(b, generator=torch.Generator().manual_seed(12)).to(dtype)
    s64 = s.double().requires_grad_()
    want = reference.lsr_kl(s64, l.double(), 0.5, 2.0, mask, direction)
    (want_grad,) = torch.autograd.grad(want, s64, grad.double())
    got = kern.lsr.lsr_kl(poison(s, mask), poison(l, mask), 0.5, 2.0, mask, direction)
    got_grad = kern.lsr.lsr_kl_backward(grad, poison(s, mask), poison(l, mask), 0.5, 2.0, mask, direction)
    assert got.dtype == dtype and got_grad.dtype == dtype
    close(got, want, dtype)
    close(got_grad, want_grad, dtype)


MARGINAL_SHAPES = [  # b, k, t (None: lm_logprobs [B, K]), token_mask
    (1, 1, None, False),
    (3, 37, None, False),
    (2, 1500, None, False),  # K > 1024: K chunks
    (1, 1, 1, False),
    (3, 37, 100, False),
    (3, 37, 100, True),
    (2, 1500, 3, True),  # T chunks
]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("b,k,t,token_masked", MARGINAL_SHAPES)
def test_marginal_nll_and_its_gradients_match_autograd_through_the_reference(kern, dtype, b, k, t, token_masked):
    s, _, mask = loss_inputs(b, k, dtype, 13)
    g = torch.Generator().manual_seed(14)
    lm = (-torch.rand((b, k) if t is None else (b, k, t), generator=g) * 5).to(dtype)
    tmask = (torch.rand(b, t, generator=g) > 0.4) if token_masked else None
    lm_poisoned = poison(lm, mask if t is None else mask.unsqueeze(-1).expand_as(lm))
    if tmask is not None:
        lm_poisoned = lm_poisoned.masked_fill(~tmask.unsqueeze(1), float("nan"))
    grad = torch.randn(b, generator=g).to(dtype)
    s64, lm64 = s.double().requires_grad_(), lm.double().requires_grad_()
    want = reference.marginal_nll(s64, lm64, 0.5, mask, tmask)
    want_gs, want_glm = torch.autograd.grad(want, (s64, lm64), grad.double())
    got = kern.marginal.marginal_nll(poison(s, mask), lm_poisoned, 0.5, mask, tmask)
    got_gs, got_glm = kern.marginal.marginal_nll_backward(grad, poison(s, mask), lm_poisoned, 0.5, mask, tmask)
    assert got.dtype == dtype and got_gs.dtype == dtype and got_glm.dtype == dtype
    close(got, want, dtype)
    close(got_gs, want_gs, dtype)
    close(got_glm, want_glm, dtype)


@interpreter_only
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_losses_are_stable_at_extreme_scores_and_temperatures(kern, scale):
    g = torch.Generator().manual_seed(15)
    s = scale + torch.randn(2, 50, generator=g)
    l = -scale + torch.randn(2, 50, generator=g)
    lm = -torch.rand(2, 50, generator=g) * 30
    checks = [
        (kern.lsr.lsr_weights(l, 1e-3, None), reference.lsr_weights(l.double(), 1e-3, None)),
        (kern.lsr.lsr_kl(s, l, 1e-3, 1e-3, None, "forward"), reference.lsr_kl(s.double(), l.double(), 1e-3, 1e-3)),
        (kern.marginal.marginal_nll(s, lm, 1e-3, None, None), reference.marginal_nll(s.double(), lm.double(), 1e-3)),
    ]
    for got, want in checks:
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), want, atol=1e-2, rtol=1e-4)


@interpreter_only
def test_loss_kernels_reject_an_unknown_direction(kern):
    s, l, _ = loss_inputs(2, 5, torch.float32, 16, masked=False)
    with pytest.raises(ValueError, match="direction"):
        kern.lsr.lsr_kl(s, l, 1.0, 1.0, None, "sideways")


# ------------------------------------------------------------------ through the ops
def _needs_op(name):
    if not hasattr(torch.ops.pyrag, name):
        pytest.skip(f"torch.ops.pyrag.{name} is not defined in this build")


@interpreter_only
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lsr_kl_op_backend_triton_forward_and_backward(kern, direction):
    _needs_op("lsr_kl")
    s, l, mask = loss_inputs(3, 20, torch.float32, 17)
    s_t = s.clone().requires_grad_()
    got = torch.ops.pyrag.lsr_kl(s_t, l, 0.5, 2.0, mask, direction, "triton")
    got.sum().backward()
    s64 = s.double().requires_grad_()
    want = reference.lsr_kl(s64, l.double(), 0.5, 2.0, mask, direction)
    want.sum().backward()
    close(got, want, torch.float32)
    close(s_t.grad, s64.grad, torch.float32)


@interpreter_only
def test_marginal_nll_op_backend_triton_forward_and_backward(kern):
    _needs_op("marginal_nll")
    s, _, mask = loss_inputs(3, 20, torch.float32, 18)
    lm = -torch.rand(3, 20, 4, generator=torch.Generator().manual_seed(19))
    s_t, lm_t = s.clone().requires_grad_(), lm.clone().requires_grad_()
    got = torch.ops.pyrag.marginal_nll(s_t, lm_t, 0.5, mask, None, "triton")
    got.sum().backward()
    s64, lm64 = s.double().requires_grad_(), lm.double().requires_grad_()
    reference.marginal_nll(s64, lm64, 0.5, mask).sum().backward()
    close(got, reference.marginal_nll(s.double(), lm.double(), 0.5, mask), torch.float32)
    close(s_t.grad, s64.grad, torch.float32)
    close(lm_t.grad, lm64.grad, torch.float32)
