"""Operand preparation shared by the compiled backends (cpu, cuda): the kernels take raw
addresses of contiguous float32 or float64 data (the dtype pyrag.reference.compute_dtype
picks), and a mask address of 0 for "no mask"."""

from __future__ import annotations

from typing import Optional

import torch

from pyrag import reference


def kernel_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the loss kernels compute in for these inputs (float64 or float32)."""
    return reference.compute_dtype(*(t.dtype for t in tensors))


def kernel_suffix(dtype: torch.dtype) -> str:
    """The suffix of a loss kernel's entry point for its compute dtype."""
    return "f64" if dtype == torch.float64 else "f32"


def operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t as a contiguous tensor of the kernel's dtype (bf16/fp16 widen to float32)."""
    return t.to(dtype).contiguous()


def contiguous_or_none(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def address(t: Optional[torch.Tensor]) -> int:
    """The data address of t, or 0 for None (the kernels' "absent")."""
    return 0 if t is None else t.data_ptr()
