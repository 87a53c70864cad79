"""Plain-PyTorch semantics of every pyrag op.

This file is the executable specification: every backend (CPU, Triton, CUDA, the CUDA
host emulation) is tested against it, and backend="reference" runs it as the slow
fallback. Clarity wins over speed here.
"""
from __future__ import annotations

from typing import Optional

import torch

NEG_INF = float("-inf")


def topk_scores(queries: torch.Tensor, corpus: torch.Tensor, k: int,
                scales: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the k corpus rows with the largest inner product.

    Scores are computed in float32 (a corpus with per-row `scales` is dequantised first).
    Sorted by descending score; equal scores go to the smaller row id; when k > N the
    tail is padded with score -inf and id -1. Raises ValueError if a score is NaN/Inf.
    """
    q = queries.float()
    x = corpus.float()
    if scales is not None:
        x = x * scales.float()[:, None]
    scores = q @ x.T  # [B, N]: materialised here, never in a kernel
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
# float64, for gradcheck: float64 if any input is) and results are returned in the
# inputs' promoted dtype; gradients in each input's dtype. `mask` is bool [B, K], True
# marking a valid context. Masked entries are never read, so they may hold anything
# (-inf padding from topk_scores, even NaN); a row with no valid context gives 0 (and
# zero gradients), never NaN. Everything goes through log-softmax / log-sum-exp with the
# row max subtracted first, so scores of +-1e4 and temperatures down to 1e-3 stay finite.
# Gradients of the forward functions (by autograd) are the reference for every backend's
# backward; the closed-form *_backward functions here are checked against them.
# ---------------------------------------------------------------------------------


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are widened)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _masked_log_softmax(scores: torch.Tensor, tau: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """log-softmax of scores/tau over the valid entries of each row; -inf where masked
    (a fully masked row is all -inf). Masked entries may hold anything, even NaN."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    # Subtract the max before dividing by tau: with s = 1e4 and tau = 1e-3, s/tau = 1e7
    # where a float32 ulp is 1.0, while (s - max)/tau keeps the differences exact.
    z = (scores - row_max) / tau
    total = torch.exp(z).sum(dim=-1, keepdim=True)
    # A fully masked row sums to 0; keep it all -inf rather than -inf - (-inf) = NaN.
    return z - torch.log(torch.where(total > 0, total, torch.ones_like(total)))


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
    lm_scores is a constant: no gradient flows to it. The result has the promoted dtype
    of the two inputs.
    """
    ct = compute_dtype(retriever_scores.dtype, lm_scores.dtype)
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
    return terms.sum(dim=-1).to(torch.promote_types(retriever_scores.dtype, lm_scores.dtype))


def lsr_kl_backward(grad: torch.Tensor, retriever_scores: torch.Tensor, lm_scores: torch.Tensor,
                    tau_retriever: float = 1.0, tau_lm: float = 1.0, mask: Optional[torch.Tensor] = None,
                    direction: str = "forward") -> torch.Tensor:
    """d(sum_b grad[b] * lsr_kl[b]) / d retriever_scores, in closed form [B, K]:

    forward: grad/tau_R * r_j * (log r_j - log l_j - KL);   reverse: grad/tau_R * (r_j - l_j),
    0 on masked entries and on rows with no valid context. Tests check it against
    autograd through lsr_kl.
    """
    ct = compute_dtype(retriever_scores.dtype, lm_scores.dtype)
    log_r = _masked_log_softmax(retriever_scores.to(ct), tau_retriever, mask)
    log_l = _masked_log_softmax(lm_scores.to(ct), tau_lm, mask)
    valid = torch.isfinite(log_r)
    log_r = torch.where(valid, log_r, torch.zeros_like(log_r))
    log_l = torch.where(valid, log_l, torch.zeros_like(log_l))
    r = torch.where(valid, torch.exp(log_r), torch.zeros_like(log_r))
    g = grad.to(ct).unsqueeze(-1) / tau_retriever
    if direction == "forward":
        diff = torch.where(valid, log_r - log_l, torch.zeros_like(log_r))
        kl = (r * diff).sum(dim=-1, keepdim=True)
        out = g * r * (diff - kl)
    elif direction == "reverse":
        p_lsr = torch.where(valid, torch.exp(log_l), torch.zeros_like(log_l))
        out = g * (r - p_lsr)
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return torch.where(valid, out, torch.zeros_like(out)).to(retriever_scores.dtype)


def _marginal_parts(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask):
    """Shared by marginal_nll and its backward: log p_R [B, K], the joint log-probabilities
    log p_R(c) + lm [B, K] or [B, K, T] (-inf where masked), and the token weights."""
    ct = compute_dtype(retriever_scores.dtype, lm_logprobs.dtype)
    log_r = _masked_log_softmax(retriever_scores.to(ct), tau_retriever, mask)  # [B, K]
    lm = lm_logprobs.to(ct)
    ctx_valid = torch.isfinite(log_r)
    if lm.dim() == 3:
        ctx_valid = ctx_valid.unsqueeze(-1)
        if token_mask is not None:  # padded token positions may hold anything, even NaN
            lm = torch.where(token_mask.unsqueeze(1), lm, torch.zeros_like(lm))
    lm = torch.where(ctx_valid, lm, torch.zeros_like(lm))
    joint = (log_r.unsqueeze(-1) if lm.dim() == 3 else log_r) + lm
    joint = torch.where(ctx_valid.expand_as(joint), joint, torch.full_like(joint, float("-inf")))
    return log_r, joint


def marginal_nll(retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor, tau_retriever: float = 1.0,
                 mask: Optional[torch.Tensor] = None, token_mask: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Per-row negative log marginal likelihood [B].

    lm_logprobs [B, K]: -log sum_c p_R(c|x) * exp(lm_logprobs[c])   (RAG-sequence).
    lm_logprobs [B, K, T]: -sum_t token_mask[t] * log sum_c p_R(c|x) * p(y_t|c, x, y<t)
    (RAG-token); token_mask [B, T] is bool, None meaning every token counts.
    A row with no valid context gives 0. The result has the promoted dtype of the inputs.
    """
    _, joint = _marginal_parts(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    col_max = joint.amax(dim=1, keepdim=True)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max)).detach()
    summed = torch.exp(joint - col_max).sum(dim=1, keepdim=True)
    # A row with no valid context sums to 0: count it as 0 loss, not -log 0.
    empty = summed == 0
    log_summed = torch.log(summed.clamp_min(torch.finfo(joint.dtype).tiny))
    lse = torch.where(empty, torch.zeros_like(summed), log_summed + col_max)
    nll = -lse.squeeze(1)  # [B] or [B, T]
    if nll.dim() == 2:
        if token_mask is not None:
            nll = torch.where(token_mask, nll, torch.zeros_like(nll))
        nll = nll.sum(dim=-1)
    return nll.to(torch.promote_types(retriever_scores.dtype, lm_logprobs.dtype))


