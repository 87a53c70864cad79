"""pyrag::lsr_weights, pyrag::lsr_kl and pyrag::lsr_kl_backward: LM-supervised retrieval
(REPLUG LSR, Atlas). Schemas, fakes and autograd only; the implementations register from
pyrag/backends/.

lsr_weights(lm_scores [B, K], tau, mask) -> p_LSR [B, K]: softmax of lm_scores / tau over
the valid contexts, 0 where masked. Differentiable: its backward is the softmax Jacobian
applied to the saved output, in plain torch.

lsr_kl(retriever_scores [B, K], lm_scores [B, K], tau_retriever, tau_lm, mask, direction)
-> kl [B]: KL(p_R || p_LSR) for direction="forward", KL(p_LSR || p_R) for "reverse". Its
gradient flows to retriever_scores only, through pyrag::lsr_kl_backward, which runs on
the forward's backend. Semantics: pyrag.reference.lsr_weights / lsr_kl / lsr_kl_backward.

Implementations take the op's arguments without `backend`; inputs may be any floating
dtype, mask a bool tensor or None. The op checks that valid entries are finite before
calling them, except on the CPU backend, whose kernel checks as it reads.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag import reference
from pyrag.ops._checks import (
    check_direction,
    check_finite_where_valid,
    check_mask,
    check_row_grad,
    check_same_rows,
    check_scores,
    check_tau,
)
from pyrag.ops._registry import LIBRARY, get_impl, resolve_backend

LIBRARY.define("lsr_weights(Tensor lm_scores, float tau=1.0, Tensor? mask=None, str backend='auto') -> Tensor")
LIBRARY.define(
    "lsr_kl(Tensor retriever_scores, Tensor lm_scores, float tau_retriever=1.0, float tau_lm=1.0, "
    "Tensor? mask=None, str direction='forward', str backend='auto') -> Tensor"
)
LIBRARY.define(
    "lsr_kl_backward(Tensor grad, Tensor retriever_scores, Tensor lm_scores, float tau_retriever=1.0, "
    "float tau_lm=1.0, Tensor? mask=None, str direction='forward', str backend='auto') -> Tensor"
)


def _check_weights_args(lm_scores: torch.Tensor, tau: float, mask: Optional[torch.Tensor]) -> None:
    check_scores(lm_scores, "lm_scores")
    check_mask(mask, tuple(lm_scores.shape), lm_scores.device)
    check_tau(tau, "tau")


def _check_kl_args(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float,
    tau_lm: float,
    mask: Optional[torch.Tensor],
    direction: str,
) -> None:
    check_scores(retriever_scores, "retriever_scores")
    check_scores(lm_scores, "lm_scores")
    check_same_rows(retriever_scores, "retriever_scores", lm_scores, "lm_scores")
    check_mask(mask, tuple(retriever_scores.shape), retriever_scores.device)
    check_tau(tau_retriever, "tau_retriever")
    check_tau(tau_lm, "tau_lm")
    check_direction(direction)


def _kl_dtype(retriever_scores: torch.Tensor, lm_scores: torch.Tensor) -> torch.dtype:
    return torch.promote_types(retriever_scores.dtype, lm_scores.dtype)


# ------------------------------------------------------------------ lsr_weights
def _lsr_weights(
    lm_scores: torch.Tensor, tau: float = 1.0, mask: Optional[torch.Tensor] = None, backend: str = "auto"
) -> torch.Tensor:
    _check_weights_args(lm_scores, tau, mask)
    name = resolve_backend("lsr_weights", backend, lm_scores.device)
    fn = get_impl("lsr_weights", name, lm_scores.device)
    if lm_scores.numel() == 0:
        return torch.zeros_like(lm_scores)
    if name != "cpu":  # the CPU kernel checks as it reads, for free
        check_finite_where_valid(lm_scores, "lm_scores", mask)
    out: torch.Tensor = fn(lm_scores, tau, mask)
    return out.to(lm_scores.dtype)


LIBRARY.impl("lsr_weights", _lsr_weights, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::lsr_weights", lib=LIBRARY)
def _weights_fake(
    lm_scores: torch.Tensor, tau: float = 1.0, mask: Optional[torch.Tensor] = None, backend: str = "auto"
) -> torch.Tensor:
    _check_weights_args(lm_scores, tau, mask)
    return torch.empty_like(lm_scores)


def _weights_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.tau = inputs[1]
    ctx.save_for_backward(output)


def _weights_backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None, None]:
    # Softmax Jacobian: dw_c/dz_j = w_c (delta_cj - w_j), with z = scores / tau. Masked
    # entries and empty rows have w = 0, so they get 0.
    (w,) = ctx.saved_tensors
    ct = reference.compute_dtype(w.dtype)
    w32, g32 = w.to(ct), grad.to(ct)
    grad_in = w32 * (g32 - (g32 * w32).sum(dim=-1, keepdim=True)) / ctx.tau
    return grad_in.to(w.dtype), None, None, None


torch.library.register_autograd(
    "pyrag::lsr_weights", _weights_backward, setup_context=_weights_setup_context, lib=LIBRARY
)


# ------------------------------------------------------------------ lsr_kl
def _lsr_kl(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
    backend: str = "auto",
) -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    name = resolve_backend("lsr_kl", backend, retriever_scores.device)
    fn = get_impl("lsr_kl", name, retriever_scores.device)
    out_dtype = _kl_dtype(retriever_scores, lm_scores)
    if retriever_scores.numel() == 0:
        return retriever_scores.new_zeros(retriever_scores.shape[0], dtype=out_dtype)
    if name != "cpu":  # the CPU kernel checks as it reads, for free
        check_finite_where_valid(retriever_scores, "retriever_scores", mask)
        check_finite_where_valid(lm_scores, "lm_scores", mask)
    out: torch.Tensor = fn(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    return out.to(out_dtype)


LIBRARY.impl("lsr_kl", _lsr_kl, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::lsr_kl", lib=LIBRARY)
def _kl_fake(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
    backend: str = "auto",
) -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    return retriever_scores.new_empty(retriever_scores.shape[0], dtype=_kl_dtype(retriever_scores, lm_scores))


def _lsr_kl_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
    backend: str = "auto",
) -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    check_row_grad(grad, retriever_scores)
    fn = get_impl("lsr_kl_backward", backend, retriever_scores.device)
    if retriever_scores.numel() == 0:
        return torch.zeros_like(retriever_scores)
    out: torch.Tensor = fn(grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    return out.to(retriever_scores.dtype)


LIBRARY.impl("lsr_kl_backward", _lsr_kl_backward, "CompositeExplicitAutograd")


@torch.library.register_fake("pyrag::lsr_kl_backward", lib=LIBRARY)
def _kl_backward_fake(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float = 1.0,
    tau_lm: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    direction: str = "forward",
    backend: str = "auto",
) -> torch.Tensor:
    _check_kl_args(retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction)
    check_row_grad(grad, retriever_scores)
    return torch.empty_like(retriever_scores)


def _kl_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, backend = inputs
    ctx.args = (tau_retriever, tau_lm, direction)
    # The backward runs on the backend that ran the forward.
    ctx.backend = resolve_backend("lsr_kl", backend, retriever_scores.device)
    ctx.save_for_backward(retriever_scores, lm_scores, mask)


def _kl_backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    retriever_scores, lm_scores, mask = ctx.saved_tensors
    tau_retriever, tau_lm, direction = ctx.args
    grad_scores = torch.ops.pyrag.lsr_kl_backward(
        grad, retriever_scores, lm_scores, tau_retriever, tau_lm, mask, direction, ctx.backend
    )
    return grad_scores, None, None, None, None, None, None


torch.library.register_autograd("pyrag::lsr_kl", _kl_backward, setup_context=_kl_setup_context, lib=LIBRARY)
