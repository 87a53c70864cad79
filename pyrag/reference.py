"""Plain-PyTorch semantics of every pyrag op.

This file is the executable specification: every backend (CPU, Triton, CUDA, the CUDA
host emulation) is tested against it, and backend="reference" runs it as the slow
fallback. Clarity wins over speed here.
"""

from __future__ import annotations

from typing import Optional

import torch

NEG_INF = float("-inf")
# The two KL directions of LSR: "forward" KL(p_R || p_LSR), "reverse" KL(p_LSR || p_R).
DIRECTIONS = ("forward", "reverse")


def check_direction(direction: object) -> None:
    """A ValueError unless `direction` is one of DIRECTIONS (the one check every layer uses)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


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
    """q (rounded to bf16) . x for a bf16 corpus, exactly as the CPU kernels compute it:
    the products of two bf16 are exact in float32, and they are added to a float32 sum
    one at a time, pair by pair, odd dimension first (the order of vdpbf16ps)."""
    q = queries.to(torch.bfloat16).float()
    x = corpus.float()
    d = x.shape[1]
    s = torch.zeros((q.shape[0], x.shape[0]), dtype=torch.float32, device=q.device)
    for p in range(0, d, 2):
        for j in (p + 1, p):
            if j < d:
                s = s + q[:, j : j + 1] * x[:, j].unsqueeze(0)
            else:  # odd d: the padding dimension adds +0 (turns a -0 sum into +0)
                s = s + 0.0
    return s


def _scores_int8(queries: torch.Tensor, corpus: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """For an int8 corpus with per-row scales, as the CPU kernels compute it: the query
    is quantised (quantize_int8), the integer dot is exact, and
    score = float(dot) * (query scale * row scale)."""
    qv, qs = quantize_int8(queries)
    dot = qv.to(torch.int64) @ corpus.to(torch.int64).T
    return dot.float() * (qs.unsqueeze(1) * scales.float().unsqueeze(0))


def inner_products(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    scales: Optional[torch.Tensor] = None,
    *,
    quantized_queries: bool = False,
) -> torch.Tensor:
    """The [B, N] scores of topk_scores.

    The definition (quantized_queries=False): q . x in float32, with the corpus row
    dequantised first (row times its scale) when per-row `scales` [N] are given. Every
    backend meets it to float32 rounding for float32 corpora (the kernels sum in their
    own order), and on data whose dot products are exact (small integers) bit for bit.
    The GPU backends meet it for bfloat16 and int8 corpora too.

    quantized_queries=True gives what the CPU kernels compute for a compact corpus, bit
    for bit: a bfloat16 corpus meets the query rounded to bfloat16 (_scores_bf16), an
    int8 corpus (scales required) meets the query quantised to int8 (_scores_int8).
    That rounding is the price of vdpbf16ps / vpdpbusd; DenseIndex.search(exact=True) removes
    it. Other corpus dtypes ignore the flag.
    """
    if quantized_queries and corpus.dtype == torch.int8:
        if scales is None:
            raise ValueError("an int8 corpus with quantized queries needs per-row scales")
        return _scores_int8(queries, corpus, scales)
    if quantized_queries and corpus.dtype == torch.bfloat16 and scales is None:
        return _scores_bf16(queries, corpus)
    x = corpus.float()
    if scales is not None:
        x = x * scales.float()[:, None]
    return queries.float() @ x.T


def topk_scores(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    scales: Optional[torch.Tensor] = None,
    *,
    quantized_queries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the k corpus rows with the largest inner product.

    Scores are inner_products(queries, corpus, scales, quantized_queries=...). Sorted by
    descending score; equal scores go to the smaller row id; when k > N the tail is padded with score -inf and
    id -1. Raises ValueError if a score is NaN/Inf.
    """
    scores = inner_products(
        queries, corpus, scales, quantized_queries=quantized_queries
    )  # [B, N]: materialised here, never in a kernel
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


