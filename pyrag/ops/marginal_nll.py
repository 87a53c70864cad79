"""pyrag::marginal_nll — negative log marginal likelihood over retrieved contexts.

marginal_nll(retriever_scores [B, K], lm_logprobs, tau_retriever, mask, token_mask) -> nll [B]
  lm_logprobs [B, K]:    -log sum_c p_R(c|x) exp(lm_logprobs[c])             (RAG-sequence)
  lm_logprobs [B, K, T]: -sum_t log sum_c p_R(c|x) p(y_t|c∘x, y<t)           (RAG-token),
                          token_mask [B, T] (bool) choosing the tokens that count.
p_R = softmax(retriever_scores / tau_retriever) over the valid contexts. Gradients flow
to both inputs through pyrag::marginal_nll_backward, run on the forward's backend.
Semantics: pyrag.reference.marginal_nll / marginal_nll_backward.

Backend implementations (register_impl) take exactly the op's arguments without
`backend`. The output has the inputs' promoted dtype; each gradient its input's dtype.
The op checks that valid entries are finite before calling them (the CPU kernel does
that check itself).
"""
from __future__ import annotations

from typing import Optional

import torch

from pyrag import reference
from pyrag.ops._common import compiled_extension, get_impl, get_num_threads, register_impl, resolve_backend
from pyrag.ops._loss_args import (check_finite_where_valid, check_mask, check_same_rows, check_scores,
                                  check_tau, cpu_operand, kernel_suffix, mask_address)


def _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask) -> None:
    check_scores(retriever_scores, "retriever_scores")
    if not isinstance(lm_logprobs, torch.Tensor) or lm_logprobs.dim() not in (2, 3):
        got = tuple(lm_logprobs.shape) if isinstance(lm_logprobs, torch.Tensor) else type(lm_logprobs).__name__
        raise ValueError(f"lm_logprobs must be [B, K] or [B, K, T], got {got}")
    check_scores(lm_logprobs, "lm_logprobs", lm_logprobs.dim())
    check_same_rows(retriever_scores, "retriever_scores", lm_logprobs, "lm_logprobs")
    check_mask(mask, retriever_scores.shape, retriever_scores.device)
    if token_mask is not None and lm_logprobs.dim() != 3:
        raise ValueError("token_mask needs per-token lm_logprobs [B, K, T]; got [B, K]")
    if lm_logprobs.dim() == 3:
        b, _, t = lm_logprobs.shape
        check_mask(token_mask, (b, t), retriever_scores.device, "token_mask")
    check_tau(tau_retriever, "tau_retriever")


def _out_dtype(retriever_scores, lm_logprobs) -> torch.dtype:
    return torch.promote_types(retriever_scores.dtype, lm_logprobs.dtype)


@torch.library.custom_op("pyrag::marginal_nll", mutates_args=())
def _marginal_nll(retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor, tau_retriever: float = 1.0,
                  mask: Optional[torch.Tensor] = None, token_mask: Optional[torch.Tensor] = None,
                  backend: str = "auto") -> torch.Tensor:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    name = resolve_backend("marginal_nll", backend, retriever_scores.device)
    fn = get_impl("marginal_nll", name, retriever_scores.device)
    out_dtype = _out_dtype(retriever_scores, lm_logprobs)
    if retriever_scores.numel() == 0:
        return retriever_scores.new_zeros(retriever_scores.shape[0], dtype=out_dtype)
    if name != "cpu":  # the CPU kernel checks as it reads, for free (a torch check costs 2x it)
        check_finite_where_valid(retriever_scores, "retriever_scores", mask)
        check_finite_where_valid(lm_logprobs, "lm_logprobs", mask, token_mask)
    return fn(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask).to(out_dtype)


@_marginal_nll.register_fake
def _(retriever_scores, lm_logprobs, tau_retriever=1.0, mask=None, token_mask=None, backend="auto"):
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    return retriever_scores.new_empty(retriever_scores.shape[0], dtype=_out_dtype(retriever_scores, lm_logprobs))


