"""backend="cuda" and backend="cuda_emu": the CUDA backends of the pyrag ops (the hand-written kernels of csrc/cuda).

backend="cuda" runs them on CUDA tensors through pyrag._cuda (built by nvcc);
backend="cuda_emu" runs the very same kernel sources on CPU tensors through
pyrag._cuda_emu, the host emulation of the CUDA execution model (built with
PYRAG_CUDA_EMU=ON), which is how CI executes the kernels without a GPU. Both modules
take raw addresses and a stream handle and never link libtorch; this file prepares the
operands: the kernels read float32 (topk_scores) or float32/float64 (the LSR losses),
contiguous, so other dtypes are converted here and results come back in the inputs'
dtype. Nothing here imports a compiled module until an op runs.

The functions below also take the launch knobs (`num_warps`, `splits`) that the
registered implementations leave at their defaults, so tests can reach every code path
of the kernels; see tests/test_cuda_emu.py.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any, Optional

import torch

from pyrag.backends._operands import address, contiguous_or_none, kernel_dtype, kernel_suffix, operand
from pyrag.ops._registry import register_impl

# Warps per block. On the GPU, 8 (256 threads). Under the emulation each thread is an OS
# thread and every warp collective a barrier over 32 of them, so the default block is
# smaller; the kernels take any of 1, 2, 4 or 8 and the tests exercise all four.
GPU_NUM_WARPS = 8
EMU_NUM_WARPS = 4
# Multiprocessors the emulation pretends to have: the planner splits the corpus over
# blocks until about 4 per multiprocessor run, so a small number keeps grids short.
EMU_NUM_SMS = 1

# The corpus dtypes the top-k kernels read (others are converted to float32 first).
_CORPUS_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_F16_MAX = 65504.0


def _module(device: torch.device) -> ModuleType:
    return importlib.import_module("pyrag._cuda" if device.type == "cuda" else "pyrag._cuda_emu")


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _on(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Makes `device` current for the launch (kernels go to the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _default_warps(device: torch.device) -> int:
    return GPU_NUM_WARPS if device.type == "cuda" else EMU_NUM_WARPS


# ----------------------------------------------------------------------- topk_scores
def topk_scores(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    scales: Optional[torch.Tensor] = None,
    *,
    num_warps: Optional[int] = None,
    splits: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pyrag.reference.topk_scores with the CUDA kernels (k <= 1024).

    float16 / bfloat16 corpora are scanned with tensor cores; queries of another dtype
    are then multiplied in two passes (a 16-bit head and residual), so float32 queries
    keep float32 accuracy. Other corpus dtypes (float64, int8) are first copied to
    float32. `num_warps` (1, 2, 4, 8) and `splits` (corpus parts per query, None = as
    many as fill the device) pick the launch; results do not depend on them.
    """
    device = queries.device
    mod = _module(device)
    b, n, d = queries.shape[0], corpus.shape[0], corpus.shape[1]
    if k > mod.max_k:
        raise ValueError(f"the CUDA topk_scores kernels support k <= {mod.max_k}, got k={k}")
    if scales is not None and (scales.dim() != 1 or scales.shape[0] != n):
        raise ValueError(f"scales must have shape ({n},), got {tuple(scales.shape)}")
    if scales is not None and scales.device != device:
        raise ValueError(f"scales are on {scales.device} but the queries are on {device}")
    if corpus.dtype not in _CORPUS_TYPES:
        corpus = corpus.float()
    x = corpus.contiguous()
    q = queries.float().contiguous()
    split_queries = x.dtype != torch.float32 and queries.dtype != x.dtype
    if split_queries and x.dtype == torch.float16 and b and float(q.abs().max()) > _F16_MAX:
        raise ValueError(
            f"queries reach {float(q.abs().max()):.3g}, beyond float16's range ({_F16_MAX:g}), "
            f"so a float16 corpus cannot be scanned with them; scale them or use a float32 corpus"
        )
    s = None if scales is None else scales.float().contiguous()
    warps = num_warps or _default_warps(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else EMU_NUM_SMS
    plan = mod.topk_plan(b, n, k, warps, sms, splits or 0)

    out_scores = torch.empty((b, k), dtype=torch.float32, device=device)
    out_ids = torch.empty((b, k), dtype=torch.int64, device=device)
    nonfinite = torch.zeros(1, dtype=torch.int32, device=device)
    ws_shape = (b, plan, k) if plan > 1 else (0,)
    ws_scores = torch.empty(ws_shape, dtype=torch.float32, device=device)
    ws_ids = torch.empty(ws_shape, dtype=torch.int32, device=device)
    with _on(device):
        mod.topk_scores(
            q.data_ptr(),
            b,
            x.data_ptr(),
            _CORPUS_TYPES[x.dtype],
            n,
            d,
            k,
            address(s),
            split_queries,
            out_scores.data_ptr(),
            out_ids.data_ptr(),
            nonfinite.data_ptr(),
            warps,
            plan,
            ws_scores.data_ptr(),
            ws_ids.data_ptr(),
            _stream(device),
        )
    if nonfinite.item():
        raise ValueError("topk_scores: a score is NaN or Inf")
    return out_scores, out_ids


# ----------------------------------------------------------------------- LSR losses


def lsr_weights(
    lm_scores: torch.Tensor, tau: float, mask: Optional[torch.Tensor], *, num_warps: Optional[int] = None
) -> torch.Tensor:
    """pyrag.reference.lsr_weights with the CUDA kernel (one warp per row)."""
    device = lm_scores.device
    ct = kernel_dtype(lm_scores)
    x = operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    out = torch.empty_like(x)
    rows, cols = x.shape
    with _on(device):
        getattr(_module(device), f"lsr_weights_{kernel_suffix(ct)}")(
            x.data_ptr(),
            address(m),
            rows,
            cols,
            float(tau),
            out.data_ptr(),
            num_warps or _default_warps(device),
            _stream(device),
        )
    return out.to(lm_scores.dtype)


def lsr_kl(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float,
    tau_lm: float,
    mask: Optional[torch.Tensor],
    direction: str,
    *,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """pyrag.reference.lsr_kl with the CUDA kernel: the per-row KL [B]."""
    device = retriever_scores.device
    ct = kernel_dtype(retriever_scores, lm_scores)
    r = operand(retriever_scores, ct)
    lm = operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    rows, cols = r.shape
    out = torch.empty(rows, dtype=ct, device=device)
    with _on(device):
        getattr(_module(device), f"lsr_kl_{kernel_suffix(ct)}")(
            r.data_ptr(),
            lm.data_ptr(),
            address(m),
            rows,
            cols,
            float(tau_retriever),
            float(tau_lm),
            direction == "reverse",
            out.data_ptr(),
            num_warps or _default_warps(device),
            _stream(device),
        )
    return out.to(torch.promote_types(retriever_scores.dtype, lm_scores.dtype))


def lsr_kl_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float,
    tau_lm: float,
    mask: Optional[torch.Tensor],
    direction: str,
    *,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """d(sum_b grad[b] * lsr_kl[b]) / d retriever_scores [B, K] with the CUDA kernel."""
    device = retriever_scores.device
    ct = kernel_dtype(retriever_scores, lm_scores)
    g = operand(grad, ct)
    r = operand(retriever_scores, ct)
    lm = operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    out = torch.empty_like(r)
    rows, cols = r.shape
    with _on(device):
        getattr(_module(device), f"lsr_kl_backward_{kernel_suffix(ct)}")(
            g.data_ptr(),
            r.data_ptr(),
            lm.data_ptr(),
            address(m),
            rows,
            cols,
            float(tau_retriever),
            float(tau_lm),
            direction == "reverse",
            out.data_ptr(),
            num_warps or _default_warps(device),
            _stream(device),
        )
    return out.to(retriever_scores.dtype)


# The same functions serve both backends: the tensors' device picks the module.
for _backend in ("cuda", "cuda_emu"):
    register_impl("topk_scores", _backend)(topk_scores)
    register_impl("lsr_weights", _backend)(lsr_weights)
    register_impl("lsr_kl", _backend)(lsr_kl)
    register_impl("lsr_kl_backward", _backend)(lsr_kl_backward)