def lsr_kl(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
) -> torch.Tensor:
    """Per-row KL divergence [B] between p_R = softmax(retriever_scores/tau_retriever) and
    p_LSR = softmax(lm_scores/tau_lm) over the valid contexts.

    direction="forward": KL(p_R || p_LSR) (the REPLUG paper's formula);
    direction="reverse": KL(p_LSR || p_R) (what REPLUG's and Atlas's code compute).
    lm_scores is a constant: no gradient flows to it. The result has the promoted dtype
    of the two inputs.
    """
    check_direction(direction)
    ct = compute_dtype(retriever_scores.dtype, lm_scores.dtype)
    log_r = _masked_log_softmax(retriever_scores.to(ct), tau_retriever, mask)
    log_l = _masked_log_softmax(lm_scores.detach().to(ct), tau_lm, mask)
    log_p, log_q = (log_r, log_l) if direction == "forward" else (log_l, log_r)
    valid = torch.isfinite(log_p) & torch.isfinite(log_q)
    # Zero the masked entries before the arithmetic: exp(-inf) * (-inf) would be NaN,
    # and a NaN in an unused torch.where branch still poisons its gradient.
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))
    log_q = torch.where(valid, log_q, torch.zeros_like(log_q))
    terms = torch.where(valid, torch.exp(log_p) * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).to(torch.promote_types(retriever_scores.dtype, lm_scores.dtype))


def lsr_kl_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
) -> torch.Tensor:
    """d(sum_b grad[b] * lsr_kl[b]) / d retriever_scores, in closed form [B, K]:

    forward: grad/tau_R * r_j * (log r_j - log l_j - KL);   reverse: grad/tau_R * (r_j - l_j),
    0 on masked entries and on rows with no valid context. Tests check it against
    autograd through lsr_kl.
    """
    check_direction(direction)
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
    else:
        p_lsr = torch.where(valid, torch.exp(log_l), torch.zeros_like(log_l))
        out = g * (r - p_lsr)
    return torch.where(valid, out, torch.zeros_like(out)).to(retriever_scores.dtype)


def _marginal_parts(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float,
    mask: Optional[torch.Tensor],
    token_mask: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared by marginal_nll and its backward: log p_R [B, K] and the joint
    log-probabilities log p_R(c) + lm [B, K] or [B, K, T] (-inf where masked)."""
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


def marginal_nll(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
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


def marginal_nll_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum_b grad[b] * marginal_nll[b] in closed form, with the posterior
    w_c = p_R(c) p_LM(y|c) / sum_c' p_R(c') p_LM(y|c') (per token for [B, K, T]):

    d/d lm_logprobs[c(,t)] = -grad * w_c(t)   (times token_mask[t]);
    d/d retriever_scores[c] = grad/tau * sum_t token_mask[t] * (r_c - w_ct)   (one t for [B, K]).
    0 on masked entries and on rows with no valid context. Tests check it against
    autograd through marginal_nll.
    """
    log_r, joint = _marginal_parts(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    ctx_valid = torch.isfinite(log_r)
    r = torch.where(
        ctx_valid, torch.exp(torch.where(ctx_valid, log_r, torch.zeros_like(log_r))), torch.zeros_like(log_r)
    )
    col_max = joint.amax(dim=1, keepdim=True)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
    e = torch.exp(joint - col_max)  # 0 where masked
    total = e.sum(dim=1, keepdim=True)
    w = e / torch.where(total > 0, total, torch.ones_like(total))  # posterior; 0 in empty rows
    g = grad.to(joint.dtype)
    if joint.dim() == 3:
        tm = torch.ones_like(joint[:, 0, :]) if token_mask is None else token_mask.to(joint.dtype)  # [B, T]
        w = w * tm.unsqueeze(1)
        grad_lm = -g[:, None, None] * w
        grad_s = g[:, None] / tau_retriever * (r * tm.sum(dim=-1, keepdim=True) - w.sum(dim=-1))
    else:
        grad_lm = -g[:, None] * w
        grad_s = g[:, None] / tau_retriever * (r - w)
    grad_s = torch.where(ctx_valid, grad_s, torch.zeros_like(grad_s))
    return grad_s.to(retriever_scores.dtype), grad_lm.to(lm_logprobs.dtype)


def contrastive_loss(
    q: torch.Tensor, d: torch.Tensor, tau: float = 1.0, negatives: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """In-batch-negative InfoNCE (DPR): row i of d is q_i's positive; every other row of
    d, and every row of `negatives`, is a negative. Mean over the B queries."""
    ct = compute_dtype(q.dtype, d.dtype)
    docs = d if negatives is None else torch.cat([d, negatives.to(d.dtype)], dim=0)
    logits = (q.to(ct) @ docs.to(ct).T) / tau
    labels = torch.arange(q.shape[0], device=q.device)
    return torch.nn.functional.cross_entropy(logits, labels).to(q.dtype)
