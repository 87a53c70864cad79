"""pyrag::topk_scores — fused batched inner-product top-k.

queries [B, d] against corpus [N, d] gives, per query, the k largest q·x as
(scores [B, k] float32, row ids [B, k] int64), sorted by score with ties to the smaller
row, padded with (-inf, -1) when k > N. No backend materialises the B x N scores.
The corpus may be float32, bfloat16 or int8, optionally with per-row float32 `scales`;
pyrag.reference.inner_products defines the scores, and says how the CPU kernels round
the queries for a bfloat16 or int8 corpus.

Below the op: the entry points DenseIndex uses on its pre-packed corpus
(`PackedCorpus`, `topk_packed`, `topk_packed_exact`) and the encoding helpers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from pyrag import reference
from pyrag.ops._common import check_finite, compiled_extension, get_impl, get_num_threads, register_impl

# Corpus dtypes the CPU kernels scan, by their name in pyrag._C. The reference takes
# every floating dtype too.
_CPU_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}


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
    check_scales(scales, corpus)
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
    name = _CPU_DTYPES.get(corpus.dtype)
    if name is None:
        raise TypeError(f"backend='cpu' scans float32, bfloat16 or int8 corpora, got {corpus.dtype}")
    if queries.dtype != torch.float32:
        raise TypeError(f"backend='cpu' takes float32 queries, got {queries.dtype}; convert them explicitly")
    if scales is not None and name != "int8":
        raise ValueError(f"backend='cpu' applies per-row scales to an int8 corpus only, got a {corpus.dtype} corpus")
    if scales is None and name == "int8":
        scales = torch.ones(corpus.shape[0], dtype=torch.float32)  # plain integer rows
    scales = scales.contiguous() if scales is not None else None
    q = queries.contiguous()
    x = corpus.contiguous()
    b, n, d = q.shape[0], x.shape[0], x.shape[1]
    scores = torch.empty((b, k), dtype=torch.float32)
    ids = torch.empty((b, k), dtype=torch.int64)
    try:
        compiled_extension().topk_scores(name, q.data_ptr(), b, x.data_ptr(), False, n, d,
                                         scales.data_ptr() if scales is not None else 0, k,
                                         get_num_threads(), scores.data_ptr(), ids.data_ptr())
    except ValueError as e:  # the kernel saw a NaN/Inf score
        raise ValueError(f"{e} (corpus of shape {tuple(x.shape)})") from None
    return scores, ids


def check_scales(scales: Optional[torch.Tensor], corpus: torch.Tensor) -> None:
    """Per-row scales, when given: float32 [N], finite, on the corpus's device."""
    if scales is None:
        return
    if scales.dtype != torch.float32:
        raise TypeError(f"scales must be float32, got {scales.dtype}")
    if scales.shape != (corpus.shape[0],):
        raise ValueError(f"scales have shape {tuple(scales.shape)} but the corpus has {corpus.shape[0]} rows")
    if scales.device != corpus.device:
        raise ValueError(f"scales are on {scales.device} but the corpus is on {corpus.device}")
    check_finite(scales, "scales")


def topk_scores(queries, corpus, k: int, *, scales=None, backend: str = "auto"):
    """The k best corpus rows for each query by inner product.

    queries: [B, d] or [d]; corpus: [N, d], float32, bfloat16, or int8 with per-row
    `scales` [N] (see pyrag.reference.inner_products for the scores, and how the CPU
    kernels round the queries for a bfloat16 or int8 corpus). torch
    tensors or numpy arrays (the result has the same kind). Returns (scores float32,
    ids int64), each [B, k] ([k] for a 1-D query), sorted by descending score, ties to
    the smaller id, padded with (-inf, -1) when k > N. backend: "auto", "cpu",
    "reference", "triton", "cuda" or "cuda_emu".
    """
    as_numpy = isinstance(queries, np.ndarray)
    if as_numpy != isinstance(corpus, np.ndarray):
        raise TypeError("pass queries and corpus both as torch tensors or both as numpy arrays")
    q = _as_tensor(queries, "queries")
    x = _as_tensor(corpus, "corpus")
    single = q.dim() == 1
    if single:
        q = q.unsqueeze(0)
    sc = None if scales is None else _as_tensor(scales, "scales")
    scores, ids = torch.ops.pyrag.topk_scores(q, x, k, sc, backend)
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


