"""Arguments of the loss ops (lsr_weights, lsr_kl, marginal_nll), shared by them:
checks of shapes, devices, masks, temperatures and the finiteness of the entries a
loss actually reads (the fake implementations call the same shape checks, so
torch.compile sees the same errors as eager code), and the preparation of operands
for the CPU kernels."""
from __future__ import annotations

import math
from typing import Optional

import torch

DIRECTIONS = ("forward", "reverse")


def check_scores(t: torch.Tensor, what: str, ndim: int = 2) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {t.dtype}")
    if t.dim() != ndim:
        shape = "[B, K]" if ndim == 2 else "[B, K, T]"
        raise ValueError(f"{what} must be {ndim}-D {shape}, got shape {tuple(t.shape)}")


def check_same_rows(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """b's leading [B, K] must equal a's [B, K], on the same device."""
    if tuple(b.shape[:2]) != tuple(a.shape[:2]):
        raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; "
                         f"their [B, K] must match")
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")


def check_mask(mask: Optional[torch.Tensor], shape: tuple, device: torch.device, what: str = "mask") -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{what} must be a bool tensor (True = valid), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.device != device:
        raise ValueError(f"{what} is on {mask.device} but the scores are on {device}")


def check_tau(tau, what: str) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {tau!r}")


def check_direction(direction) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


def check_finite_where_valid(t: torch.Tensor, what: str, mask: Optional[torch.Tensor] = None,
                             token_mask: Optional[torch.Tensor] = None) -> None:
    """Entries a loss reads must be finite; masked ones may hold anything (-inf padding)."""
    bad = ~torch.isfinite(t)
    if mask is not None:
        bad &= mask if t.dim() == 2 else mask.unsqueeze(-1)
    if token_mask is not None:
        bad &= token_mask.unsqueeze(1)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{what} hold NaN or Inf at the valid entry {first}; "
                         f"mark padding invalid with mask= instead")


def cpu_operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t as a contiguous CPU tensor of the kernel's dtype (bf16/fp16 widen to float32)."""
    return t.to(dtype).contiguous()


def kernel_suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def mask_address(mask: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], int]:
    """(the contiguous mask to keep alive, its address or 0 for "no mask")."""
    if mask is None:
        return None, 0
    m = mask.contiguous()
    return m, m.data_ptr()
