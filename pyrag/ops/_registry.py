"""Which implementation runs an op: backend names, their registry, and how "auto" and
the tensors' device pick one.

Each backend module (pyrag/backends/<name>.py) registers its implementations with
`register_impl(op, backend)`. An op's body calls `get_impl(op, backend, device)`, which
turns "auto" into a concrete backend for the device and explains clearly why a backend
cannot run. Implementations take the op's arguments without `backend` (CPU or CUDA
tensors, masks None or bool) and return its outputs; `<op>_backward` implementations
take grad_out first.

Beside the torch.library ops, DenseIndex's search of its packed corpus is looked up
here too ("topk_packed", "topk_packed_exact"): the CPU backend scans the packed layout
directly, every other backend is given the rows unpacked (see pyrag/index/packed.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any, Optional

import torch

BACKENDS = ("auto", "cpu", "reference", "triton", "cuda", "cuda_emu")

# The shared torch.library namespace of every pyrag op (torch.ops.pyrag.*). Ops are
# defined with the low-level Library API rather than torch.library.custom_op: custom_op
# wraps every implementation in torch._dynamo's disable, which imports torch._dynamo on
# the first eager call (1.3 to 5 s); these registrations import nothing at call time.
LIBRARY = torch.library.Library("pyrag", "DEF")


class BackendUnavailableError(RuntimeError):
    """The named backend exists but cannot run here (missing package, build or device)."""


_impls: dict[tuple[str, str], Callable[..., Any]] = {}
_num_threads: Optional[int] = None


def register_impl(op: str, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function implements `op` for `backend`."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"cannot register an implementation for backend {backend!r}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _impls[(op, backend)] = fn
        return fn

    return wrap


def lookup_impl(op: str, backend: str) -> Optional[Callable[..., Any]]:
    """The implementation registered for (op, backend), or None."""
    return _impls.get((op, backend))


def implemented_backends(op: str) -> list[str]:
    """The backends that register an implementation of `op` (for the op x backend table)."""
    return [b for b in BACKENDS if (op, b) in _impls]


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "backend='triton' needs the triton package (pip install triton; Linux only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (
        f"backend='triton' runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 "
        f"set before pyrag is imported; got a {device.type} tensor"
    )


def compiled_extension() -> Any:
    """pyrag._C, or a clear error if the package was installed without it."""
    try:
        return importlib.import_module("pyrag._C")
    except ImportError as e:  # pragma: no cover - only on a broken install
        raise BackendUnavailableError(
            "pyrag's compiled extension pyrag._C is missing; reinstall pyrag (pip install .) or use backend='reference'"
        ) from e


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why `backend` cannot run on tensors of `device`, or None if it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if device.type == "cpu" else f"backend='cpu' needs CPU tensors, got {device.type}"
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend='cuda' needs CUDA tensors, got {device.type}"
        if importlib.util.find_spec("pyrag._cuda") is None:
            return "backend='cuda' needs pyrag built with its CUDA backend (PYRAG_CUDA=ON and nvcc)"
        return None
    if backend == "cuda_emu":
        if device.type != "cpu":
            return f"backend='cuda_emu' runs the CUDA kernels on the host and needs CPU tensors, got {device.type}"
        if importlib.util.find_spec("pyrag._cuda_emu") is None:
            return "backend='cuda_emu' needs pyrag built with the host emulation (PYRAG_CUDA_EMU=ON)"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """`backend`, or for "auto" the best one implementing `op` on `device`: the CPU kernels
    for CPU tensors, Triton (else CUDA) for CUDA tensors, the reference otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type == "cpu":
        return "cpu" if (op, "cpu") in _impls else "reference"
    if device.type == "cuda":
        for name in ("triton", "cuda"):
            if (op, name) in _impls and unavailable_reason(name, device) is None:
                return name
    return "reference"


def get_impl(op: str, backend: str, device: torch.device) -> Callable[..., Any]:
    """The implementation of `op` that `backend` ("auto" resolved) runs on `device`."""
    name = resolve_backend(op, backend, device)
    fn = _impls.get((op, name))
    if fn is None:
        raise BackendUnavailableError(f"{op} has no {name!r} backend")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: {reason}")
    return fn


def set_num_threads(n: Optional[int]) -> None:
    """Threads for the CPU kernels; None follows torch.get_num_threads()."""
    global _num_threads
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    """Threads the CPU kernels use: set_num_threads's value, else torch.get_num_threads()."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()
