"""Differentiable retrieval: search without gradient, then recompute the k scores under
autograd so that a loss on them trains the query encoder (and, re-embedding the hits,
the passage encoder), as in REPLUG, Atlas and RAG-end2end.

    retriever = pyrag.Retriever(query_encoder, index, passages=texts)
    hits = retriever(queries, k=8)                  # hits.scores [B, 8] carry gradient
    loss = pyrag.lsr_loss(hits.scores, lm_scores, mask=hits.mask, tau_retriever=retriever.tau)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from pyrag.losses import lsr_weights
from pyrag.ops._loss_args import check_tau

# Searches retried when the index version changes between the search and the read of
# its vectors (an AsyncReindexer swap): two swaps within one search are already rare.
_MAX_SEARCH_ATTEMPTS = 3


@dataclass
class RetrievalResult:
    """What a Retriever call returns for a batch of B queries and k hits each.

    ids: [B, k] int64 index ids, best first; -1 where the index had fewer than k vectors.
    scores: [B, k] (q·x) * score_scale, differentiable; -inf where ids is -1.
    mask: [B, k] bool, False where ids is -1 (pass it to the losses).
    index_version: the version of the index that answered (0 for a plain DenseIndex).
    passages: the hits' texts, [B][k] with None for padding, when the Retriever knows them.
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
    """A query encoder over a DenseIndex whose scores carry gradient.

    Args:
        query_encoder: callable mapping a batch of queries (texts, token tensors, anything
            it accepts) to a [B, dim] tensor; None if callers pass embeddings.
        index: a pyrag.DenseIndex, or any object with its search / vectors() / ids API
            (an optional `version` attribute is reported in the results).
        passage_encoder: callable mapping a list of passage texts to [n, dim]. With it,
            the hits are re-embedded by the live encoder (Atlas's "rerank", RAG-end2end)
            and the gradient reaches it; without it, scores use the stored vectors.
        passages: the passage texts by index id (a sequence indexed by id, or a mapping
            id -> text). Needed to re-embed; also returned with the results.
        tau: temperature of p_R = softmax(scores / tau), used by RetrievalResult.probs()
            and meant as the losses' tau_retriever.
        score_scale: multiplies the scores, e.g. 1 / sqrt(dim) as Atlas does.
    """

    def __init__(self, query_encoder: Optional[Callable], index, *, passage_encoder: Optional[Callable] = None,
                 passages: Optional[Union[Sequence[str], Mapping[int, str]]] = None, tau: float = 1.0,
                 score_scale: Optional[float] = None):
        for attr in ("search", "vectors", "ids", "dim"):
            if not hasattr(index, attr):
                raise TypeError(f"index must be a pyrag.DenseIndex (or offer its API); "
                                f"{type(index).__name__} has no {attr!r}")
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
        return (f"Retriever(index={self.index!r}, tau={self.tau}, score_scale={self.score_scale}, "
                f"reembed={self.passage_encoder is not None})")

    def __call__(self, queries, k: int, *, reembed: Optional[bool] = None) -> RetrievalResult:
        """Encodes `queries` with the query encoder (keeping the gradient) and retrieves
        the k best passages. reembed: re-encode the hits with the passage encoder
        (default: whenever the Retriever has one)."""
        return self.retrieve(self.encode_queries(queries), k, reembed=reembed)

    def encode_queries(self, queries) -> torch.Tensor:
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
        ids, version, stored = self._search(q, k, need_vectors=not reembed)
        ids = ids.to(q.device)
        mask = ids >= 0
        if reembed:
            hits = self._reembed(ids[mask])
        else:
            hits = stored.to(device=q.device)
        # Scores of the valid hits only, then scattered into [B, k] with -inf padding.
        rows_of_hits = mask.nonzero()[:, 0]
        valid_scores = (q[rows_of_hits] * hits.to(q.dtype)).sum(dim=-1)
        if self.score_scale is not None:
            valid_scores = valid_scores * self.score_scale
        scores = q.new_full(ids.shape, -math.inf).masked_scatter(mask, valid_scores)
        return RetrievalResult(ids=ids, scores=scores, mask=mask, index_version=version,
                               passages=self._texts(ids) if self.passages is not None else None,
                               query_embeddings=q, tau=self.tau)

    # ------------------------------------------------------------------ internals
    def _search(self, q: torch.Tensor, k: int, need_vectors: bool):
        """(ids [B, k], index version, stored vectors of the valid hits or None), all
        read from one version of the index."""
        index = self.index
        stored = index.vectors()  # the query goes to the index's device and dtype
        query = q.detach().to(device=stored.device,
                              dtype=stored.dtype if stored.is_floating_point() else torch.float32)
        for _ in range(_MAX_SEARCH_ATTEMPTS):
            version = getattr(index, "version", 0)
            with torch.no_grad():
                _, ids = index.search(query, k)
            vectors = _stored_vectors(index, ids[ids >= 0]) if need_vectors else None
            if getattr(index, "version", 0) == version:
                return ids, version, vectors
        raise RuntimeError(f"the index changed version during each of {_MAX_SEARCH_ATTEMPTS} searches")

    def _reembed(self, hit_ids: torch.Tensor) -> torch.Tensor:
        """Live embeddings [n, dim] of the hits; each distinct passage is encoded once."""
        if hit_ids.numel() == 0:
            return torch.zeros((0, self.index.dim))
        unique_ids, inverse = torch.unique(hit_ids, return_inverse=True)
        texts = [self._text(i) for i in unique_ids.tolist()]
        emb = self.passage_encoder(texts)
        if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (len(texts), self.index.dim):
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"passage_encoder returned {got} for {len(texts)} passages; "
                             f"expected ({len(texts)}, {self.index.dim})")
        return emb[inverse.to(emb.device)]

    def _text(self, id_: int) -> str:
        try:
            return self.passages[id_]
        except (IndexError, KeyError):
            raise KeyError(f"passage id {id_} is in the index but not in passages") from None

    def _texts(self, ids: torch.Tensor) -> list[list[Optional[str]]]:
        return [[self._text(i) if i >= 0 else None for i in row] for row in ids.tolist()]


def _check_embeddings(q, dim: int) -> torch.Tensor:
    """q as [B, dim]; a clear error for anything else."""
    if not isinstance(q, torch.Tensor) or not q.is_floating_point():
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"query embeddings must be a floating torch.Tensor, got {got}")
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or q.shape[1] != dim:
        raise ValueError(f"query embeddings have shape {tuple(q.shape)} but the index has dim {dim}")
    return q


def _stored_vectors(index, hit_ids: torch.Tensor) -> torch.Tensor:
    """The stored vectors of hit_ids, found by id in index.vectors() / index.ids (which
    list the vectors in insertion order)."""
    all_ids = index.ids
    vectors = index.vectors()
    n = all_ids.shape[0]
    if n == vectors.shape[0] and bool(torch.equal(all_ids, torch.arange(n, dtype=all_ids.dtype))):
        rows = hit_ids  # ids are row numbers: the default when ids are not given to add()
    else:
        sorted_ids, order = torch.sort(all_ids)
        pos = torch.searchsorted(sorted_ids, hit_ids).clamp(max=max(n - 1, 0))
        if n == 0 or not bool((sorted_ids[pos] == hit_ids).all()):
            raise RuntimeError("the index changed between the search and the read of its vectors")
        rows = order[pos]
    return vectors[rows]
