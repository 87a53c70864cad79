"""The CUDA kernels of csrc/cuda, run on the host emulation (backend="cuda_emu"), against
pyrag.reference.

The emulation executes the same kernel sources as the GPU build: every thread is an OS
thread and every warp collective a barrier over 32 of them, so shapes stay small, but
adversarial: partial row tiles and d chunks, k not a power of two, k > N, B = 1, B > 8
(several query tiles), heavy ties, masks, every block size and forced corpus splits.
What this proves and what it does not: README.md, "CUDA kernels and their host emulation".
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import pyrag
from pyrag import reference
from pyrag.backends import cuda as cuda_backend

_HAVE_EMU = importlib.util.find_spec("pyrag._cuda_emu") is not None
if not _HAVE_EMU and os.environ.get("PYRAG_CUDA_EMU") == "1":
    # CI builds with PYRAG_CUDA_EMU=1 and must run these tests, not skip them.
    raise RuntimeError(
        "PYRAG_CUDA_EMU=1 but pyrag._cuda_emu is not built: reinstall pyrag without "
        "-Ccmake.define.PYRAG_CUDA_EMU=OFF (it is ON by default)"
    )
pytestmark = pytest.mark.skipif(
    not _HAVE_EMU, reason="pyrag was built without the CUDA host emulation (PYRAG_CUDA_EMU=ON)"
)

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64


def small_ints(shape, dtype, seed):
    """Integers in [-3, 3]: exact in every dtype, every product and sum exact in float32,
    and full of ties, so the kernels must agree with the reference bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).to(dtype)


def randn(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype)


# ------------------------------------------------------------------------- topk_scores
EXACT_CASES = [  # (B, N, d, k)
    (1, 1, 1, 1),
    (1, 100, 7, 5),  # B = 1: every warp of the block shares the query
    (3, 257, 33, 37),  # partial last row tile and d chunk; k, B, d not powers of two
    (5, 40, 16, 64),  # k > N: the tail is padded with (-inf, -1)
    (11, 150, 70, 33),  # B > 8: several query tiles; d spans two tensor-core chunks
    (2, 700, 4, 513),  # k just above 512: the largest warp queue (k <= 1024)
]


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("b, n, d, k", EXACT_CASES)
def test_topk_equals_reference_on_exact_data(b, n, d, k, dtype):
    q, x = small_ints((b, d), dtype, 1), small_ints((n, d), dtype, 2)
    scores, ids = cuda_backend.topk_scores(q, x, k)
    ref_scores, ref_ids = reference.topk_scores(q, x, k)
    assert torch.equal(scores, ref_scores)
    assert torch.equal(ids, ref_ids)


@pytest.mark.parametrize(
    "num_warps, splits, dtype",
    [
        (1, 1, F32),
        (1, 4, BF16),
        (2, 1, F16),
        (2, 3, F32),
        (4, 1, BF16),
        (4, 2, F16),
        (8, 1, F32),
        (8, 2, F16),
    ],
)
def test_topk_result_does_not_depend_on_the_launch(num_warps, splits, dtype):
    # B = 3 gives query tiles of 2 or 4 (several warps per query, merged in shared memory);
    # splits > 1 runs the cross-block merge kernel.
    q, x = small_ints((3, 20), dtype, 3), small_ints((600, 20), dtype, 4)
    scores, ids = cuda_backend.topk_scores(q, x, 45, num_warps=num_warps, splits=splits)
    ref_scores, ref_ids = reference.topk_scores(q, x, 45)
    assert torch.equal(scores, ref_scores)
    assert torch.equal(ids, ref_ids)


def test_topk_k_1024_across_splits():
    q, x = small_ints((2, 3), F16, 5), small_ints((1500, 3), F16, 6)
    scores, ids = cuda_backend.topk_scores(q, x, 1024, num_warps=2, splits=2)
    ref_scores, ref_ids = reference.topk_scores(q, x, 1024)
    assert torch.equal(scores, ref_scores)
    assert torch.equal(ids, ref_ids)


# (corpus dtype, query dtype, atol on scores of magnitude ~sqrt(d) = 7). A float16 or
# bfloat16 corpus with float32 queries takes the two-pass (head + residual) tensor-core
# path: one rounding of the queries would be off by ~5e-3 (f16) or ~3e-2 (bf16).
RANDOM_CASES = [
    (F32, F32, 1e-4),
    (F16, F16, 1e-4),
    (BF16, BF16, 1e-4),
    (F16, F32, 1e-4),
    (BF16, F32, 5e-4),
    (F64, F64, 1e-4),
]


