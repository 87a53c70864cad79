"""pyrag::topk_scores: fused batched inner-product top-k. Schema, fake and autograd only;
the implementations register from pyrag/backends/.

    topk_scores(queries [B, d], corpus [N, d], k, scales [N] or None, backend)
        -> (scores [B, k] float32, ids [B, k] int64)

per query, the k largest q·x sorted by score, ties to the smaller row, padded with
(-inf, -1) when k > N. No backend materialises the B x N scores. The corpus may be
float32, bfloat16 or int8, optionally with per-row float32 `scales`;
pyrag.reference.inner_products defines the scores and how the CPU kernels round the
queries for a bfloat16 or int8 corpus. The op is not differentiable: recompute the k
scores under autograd (pyrag.Retriever does).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag.ops._checks import check_finite, check_scales, check_topk_args
from pyrag.ops._registry import LIBRARY, get_impl

LIBRARY.define(
    "topk_scores(Tensor queries, Tensor corpus, int k, Tensor? scales=None, str backend='auto') -> (Tensor, Tensor)"
)


def _topk_scores(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, scales: Optional[torch.Tensor] = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    check_topk_args(queries, corpus, k)
    check_finite(queries, "queries")
    check_scales(scales, corpus)
    return get_impl("topk_scores", backend, queries.device)(queries, corpus, k, scales)


LIBRARY.impl("topk_scores", _topk_scores, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::topk_scores", lib=LIBRARY)
def _fake(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, scales: Optional[torch.Tensor] = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    check_topk_args(queries, corpus, k)
    b = queries.shape[0]
    return queries.new_empty((b, k), dtype=torch.float32), queries.new_empty((b, k), dtype=torch.int64)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    pass


def _backward(ctx: Any, grad_scores: torch.Tensor, grad_ids: torch.Tensor) -> tuple[None, ...]:
    raise RuntimeError(
        "pyrag::topk_scores is not differentiable: search without gradient, then recompute "
        "the scores of the k hits under autograd (pyrag.Retriever does this)"
    )


torch.library.register_autograd("pyrag::topk_scores", _backward, setup_context=_setup_context, lib=LIBRARY)
