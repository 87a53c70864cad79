"""Training losses for retrieval-augmented models: the public functions over the
pyrag::lsr_weights, pyrag::lsr_kl and pyrag::marginal_nll ops, and the DPR
contrastive loss.

All of them compute in float32 (float64 for float64 inputs), take `mask` [B, K] bool
(True = a valid context; masked entries may hold anything, such as the -inf padding of
a search with k > N), count a row with no valid context as 0, and are stable for
scores of +-1e4 and temperatures down to 1e-3.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag import ops  # noqa: F401  (defines torch.ops.pyrag.lsr_* and marginal_nll*)
from pyrag.ops._checks import check_tau
from pyrag.reference import compute_dtype

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: object) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    if reduction == "sum" or per_row.numel() == 0:  # the mean of no rows is 0, not NaN
        return per_row.sum()
    return per_row.mean()


def lsr_weights(
    lm_scores: torch.Tensor, tau: float = 1.0, mask: Optional[torch.Tensor] = None, *, backend: str = "auto"
) -> torch.Tensor:
    """p_LSR(c|x, y) [B, K]: softmax over the valid contexts of lm_scores / tau, 0 where
    masked. lm_scores are typically log p_LM(y | c∘x) from GeneratorAdapter.score."""
    check_tau(tau, "tau")  # before the op: its float argument would turn True into 1.0
    return torch.ops.pyrag.lsr_weights(lm_scores, tau, mask, backend)


def lsr_loss(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    *,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """LM-supervised retrieval loss (REPLUG LSR, Atlas): the KL divergence between
    p_R = softmax(retriever_scores / tau_retriever) and p_LSR = softmax(lm_scores / tau_lm).

    direction="forward": KL(p_R || p_LSR), the REPLUG paper's formula;
    direction="reverse": KL(p_LSR || p_R), what the public REPLUG and Atlas code compute.
    reduction: "mean" over the B rows (rows with no valid context count as 0), "sum",
    or "none" for [B]. The gradient reaches retriever_scores only; lm_scores is a target.
    """
    _check_reduction(reduction)
    check_tau(tau_retriever, "tau_retriever")
    check_tau(tau_lm, "tau_lm")
    kl = torch.ops.pyrag.lsr_kl(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, backend)
    return _reduce(kl, reduction)


def marginal_nll(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    *,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Negative log marginal likelihood of the target over the retrieved contexts (RAG).

    lm_logprobs [B, K] (log p_LM(y | c∘x)): -log sum_c p_R(c|x) p_LM(y | c∘x), RAG-sequence.
    lm_logprobs [B, K, T] (per-token log-probs): -sum_t log sum_c p_R(c|x) p(y_t | c∘x, y<t),
    RAG-token; token_mask [B, T] selects the tokens that count (positions that hold 0,
    as GeneratorAdapter.score(reduction="none") pads them, contribute exactly 0 anyway).
    reduction: "mean" over the B rows, "sum", or "none" for [B]. The gradient reaches
    both inputs, so it trains the retriever and the LM end to end.
    """
    _check_reduction(reduction)
    check_tau(tau_retriever, "tau_retriever")
    nll = torch.ops.pyrag.marginal_nll(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, backend)
    return _reduce(nll, reduction)


def contrastive_loss(
    q: torch.Tensor,
    d: torch.Tensor,
    *,
    tau: float = 1.0,
    negatives: Optional[torch.Tensor] = None,
    distributed: Optional[bool] = None,
    group: Any = None,
) -> torch.Tensor:
    """In-batch-negative InfoNCE as in DPR, averaged over the queries.

    q [B, dim] and d [B, dim]: d[i] is q[i]'s positive and every other row of d a negative;
    `negatives` [M, dim] adds hard negatives. With torch.distributed initialised (and
    distributed=None or True), the passages and negatives of every rank in `group` join
    the candidates: each rank scores its own queries against all of them, and its own
    passages keep their gradient (the other ranks' are constants, as in DPR). Ranks may
    hold different numbers of rows. Computed in float32 (float64 for float64 inputs).
    """
    check_tau(tau, "tau")
    for t, name in ((q, "q"), (d, "d")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise ValueError(
                f"{name} must be a 2-D floating tensor [B, dim], got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    if q.shape != d.shape:
        raise ValueError(
            f"q has shape {tuple(q.shape)} but d has shape {tuple(d.shape)}; row i of d is the positive of query i"
        )
    if negatives is not None:
        if not isinstance(negatives, torch.Tensor) or negatives.dim() != 2 or negatives.shape[1] != q.shape[1]:
            raise ValueError(
                f"negatives must be [M, {q.shape[1]}], got "
                f"{tuple(negatives.shape) if isinstance(negatives, torch.Tensor) else negatives!r}"
            )
    else:
        negatives = d.new_empty((0, d.shape[1]))
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    offset = 0
    if distributed:
        (d, negatives), offset = _gather_candidates((d, negatives), group)
    ct = compute_dtype(q.dtype, d.dtype, negatives.dtype)
    docs = torch.cat([d.to(ct), negatives.to(ct)])
    logits = q.to(ct) @ docs.T / tau
    labels = torch.arange(offset, offset + q.shape[0], device=q.device)
    if q.shape[0] == 0:
        return logits.sum().to(q.dtype)
    return torch.nn.functional.cross_entropy(logits, labels).to(q.dtype)


def _gather_candidates(tensors: tuple[torch.Tensor, ...], group: Any) -> tuple[list[torch.Tensor], int]:
    """all_gather each [n_r, dim] tensor over the ranks (n_r may differ), concatenated
    in rank order, with this rank's rows replaced by the local tensor so that they keep
    their gradient. Returns (gathered tensors, this rank's row offset in the first)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    local_sizes = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64, device=tensors[0].device)
    all_sizes = [torch.empty_like(local_sizes) for _ in range(world)]
    dist.all_gather(all_sizes, local_sizes, group=group)
    sizes = torch.stack(all_sizes).tolist()  # [world][len(tensors)]
    out = []
    for j, t in enumerate(tensors):
        counts = [sizes[r][j] for r in range(world)]
        widest = max(counts)
        if widest == 0:
            out.append(t)
            continue
        padded = t.detach().new_zeros((widest, t.shape[1]))
        padded[: t.shape[0]] = t.detach()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        pieces = [p[:n] for p, n in zip(parts, counts, strict=True)]
        pieces[rank] = t
        out.append(torch.cat(pieces))
    offset = sum(sizes[r][0] for r in range(rank))
    return out, offset
