"""The four training modes, each one short loss function built from the public pieces
(Retriever, the losses, an LM callable), meant to be read and copied into other trainers:

| mode         | trains                 | loss                                              |
| ------------ | ---------------------- | ------------------------------------------------- |
| "replug_lsr" | the retriever          | lsr_loss(retriever scores, frozen LM scores)      |
| "ra_dit"     | LM and retriever       | LM: -Σ_i Σ_j log p_LM(y_i|c_ij∘x_i); retriever: LSR |
| "marginal"   | both                   | marginal_nll (RAG): gradient to both              |
| "dpr"        | the retriever          | contrastive_loss with in-batch (+ hard) negatives |

The LM-supervised modes score the LM on a candidate set per query (`candidates`): its own
retrieved top k, optionally the other queries' top passages (in-batch, TrainConfig.in_batch)
and passages drawn from deeper in its own ranking (TrainConfig.hard_negatives). A step
costs one search of depth k (+ hard_negative_depth), then LM calls and q·x scores for at
most k + hard_negatives + (B − 1)·in_batch passages per query: the corpus size N does not
enter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from pyrag.losses import contrastive_loss, lsr_loss, marginal_nll
from pyrag.retriever import Retriever
from pyrag.train.config import TrainConfig

# An LM: (queries, contexts [B][K] with None for padding, targets) -> log p(y | c∘x) [B, K].
LM = Callable[[Sequence[Any], list[list[Optional[str]]], Sequence[str]], torch.Tensor]


@dataclass
class Candidates:
    """The passages a training step scores for B queries, C per query.

    ids: [B, C] index ids (-1: padding). scores: [B, C] the retriever's q·x (times its
    score_scale) with gradient, -inf on padding. mask: [B, C] bool, False on padding.
    retrieved: [B, C] bool, True where the passage is in the query's own top k (RA-DIT's
    LM trains on those only). passages: their texts [B][C], None for padding.
    """

    ids: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor
    retrieved: torch.Tensor
    passages: list[list[Optional[str]]]
    index_version: int


def candidates(
    retriever: Retriever,
    queries: Sequence[Any],
    cfg: TrainConfig,
    *,
    generator: Optional[torch.Generator] = None,
    reembed: Optional[bool] = None,
) -> Candidates:
    """The LM-scored candidates of a step (see the module's docstring), with the retriever's
    differentiable scores of them.

    One search of depth k (+ hard_negative_depth when cfg.hard_negatives) on one snapshot of
    the index. A query's candidates are its top k, its hard negatives and, with
    cfg.in_batch = m, the top m of every query in the batch, each passage once: at most
    k + hard_negatives + (B − 1)·m LM calls per query (m = k: the union of the batch's
    retrieved passages). Scores are q · x with x the stored vectors, or the live passage
    encoder's embeddings of the candidates when the retriever has one (each distinct passage
    of the batch encoded once), so that p_R over the candidates trains that encoder too.
    generator: draws the hard negatives (default: torch's global generator).
    reembed: score with the live passage encoder (default: whenever the retriever has one).
    """
    if retriever.passages is None:
        raise ValueError("the LM reads the retrieved passages: give the Retriever their texts (passages=)")
    q = retriever.encode_queries(queries)
    snap = retriever.index.snapshot()  # the search and the reads of its hits agree
    depth = cfg.k + (cfg.hard_negative_depth if cfg.hard_negatives else 0)
    with torch.no_grad():
        _, found = snap.search(q.detach().to(torch.float32), depth)
    found = found.to("cpu", torch.int64)
    own = found[:, : cfg.k]
    per_query = own
    if cfg.hard_negatives:
        per_query = torch.cat([own, _draw(found[:, cfg.k :], cfg.hard_negatives, generator)], dim=1)
    if cfg.in_batch:
        shared = found[:, : cfg.in_batch].flatten()  # every query's top in_batch, offered to all
        rows = [torch.unique(torch.cat([row, shared])) for row in per_query]  # sorted, each passage once
        rows = [row[row >= 0] for row in rows]
        ids = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        retrieved = torch.stack([torch.isin(row, mine) for row, mine in zip(ids, own)])
    else:
        ids = per_query
        retrieved = torch.zeros_like(ids, dtype=torch.bool)
        retrieved[:, : cfg.k] = True
    mask = ids >= 0
    retrieved &= mask
    unique, inverse = torch.unique(ids, return_inverse=True)
    keep = unique >= 0
    live = retriever.passage_encoder is not None if reembed is None else reembed
    emb = _embeddings(retriever, snap, unique[keep], live).to(q.device)
    table = q @ emb.to(q.dtype).T  # [B, distinct passages]: each distinct passage scored once per query
    if retriever.score_scale is not None:
        table = table * retriever.score_scale
    column = torch.cumsum(keep.to(torch.int64), 0) - 1  # position of each unique id among the valid ones
    cols = column[inverse].clamp(min=0).to(q.device)
    scores = table.gather(1, cols).masked_fill(~mask.to(q.device), -math.inf)
    texts = [[retriever.passages[i] if i >= 0 else None for i in row] for row in ids.tolist()]
    return Candidates(ids.to(q.device), scores, mask.to(q.device), retrieved.to(q.device), texts, snap.version)


def _draw(pool: torch.Tensor, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """n ids per row drawn without replacement from the row's valid entries of `pool`
    (-1 where a row has fewer)."""
    out = torch.full((pool.shape[0], n), -1, dtype=torch.int64)
    for r, row in enumerate(pool):
        valid = row[row >= 0]
        if len(valid):
            pick = torch.randperm(len(valid), generator=generator)[:n]
            out[r, : len(pick)] = valid[pick]
    return out


def _embeddings(retriever: Retriever, snap: Any, ids: torch.Tensor, live: bool) -> torch.Tensor:
    """[len(ids), dim]: the live passage encoder's embeddings of `ids` (with gradient) when
    `live`, else the index's stored vectors."""
    if live and retriever.passage_encoder is None:
        raise ValueError("reembed=True needs a passage_encoder on the retriever")
    if not live or retriever.passage_encoder is None or len(ids) == 0:
        return snap.get(ids)
    texts = [retriever.passages[i] for i in ids.tolist()]  # type: ignore[index]
    emb = retriever.passage_encoder(texts)
    if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (len(texts), retriever.index.dim):
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(
            f"passage_encoder returned {got} for {len(texts)} passages; expected ({len(texts)}, {retriever.index.dim})"
        )
    return emb


def replug_lsr_loss(
    retriever: Retriever,
    lm: LM,
    queries: Sequence[Any],
    answers: Sequence[str],
    cfg: TrainConfig,
    *,
    generator: Optional[torch.Generator] = None,
    reembed: Optional[bool] = None,
) -> torch.Tensor:
    """REPLUG LSR: the retriever's distribution over each query's candidates is pulled toward
    the LM's (how much each passage helps the LM produce the answer). The LM is a fixed
    black box."""
    cand = candidates(retriever, queries, cfg, generator=generator, reembed=reembed)
    with torch.no_grad():
        lm_scores = lm(queries, cand.passages, answers)
    return lsr_loss(
        cand.scores,
        lm_scores,
        tau_retriever=cfg.tau_retriever,
        tau_lm=cfg.tau_lm,
        mask=cand.mask,
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
    generator: Optional[torch.Generator] = None,
    reembed: Optional[bool] = None,
) -> torch.Tensor:
    """RA-DIT dual instruction tuning: the LM learns to answer from each retrieved passage
    (-Σ_i Σ_j log p_LM(y_i|c_ij∘x_i), summed over the query's own top k, averaged over
    queries) and the retriever learns LSR from the same LM's scores over all candidates."""
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and train_retriever):
        cand = candidates(retriever, queries, cfg, generator=generator, reembed=reembed)
    with torch.set_grad_enabled(grad and train_lm):
        lm_logp = lm(queries, cand.passages, answers)
    loss = cand.scores.new_zeros(())
    if train_lm:
        loss = loss - lm_logp.masked_fill(~cand.retrieved, 0.0).sum(dim=1).mean()
    if train_retriever:
        loss = loss + lsr_loss(
            cand.scores,
            lm_logp.detach(),
            tau_retriever=cfg.tau_retriever,
            tau_lm=cfg.tau_lm,
            mask=cand.mask,
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
    generator: Optional[torch.Generator] = None,
    reembed: Optional[bool] = None,
) -> torch.Tensor:
    """End-to-end RAG: -log Σ_c p_R(c|x) p_LM(y|c∘x) over the query's candidates; the
    gradient reaches both models."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and train_retriever):
        cand = candidates(retriever, queries, cfg, generator=generator, reembed=reembed)
    lm_logp = lm(queries, cand.passages, answers)
    return marginal_nll(cand.scores, lm_logp, tau_retriever=cfg.tau_retriever, mask=cand.mask)


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
