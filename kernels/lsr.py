"""Triton kernels for pyrag::lsr_weights and pyrag::lsr_kl (forward and backward).

One program per row of [B, K], looping over K in chunks of BLOCK_K (so any K works; up
to 4096 it is one chunk): pass 1 finds the row max of the valid raw scores, pass 2 sums
the exponentials, and the last pass writes. Arithmetic in float32 (float64 when an input
is float64), with the reference's order of operations: (s - max) / tau, then the log of
the sum. Semantics: pyrag.reference.lsr_weights / lsr_kl / lsr_kl_backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyrag import reference
from pyrag.kernels._utils import (
    check_device,
    compute_dtype,
    is_interpreted,
    launch_options,
    load_row_chunk,
    log_softmax_stats,
    next_pow2,
)

MAX_BLOCK_K = 4096


@triton.jit
def _lsr_weights_kernel(
    L, MASK, OUT, K, stride_l, stride_m, stride_o, tau, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    l_row = L + row * stride_l
    m_row = MASK + row * stride_m
    m, log_total = log_softmax_stats(l_row, m_row, K, tau, HAS_MASK, BLOCK_K, ACC)
    offs = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        x, valid = load_row_chunk(l_row, m_row, k0 + offs, K, HAS_MASK, ACC)
        p = tl.where(valid, tl.exp((x - m) / tau - log_total), 0.0)
        tl.store(OUT + row * stride_o + k0 + offs, p.to(OUT.dtype.element_ty), mask=k0 + offs < K)


@triton.jit
def _lsr_kl_kernel(
    S,
    L,
    MASK,
    GRAD,
    KL,
    GRAD_S,
    K,
    stride_s,
    stride_l,
    stride_m,
    stride_gs,
    tau_r,
    tau_l,
    HAS_MASK: tl.constexpr,
    REVERSE: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    """Forward: KL[row]. Backward: GRAD_S[row, :] = d(GRAD[row] * KL[row]) / d S[row, :],
    i.e. grad/tau_r * r * (log r - log l - KL) (forward KL) or grad/tau_r * (r - l)."""
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    l_row = L + row * stride_l
    m_row = MASK + row * stride_m
    m_r, lt_r = log_softmax_stats(s_row, m_row, K, tau_r, HAS_MASK, BLOCK_K, ACC)
    m_l, lt_l = log_softmax_stats(l_row, m_row, K, tau_l, HAS_MASK, BLOCK_K, ACC)
    offs = tl.arange(0, BLOCK_K)

    kl = tl.zeros([BLOCK_K], ACC)
    if not (BACKWARD and REVERSE):  # the reverse gradient does not need the KL
        for k0 in range(0, K, BLOCK_K):
            s, valid = load_row_chunk(s_row, m_row, k0 + offs, K, HAS_MASK, ACC)
            l, _ = load_row_chunk(l_row, m_row, k0 + offs, K, HAS_MASK, ACC)
            log_r = tl.where(valid, (s - m_r) / tau_r - lt_r, 0.0)
            log_l = tl.where(valid, (l - m_l) / tau_l - lt_l, 0.0)
            if REVERSE:
                term = tl.exp(log_l) * (log_l - log_r)
            else:
                term = tl.exp(log_r) * (log_r - log_l)
            kl += tl.where(valid, term, 0.0)
    kl_sum = tl.sum(kl, axis=0)

    if BACKWARD:
        g = tl.load(GRAD + row).to(ACC) / tau_r
        for k0 in range(0, K, BLOCK_K):
            s, valid = load_row_chunk(s_row, m_row, k0 + offs, K, HAS_MASK, ACC)
            l, _ = load_row_chunk(l_row, m_row, k0 + offs, K, HAS_MASK, ACC)
            log_r = tl.where(valid, (s - m_r) / tau_r - lt_r, 0.0)
            log_l = tl.where(valid, (l - m_l) / tau_l - lt_l, 0.0)
            if REVERSE:
                d = g * (tl.exp(log_r) - tl.exp(log_l))
            else:
                d = g * tl.exp(log_r) * (log_r - log_l - kl_sum)
            tl.store(
                GRAD_S + row * stride_gs + k0 + offs,
                tl.where(valid, d, 0.0).to(GRAD_S.dtype.element_ty),
                mask=k0 + offs < K,
            )
    else:
        tl.store(KL + row, kl_sum.to(KL.dtype.element_ty))


def _block_k(k: int) -> tuple[int, int]:
    block = min(next_pow2(k), MAX_BLOCK_K)
    return block, (4 if block <= 1024 else 8)  # <= 16 fp32 values a thread per chunk


def _mask_arg(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    if mask is None:
        return like, 0  # never read: HAS_MASK is False
    mask = mask if mask.stride(-1) == 1 else mask.contiguous()
    return mask, mask.stride(0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def lsr_weights(lm_scores: torch.Tensor, tau: float, mask: torch.Tensor | None) -> torch.Tensor:
    """p_LSR [B, K] in lm_scores' dtype."""
    check_device(lm_scores, mask, interpreted=is_interpreted(_lsr_weights_kernel))
    x = _rows(lm_scores)
    b, k = x.shape
    out = torch.empty((b, k), dtype=lm_scores.dtype, device=x.device)
    if b == 0 or k == 0:
        return out.zero_()
    m, stride_m = _mask_arg(mask, x)
    block, warps = _block_k(k)
    _lsr_weights_kernel[(b,)](
        x,
        m,
        out,
        k,
        x.stride(0),
        stride_m,
        out.stride(0),
        float(tau),
        HAS_MASK=mask is not None,
        BLOCK_K=block,
        ACC=compute_dtype(x.dtype),
        num_warps=warps,
        **launch_options(),
    )
    return out


def _lsr_kl_launch(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, backward):
    check_device(retriever_scores, lm_scores, mask, grad, interpreted=is_interpreted(_lsr_kl_kernel))
    reference.check_direction(direction)
    s, l = _rows(retriever_scores), _rows(lm_scores)
    b, k = s.shape
    out_dtype = torch.promote_types(s.dtype, l.dtype)
    kl = torch.zeros(b, dtype=out_dtype, device=s.device)
    grad_s = torch.zeros((b, k), dtype=s.dtype, device=s.device)
    if b == 0 or k == 0:
        return grad_s if backward else kl
    m, stride_m = _mask_arg(mask, s)
    g = grad.contiguous() if backward else kl
    block, warps = _block_k(k)
    _lsr_kl_kernel[(b,)](
        s,
        l,
        m,
        g,
        kl,
        grad_s,
        k,
        s.stride(0),
        l.stride(0),
        stride_m,
        grad_s.stride(0),
        float(tau_retriever),
        float(tau_lm),
        HAS_MASK=mask is not None,
        REVERSE=direction == "reverse",
        BACKWARD=backward,
        BLOCK_K=block,
        ACC=compute_dtype(s.dtype, l.dtype),
        num_warps=warps,
        **launch_options(),
    )
    return grad_s if backward else kl


def lsr_kl(retriever_scores, lm_scores, tau_retriever: float, tau_lm: float, mask, direction: str) -> torch.Tensor:
    """KL [B] in the promoted dtype of the two inputs."""
    return _lsr_kl_launch(None, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, False)


def lsr_kl_backward(
    grad, retriever_scores, lm_scores, tau_retriever: float, tau_lm: float, mask, direction: str
) -> torch.Tensor:
    """d(sum_b grad[b] * KL[b]) / d retriever_scores [B, K], in retriever_scores' dtype."""
    return _lsr_kl_launch(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, True)
