"""The one boundary where user input becomes the tensors pyrag works on: numpy arrays or
torch tensors in, checked torch tensors out, with errors that name the problem
(TypeError for the wrong kind of thing, ValueError for a wrong value)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def as_tensor(a: Any, what: str) -> torch.Tensor:
    """A torch tensor viewing `a` (a torch.Tensor, or a numpy array without copying)."""
    if isinstance(a, torch.Tensor):
        if a.device.type == "meta":
            raise TypeError(f"{what} is a meta tensor (it has no data)")
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{what}: unsupported numpy dtype {a.dtype}")
        # torch.from_numpy rejects negative strides; copy only then.
        return torch.from_numpy(np.ascontiguousarray(a) if a.strides and min(a.strides) < 0 else a)
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")


def as_cpu_rows(a: Any, what: str) -> torch.Tensor:
    """Vectors to store: a [n, d] (or [d]) tensor, detached, on the CPU, contiguous. The
    dtype is left to the caller to check."""
    t = as_tensor(a, what).detach()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    return t.cpu().contiguous()


def as_ids(ids: Any, what: str = "ids") -> torch.Tensor:
    """Ids as a 1-D int64 CPU tensor: from an int, a sequence of ints, or an integer numpy
    array or tensor. Values outside int64 are a ValueError, non-integers a TypeError."""
    if isinstance(ids, (bool, np.bool_)):
        raise TypeError(f"{what} must be integers, got a bool")
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    if isinstance(ids, (list, tuple, range)):
        values = list(ids)
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{what} must be integers, got {type(v).__name__} {v!r}")
            if not INT64_MIN <= int(v) <= INT64_MAX:
                raise ValueError(f"{what}: {int(v)} is outside the int64 range")
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    t = as_tensor(ids, what)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integers, got {t.dtype}")
    if t.dtype == torch.uint64:
        if t.numel() and int(t.max()) > INT64_MAX:
            raise ValueError(f"{what}: {int(t.max())} is outside the int64 range")
    return t.detach().cpu().reshape(-1).to(torch.int64).contiguous()
