"""pyrag::lsr_weights and pyrag::lsr_kl — LM-supervised retrieval (REPLUG LSR, Atlas).

lsr_weights(lm_scores [B, K], tau, mask) -> p_LSR [B, K]: softmax of lm_scores/tau over
the valid contexts, 0 where masked. Differentiable (its backward is the softmax
Jacobian applied to the saved output, in plain torch).

lsr_kl(retriever_scores [B, K], lm_scores [B, K], tau_retriever, tau_lm, mask,
direction) -> kl [B]: KL(p_R || p_LSR) for direction="forward", KL(p_LSR || p_R) for
"reverse". Its gradient flows to retriever_scores only, through the
pyrag::lsr_kl_backward op, which runs on the forward's backend. Semantics:
pyrag.reference.lsr_weights / lsr_kl / lsr_kl_backward.

Backend implementations (register_impl) take exactly the op's arguments without
`backend`; inputs may be any floating dtype (the CPU kernel computes float32, or
float64 for float64 inputs), mask is a bool tensor or None. The op checks that valid
entries are finite before calling them (the CPU kernel does that check itself).
"""
from __future__ import annotations

from typing import Optional

import torch

from pyrag import reference
from pyrag.ops._common import compiled_extension, get_impl, get_num_threads, register_impl, resolve_backend
from pyrag.ops._loss_args import (check_direction, check_finite_where_valid, check_mask, check_same_rows,
                                  check_scores, check_tau, cpu_operand, kernel_suffix, mask_address)


def _check_weights_args(lm_scores, tau, mask) -> None:
    check_scores(lm_scores, "lm_scores")
    check_mask(mask, lm_scores.shape, lm_scores.device)
    check_tau(tau, "tau")


def _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction) -> None:
    check_scores(retriever_scores, "retriever_scores")
    check_scores(lm_scores, "lm_scores")
    check_same_rows(retriever_scores, "retriever_scores", lm_scores, "lm_scores")
    check_mask(mask, retriever_scores.shape, retriever_scores.device)
    check_tau(tau_retriever, "tau_retriever")
    check_tau(tau_lm, "tau_lm")
    check_direction(direction)


def _kl_dtype(retriever_scores, lm_scores) -> torch.dtype:
    return torch.promote_types(retriever_scores.dtype, lm_scores.dtype)


# ------------------------------------------------------------------ lsr_weights
@torch.library.custom_op("pyrag::lsr_weights", mutates_args=())
def _lsr_weights(lm_scores: torch.Tensor, tau: float = 1.0, mask: Optional[torch.Tensor] = None,
                 backend: str = "auto") -> torch.Tensor:
    _check_weights_args(lm_scores, tau, mask)
    name = resolve_backend("lsr_weights", backend, lm_scores.device)
    fn = get_impl("lsr_weights", name, lm_scores.device)
    if lm_scores.numel() == 0:
        return torch.zeros_like(lm_scores)
    if name != "cpu":  # the CPU kernel checks as it reads, for free
        check_finite_where_valid(lm_scores, "lm_scores", mask)
    return fn(lm_scores, tau, mask).to(lm_scores.dtype)


@_lsr_weights.register_fake
def _(lm_scores, tau=1.0, mask=None, backend="auto"):
    _check_weights_args(lm_scores, tau, mask)
    return torch.empty_like(lm_scores)


def _weights_setup_context(ctx, inputs, output):
    ctx.tau = inputs[1]
    ctx.save_for_backward(output)


def _weights_backward(ctx, grad):
    # Softmax Jacobian: dw_c/dz_j = w_c (delta_cj - w_j), with z = scores / tau. Masked
    # entries and empty rows have w = 0, so they get 0.
    (w,) = ctx.saved_tensors
    ct = reference.compute_dtype(w.dtype)
    w32, g32 = w.to(ct), grad.to(ct)
    grad_in = w32 * (g32 - (g32 * w32).sum(dim=-1, keepdim=True)) / ctx.tau
    return grad_in.to(w.dtype), None, None, None


_lsr_weights.register_autograd(_weights_backward, setup_context=_weights_setup_context)


@register_impl("lsr_weights", "reference")
def _reference_weights(lm_scores, tau, mask):
    return reference.lsr_weights(lm_scores, tau, mask)


# ------------------------------------------------------------------ lsr_kl
@torch.library.custom_op("pyrag::lsr_kl", mutates_args=())
def _lsr_kl(retriever_scores: torch.Tensor, lm_scores: torch.Tensor, tau_retriever: float = 1.0,
            tau_lm: float = 1.0, mask: Optional[torch.Tensor] = None, direction: str = "forward",
            backend: str = "auto") -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    name = resolve_backend("lsr_kl", backend, retriever_scores.device)
    fn = get_impl("lsr_kl", name, retriever_scores.device)
    out_dtype = _kl_dtype(retriever_scores, lm_scores)
    if retriever_scores.numel() == 0:
        return retriever_scores.new_zeros(retriever_scores.shape[0], dtype=out_dtype)
    if name != "cpu":  # the CPU kernel checks as it reads, for free
        check_finite_where_valid(retriever_scores, "retriever_scores", mask)
        check_finite_where_valid(lm_scores, "lm_scores", mask)
    return fn(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction).to(out_dtype)


