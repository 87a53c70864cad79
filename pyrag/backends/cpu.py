"""backend="cpu": the C++ kernels of pyrag._C (csrc/cpu) on CPU tensors.

pyrag._C takes raw addresses and sizes and never links libtorch; this module makes the
operands contiguous in the dtype each kernel reads and allocates the outputs. The kernels
pick the best instruction set at run time (pyrag.cpu_isa()) and run on
pyrag.get_num_threads() threads with the GIL released.

Besides the torch.library ops, it registers the scans of DenseIndex's packed corpus,
"topk_packed" and "topk_packed_exact" (pyrag/index/packed.py).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pyrag.backends._operands import address, contiguous_or_none, kernel_dtype, kernel_suffix, operand
from pyrag.ops._registry import compiled_extension, get_num_threads, register_impl

# Corpus dtypes the kernels scan, by their name in pyrag._C.
CORPUS_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}


# ----------------------------------------------------------------------------- top-k
@register_impl("topk_scores", "cpu")
def topk_scores(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, scales: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    name = CORPUS_DTYPES.get(corpus.dtype)
    if name is None:
        raise TypeError(f"backend='cpu' scans float32, bfloat16 or int8 corpora, got {corpus.dtype}")
    if queries.dtype != torch.float32:
        raise TypeError(f"backend='cpu' takes float32 queries, got {queries.dtype}; convert them explicitly")
    if scales is not None and name != "int8":
        raise ValueError(f"backend='cpu' applies per-row scales to an int8 corpus only, got a {corpus.dtype} corpus")
    if scales is None and name == "int8":
        scales = torch.ones(corpus.shape[0], dtype=torch.float32)  # plain integer rows
    s = contiguous_or_none(scales)
    q = queries.contiguous()
    x = corpus.contiguous()
    b, n, d = q.shape[0], x.shape[0], x.shape[1]
    out_scores = torch.empty((b, k), dtype=torch.float32)
    out_ids = torch.empty((b, k), dtype=torch.int64)
    try:
        compiled_extension().topk_scores(
            name, q.data_ptr(), b, x.data_ptr(), False, n, d, address(s), k, get_num_threads(),
            out_scores.data_ptr(), out_ids.data_ptr(),
        )  # fmt: skip
    except ValueError as e:  # the kernel saw a NaN/Inf score
        raise ValueError(f"{e} (corpus of shape {tuple(x.shape)})") from None
    return out_scores, out_ids


@register_impl("topk_packed", "cpu")
def topk_packed(
    queries: torch.Tensor, corpus: Any, k: int, tie_keys: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_scores over a PackedCorpus (pyrag/index/packed.py) for float32 queries
    [B, d]; rows returned, ties to the smaller tie key (the row when None)."""
    q = queries.contiguous()
    b = q.shape[0]
    out_scores = torch.empty((b, k), dtype=torch.float32)
    out_rows = torch.empty((b, k), dtype=torch.int64)
    compiled_extension().topk_scores(
        corpus.dtype, q.data_ptr(), b, corpus.data.data_ptr(), True, corpus.num_rows, corpus.dim,
        address(corpus.scales), k, get_num_threads(), out_scores.data_ptr(), out_rows.data_ptr(), address(tie_keys),
    )  # fmt: skip
    return out_scores, out_rows


