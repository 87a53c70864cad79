"""pyrag::marginal_nll and pyrag::marginal_nll_backward: negative log marginal likelihood
over retrieved contexts (RAG). Schemas, fakes and autograd only; the implementations
register from pyrag/backends/.

marginal_nll(retriever_scores [B, K], lm_logprobs, tau_retriever, mask, token_mask) -> nll [B]
  lm_logprobs [B, K]:    -log sum_c p_R(c|x) exp(lm_logprobs[c])             (RAG-sequence)
  lm_logprobs [B, K, T]: -sum_t log sum_c p_R(c|x) p(y_t|c∘x, y<t)           (RAG-token),
                          token_mask [B, T] (bool) choosing the tokens that count.
p_R = softmax(retriever_scores / tau_retriever) over the valid contexts. Gradients flow
to both inputs through pyrag::marginal_nll_backward, run on the forward's backend.
Semantics: pyrag.reference.marginal_nll / marginal_nll_backward.

The output has the inputs' promoted dtype; each gradient its input's dtype. The op checks
that valid entries are finite before calling an implementation, except on the CPU
backend, whose kernel checks as it reads.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag.ops._checks import (
    check_finite_where_valid,
    check_mask,
    check_row_grad,
    check_same_rows,
    check_scores,
    check_tau,
)
from pyrag.ops._registry import LIBRARY, get_impl, resolve_backend

LIBRARY.define(
    "marginal_nll(Tensor retriever_scores, Tensor lm_logprobs, float tau_retriever=1.0, Tensor? mask=None, "
    "Tensor? token_mask=None, str backend='auto') -> Tensor"
)
LIBRARY.define(
    "marginal_nll_backward(Tensor grad, Tensor retriever_scores, Tensor lm_logprobs, float tau_retriever=1.0, "
    "Tensor? mask=None, Tensor? token_mask=None, str backend='auto') -> (Tensor, Tensor)"
)


def _check_args(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float,
    mask: Optional[torch.Tensor],
    token_mask: Optional[torch.Tensor],
) -> None:
    check_scores(retriever_scores, "retriever_scores")
    if not isinstance(lm_logprobs, torch.Tensor) or lm_logprobs.dim() not in (2, 3):
        got = tuple(lm_logprobs.shape) if isinstance(lm_logprobs, torch.Tensor) else type(lm_logprobs).__name__
        raise ValueError(f"lm_logprobs must be [B, K] or [B, K, T], got {got}")
    check_scores(lm_logprobs, "lm_logprobs", lm_logprobs.dim())
    check_same_rows(retriever_scores, "retriever_scores", lm_logprobs, "lm_logprobs")
    check_mask(mask, tuple(retriever_scores.shape), retriever_scores.device)
    if token_mask is not None and lm_logprobs.dim() != 3:
        raise ValueError("token_mask needs per-token lm_logprobs [B, K, T]; got [B, K]")
    if lm_logprobs.dim() == 3:
        b, _, t = lm_logprobs.shape
        check_mask(token_mask, (b, t), retriever_scores.device, "token_mask")
    check_tau(tau_retriever, "tau_retriever")


def _out_dtype(retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor) -> torch.dtype:
    return torch.promote_types(retriever_scores.dtype, lm_logprobs.dtype)


def _marginal_nll(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    name = resolve_backend("marginal_nll", backend, retriever_scores.device)
    fn = get_impl("marginal_nll", name, retriever_scores.device)
    out_dtype = _out_dtype(retriever_scores, lm_logprobs)
    if retriever_scores.numel() == 0:
        return retriever_scores.new_zeros(retriever_scores.shape[0], dtype=out_dtype)
    if name != "cpu":  # the CPU kernel checks as it reads, for free (a torch check costs 2x it)
        check_finite_where_valid(retriever_scores, "retriever_scores", mask)
        check_finite_where_valid(lm_logprobs, "lm_logprobs", mask, token_mask)
    out: torch.Tensor = fn(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    return out.to(out_dtype)


LIBRARY.impl("marginal_nll", _marginal_nll, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::marginal_nll", lib=LIBRARY)
def _fake(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    return retriever_scores.new_empty(retriever_scores.shape[0], dtype=_out_dtype(retriever_scores, lm_logprobs))


def _marginal_nll_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    check_row_grad(grad, retriever_scores)
    fn = get_impl("marginal_nll_backward", backend, retriever_scores.device)
    if lm_logprobs.numel() == 0:
        return torch.zeros_like(retriever_scores), torch.zeros_like(lm_logprobs)
    grad_scores, grad_lm = fn(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    return grad_scores.to(retriever_scores.dtype), grad_lm.to(lm_logprobs.dtype)


LIBRARY.impl("marginal_nll_backward", _marginal_nll_backward, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::marginal_nll_backward", lib=LIBRARY)
def _backward_fake(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    token_mask: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    check_row_grad(grad, retriever_scores)
    return torch.empty_like(retriever_scores), torch.empty_like(lm_logprobs)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, backend = inputs
    ctx.tau_retriever = tau_retriever
    # The backward runs on the backend that ran the forward.
    ctx.backend = resolve_backend("marginal_nll", backend, retriever_scores.device)
    ctx.save_for_backward(retriever_scores, lm_logprobs, mask, token_mask)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    retriever_scores, lm_logprobs, mask, token_mask = ctx.saved_tensors
    grad_scores, grad_lm = torch.ops.pyrag.marginal_nll_backward(
        grad, retriever_scores, lm_logprobs, ctx.tau_retriever, mask, token_mask, ctx.backend
    )
    return grad_scores, grad_lm, None, None, None, None


torch.library.register_autograd("pyrag::marginal_nll", _backward, setup_context=_setup_context, lib=LIBRARY)
