"""Plain-PyTorch semantics of every pyrag op.

This file is the executable specification: every backend (CPU, Triton, CUDA, the CUDA
host emulation) is tested against it, and backend="reference" runs it as the slow
fallback. Clarity wins over speed here.
"""
from __future__ import annotations

from typing import Optional

import torch

NEG_INF = float("-inf")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of each vector (last dim) of float32 `x`.

    scale = max|x| / 127 and value = round_half_even(x * (127 / max|x|)), clamped to
    [-127, 127] (all zero when max|x| = 0); every op rounds once in float32. Used for the
    rows of an int8 corpus and, dynamically, for the queries searched against it.
    Returns (values int8, scales float32).
    """
    x = x.float()
    amax = x.abs().amax(dim=-1)
    c127 = torch.tensor(127.0, dtype=torch.float32, device=x.device)
    scales = amax / c127
    inv = torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))
    values = torch.round(x * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return values, scales


def _scores_bf16(queries: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
    """q (rounded to bf16) . x for a bf16 corpus, exactly as the kernels compute it: the
    products of two bf16 are exact in float32, and they are added to a float32 sum one
    at a time, pair by pair, odd dimension first (the order of vdpbf16ps)."""
    q = queries.to(torch.bfloat16).float()
    x = corpus.float()
    d = x.shape[1]
    s = torch.zeros((q.shape[0], x.shape[0]), dtype=torch.float32, device=q.device)
    for p in range(0, d, 2):
        for j in (p + 1, p):
            if j < d:
                s = s + q[:, j:j + 1] * x[:, j].unsqueeze(0)
            else:  # odd d: the padding dimension adds +0 (turns a -0 sum into +0)
                s = s + 0.0
    return s


def _scores_int8(queries: torch.Tensor, corpus: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """For an int8 corpus with per-row scales: the query is quantised (quantize_int8),
    the integer dot is exact, and score = float(dot) * (query scale * row scale)."""
    qv, qs = quantize_int8(queries)
    dot = qv.to(torch.int64) @ corpus.to(torch.int64).T
    return dot.float() * (qs.unsqueeze(1) * scales.float().unsqueeze(0))


def inner_products(queries: torch.Tensor, corpus: torch.Tensor,
                   scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The [B, N] scores of topk_scores, by corpus dtype:

    - float32 (and other floating dtypes): q . x in float32. The kernels add the products
      in one sequential FMA chain per row, so they agree with this to float32 rounding;
      on data whose dot products are exact (small integers) they agree bit for bit.
    - bfloat16: see _scores_bf16 (bit for bit).
    - int8 with per-row `scales` [N]: see _scores_int8 (bit for bit).
    """
    if corpus.dtype == torch.int8:
        if scales is None:
            raise ValueError("an int8 corpus needs per-row scales")
        return _scores_int8(queries, corpus, scales)
    if scales is not None:
        raise ValueError(f"scales only go with an int8 corpus, got a {corpus.dtype} corpus")
    if corpus.dtype == torch.bfloat16:
        return _scores_bf16(queries, corpus)
    return queries.float() @ corpus.float().T


