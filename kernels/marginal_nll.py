"""Triton kernels for pyrag::marginal_nll (forward and backward).

lm_logprobs [B, K] (RAG-sequence) is run as [B, K, T=1]. One program per row b: it
computes the row's masked log-softmax statistics of the retriever scores, then for each
chunk of BLOCK_T tokens the column log-sum-exp over contexts of
joint[c, t] = log p_R(c) + lm[c, t], in two passes over K (max, then sum, as the
reference does). nll = -sum_t token_mask[t] * lse_t; an empty column (no valid context)
counts 0. The backward stores each token's lse in a [B, T] scratch, then walks the
contexts chunk by chunk: w = exp(joint - lse) is the posterior,
grad_lm = -grad * w and grad_s = grad / tau * (r * n_tokens - sum_t w).
Semantics: pyrag.reference.marginal_nll / marginal_nll_backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyrag.kernels._utils import (
    check_device,
    compute_dtype,
    is_interpreted,
    launch_options,
    load_row_chunk,
    log_softmax_stats,
    next_pow2,
)

MAX_BLOCK_K = 1024
TILE_ELEMENTS = 2048  # [BLOCK_K, BLOCK_T] tile: 16 values a thread at 4 warps


@triton.jit
def _joint_tile(
    s_row,
    m_row,
    LM_ROW,
    TM_ROW,
    offs_k,
    offs_t,
    K,
    T,
    stride_lk,
    stride_lt,
    m_r,
    lt_r,
    tau,
    HAS_MASK: tl.constexpr,
    HAS_TMASK: tl.constexpr,
    ACC: tl.constexpr,
):
    """joint [BLOCK_K, BLOCK_T] = log p_R(c) + lm[c, t]; -inf wherever the context is
    invalid or the token does not count (those lm entries may hold anything, even NaN,
    and are never read)."""
    s, ctx_valid = load_row_chunk(s_row, m_row, offs_k, K, HAS_MASK, ACC)
    log_r = (s - m_r) / tau - lt_r
    tok = offs_t < T
    if HAS_TMASK:
        tok = tok & (tl.load(TM_ROW + offs_t, mask=offs_t < T, other=0) != 0)
    ok = ctx_valid[:, None] & tok[None, :]
    lm = tl.load(LM_ROW + offs_k[:, None] * stride_lk + offs_t[None, :] * stride_lt, mask=ok, other=0.0).to(ACC)
    return tl.where(ok, log_r[:, None] + lm, float("-inf"))


@triton.jit
def _marginal_nll_kernel(
    S,
    LM,
    MASK,
    TMASK,
    GRAD,
    NLL,
    LSE,
    GRAD_S,
    GRAD_LM,
    K,
    T,
    stride_s,
    stride_m,
    stride_lb,
    stride_lk,
    stride_lt,
    stride_tm,
    stride_gs,
    stride_glb,
    stride_glk,
    stride_glt,
    tau,
    HAS_MASK: tl.constexpr,
    HAS_TMASK: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    m_row = MASK + row * stride_m
    lm_row = LM + row * stride_lb
    tm_row = TMASK + row * stride_tm
    lse_row = LSE + row * T
    m_r, lt_r = log_softmax_stats(s_row, m_row, K, tau, HAS_MASK, BLOCK_K, ACC)
    offs_k = tl.arange(0, BLOCK_K)
    offs_t = tl.arange(0, BLOCK_T)

    nll = tl.zeros([BLOCK_T], ACC)
    n_tokens = tl.zeros([BLOCK_T], ACC)
    for t0 in range(0, T, BLOCK_T):
        tok = (t0 + offs_t) < T
        if HAS_TMASK:
            tok = tok & (tl.load(tm_row + t0 + offs_t, mask=t0 + offs_t < T, other=0) != 0)
        col_max = tl.full([BLOCK_T], float("-inf"), ACC)
        for k0 in range(0, K, BLOCK_K):
            joint = _joint_tile(
                s_row,
                m_row,
                lm_row,
                tm_row,
                k0 + offs_k,
                t0 + offs_t,
                K,
                T,
                stride_lk,
                stride_lt,
                m_r,
                lt_r,
                tau,
                HAS_MASK,
                HAS_TMASK,
                ACC,
            )
            col_max = tl.maximum(col_max, tl.max(joint, axis=0))
        col_max = tl.where(col_max == float("-inf"), 0.0, col_max)
        total = tl.zeros([BLOCK_T], ACC)
        for k0 in range(0, K, BLOCK_K):
            joint = _joint_tile(
                s_row,
                m_row,
                lm_row,
                tm_row,
                k0 + offs_k,
                t0 + offs_t,
                K,
                T,
                stride_lk,
                stride_lt,
                m_r,
                lt_r,
                tau,
                HAS_MASK,
                HAS_TMASK,
                ACC,
            )
            total += tl.sum(tl.exp(joint - col_max[None, :]), axis=0)
        counted = tok & (total > 0)  # a token with no valid context counts 0
        lse = tl.log(tl.where(counted, total, 1.0)) + col_max
        nll -= tl.where(counted, lse, 0.0)
        n_tokens += tok.to(ACC)
        if BACKWARD:  # +inf: the posterior of an uncounted token is exp(joint - inf) = 0
            tl.store(lse_row + t0 + offs_t, tl.where(counted, lse, float("inf")), mask=t0 + offs_t < T)

    if BACKWARD:
        tl.debug_barrier()  # the lse stores of every thread are visible
        g = tl.load(GRAD + row).to(ACC)
        n_tok = tl.sum(n_tokens, axis=0)
        for k0 in range(0, K, BLOCK_K):
            s, ctx_valid = load_row_chunk(s_row, m_row, k0 + offs_k, K, HAS_MASK, ACC)
            r = tl.where(ctx_valid, tl.exp((s - m_r) / tau - lt_r), 0.0)
            w_sum = tl.zeros([BLOCK_K], ACC)
            for t0 in range(0, T, BLOCK_T):
                joint = _joint_tile(
                    s_row,
                    m_row,
                    lm_row,
                    tm_row,
                    k0 + offs_k,
                    t0 + offs_t,
                    K,
                    T,
                    stride_lk,
                    stride_lt,
                    m_r,
                    lt_r,
                    tau,
                    HAS_MASK,
                    HAS_TMASK,
                    ACC,
                )
                lse = tl.load(lse_row + t0 + offs_t, mask=t0 + offs_t < T, other=float("inf"))
                w = tl.exp(joint - lse[None, :])  # the posterior; 0 where joint is -inf
                w_sum += tl.sum(w, axis=1)
                g_ptrs = (
                    GRAD_LM
                    + row * stride_glb
                    + (k0 + offs_k)[:, None] * stride_glk
                    + (t0 + offs_t)[None, :] * stride_glt
                )
                tl.store(
                    g_ptrs,
                    (-g * w).to(GRAD_LM.dtype.element_ty),
                    mask=((k0 + offs_k) < K)[:, None] & ((t0 + offs_t) < T)[None, :],
                )
            d = tl.where(ctx_valid, g / tau * (r * n_tok - w_sum), 0.0)
            tl.store(GRAD_S + row * stride_gs + k0 + offs_k, d.to(GRAD_S.dtype.element_ty), mask=k0 + offs_k < K)
    else:
        tl.store(NLL + row, tl.sum(nll, axis=0).to(NLL.dtype.element_ty))


def _blocks(k: int, t: int) -> tuple[int, int]:
    block_k = min(next_pow2(k), MAX_BLOCK_K)
    return block_k, min(next_pow2(t), max(1, TILE_ELEMENTS // block_k))


def _launch(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, backward):
    check_device(
        retriever_scores, lm_logprobs, mask, token_mask, grad, interpreted=is_interpreted(_marginal_nll_kernel)
    )
    s = retriever_scores if retriever_scores.stride(-1) == 1 else retriever_scores.contiguous()
    lm = lm_logprobs if lm_logprobs.dim() == 3 else lm_logprobs.unsqueeze(-1)  # sequence = one token
    b, k, t = lm.shape
    out_dtype = torch.promote_types(s.dtype, lm.dtype)
    nll = torch.zeros(b, dtype=out_dtype, device=s.device)
    grad_s = torch.zeros((b, k), dtype=s.dtype, device=s.device)
    grad_lm = torch.zeros(lm_logprobs.shape, dtype=lm.dtype, device=s.device)
    if b == 0 or k == 0 or t == 0:
        return (grad_s, grad_lm) if backward else nll
    glm = grad_lm if grad_lm.dim() == 3 else grad_lm.unsqueeze(-1)
    acc = compute_dtype(s.dtype, lm.dtype)
    lse = (
        torch.empty((b, t), dtype=torch.float64 if acc == tl.float64 else torch.float32, device=s.device)
        if backward
        else nll
    )
    m = mask.contiguous() if mask is not None else s
    tm = token_mask.contiguous() if token_mask is not None else s
    g = grad.contiguous() if backward else nll
    block_k, block_t = _blocks(k, t)
    _marginal_nll_kernel[(b,)](
        s,
        lm,
        m,
        tm,
        g,
        nll,
        lse,
        grad_s,
        glm,
        k,
        t,
        s.stride(0),
        m.stride(0),
        lm.stride(0),
        lm.stride(1),
        lm.stride(2),
        tm.stride(0),
        grad_s.stride(0),
        glm.stride(0),
        glm.stride(1),
        glm.stride(2),
        float(tau_retriever),
        HAS_MASK=mask is not None,
        HAS_TMASK=token_mask is not None,
        BACKWARD=backward,
        BLOCK_K=block_k,
        BLOCK_T=block_t,
        ACC=acc,
        num_warps=4,
        **launch_options(),
    )
    return (grad_s, grad_lm) if backward else nll


def marginal_nll(retriever_scores, lm_logprobs, tau_retriever: float, mask, token_mask) -> torch.Tensor:
    """nll [B] in the promoted dtype of the two inputs."""
    return _launch(None, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, False)


def marginal_nll_backward(
    grad, retriever_scores, lm_logprobs, tau_retriever: float, mask, token_mask
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_retriever_scores [B, K], grad_lm_logprobs like lm_logprobs), each in its input's dtype."""
    return _launch(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, True)