# ---------------------------------------------------------------------------------
# The pre-packed corpus of a DenseIndex (layout: csrc/cpu/packed_layout.h).
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedCorpus:
    """Rows [0, num_rows) of a corpus in the kernels' packed layout.

    data: uint8 [blocks, block_bytes] with blocks * 16 >= num_rows; scales: int8 only,
    float32 [blocks * 16] (padding rows 0).
    """
    dtype: str
    dim: int
    data: torch.Tensor
    num_rows: int
    scales: Optional[torch.Tensor] = None


def packed_block_bytes(dtype: str, dim: int) -> int:
    return compiled_extension().packed_block_bytes(dtype, dim)


def pack_rows(dtype: str, rows: torch.Tensor, packed: torch.Tensor, row_offset: int) -> None:
    """Writes row-major rows (float32, bfloat16 or int8 values) into a packed buffer as
    its rows [row_offset, row_offset + len(rows))."""
    rows = rows.contiguous()
    compiled_extension().pack_rows(dtype, rows.data_ptr(), rows.shape[0], rows.shape[1],
                                   packed.data_ptr(), row_offset)


def unpack_rows(dtype: str, packed: torch.Tensor, row_begin: int, n: int, dim: int) -> torch.Tensor:
    """Rows [row_begin, row_begin + n) of a packed buffer, row-major."""
    out = torch.empty((n, dim), dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                       "int8": torch.int8}[dtype])
    if n:
        compiled_extension().unpack_rows(dtype, packed.data_ptr(), row_begin, n, dim, out.data_ptr())
    return out


def encode_rows(dtype: str, x: torch.Tensor):
    """float32 rows [n, d] in a quantised dtype: (values bf16/int8 [n, d], scales float32
    [n] or None, norms [n], errors [n]); norms >= ||x|| and errors >= ||x - dequantised||,
    rounded up (the inputs of exact search's error bound)."""
    x = x.contiguous()
    n, d = x.shape
    values = torch.empty((n, d), dtype=torch.bfloat16 if dtype == "bfloat16" else torch.int8)
    scales = torch.empty(n, dtype=torch.float32) if dtype == "int8" else None
    norms = torch.empty(n, dtype=torch.float32)
    errors = torch.empty(n, dtype=torch.float32)
    if n:
        compiled_extension().encode_rows(dtype, x.data_ptr(), n, d, values.data_ptr(),
                                         scales.data_ptr() if scales is not None else 0,
                                         norms.data_ptr(), errors.data_ptr(), get_num_threads())
    return values, scales, norms, errors


def topk_packed(queries: torch.Tensor, corpus: PackedCorpus, k: int):
    """topk_scores on a packed corpus: float32 queries [B, d] (checked by the caller)."""
    q = queries.contiguous()
    b = q.shape[0]
    scores = torch.empty((b, k), dtype=torch.float32)
    ids = torch.empty((b, k), dtype=torch.int64)
    compiled_extension().topk_scores(
        corpus.dtype, q.data_ptr(), b, corpus.data.data_ptr(), True, corpus.num_rows, corpus.dim,
        corpus.scales.data_ptr() if corpus.scales is not None else 0, k, get_num_threads(),
        scores.data_ptr(), ids.data_ptr())
    return scores, ids


def topk_packed_exact(queries: torch.Tensor, corpus: PackedCorpus, originals_fd: int,
                      originals_offset: int, max_norm: float, max_error: float, k: int):
    """Certified-exact top-k over a quantised packed corpus: returns exactly
    topk_scores(queries, originals, k) (float32), having scanned the compact corpus and
    rescored only the rows the error bound cannot rule out. The originals are float32
    [N, d] at byte `originals_offset` of the open file `originals_fd`; max_norm /
    max_error bound ||x|| and ||x - dequantised x|| over the rows. Returns (scores,
    ids, stats) with stats {"candidates": rows rescored, "fallback_queries": queries
    that needed a full rescan}."""
    q = queries.contiguous()
    b = q.shape[0]
    scores = torch.empty((b, k), dtype=torch.float32)
    ids = torch.empty((b, k), dtype=torch.int64)
    stats = compiled_extension().topk_scores_exact(
        corpus.dtype, q.data_ptr(), b, corpus.data.data_ptr(), corpus.num_rows, corpus.dim,
        corpus.scales.data_ptr() if corpus.scales is not None else 0, originals_fd,
        originals_offset, float(max_norm), float(max_error), k, get_num_threads(), scores.data_ptr(),
        ids.data_ptr())
    return scores, ids, stats
