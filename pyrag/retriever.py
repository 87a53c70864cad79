"""Differentiable retrieval: search without gradient, then recompute the k scores under
autograd so that a loss on them trains the query encoder (and, re-embedding the hits,
the passage encoder), as in REPLUG, Atlas and RAG-end2end.

    retriever = pyrag.Retriever(query_encoder, index, passages=texts)
    hits = retriever(queries, k=8)                  # hits.scores [B, 8] carry gradient
    loss = pyrag.lsr_loss(hits.scores, lm_scores, mask=hits.mask, tau_retriever=retriever.tau)

A call costs one search plus O(B·k·dim): the scores are q · index.get(ids) (or q · the
live encoder's embedding of the hits), never a read of the whole corpus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from pyrag.index.contract import Index
from pyrag.losses import lsr_weights
from pyrag.ops._checks import check_tau

Passages = Union[Sequence[str], Mapping[int, str]]


@dataclass
class RetrievalResult:
    """What a Retriever call returns for a batch of B queries and k hits each.

    ids: [B, k] int64 index ids, best first; -1 where the index had fewer than k vectors.
    scores: [B, k] (q·x) * score_scale, differentiable; -inf where ids is -1.
    mask: [B, k] bool, False where ids is -1 (pass it to the losses).
    index_version: the version of the index that answered (its snapshot's `version`).
    passages: the hits' texts, `[B][k]` with None for padding, when the Retriever knows them.
    query_embeddings: [B, dim], differentiable.
    tau: the retriever temperature; probs() is softmax(scores / tau) over the valid hits.
    """

    ids: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor
    index_version: int
    passages: Optional[list[list[Optional[str]]]] = None
    query_embeddings: Optional[torch.Tensor] = None
    tau: float = 1.0

    def probs(self) -> torch.Tensor:
        """p_R(c|x) [B, k]: softmax of scores / tau over the valid hits (differentiable)."""
        return lsr_weights(self.scores, self.tau, self.mask)


class Retriever:
    """A query encoder over an index whose scores carry gradient.

    Args:
        query_encoder: callable mapping a batch of queries (texts, token tensors, anything
            it accepts) to a [B, dim] tensor; None if callers pass embeddings.
        index: any index of the contract (pyrag.index.Index): a DenseIndex of any dtype,
            a VersionedIndex (an AsyncReindexer's), a ShardedIndex.
        passage_encoder: callable mapping a list of passage texts to [n, dim]. With it,
            the hits are re-embedded by the live encoder (Atlas's "rerank", RAG-end2end)
            and the gradient reaches it; without it, scores use the stored vectors.
        passages: the passage texts by index id (a sequence indexed by id, or a mapping
            id -> text). Needed to re-embed; also returned with the results.
        tau: temperature of p_R = softmax(scores / tau), used by RetrievalResult.probs()
            and meant as the losses' tau_retriever.
        score_scale: multiplies the scores, e.g. 1 / sqrt(dim) as Atlas does.

    Queries are searched as float32 whatever the index dtype. The differentiable scores
    are q · index.get(ids): they agree with the index's own scores up to that dtype's
    query rounding (a bfloat16 or int8 index rounds the query like its rows).
    """

    def __init__(
        self,
        query_encoder: Optional[Callable[[Any], torch.Tensor]],
        index: Index,
        *,
        passage_encoder: Optional[Callable[[list[str]], torch.Tensor]] = None,
        passages: Optional[Passages] = None,
        tau: float = 1.0,
        score_scale: Optional[float] = None,
    ):
        if not isinstance(index, Index):
            raise TypeError(
                f"index must implement pyrag's index contract (pyrag.index.Index: a DenseIndex, "
                f"VersionedIndex or ShardedIndex), got {type(index).__name__}"
            )
        if query_encoder is not None and not callable(query_encoder):
            raise TypeError("query_encoder must be callable (or None to pass embeddings)")
        if passage_encoder is not None:
            if not callable(passage_encoder):
                raise TypeError("passage_encoder must be callable")
            if passages is None:
                raise ValueError("re-embedding hits with passage_encoder needs their texts: pass passages=")
        check_tau(tau, "tau")
        if score_scale is not None:
            check_tau(score_scale, "score_scale")
        self.query_encoder = query_encoder
        self.index = index
        self.passage_encoder = passage_encoder
        self.passages = passages
        self.tau = float(tau)
        self.score_scale = None if score_scale is None else float(score_scale)

    def __repr__(self) -> str:
        return (
            f"Retriever(index={self.index!r}, tau={self.tau}, score_scale={self.score_scale}, "
            f"reembed={self.passage_encoder is not None})"
        )

    def __call__(self, queries: Any, k: int, *, reembed: Optional[bool] = None) -> RetrievalResult:
        """Encodes `queries` with the query encoder (keeping the gradient) and retrieves
        the k best passages. reembed: re-encode the hits with the passage encoder
        (default: whenever the Retriever has one)."""
        return self.retrieve(self.encode_queries(queries), k, reembed=reembed)

    def encode_queries(self, queries: Any) -> torch.Tensor:
        """The query embeddings [B, dim] (differentiable)."""
        if self.query_encoder is None:
            return _check_embeddings(queries, self.index.dim)
        return _check_embeddings(self.query_encoder(queries), self.index.dim)

    def retrieve(self, query_embeddings: torch.Tensor, k: int, *, reembed: Optional[bool] = None) -> RetrievalResult:
        """Retrieval from embeddings [B, dim] (or [dim]) that may carry gradient."""
        if reembed is None:
            reembed = self.passage_encoder is not None
        elif reembed and self.passage_encoder is None:
            raise ValueError("reembed=True needs a passage_encoder")
        q = _check_embeddings(query_embeddings, self.index.dim)
        snap = self.index.snapshot()  # the search and the reads of its hits agree
        with torch.no_grad():
            _, found = snap.search(q.detach().to(torch.float32), k)
        ids = found.to(q.device)
        mask = ids >= 0
        hits = self._reembed(ids) if reembed else snap.get(found).to(q.device)
        scores = (q.unsqueeze(1) * hits.to(q.dtype)).sum(dim=-1)
        if self.score_scale is not None:
            scores = scores * self.score_scale
        scores = scores.masked_fill(~mask, -math.inf)
        return RetrievalResult(
            ids=ids, scores=scores, mask=mask, index_version=snap.version,
            passages=self._texts(ids) if self.passages is not None else None, query_embeddings=q, tau=self.tau,
        )  # fmt: skip

    # ------------------------------------------------------------------ internals
    def _reembed(self, ids: torch.Tensor) -> torch.Tensor:
        """Live embeddings [B, k, dim] of the hits (zeros for padding); each distinct
        passage is encoded once."""
        assert self.passage_encoder is not None
        mask = ids >= 0
        unique_ids, inverse = torch.unique(ids[mask], return_inverse=True)
        texts = [self._text(i) for i in unique_ids.tolist()]
        dim = self.index.dim
        if not texts:
            return torch.zeros((*ids.shape, dim), device=ids.device)
        emb = self.passage_encoder(texts)
        if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (len(texts), dim):
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(
                f"passage_encoder returned {got} for {len(texts)} passages; expected ({len(texts)}, {dim})"
            )
        out = emb.new_zeros((*ids.shape, dim))
        out[mask.to(emb.device)] = emb[inverse.to(emb.device)]
        return out

    def _text(self, id_: int) -> str:
        assert self.passages is not None
        try:
            return self.passages[id_]
        except (IndexError, KeyError):
            raise KeyError(f"passage id {id_} is in the index but not in passages") from None

    def _texts(self, ids: torch.Tensor) -> list[list[Optional[str]]]:
        return [[self._text(i) if i >= 0 else None for i in row] for row in ids.tolist()]


def _check_embeddings(q: Any, dim: int) -> torch.Tensor:
    """q as [B, dim]; a clear error for anything else."""
    if not isinstance(q, torch.Tensor) or not q.is_floating_point():
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"query embeddings must be a floating torch.Tensor, got {got}")
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or q.shape[1] != dim:
        raise ValueError(f"query embeddings have shape {tuple(q.shape)} but the index has dim {dim}")
    return q
