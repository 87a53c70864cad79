"""backend="triton": registers the Triton launchers of pyrag.kernels for every op.

Importing this module does not import triton: each implementation imports its kernel
module on first use, after get_impl has checked that triton is installed and that the
tensors can run (CUDA, or CPU under TRITON_INTERPRET=1). Whether the kernels are
interpreted is fixed when pyrag.kernels.<op> is first imported, so TRITON_INTERPRET=1
must be set before that (in practice: before the first backend="triton" call).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag.ops._registry import register_impl

Tensor = torch.Tensor
Mask = Optional[torch.Tensor]


@register_impl("topk_scores", "triton")
def _topk_scores(queries: Tensor, corpus: Tensor, k: int, scales: Mask) -> Any:
    from pyrag.kernels import topk_scores

    return topk_scores.topk_scores(queries, corpus, k, scales)


@register_impl("lsr_weights", "triton")
def _lsr_weights(lm_scores: Tensor, tau: float, mask: Mask) -> Any:
    from pyrag.kernels import lsr

    return lsr.lsr_weights(lm_scores, tau, mask)


@register_impl("lsr_kl", "triton")
def _lsr_kl(retriever_scores: Tensor, lm_scores: Tensor, tau_retriever: float, tau_lm: float, mask: Mask,
            direction: str) -> Any:  # fmt: skip
    from pyrag.kernels import lsr

    return lsr.lsr_kl(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)


@register_impl("lsr_kl_backward", "triton")
def _lsr_kl_backward(grad: Tensor, retriever_scores: Tensor, lm_scores: Tensor, tau_retriever: float, tau_lm: float,
                     mask: Mask, direction: str) -> Any:  # fmt: skip
    from pyrag.kernels import lsr

    return lsr.lsr_kl_backward(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)


@register_impl("marginal_nll", "triton")
def _marginal_nll(retriever_scores: Tensor, lm_logprobs: Tensor, tau_retriever: float, mask: Mask,
                  token_mask: Mask) -> Any:  # fmt: skip
    from pyrag.kernels import marginal_nll

    return marginal_nll.marginal_nll(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)


@register_impl("marginal_nll_backward", "triton")
def _marginal_nll_backward(grad: Tensor, retriever_scores: Tensor, lm_logprobs: Tensor, tau_retriever: float,
                           mask: Mask, token_mask: Mask) -> Any:  # fmt: skip
    from pyrag.kernels import marginal_nll

    return marginal_nll.marginal_nll_backward(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
