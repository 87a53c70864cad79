"""The four training modes, each one short loss function built from the public pieces
(Retriever, the losses, an LM callable), meant to be read and copied into other trainers:

| mode         | trains                 | loss                                              |
| ------------ | ---------------------- | ------------------------------------------------- |
| "replug_lsr" | the retriever          | lsr_loss(retriever scores, frozen LM scores)      |
| "ra_dit"     | LM and retriever       | LM: -Σ_i Σ_j log p_LM(y_i|c_ij∘x_i); retriever: LSR |
| "marginal"   | both                   | marginal_nll (RAG): gradient to both              |
| "dpr"        | the retriever          | contrastive_loss with in-batch (+ hard) negatives |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from pyrag.losses import contrastive_loss, lsr_loss, marginal_nll
from pyrag.retriever import RetrievalResult, Retriever
from pyrag.train.config import TrainConfig

# An LM: (queries, contexts [B][K] with None for padding, targets) -> log p(y | c∘x) [B, K].
LM = Callable[[Sequence[Any], list[list[Optional[str]]], Sequence[str]], torch.Tensor]


def replug_lsr_loss(
    retriever: Retriever, lm: LM, queries: Sequence[Any], answers: Sequence[str], cfg: TrainConfig
) -> torch.Tensor:
    """REPLUG LSR: the retriever's distribution over its top k is pulled toward the LM's
    (how much each passage helps the LM produce the answer). The LM is a fixed black box."""
    hits = retriever(queries, k=cfg.k)
    with torch.no_grad():
        lm_scores = lm(queries, _contexts(hits), answers)
    return lsr_loss(
        hits.scores,
        lm_scores,
        tau_retriever=cfg.tau_retriever,
        tau_lm=cfg.tau_lm,
        mask=hits.mask,
        direction=cfg.direction,
    )


def ra_dit_loss(
    retriever: Retriever,
    lm: LM,
    queries: Sequence[Any],
    answers: Sequence[str],
    cfg: TrainConfig,
    *,
    train_lm: bool = True,
    train_retriever: bool = True,
) -> torch.Tensor:
    """RA-DIT dual instruction tuning: the LM learns to answer from each retrieved passage
    (-Σ_i Σ_j log p_LM(y_i|c_ij∘x_i), summed over the k passages, averaged over queries)
    and the retriever learns LSR from the same LM's scores."""
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and train_retriever):
        hits = retriever(queries, k=cfg.k)
    with torch.set_grad_enabled(grad and train_lm):
        lm_logp = lm(queries, _contexts(hits), answers)
    loss = hits.scores.new_zeros(())
    if train_lm:
        loss = loss - lm_logp.masked_fill(~hits.mask, 0.0).sum(dim=1).mean()
    if train_retriever:
        loss = loss + lsr_loss(
            hits.scores,
            lm_logp.detach(),
            tau_retriever=cfg.tau_retriever,
            tau_lm=cfg.tau_lm,
            mask=hits.mask,
            direction=cfg.direction,
        )
    return loss


def marginal_loss(
    retriever: Retriever,
    lm: LM,
    queries: Sequence[Any],
    answers: Sequence[str],
    cfg: TrainConfig,
    *,
    train_retriever: bool = True,
) -> torch.Tensor:
    """End-to-end RAG: -log Σ_c p_R(c|x) p_LM(y|c∘x); the gradient reaches both models."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and train_retriever):
        hits = retriever(queries, k=cfg.k)
    lm_logp = lm(queries, _contexts(hits), answers)
    return marginal_nll(hits.scores, lm_logp, tau_retriever=cfg.tau_retriever, mask=hits.mask)


def dpr_loss(retriever: Retriever, queries: Sequence[Any], positives: Sequence[int], cfg: TrainConfig) -> torch.Tensor:
    """DPR: each query's labelled passage against the batch's other passages and, with
    cfg.hard_negatives, its best-ranked wrong passages. With a passage encoder on the
    retriever (cfg.train_passage_encoder) the passages are embedded live, else read from
    the index."""
    q = retriever.encode_queries(queries)
    pos = torch.as_tensor(list(positives), dtype=torch.int64)
    ids = pos
    negatives = None
    if cfg.hard_negatives:
        hits = retriever.retrieve(q.detach(), k=cfg.hard_negatives + 1, reembed=False)
        neg_ids = []
        for row, p in zip(hits.ids.tolist(), pos.tolist()):
            neg_ids += [i for i in row if i != p and i >= 0][: cfg.hard_negatives]
        ids = torch.cat([pos, torch.tensor(neg_ids, dtype=torch.int64)])
    if cfg.train_passage_encoder:
        unique, inverse = torch.unique(ids, return_inverse=True)
        if retriever.passage_encoder is None or retriever.passages is None:
            raise ValueError("train_passage_encoder needs the retriever's passage_encoder and passages")
        texts = retriever.passages
        emb = retriever.passage_encoder([texts[i] for i in unique.tolist()])[inverse]
    else:
        emb = retriever.index.snapshot().get(ids).to(q.device, q.dtype)
    d = emb[: len(pos)]
    if len(ids) > len(pos):
        negatives = emb[len(pos) :]
    return contrastive_loss(q, d, tau=cfg.tau_retriever, negatives=negatives)


def _contexts(hits: RetrievalResult) -> list[list[Optional[str]]]:
    """The hits' texts, which an LM reads."""
    if hits.passages is None:
        raise ValueError("the LM reads the retrieved passages: give the Retriever their texts (passages=)")
    return hits.passages