@pytest.mark.parametrize("corpus_dtype, query_dtype, atol", RANDOM_CASES)
def test_topk_random_data_within_float32_accuracy(corpus_dtype, query_dtype, atol):
    q, x = randn((4, 45), query_dtype, 7), randn((300, 45), corpus_dtype, 8)
    scores, ids = cuda_backend.topk_scores(q, x, 17)
    ref_scores, _ = reference.topk_scores(q, x, 17)
    torch.testing.assert_close(scores, ref_scores, atol=atol, rtol=0)
    # The ids name rows that have those scores (exact in float64), each row once.
    exact = q.double() @ x.double().T
    torch.testing.assert_close(exact.gather(1, ids), scores.double(), atol=atol, rtol=0)
    assert all(len(set(row.tolist())) == 17 for row in ids)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_topk_with_row_scales(dtype):
    q, x = small_ints((3, 10), dtype, 9), small_ints((90, 10), dtype, 10)
    scales = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25])[torch.arange(90) % 5]  # powers of two keep it exact
    scores, ids = cuda_backend.topk_scores(q, x, 12, scales)
    ref_scores, ref_ids = reference.topk_scores(q, x, 12, scales=scales)
    assert torch.equal(scores, ref_scores)
    assert torch.equal(ids, ref_ids)


def test_topk_through_the_op_and_the_public_function():
    q, x = small_ints((2, 9), F32, 11), small_ints((50, 9), F32, 12)
    ref = reference.topk_scores(q, x, 6)
    for scores, ids in (
        torch.ops.pyrag.topk_scores(q, x, 6, None, "cuda_emu"),
        pyrag.topk_scores(q, x, 6, backend="cuda_emu"),
    ):
        assert torch.equal(scores, ref[0]) and torch.equal(ids, ref[1])


def test_topk_non_contiguous_inputs():
    q = small_ints((9, 4), F32, 13).T  # [4, 9], a transposed view
    x = small_ints((60, 18), F32, 14)[:, ::2]  # [60, 9], strided
    scores, ids = cuda_backend.topk_scores(q, x, 5)
    ref_scores, ref_ids = reference.topk_scores(q, x, 5)
    assert torch.equal(scores, ref_scores) and torch.equal(ids, ref_ids)


@pytest.mark.parametrize("b, n", [(0, 10), (2, 0)])
def test_topk_empty_inputs(b, n):
    q, x = small_ints((b, 4), F32, 15), small_ints((n, 4), F32, 16)
    scores, ids = cuda_backend.topk_scores(q, x, 3)
    ref_scores, ref_ids = reference.topk_scores(q, x, 3)
    assert torch.equal(scores, ref_scores) and torch.equal(ids, ref_ids)