def topk_scores(queries: torch.Tensor, corpus: torch.Tensor, k: int,
                scales: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the k corpus rows with the largest inner product.

    Scores are inner_products(queries, corpus, scales). Sorted by descending score; equal
    scores go to the smaller row id; when k > N the tail is padded with score -inf and
    id -1. Raises ValueError if a score is NaN/Inf.
    """
    scores = inner_products(queries, corpus, scales)  # [B, N]: materialised here, never in a kernel
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("topk_scores: a score is NaN or Inf")
    b, n = scores.shape
    # A stable sort keeps equal scores in id order: ties go to the smaller id.
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    kk = min(k, n)
    out_scores = torch.full((b, k), NEG_INF, dtype=torch.float32, device=queries.device)
    out_ids = torch.full((b, k), -1, dtype=torch.int64, device=queries.device)
    out_scores[:, :kk] = sorted_scores[:, :kk]
    out_ids[:, :kk] = order[:, :kk]
    return out_scores, out_ids


# ---------------------------------------------------------------------------------
# Training losses. Inputs of any floating dtype are computed in float32 (float64 stays
# float64, for gradcheck) and results are returned in the input's dtype. `mask` is bool
# [B, K], True marking a valid context; a row with no valid context gives 0 (and zero
# gradients), never NaN. Everything goes through log-softmax / log-sum-exp, so scores of
# +-1e4 and temperatures down to 1e-3 stay finite. Gradients of these functions (by
# autograd) are the reference for every backend's backward.
# ---------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked_log_softmax(scores: torch.Tensor, tau: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """log-softmax of scores/tau over the valid entries of each row; -inf where masked
    (a fully masked row is all -inf)."""
    z = scores / tau
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    row_max = z.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    total = torch.exp(z - row_max).sum(dim=-1, keepdim=True)
    # A fully masked row sums to 0; keep it all -inf rather than -inf - (-inf) = NaN.
    lse = torch.log(torch.where(total > 0, total, torch.ones_like(total))) + row_max
    return z - lse


def lsr_weights(lm_scores: torch.Tensor, tau: float = 1.0, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p_LSR(c|x,y): softmax over the valid contexts of lm_scores/tau; 0 where masked."""
    ct = compute_dtype(lm_scores.dtype)
    logp = _masked_log_softmax(lm_scores.to(ct), tau, mask)
    return torch.exp(logp).to(lm_scores.dtype)  # exp(-inf) = 0 on masked entries


def lsr_kl(retriever_scores: torch.Tensor, lm_scores: torch.Tensor, tau_retriever: float = 1.0,
           tau_lm: float = 1.0, mask: Optional[torch.Tensor] = None, direction: str = "forward"
           ) -> torch.Tensor:
    """Per-row KL divergence [B] between p_R = softmax(retriever_scores/tau_retriever) and
    p_LSR = softmax(lm_scores/tau_lm) over the valid contexts.

    direction="forward": KL(p_R || p_LSR) (the REPLUG paper's formula);
    direction="reverse": KL(p_LSR || p_R) (what REPLUG's and Atlas's code compute).
    lm_scores is a constant: no gradient flows to it.
    """
    ct = compute_dtype(retriever_scores.dtype)
    log_r = _masked_log_softmax(retriever_scores.to(ct), tau_retriever, mask)
    log_l = _masked_log_softmax(lm_scores.detach().to(ct), tau_lm, mask)
    if direction == "forward":
        log_p, log_q = log_r, log_l
    elif direction == "reverse":
        log_p, log_q = log_l, log_r
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    valid = torch.isfinite(log_p) & torch.isfinite(log_q)
    # Zero the masked entries before the arithmetic: exp(-inf) * (-inf) would be NaN,
    # and a NaN in an unused torch.where branch still poisons its gradient.
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))
    log_q = torch.where(valid, log_q, torch.zeros_like(log_q))
    terms = torch.where(valid, torch.exp(log_p) * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).to(retriever_scores.dtype)


def marginal_nll(retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor, tau_retriever: float = 1.0,
                 mask: Optional[torch.Tensor] = None, token_mask: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Per-row negative log marginal likelihood [B].

    lm_logprobs [B, K]: -log sum_c p_R(c|x) * exp(lm_logprobs[c])   (RAG-sequence).
    lm_logprobs [B, K, T]: -sum_t token_mask[t] * log sum_c p_R(c|x) * p(y_t|c, x, y<t)
    (RAG-token); token_mask [B, T] is bool, None meaning every token counts.
    """
    ct = compute_dtype(retriever_scores.dtype)
    log_r = _masked_log_softmax(retriever_scores.to(ct), tau_retriever, mask)  # [B, K]
    lm = lm_logprobs.to(ct)
    if lm.dim() == 3:
        log_r = log_r.unsqueeze(-1)  # [B, K, 1]
    joint = log_r + lm
    joint = torch.where(torch.isfinite(log_r).expand_as(joint), joint, torch.full_like(joint, float("-inf")))
    col_max = joint.amax(dim=1, keepdim=True)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max)).detach()
    summed = torch.exp(joint - col_max).sum(dim=1, keepdim=True)
    # A row with no valid context sums to 0: count it as 0 loss, not -log 0.
    empty = summed == 0
    lse = torch.where(empty, torch.zeros_like(summed), torch.log(summed.clamp_min(torch.finfo(ct).tiny)) + col_max)
    nll = -lse.squeeze(1)  # [B] or [B, T]
    if nll.dim() == 2:
        if token_mask is not None:
            nll = torch.where(token_mask, nll, torch.zeros_like(nll))
        nll = nll.sum(dim=-1)
    return nll.to(retriever_scores.dtype)


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, tau: float = 1.0,
                     negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-batch-negative InfoNCE (DPR): row i of d is q_i's positive; every other row of
    d, and every row of `negatives`, is a negative. Mean over the B queries."""
    ct = compute_dtype(q.dtype)
    docs = d if negatives is None else torch.cat([d, negatives], dim=0)
    logits = (q.to(ct) @ docs.to(ct).T) / tau
    labels = torch.arange(q.shape[0], device=q.device)
    return torch.nn.functional.cross_entropy(logits, labels).to(q.dtype)