@register_impl("topk_packed_exact", "cpu")
def topk_packed_exact(
    queries: torch.Tensor, corpus: Any, originals: Any, k: int, tie_keys: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Certified-exact top-k over a quantised PackedCorpus: exactly
    topk_scores(queries, originals, k) (float32), having scanned the compact corpus and
    rescored from the float32 originals (an Originals file: fd, offset) only the rows the
    error bound (from corpus.max_norm, corpus.max_error) cannot rule out."""
    scores, rows, _ = topk_packed_exact_with_stats(queries, corpus, originals, k, tie_keys)
    return scores, rows


def topk_packed_exact_with_stats(
    queries: torch.Tensor, corpus: Any, originals: Any, k: int, tie_keys: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """topk_packed_exact, plus {"candidates": rows rescored, "fallback_queries": queries
    whose candidate set overflowed and were rescanned in full}."""
    q = queries.contiguous()
    b = q.shape[0]
    out_scores = torch.empty((b, k), dtype=torch.float32)
    out_rows = torch.empty((b, k), dtype=torch.int64)
    stats = compiled_extension().topk_scores_exact(
        corpus.dtype, q.data_ptr(), b, corpus.data.data_ptr(), corpus.num_rows, corpus.dim, address(corpus.scales),
        originals.fd, originals.offset, float(corpus.max_norm), float(corpus.max_error), k, get_num_threads(),
        out_scores.data_ptr(), out_rows.data_ptr(), address(tie_keys),
    )  # fmt: skip
    return out_scores, out_rows, dict(stats)


# ----------------------------------------------------------------------------- LSR
@register_impl("lsr_weights", "cpu")
def lsr_weights(lm_scores: torch.Tensor, tau: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    ct = kernel_dtype(lm_scores)
    x = operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    out = torch.empty_like(x)
    b, k = x.shape
    getattr(compiled_extension(), f"lsr_weights_{kernel_suffix(ct)}")(
        x.data_ptr(), address(m), b, k, float(tau), get_num_threads(), out.data_ptr()
    )
    return out.to(lm_scores.dtype)


@register_impl("lsr_kl", "cpu")
def lsr_kl(
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float,
    tau_lm: float,
    mask: Optional[torch.Tensor],
    direction: str,
) -> torch.Tensor:
    ct = kernel_dtype(retriever_scores, lm_scores)
    s, lm = operand(retriever_scores, ct), operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    b, k = s.shape
    out = torch.empty(b, dtype=ct)
    getattr(compiled_extension(), f"lsr_kl_{kernel_suffix(ct)}")(
        s.data_ptr(), lm.data_ptr(), address(m), b, k, float(tau_retriever), float(tau_lm),
        direction == "reverse", get_num_threads(), out.data_ptr(),
    )  # fmt: skip
    return out


@register_impl("lsr_kl_backward", "cpu")
def lsr_kl_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_scores: torch.Tensor,
    tau_retriever: float,
    tau_lm: float,
    mask: Optional[torch.Tensor],
    direction: str,
) -> torch.Tensor:
    ct = kernel_dtype(retriever_scores, lm_scores)
    g = operand(grad, ct)
    s, lm = operand(retriever_scores, ct), operand(lm_scores, ct)
    m = contiguous_or_none(mask)
    b, k = s.shape
    out = torch.empty_like(s)
    getattr(compiled_extension(), f"lsr_kl_backward_{kernel_suffix(ct)}")(
        g.data_ptr(), s.data_ptr(), lm.data_ptr(), address(m), b, k, float(tau_retriever), float(tau_lm),
        direction == "reverse", get_num_threads(), out.data_ptr(),
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- marginal NLL
def _marginal_operands(
    retriever_scores: torch.Tensor, lm_logprobs: torch.Tensor
) -> tuple[torch.dtype, torch.Tensor, torch.Tensor]:
    """Contiguous kernel-dtype operands; [B, K] log-probs become [B, K, 1]."""
    ct = kernel_dtype(retriever_scores, lm_logprobs)
    lm = lm_logprobs if lm_logprobs.dim() == 3 else lm_logprobs.unsqueeze(-1)
    return ct, operand(retriever_scores, ct), operand(lm, ct)


@register_impl("marginal_nll", "cpu")
def marginal_nll(
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float,
    mask: Optional[torch.Tensor],
    token_mask: Optional[torch.Tensor],
) -> torch.Tensor:
    ct, s, lm = _marginal_operands(retriever_scores, lm_logprobs)
    m, tm = contiguous_or_none(mask), contiguous_or_none(token_mask)
    b, k, t = lm.shape
    out = torch.empty(b, dtype=ct)
    getattr(compiled_extension(), f"marginal_nll_{kernel_suffix(ct)}")(
        s.data_ptr(), lm.data_ptr(), address(m), address(tm), b, k, t, float(tau_retriever), get_num_threads(),
        out.data_ptr(),
    )  # fmt: skip
    return out


@register_impl("marginal_nll_backward", "cpu")
def marginal_nll_backward(
    grad: torch.Tensor,
    retriever_scores: torch.Tensor,
    lm_logprobs: torch.Tensor,
    tau_retriever: float,
    mask: Optional[torch.Tensor],
    token_mask: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    ct, s, lm = _marginal_operands(retriever_scores, lm_logprobs)
    m, tm = contiguous_or_none(mask), contiguous_or_none(token_mask)
    g = operand(grad, ct)
    b, k, t = lm.shape
    grad_scores = torch.empty_like(s)
    grad_lm = torch.empty_like(lm)
    getattr(compiled_extension(), f"marginal_nll_backward_{kernel_suffix(ct)}")(
        g.data_ptr(), s.data_ptr(), lm.data_ptr(), address(m), address(tm), b, k, t, float(tau_retriever),
        get_num_threads(), grad_scores.data_ptr(), grad_lm.data_ptr(),
    )  # fmt: skip
    return grad_scores, grad_lm.view(lm_logprobs.shape)