@torch.library.custom_op("pyrag::marginal_nll_backward", mutates_args=())
def _marginal_nll_backward(grad: torch.Tensor, retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor,
                           tau_retriever: float = 1.0, mask: Optional[torch.Tensor] = None,
                           token_mask: Optional[torch.Tensor] = None, backend: str = "auto"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    _check_row_grad(grad, retriever_scores)
    fn = get_impl("marginal_nll_backward", backend, retriever_scores.device)
    if lm_logprobs.numel() == 0:
        return torch.zeros_like(retriever_scores), torch.zeros_like(lm_logprobs)
    grad_scores, grad_lm = fn(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    return grad_scores.to(retriever_scores.dtype), grad_lm.to(lm_logprobs.dtype)


@_marginal_nll_backward.register_fake
def _(grad, retriever_scores, lm_logprobs, tau_retriever=1.0, mask=None, token_mask=None, backend="auto"):
    _check_args(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)
    _check_row_grad(grad, retriever_scores)
    return torch.empty_like(retriever_scores), torch.empty_like(lm_logprobs)


def _check_row_grad(grad: torch.Tensor, scores: torch.Tensor) -> None:
    if tuple(grad.shape) != (scores.shape[0],):
        raise ValueError(f"grad has shape {tuple(grad.shape)}, expected ({scores.shape[0]},)")


def _setup_context(ctx, inputs, output):
    retriever_scores, lm_logprobs, tau_retriever, mask, token_mask, backend = inputs
    ctx.tau_retriever = tau_retriever
    # The backward runs on the backend that ran the forward.
    ctx.backend = resolve_backend("marginal_nll", backend, retriever_scores.device)
    ctx.save_for_backward(retriever_scores, lm_logprobs, mask, token_mask)


def _backward(ctx, grad):
    retriever_scores, lm_logprobs, mask, token_mask = ctx.saved_tensors
    grad_scores, grad_lm = torch.ops.pyrag.marginal_nll_backward(
        grad, retriever_scores, lm_logprobs, ctx.tau_retriever, mask, token_mask, ctx.backend)
    return grad_scores, grad_lm, None, None, None, None


_marginal_nll.register_autograd(_backward, setup_context=_setup_context)


@register_impl("marginal_nll", "reference")
def _reference_impl(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask):
    return reference.marginal_nll(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)


@register_impl("marginal_nll_backward", "reference")
def _reference_backward(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask):
    return reference.marginal_nll_backward(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask)


# ------------------------------------------------------------------ CPU kernel
def _cpu_operands(retriever_scores, lm_logprobs, mask, token_mask):
    """Contiguous kernel-dtype operands; [B, K] log-probs become [B, K, 1]."""
    ct = reference.compute_dtype(retriever_scores.dtype, lm_logprobs.dtype)
    s = cpu_operand(retriever_scores, ct)
    lm = cpu_operand(lm_logprobs if lm_logprobs.dim() == 3 else lm_logprobs.unsqueeze(-1), ct)
    m, m_addr = mask_address(mask)
    tm, tm_addr = mask_address(token_mask)
    return ct, s, lm, (m, tm), m_addr, tm_addr


@register_impl("marginal_nll", "cpu")
def _cpu_impl(retriever_scores, lm_logprobs, tau_retriever, mask, token_mask):
    ct, s, lm, _keep, m_addr, tm_addr = _cpu_operands(retriever_scores, lm_logprobs, mask, token_mask)
    b, k, t = lm.shape
    out = torch.empty(b, dtype=ct)
    getattr(compiled_extension(), f"marginal_nll_{kernel_suffix(ct)}")(
        s.data_ptr(), lm.data_ptr(), m_addr, tm_addr, b, k, t, float(tau_retriever),
        get_num_threads(), out.data_ptr())
    return out.to(_out_dtype(retriever_scores, lm_logprobs))


@register_impl("marginal_nll_backward", "cpu")
def _cpu_backward(grad, retriever_scores, lm_logprobs, tau_retriever, mask, token_mask):
    ct, s, lm, _keep, m_addr, tm_addr = _cpu_operands(retriever_scores, lm_logprobs, mask, token_mask)
    g = cpu_operand(grad, ct)
    b, k, t = lm.shape
    grad_scores = torch.empty_like(s)
    grad_lm = torch.empty_like(lm)
    getattr(compiled_extension(), f"marginal_nll_backward_{kernel_suffix(ct)}")(
        g.data_ptr(), s.data_ptr(), lm.data_ptr(), m_addr, tm_addr, b, k, t, float(tau_retriever),
        get_num_threads(), grad_scores.data_ptr(), grad_lm.data_ptr())
    return grad_scores.to(retriever_scores.dtype), grad_lm.view(lm_logprobs.shape).to(lm_logprobs.dtype)
