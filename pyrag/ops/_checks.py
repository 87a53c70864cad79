"""Argument checks of the pyrag ops, each in one place: shapes, dtypes, devices, masks,
temperatures, directions and the finiteness of what an op reads.

The fake (meta) implementations call the same shape checks as the real ones, so
torch.compile reports the same errors as eager code.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from pyrag.reference import DIRECTIONS, check_direction  # noqa: F401  (the spec defines them)


# ----------------------------------------------------------------------------- top-k
def check_topk_args(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> None:
    """Shapes, dtypes and devices of topk_scores."""
    if queries.dim() != 2:
        raise ValueError(f"queries must be 2-D [B, d], got shape {tuple(queries.shape)}")
    if corpus.dim() != 2:
        raise ValueError(f"corpus must be 2-D [N, d], got shape {tuple(corpus.shape)}")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have dim {queries.shape[1]} but the corpus has dim {corpus.shape[1]}")
    if queries.shape[1] < 1:
        raise ValueError("dim must be at least 1")
    check_k(k)
    if not queries.is_floating_point():
        raise TypeError(f"queries must be floating point, got {queries.dtype}")
    if not (corpus.is_floating_point() or corpus.dtype == torch.int8):
        raise TypeError(f"unsupported corpus dtype {corpus.dtype}")
    if queries.device != corpus.device:
        raise ValueError(f"queries are on {queries.device} but the corpus is on {corpus.device}")


def check_k(k: object) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")


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


def check_finite(t: torch.Tensor, what: str) -> None:
    """Every element of a floating tensor is finite, or a ValueError naming the first."""
    if not (t.is_floating_point() and t.numel()):
        return
    # min and max propagate NaN and expose +-Inf: one vectorised pass with no [N, d]
    # bool temporary (isfinite(t).all() takes ~30x longer on a 1.5 GB corpus).
    lo, hi = torch.aminmax(t)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{what} contain NaN or Inf (first at index {tuple(bad)})")


# ----------------------------------------------------------------------------- losses
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
        raise ValueError(
            f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; their [B, K] must match"
        )
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")


def check_mask(mask: Optional[torch.Tensor], shape: tuple[int, ...], device: torch.device, what: str = "mask") -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{what} must be a bool tensor (True = valid), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.device != device:
        raise ValueError(f"{what} is on {mask.device} but the scores are on {device}")


def check_tau(tau: object, what: str) -> None:
    """A temperature (or any positive scale): a finite real number > 0, not a bool."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {tau!r}")


def check_row_grad(grad: torch.Tensor, scores: torch.Tensor) -> None:
    """The incoming gradient of a per-row loss [B]."""
    if tuple(grad.shape) != (scores.shape[0],):
        raise ValueError(f"grad has shape {tuple(grad.shape)}, expected ({scores.shape[0]},)")


def check_finite_where_valid(
    t: torch.Tensor, what: str, mask: Optional[torch.Tensor] = None, token_mask: Optional[torch.Tensor] = None
) -> None:
    """Entries a loss reads must be finite; masked ones may hold anything (-inf padding)."""
    bad = ~torch.isfinite(t)
    if mask is not None:
        bad &= mask if t.dim() == 2 else mask.unsqueeze(-1)
    if token_mask is not None:
        bad &= token_mask.unsqueeze(1)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{what} hold NaN or Inf at the valid entry {first}; mark padding invalid with mask= instead")