@pytest.mark.parametrize(
    "row",
    [
        [0.0, float("inf"), 0.0, 0.0],
        [0.0, float("nan"), 0.0, 0.0],
        [3e38, 3e38, 3e38, 3e38],  # finite, but the score overflows float32
    ],
)
def test_topk_non_finite_score_is_an_error(row):
    q, x = torch.ones(2, 4), torch.ones(40, 4)
    x[33] = torch.tensor(row)
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference.topk_scores(q, x, 5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cuda_backend.topk_scores(q, x, 5)


def test_topk_queries_beyond_float16_range_are_an_error():
    q = torch.tensor([[7e4, 1.0]])
    with pytest.raises(ValueError, match="beyond float16's range"):
        cuda_backend.topk_scores(q, torch.ones(10, 2, dtype=F16), 3)


def test_topk_k_above_1024_is_an_error():
    with pytest.raises(ValueError, match="k <= 1024"):
        cuda_backend.topk_scores(torch.ones(1, 4), torch.ones(2000, 4), 1025)


# --------------------------------------------------------------------- LSR losses
LOSS_SHAPES = [(1, 1), (3, 31), (2, 33), (5, 100)]
LOSS_DTYPES = [(F32, 1e-5), (F16, 2e-3), (BF16, 1e-2), (F64, 1e-12)]


def loss_inputs(b, k, dtype, masked, seed=0):
    """Scores, LM scores and a mask with one fully masked row (when b > 1); masked entries
    hold NaN and -inf, which the kernels must never read as numbers."""
    s = randn((b, k), F64, seed, 3.0)
    lm = randn((b, k), F64, seed + 1, 3.0)
    mask = None
    if masked:
        g = torch.Generator().manual_seed(seed + 2)
        mask = torch.rand((b, k), generator=g) < 0.7
        mask[0, 0] = True
        if b > 1:
            mask[1] = False
        s = s.masked_fill(~mask, float("nan"))
        lm = lm.masked_fill(~mask, float("-inf"))
    return s.to(dtype), lm.to(dtype), mask


def reference_kl_and_grad(s, lm, tau_r, tau_l, mask, direction, grad):
    """lsr_kl in float64 and its gradient by autograd (masked entries zeroed first, so the
    reference's own arithmetic never sees NaN)."""
    s64 = s.double() if mask is None else s.double().masked_fill(~mask, 0.0)
    s64.requires_grad_(True)
    kl = reference.lsr_kl(s64, lm.double(), tau_r, tau_l, mask, direction)
    (g,) = torch.autograd.grad((kl * grad.double()).sum(), s64)
    return kl.detach(), g


@pytest.mark.parametrize("dtype, tol", LOSS_DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b, k", LOSS_SHAPES)
def test_lsr_weights(b, k, masked, dtype, tol):
    _, lm, mask = loss_inputs(b, k, dtype, masked)
    out = cuda_backend.lsr_weights(lm, 0.7, mask)
    assert out.dtype == dtype
    expected = reference.lsr_weights(lm.double(), 0.7, mask)
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("dtype, tol", LOSS_DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b, k", LOSS_SHAPES)
def test_lsr_kl_and_backward(b, k, masked, dtype, tol, direction):
    s, lm, mask = loss_inputs(b, k, dtype, masked)
    grad = randn((b,), dtype, 5)
    kl_ref, grad_ref = reference_kl_and_grad(s, lm, 0.5, 2.0, mask, direction, grad)
    kl = cuda_backend.lsr_kl(s, lm, 0.5, 2.0, mask, direction)
    g = cuda_backend.lsr_kl_backward(grad, s, lm, 0.5, 2.0, mask, direction)
    assert kl.dtype == dtype and g.dtype == dtype
    torch.testing.assert_close(kl.double(), kl_ref, atol=tol * 10, rtol=tol * 10)
    torch.testing.assert_close(g.double(), grad_ref, atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize("num_warps", [1, 3, 8])
def test_lsr_any_block_size(num_warps):
    s, lm, mask = loss_inputs(7, 40, F32, True)
    expected = reference.lsr_weights(lm.double(), 1.0, mask)
    torch.testing.assert_close(
        cuda_backend.lsr_weights(lm, 1.0, mask, num_warps=num_warps).double(), expected, atol=1e-6, rtol=1e-6
    )
    grad = torch.ones(7)
    _, grad_ref = reference_kl_and_grad(s, lm, 1.0, 1.0, mask, "forward", grad)
    g = cuda_backend.lsr_kl_backward(grad, s, lm, 1.0, 1.0, mask, "forward", num_warps=num_warps)
    torch.testing.assert_close(g.double(), grad_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lsr_stable_for_large_scores_and_small_temperature(direction):
    # Scores of +-1e4 with tau = 1e-3: s / tau = 1e7, where a float32 ulp is 1.
    s = torch.tensor([[1e4, 1e4 - 1e-3, -1e4, 9999.9985], [-1e4, -1e4 + 2e-3, 0.0, -1e4]])
    lm = torch.tensor([[1e4, -1e4, 1e4 - 2e-3, 0.0], [5.0, 5.001, -1e4, 4.999]])
    grad = torch.tensor([1.0, -2.0])
    kl_ref, grad_ref = reference_kl_and_grad(s, lm, 1e-3, 1e-3, None, direction, grad)
    weights = cuda_backend.lsr_weights(s, 1e-3, None)
    kl = cuda_backend.lsr_kl(s, lm, 1e-3, 1e-3, None, direction)
    g = cuda_backend.lsr_kl_backward(grad, s, lm, 1e-3, 1e-3, None, direction)
    for t in (weights, kl, g):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(weights.double(), reference.lsr_weights(s.double(), 1e-3), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kl.double(), kl_ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(g.double(), grad_ref, atol=1e-1, rtol=1e-4)


class _EmulatedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, lm, mask, direction):
        ctx.save_for_backward(s, lm)
        ctx.mask, ctx.direction = mask, direction
        return cuda_backend.lsr_kl(s, lm, 0.3, 1.5, mask, direction)

    @staticmethod
    def backward(ctx, grad):
        s, lm = ctx.saved_tensors
        return cuda_backend.lsr_kl_backward(grad, s, lm, 0.3, 1.5, ctx.mask, ctx.direction), None, None, None


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lsr_kl_gradcheck_float64(direction):
    s, lm, mask = loss_inputs(3, 5, F64, True, seed=3)
    s = s.masked_fill(~mask, 0.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _EmulatedKL.apply(t, lm, mask, direction), (s,))


# ------------------------------------------------------------------- the emulator itself
def test_emulator_runs_every_collective():
    from pyrag import _cuda_emu

    n = 32 * 2
    assert _cuda_emu.emulator_selftest("block_sum", 2) == 3 * n * (n - 1) // 2


@pytest.mark.parametrize(
    "name, message",
    [
        # Which side the emulator sees first depends on the OS scheduler; both are the error.
        (
            "early_exit",
            r"(exited while threads of its block wait at __syncthreads|"
            r"__syncthreads at selftest.cpp:\d+ reached by thread \d+ after \d+ thread\(s\) of its block exited)",
        ),
        ("divergent_shuffle", r"divergent warp barrier: .*__shfl_xor_sync .* while others wait at __shfl_xor_sync"),
        ("deadlock", r"deadlock: .*lanes 16-31 __syncwarp at selftest.cpp:\d+"),
        ("partial_mask", r"mask 0xffff .*full-warp collectives only"),
        ("smem_overflow", r"wrote past its 64 bytes of dynamic shared memory"),
    ],
)
def test_emulator_reports_undefined_behaviour(name, message):
    from pyrag import _cuda_emu

    with pytest.raises(_cuda_emu.EmulationError, match=message):
        _cuda_emu.emulator_selftest(name, 2)
