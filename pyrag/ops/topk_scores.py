"""pyrag::topk_scores — fused batched inner-product top-k.

queries [B, d] against corpus [N, d] gives, per query, the k largest q·x as
(scores [B, k] float32, row ids [B, k] int64), sorted by score with ties to the smaller
row, padded with (-inf, -1) when k > N. No backend materialises the B x N scores.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from pyrag import reference
from pyrag.ops._common import check_finite, compiled_extension, get_impl, get_num_threads, register_impl

# Corpus dtypes each backend can scan. The reference takes every floating dtype.
_CPU_DTYPES = (torch.float32,)
_QUERY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_topk_args(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> None:
    """Shape and dtype checks shared by the real and the fake implementation."""
    if queries.dim() != 2:
        raise ValueError(f"queries must be 2-D [B, d], got shape {tuple(queries.shape)}")
    if corpus.dim() != 2:
        raise ValueError(f"corpus must be 2-D [N, d], got shape {tuple(corpus.shape)}")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have dim {queries.shape[1]} but the corpus has dim {corpus.shape[1]}")
    if queries.shape[1] < 1:
        raise ValueError("dim must be at least 1")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not queries.is_floating_point():
        raise TypeError(f"queries must be floating point, got {queries.dtype}")
    if not (corpus.is_floating_point() or corpus.dtype == torch.int8):
        raise TypeError(f"unsupported corpus dtype {corpus.dtype}")
    if queries.device != corpus.device:
        raise ValueError(f"queries are on {queries.device} but the corpus is on {corpus.device}")


@torch.library.custom_op("pyrag::topk_scores", mutates_args=())
def _topk_scores(queries: torch.Tensor, corpus: torch.Tensor, k: int,
                 scales: Optional[torch.Tensor] = None, backend: str = "auto"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    check_topk_args(queries, corpus, k)
    check_finite(queries, "queries")
    return get_impl("topk_scores", backend, queries.device)(queries, corpus, k, scales)


@_topk_scores.register_fake
def _(queries, corpus, k, scales=None, backend="auto"):
    check_topk_args(queries, corpus, k)
    b = queries.shape[0]
    return (queries.new_empty((b, k), dtype=torch.float32),
            queries.new_empty((b, k), dtype=torch.int64))


@register_impl("topk_scores", "reference")
def _reference_impl(queries, corpus, k, scales):
    return reference.topk_scores(queries, corpus, k, scales=scales)


@register_impl("topk_scores", "cpu")
def _cpu_impl(queries, corpus, k, scales):
    if corpus.dtype not in _CPU_DTYPES or scales is not None:
        raise TypeError(f"backend='cpu' scans float32 corpora, got {corpus.dtype}")
    if queries.dtype != corpus.dtype:
        raise TypeError(f"queries are {queries.dtype} but the corpus is {corpus.dtype}; "
                        f"convert them explicitly")
    q = queries.contiguous()
    x = corpus.contiguous()
    b, n, d = q.shape[0], x.shape[0], x.shape[1]
    scores = torch.empty((b, k), dtype=torch.float32)
    ids = torch.empty((b, k), dtype=torch.int64)
    try:
        compiled_extension().topk_scores_f32(q.data_ptr(), b, x.data_ptr(), n, d, k,
                                             get_num_threads(), scores.data_ptr(), ids.data_ptr())
    except ValueError as e:  # the kernel saw a NaN/Inf score
        raise ValueError(f"{e} (corpus of shape {tuple(x.shape)})") from None
    return scores, ids


def topk_scores(queries, corpus, k: int, *, backend: str = "auto"):
    """The k best corpus rows for each query by inner product.

    queries: [B, d] or [d]; corpus: [N, d]. torch tensors or numpy arrays (the result
    has the same kind). Returns (scores float32, ids int64), each [B, k] ([k] for a 1-D
    query), sorted by descending score, ties to the smaller id, padded with (-inf, -1)
    when k > N. backend: "auto", "cpu", "reference", "triton", "cuda" or "cuda_emu".
    """
    as_numpy = isinstance(queries, np.ndarray)
    if as_numpy != isinstance(corpus, np.ndarray):
        raise TypeError("pass queries and corpus both as torch tensors or both as numpy arrays")
    q = _as_tensor(queries, "queries")
    x = _as_tensor(corpus, "corpus")
    single = q.dim() == 1
    if single:
        q = q.unsqueeze(0)
    scores, ids = torch.ops.pyrag.topk_scores(q, x, k, None, backend)
    if single:
        scores, ids = scores[0], ids[0]
    if as_numpy:
        return scores.numpy(), ids.numpy()
    return scores, ids


def _as_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{what}: unsupported numpy dtype {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a) if a.strides and min(a.strides) < 0 else a)
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
