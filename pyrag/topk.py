"""pyrag.topk_scores: the public function over the pyrag::topk_scores op, taking torch
tensors or numpy arrays (and returning the same kind), one query or a batch."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pyrag import ops  # noqa: F401  (defines torch.ops.pyrag.topk_scores)
from pyrag._inputs import as_tensor


def topk_scores(queries: Any, corpus: Any, k: int, *, scales: Optional[Any] = None, backend: str = "auto") -> Any:
    """The k best corpus rows for each query by inner product.

    Args:
        queries: [B, d] or [d], a torch.Tensor or numpy.ndarray (the result follows).
        corpus: [N, d]: float32, bfloat16, or int8 with per-row `scales` [N] (see
            pyrag.reference.inner_products for the scores, and how the CPU kernels round
            the queries for a bfloat16 or int8 corpus).
        k: results per query (>= 1).
        scales: int8 corpora: float32 [N] row scales.
        backend: "auto", "cpu", "reference", "triton", "cuda" or "cuda_emu".

    Returns:
        (scores float32, ids int64), each [B, k] ([k] for a 1-D query): sorted by
        descending score, ties to the smaller id, padded with (-inf, -1) when k > N.
    """
    as_numpy = isinstance(queries, np.ndarray)
    if as_numpy != isinstance(corpus, np.ndarray):
        raise TypeError("pass queries and corpus both as torch tensors or both as numpy arrays")
    q = as_tensor(queries, "queries")
    x = as_tensor(corpus, "corpus")
    single = q.dim() == 1
    if single:
        q = q.unsqueeze(0)
    sc = None if scales is None else as_tensor(scales, "scales")
    scores, ids = torch.ops.pyrag.topk_scores(q, x, k, sc, backend)
    if single:
        scores, ids = scores[0], ids[0]
    if as_numpy:
        return scores.numpy(), ids.numpy()
    return scores, ids