@_lsr_kl.register_fake
def _(retriever_scores, lm_scores, tau_retriever=1.0, tau_lm=1.0, mask=None, direction="forward",
      backend="auto"):
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    return retriever_scores.new_empty(retriever_scores.shape[0], dtype=_kl_dtype(retriever_scores, lm_scores))


@torch.library.custom_op("pyrag::lsr_kl_backward", mutates_args=())
def _lsr_kl_backward(grad: torch.Tensor, retriever_scores: torch.Tensor, lm_scores: torch.Tensor,
                     tau_retriever: float = 1.0, tau_lm: float = 1.0, mask: Optional[torch.Tensor] = None,
                     direction: str = "forward", backend: str = "auto") -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    _check_row_grad(grad, retriever_scores)
    fn = get_impl("lsr_kl_backward", backend, retriever_scores.device)
    if retriever_scores.numel() == 0:
        return torch.zeros_like(retriever_scores)
    return fn(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction).to(retriever_scores.dtype)


@_lsr_kl_backward.register_fake
def _(grad, retriever_scores, lm_scores, tau_retriever=1.0, tau_lm=1.0, mask=None, direction="forward",
      backend="auto"):
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    _check_row_grad(grad, retriever_scores)
    return torch.empty_like(retriever_scores)


def _check_row_grad(grad: torch.Tensor, scores: torch.Tensor) -> None:
    if tuple(grad.shape) != (scores.shape[0],):
        raise ValueError(f"grad has shape {tuple(grad.shape)}, expected ({scores.shape[0]},)")


def _kl_setup_context(ctx, inputs, output):
    retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, backend = inputs
    ctx.args = (tau_retriever, tau_lm, direction)
    # The backward runs on the backend that ran the forward.
    ctx.backend = resolve_backend("lsr_kl", backend, retriever_scores.device)
    ctx.save_for_backward(retriever_scores, lm_scores, mask)


def _kl_backward(ctx, grad):
    retriever_scores, lm_scores, mask = ctx.saved_tensors
    tau_retriever, tau_lm, direction = ctx.args
    grad_scores = torch.ops.pyrag.lsr_kl_backward(grad, retriever_scores, lm_scores, tau_retriever, tau_lm,
                                                  mask, direction, ctx.backend)
    return grad_scores, None, None, None, None, None, None


_lsr_kl.register_autograd(_kl_backward, setup_context=_kl_setup_context)


@register_impl("lsr_kl", "reference")
def _reference_kl(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction):
    return reference.lsr_kl(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)


@register_impl("lsr_kl_backward", "reference")
def _reference_kl_backward(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction):
    return reference.lsr_kl_backward(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)


# ------------------------------------------------------------------ CPU kernels
@register_impl("lsr_weights", "cpu")
def _cpu_weights(lm_scores, tau, mask):
    ct = reference.compute_dtype(lm_scores.dtype)
    x = cpu_operand(lm_scores, ct)
    m, m_addr = mask_address(mask)
    out = torch.empty_like(x)
    b, k = x.shape
    getattr(compiled_extension(), f"lsr_weights_{kernel_suffix(ct)}")(
        x.data_ptr(), m_addr, b, k, float(tau), get_num_threads(), out.data_ptr())
    return out.to(lm_scores.dtype)


@register_impl("lsr_kl", "cpu")
def _cpu_kl(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction):
    ct = reference.compute_dtype(retriever_scores.dtype, lm_scores.dtype)
    s, lm = cpu_operand(retriever_scores, ct), cpu_operand(lm_scores, ct)
    m, m_addr = mask_address(mask)
    b, k = s.shape
    out = torch.empty(b, dtype=ct)
    getattr(compiled_extension(), f"lsr_kl_{kernel_suffix(ct)}")(
        s.data_ptr(), lm.data_ptr(), m_addr, b, k, float(tau_retriever), float(tau_lm),
        direction == "reverse", get_num_threads(), out.data_ptr())
    return out.to(_kl_dtype(retriever_scores, lm_scores))


@register_impl("lsr_kl_backward", "cpu")
def _cpu_kl_backward(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction):
    ct = reference.compute_dtype(retriever_scores.dtype, lm_scores.dtype)
    g = cpu_operand(grad, ct)
    s, lm = cpu_operand(retriever_scores, ct), cpu_operand(lm_scores, ct)
    m, m_addr = mask_address(mask)
    b, k = s.shape
    out = torch.empty_like(s)
    getattr(compiled_extension(), f"lsr_kl_backward_{kernel_suffix(ct)}")(
        g.data_ptr(), s.data_ptr(), lm.data_ptr(), m_addr, b, k, float(tau_retriever), float(tau_lm),
        direction == "reverse", get_num_threads(), out.data_ptr())
    return out.to(retriever_scores.dtype)
