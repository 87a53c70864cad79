"""The k-way merge of per-shard candidates: the order a single index returns, by score
descending, ties to the smaller id, padded with (-inf, -1)."""

from __future__ import annotations

import torch


def merge_topk(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of candidates (scores float32 [B, M], ids int64 [B, M], no
    padding among them): (scores [B, k], ids [B, k]) sorted by score descending, equal
    scores by id ascending, padded with (-inf, -1) when M < k.

    Two stable sorts, by id and then by score, give that order in O(M log M) per row;
    the scores are moved, never recomputed, so they are the shards' bits.
    """
    b, m = scores.shape
    by_id = torch.argsort(ids, dim=1, stable=True)
    s, i = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
    s, i = s.gather(1, by_score), i.gather(1, by_score)
    if m < k:
        s = torch.cat([s, s.new_full((b, k - m), -torch.inf)], dim=1)
        i = torch.cat([i, i.new_full((b, k - m), -1)], dim=1)
    return s, i
