"""DenseIndex's corpus in the CPU kernels' packed layout (csrc/cpu/packed_layout.h:
blocks of 16 rows interleaved along the dimension in 4-byte groups), and its search.

The CPU backend scans the packed blocks as they are ("topk_packed",
"topk_packed_exact" in pyrag/backends/cpu.py). Every other backend is handed the rows
unpacked to row-major, in id order when the ids do not increase with the row, so that
ties go to the smaller id on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from pyrag.ops._registry import compiled_extension, get_num_threads, lookup_impl, resolve_backend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
BLOCK_ROWS = 16


@dataclass(frozen=True)
class PackedCorpus:
    """Rows [0, num_rows) of a corpus in the packed layout.

    data: uint8 [blocks, block_bytes] with blocks * 16 >= num_rows. scales (int8 only):
    float32 [blocks * 16], padding rows 0. max_norm / max_error (bf16, int8): bounds on
    ||x|| and ||x - dequantised x|| over the rows, for certified-exact search.
    """

    dtype: str
    dim: int
    data: torch.Tensor
    num_rows: int
    scales: Optional[torch.Tensor] = None
    max_norm: float = 0.0
    max_error: float = 0.0


def num_blocks(rows: int) -> int:
    return -(-rows // BLOCK_ROWS)


def block_bytes(dtype: str, dim: int) -> int:
    """Bytes of one packed block of 16 rows."""
    return int(compiled_extension().packed_block_bytes(dtype, dim))


def pack_rows(dtype: str, rows: torch.Tensor, packed: torch.Tensor, row_offset: int) -> None:
    """Writes row-major rows (float32, bfloat16 or int8 values) into a packed buffer as
    its rows [row_offset, row_offset + len(rows))."""
    rows = rows.contiguous()
    compiled_extension().pack_rows(dtype, rows.data_ptr(), rows.shape[0], rows.shape[1], packed.data_ptr(), row_offset)


def unpack_rows(dtype: str, packed: torch.Tensor, row_begin: int, n: int, dim: int) -> torch.Tensor:
    """Rows [row_begin, row_begin + n) of a packed buffer, row-major, in the storage dtype."""
    out = torch.empty((n, dim), dtype=DTYPES[dtype])
    if n:
        compiled_extension().unpack_rows(dtype, packed.data_ptr(), row_begin, n, dim, out.data_ptr())
    return out


def encode_rows(dtype: str, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """float32 rows [n, d] in a quantised dtype: (values bf16/int8 [n, d], scales float32
    [n] or None, norms [n], errors [n]); norms >= ||x|| and errors >= ||x - dequantised||,
    rounded up (the inputs of exact search's error bound)."""
    x = x.contiguous()
    n, d = x.shape
    values = torch.empty((n, d), dtype=torch.bfloat16 if dtype == "bfloat16" else torch.int8)
    scales = torch.empty(n, dtype=torch.float32) if dtype == "int8" else None
    norms = torch.empty(n, dtype=torch.float32)
    errors = torch.empty(n, dtype=torch.float32)
    if n:
        compiled_extension().encode_rows(
            dtype, x.data_ptr(), n, d, values.data_ptr(), scales.data_ptr() if scales is not None else 0,
            norms.data_ptr(), errors.data_ptr(), get_num_threads(),
        )  # fmt: skip
    return values, scales, norms, errors


def dequantized_rows(corpus: PackedCorpus, rows: torch.Tensor) -> torch.Tensor:
    """float32 [len(rows), dim] of the given rows (int64, each in [0, num_rows)), as the
    index scores them: bf16 widened, int8 values times their row scale. O(len(rows) * dim)."""
    r = rows.contiguous()
    out = torch.empty((r.numel(), corpus.dim), dtype=torch.float32)
    if r.numel():
        compiled_extension().gather_rows_f32(
            corpus.dtype, corpus.data.data_ptr(), r.data_ptr(), r.numel(), corpus.dim,
            corpus.scales.data_ptr() if corpus.scales is not None else 0, out.data_ptr(),
        )  # fmt: skip
    return out


def search(
    queries: torch.Tensor,
    corpus: PackedCorpus,
    k: int,
    *,
    backend: str = "auto",
    tie_keys: Optional[torch.Tensor] = None,
    originals: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows of a packed corpus for float32 queries [B, d] (checked by the caller):
    (scores [B, k], rows [B, k]), ties to the smaller tie key (the row when None).

    originals (bf16 / int8 with exact search): the float32 rows (an Originals), and the
    result is exactly the float32 corpus's.
    """
    name = resolve_backend("topk_scores", backend, queries.device)
    native = lookup_impl("topk_packed_exact" if originals is not None else "topk_packed", name)
    if native is not None:
        if originals is not None:
            return native(queries, corpus, originals, k, tie_keys)
        return native(queries, corpus, k, tie_keys)
    # A backend that takes row-major corpora: unpack (in tie-key order, so that its ties
    # to the smaller row are ties to the smaller key).
    n = corpus.num_rows
    order = torch.argsort(tie_keys[:n], stable=True) if tie_keys is not None else None
    if originals is not None:
        rows = originals.view(n)
        scales = None
    else:
        rows = unpack_rows(corpus.dtype, corpus.data, 0, n, corpus.dim)
        scales = corpus.scales[:n] if corpus.scales is not None else None
    if order is not None:
        rows = rows[order]
        scales = scales[order] if scales is not None else None
    scores, found = torch.ops.pyrag.topk_scores(queries, rows.to(queries.device), k, _to(scales, queries), name)
    found = found.cpu()
    if order is not None:
        valid = found >= 0
        found[valid] = order[found[valid]]
    return scores.cpu(), found


def _to(t: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    return None if t is None else t.to(like.device)


def max_dim(dtype: str) -> int:
    """The largest dim an index of `dtype` takes: for int8, d * 255 * 127 must fit the
    kernels' int32 sums; for the others, a bound far past any embedding that keeps every
    byte count of a block in int64."""
    return 65536 if dtype == "int8" else 1 << 24
