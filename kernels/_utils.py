"""Helpers shared by the Triton kernel files: launch helpers (power-of-two sizes, the
number of SMs, whether the kernels run under the Triton interpreter) and the device
functions of the row-wise loss kernels (lsr.py, marginal_nll.py)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pyrag import reference

# Blocks of a program never exceed this many elements per tensor. 16K fp32 values over
# 16 warps is 32 registers a thread: the row-wise loss kernels stay spill-free with it.
MAX_BLOCK = 16384


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def is_interpreted(kernel) -> bool:
    """True when `kernel` was decorated with TRITON_INTERPRET=1 (it then runs on CPU
    tensors through numpy); the decision is taken once, when its module is imported."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction) or isinstance(getattr(kernel, "fn", None), InterpretedFunction)


@functools.cache
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_options() -> dict:
    """Options passed with every GPU launch. Triton 3.9 warns when fp fusion is left to
    its default (which changes in 3.10); FMA contraction is what we want, so say so."""
    return {"enable_fp_fusion": True}


def check_device(*tensors: torch.Tensor, interpreted: bool) -> None:
    devices = {t.device.type for t in tensors if t is not None}
    want = "cpu" if interpreted else "cuda"
    if devices != {want}:
        how = (
            "the kernels were imported with TRITON_INTERPRET=1 and run on CPU tensors"
            if interpreted
            else "the kernels run on CUDA tensors (for CPU tensors, set TRITON_INTERPRET=1 "
            "before triton is first imported)"
        )
        raise ValueError(f"backend='triton': {how}, got tensors on {sorted(devices)}")


def compute_dtype(*dtypes: torch.dtype):
    """The loss kernels' arithmetic dtype: pyrag.reference.compute_dtype's choice (the one
    rule), as a Triton dtype."""
    return tl.float64 if reference.compute_dtype(*dtypes) == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------
# Device helpers of the row-wise loss kernels (lsr.py, marginal_nll.py): the masked
# log-softmax of one row, in the reference's order of operations: subtract the row max
# of the raw scores, then divide by tau, so that s = 1e4 with tau = 1e-3 keeps exact
# differences where s / tau = 1e7 would have an ulp of 1.0.
# ---------------------------------------------------------------------------------


@triton.jit
def load_row_chunk(ROW, MASK_ROW, offs, K, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """(values, valid) of one chunk of a row; invalid entries read as -inf (masked ones
    may hold anything, even NaN, so they never enter the arithmetic)."""
    valid = offs < K
    if HAS_MASK:
        valid = valid & (tl.load(MASK_ROW + offs, mask=offs < K, other=0) != 0)
    x = tl.load(ROW + offs, mask=valid, other=0.0).to(ACC)
    return tl.where(valid, x, float("-inf")), valid


@triton.jit
def log_softmax_stats(ROW, MASK_ROW, K, tau, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """(row_max, log_total) of a row: its masked log-softmax at s is
    (s - row_max) / tau - log_total. A fully masked row gives (0, 0)."""
    offs = tl.arange(0, BLOCK_K)
    row_max = tl.full([BLOCK_K], float("-inf"), ACC)
    for k0 in range(0, K, BLOCK_K):
        x, _ = load_row_chunk(ROW, MASK_ROW, k0 + offs, K, HAS_MASK, ACC)
        row_max = tl.maximum(row_max, x)
    m = tl.max(row_max, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_K], ACC)
    for k0 in range(0, K, BLOCK_K):
        x, _ = load_row_chunk(ROW, MASK_ROW, k0 + offs, K, HAS_MASK, ACC)
        total += tl.exp((x - m) / tau)  # exp(-inf) = 0 where invalid
    total_sum = tl.sum(total, axis=0)
    return m, tl.log(tl.where(total_sum > 0, total_sum, 1.0))