def marginal_nll_backward(grad: torch.Tensor, retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor,
                          tau_retriever: float = 1.0, mask: Optional[torch.Tensor] = None,
                          token_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum_b grad[b] * marginal_nll[b] in closed form, with the posterior
    w_c = p_R(c) p_LM(y|c) / sum_c' p_R(c') p_LM(y|c') (per token for [B, K, T]):

    d/d lm_logprobs[c(,t)] = -grad * w_c(t)   (times token_mask[t]);
    d/d retriever_scores[c] = grad/tau * sum_t token_mask[t] * (r_c - w_ct)   (one t for [B, K]).
    0 on masked entries and on rows with no valid context. Tests check it against
    autograd through marginal_nll.
    """
    log_r, joint = _marginal_parts(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    ctx_valid = torch.isfinite(log_r)
    r = torch.where(ctx_valid, torch.exp(torch.where(ctx_valid, log_r, torch.zeros_like(log_r))),
                    torch.zeros_like(log_r))
    col_max = joint.amax(dim=1, keepdim=True)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
    e = torch.exp(joint - col_max)  # 0 where masked
    total = e.sum(dim=1, keepdim=True)
    w = e / torch.where(total > 0, total, torch.ones_like(total))  # posterior; 0 in empty rows
    g = grad.to(joint.dtype)
    if joint.dim() == 3:
        tm = (torch.ones_like(joint[:, 0, :]) if token_mask is None
              else token_mask.to(joint.dtype))  # [B, T]
        w = w * tm.unsqueeze(1)
        grad_lm = -g[:, None, None] * w
        grad_s = g[:, None] / tau_retriever * (r * tm.sum(dim=-1, keepdim=True) - w.sum(dim=-1))
    else:
        grad_lm = -g[:, None] * w
        grad_s = g[:, None] / tau_retriever * (r - w)
    grad_s = torch.where(ctx_valid, grad_s, torch.zeros_like(grad_s))
    return grad_s.to(retriever_scores.dtype), grad_lm.to(lm_logprobs.dtype)


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, tau: float = 1.0,
                     negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In-batch-negative InfoNCE (DPR): row i of d is q_i's positive; every other row of
    d, and every row of `negatives`, is a negative. Mean over the B queries."""
    ct = compute_dtype(q.dtype, d.dtype)
    docs = d if negatives is None else torch.cat([d, negatives.to(d.dtype)], dim=0)
    logits = (q.to(ct) @ docs.to(ct).T) / tau
    labels = torch.arange(q.shape[0], device=q.device)
    return torch.nn.functional.cross_entropy(logits, labels).to(q.dtype)
