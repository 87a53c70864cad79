"""Triton kernels for pyrag::topk_scores: inner-product scoring fused with top-k.

queries [B, d] against a corpus [N, d] (fp32, fp16, bf16, or int8 with per-row scales)
gives the k best (score, row id) per query without ever writing the B x N scores.

Two kernels:
1. `_topk_scan_kernel`, grid (query blocks, corpus splits). A program owns BLOCK_M
   queries and one contiguous slice of the corpus, which it reads once, tile by tile.
   Each [BLOCK_M, BLOCK_N] tile is scored with tl.dot. Scores that beat the row's
   thresholds (this program's k-th best, and the best k-th that any program has
   published for that query) are packed into int64 keys and appended to a per-row
   candidate buffer (global scratch, L2-resident); when the buffer could overflow, it
   is merged into the row's sorted top-KP (tl.topk + tl.bitonic_merge) and the
   thresholds rise. After the first few tiles almost nothing passes, so the steady
   state costs one compare per score on top of the dot.
2. `_topk_merge_kernel`, one program per query: merges the splits' top-KP lists
   (skipping those below the final shared k-th best) and decodes keys into
   (score, id), padding with (-inf, -1).

docs/gpu_kernels.md has the design, the verification and the H100 analysis.

Keys: the high 32 bits are the score's float bits made order-preserving as a signed
int; the low 32 bits hold 0x7FFFFFFF - id, so among equal scores the smaller id has
the larger key. Comparing keys is then "higher score, then smaller id", exactly the
reference's order; tl.topk and tl.sort only return values, and the id rides along.
-0.0 is folded into +0.0 (they are equal scores). Non-finite scores become the largest
key, so they surface in the result and the launcher raises, as the reference does.

Precision: fp16/bf16 tiles go through the tensor cores with fp32 accumulation; fp32
tiles use input_precision="ieee" (no TF32), so scores match a float32 matmul. An int8
tile is converted exactly to the queries' dtype (or fp32) and the accumulator is then
multiplied by the row's scale. Under the Triton interpreter, bf16 dot operands are
upcast to fp32 because the interpreter stores bf16 as raw uint16 and its dot would
multiply the bit patterns (the GPU path keeps bf16 tensor cores; see DOT_DTYPE).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyrag.kernels._utils import check_device, is_interpreted, launch_options, next_pow2, num_sms

KEY_MIN = tl.constexpr(-(2**63))  # the empty slot: below every real key
KEY_MAX = tl.constexpr(2**63 - 1)  # a non-finite score: above every real key
MAX_K = 1024
MAX_ROWS = 2**31 - 1  # ids live in the low 31 bits of a key
# A split scans at least this many corpus rows: 32 tiles of 128, enough to amortise the
# warm-up tiles in which everything passes the threshold.
MIN_ROWS_PER_SPLIT = 4096
SPLIT_ALIGN = tl.constexpr(128)  # splits start on a multiple of every BLOCK_N
# Rows handled at once by the rare paths: [CHUNK_M, BLOCK_N] scores when appending
# candidates, [FLUSH_M, CAP] keys when merging. The bitonic network needs ~4x its input
# in registers: [8, 256] int64 (16 a thread at 4 warps) took 128 registers on sm_90,
# [2, 256] took 48. A Config may override both (the interpreter tests use tiny ones to
# run the row loops several times on small tiles).
APPEND_ELEMENTS = 1024
FLUSH_ELEMENTS = 512


@triton.jit
def _score_keys(scores, ids):
    """int64 keys ordering (score desc, id asc); see the module docstring."""
    s = tl.where(scores == 0.0, 0.0, scores)  # -0.0 ties with +0.0
    bits = s.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    keys = (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - ids).to(tl.int64)
    finite = tl.abs(s) < float("inf")  # False for NaN too
    return tl.where(finite, keys, KEY_MAX)


@triton.jit
def _key_scores(keys):
    """The scores of keys; -inf for the empty slot."""
    ordered = (keys >> 32).to(tl.int32)
    bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return tl.where(keys == KEY_MIN, float("-inf"), bits.to(tl.float32, bitcast=True))


@triton.jit
def _key_ids(keys):
    """The row ids of keys; -1 for the empty slot."""
    low = keys.to(tl.int32)  # keeps the low 32 bits
    return tl.where(keys == KEY_MIN, -1, (0x7FFFFFFF - low).to(tl.int64))


@triton.jit
def _merge_sorted(best, cand, KP: tl.constexpr):
    """Top-KP of the union of `best` (sorted descending along its last axis) and `cand`
    (any order, last axis >= KP), sorted descending."""
    top = tl.topk(cand, KP)
    # max(descending, ascending) is a bitonic sequence holding the KP largest of both.
    return tl.bitonic_merge(tl.maximum(best, tl.flip(top, 1)), 1, True)


@triton.jit
def _passes(scores, local, shared):
    """Which scores may still enter the top-k: above this program's k-th best `local`
    (strictly: every later id is larger than the ids it kept, so a tie loses) and at
    least the shared k-th `shared` (which may come from smaller ids, so a tie must
    pass). Non-finite scores always pass, to be reported."""
    return ((scores > local[:, None]) & (scores >= shared[:, None])) | ~(tl.abs(scores) < float("inf"))


@triton.jit
def _local_threshold(BEST, slot, ok, k, KP: tl.constexpr):
    """The k-th best score of each slot's top-KP list; -inf while it holds fewer."""
    return _key_scores(tl.load(BEST + slot * KP + k - 1, mask=ok, other=KEY_MIN))


@triton.jit
def _append_candidates(
    TILE,
    BEST,
    BUF,
    CNT,
    THR,
    row0,
    split,
    n_splits,
    B,
    k,
    start,
    hi,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TILE_W: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    CHUNK_M: tl.constexpr,
):
    """Append the scores of the tile in TILE that pass the thresholds to their rows'
    candidate buffers, as keys. Returns the fullest buffer's count.

    The rare path, so it works on CHUNK_M rows at a time through L2 rather than on the
    whole tile in registers: compacting a [64, 128] tile in place took ~250 registers.
    """
    tl.debug_barrier()  # the tile stores of every thread are visible
    cols = start + tl.arange(0, BLOCK_N)
    fill = 0
    for r in tl.range(0, tl.minimum(BLOCK_M, B - row0), CHUNK_M, num_stages=1):
        rows = row0 + r + tl.arange(0, CHUNK_M)
        ok = rows < B
        slot = rows.to(tl.int64) * n_splits + split
        scores = tl.load(TILE + slot[:, None] * TILE_W + tl.arange(0, BLOCK_N)[None, :], mask=ok[:, None], other=0.0)
        shared = tl.load(THR + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
        passed = _passes(scores, _local_threshold(BEST, slot, ok, k, KP), shared)
        passed = passed & ok[:, None] & (cols < hi)[None, :]
        count = tl.load(CNT + slot, mask=ok, other=0)
        pos = count[:, None] + tl.cumsum(passed.to(tl.int32), axis=1) - 1
        tl.store(BUF + slot[:, None] * CAP + pos, _score_keys(scores, cols[None, :]), mask=passed)
        count += tl.sum(passed.to(tl.int32), axis=1)
        tl.store(CNT + slot, count, mask=ok)
        fill = tl.maximum(fill, tl.max(count))
    tl.debug_barrier()  # every thread is done reading TILE before the next tile overwrites it
    return fill


@triton.jit
def _flush(
    BEST,
    BUF,
    CNT,
    THR,
    row0,
    split,
    n_splits,
    B,
    k,
    BLOCK_M: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    FLUSH_M: tl.constexpr,
):
    """Merge each row's candidate buffer into its sorted top-KP, empty the buffer, and
    return the new local thresholds [BLOCK_M], after publishing them to THR (atomic max:
    any program's k-th best is a lower bound of the final k-th best).

    Works on FLUSH_M rows at a time so that the [FLUSH_M, CAP] sort stays in registers.
    """
    tl.debug_barrier()  # every thread's buffer stores are visible
    for r in tl.range(0, tl.minimum(BLOCK_M, B - row0), FLUSH_M, num_stages=1):
        rows = row0 + r + tl.arange(0, FLUSH_M)
        ok = rows < B
        slot = rows.to(tl.int64) * n_splits + split
        buf_ptrs = BUF + slot[:, None] * CAP + tl.arange(0, CAP)[None, :]
        best_ptrs = BEST + slot[:, None] * KP + tl.arange(0, KP)[None, :]
        cand = tl.load(buf_ptrs, mask=ok[:, None], other=KEY_MIN)
        best = tl.load(best_ptrs, mask=ok[:, None], other=KEY_MIN)
        tl.store(best_ptrs, _merge_sorted(best, cand, KP), mask=ok[:, None])
        tl.store(buf_ptrs, tl.full([FLUSH_M, CAP], KEY_MIN, tl.int64), mask=ok[:, None])
        tl.store(CNT + slot, tl.zeros([FLUSH_M], tl.int32), mask=ok)
    tl.debug_barrier()  # the new top lists are visible to the threads reading the k-th
    rows = row0 + tl.arange(0, BLOCK_M)
    ok = rows < B
    kth = _local_threshold(BEST, rows.to(tl.int64) * n_splits + split, ok, k, KP)
    tl.atomic_max(THR + rows, kth, mask=ok & (kth > float("-inf")), sem="relaxed")
    return kth


@triton.jit
def _topk_scan_kernel(
    Q,
    X,
    SCALES,
    BEST,
    BUF,
    CNT,
    TILE,
    THR,
    B,
    N,
    d,
    k,
    stride_qb,
    stride_xn,
    B_BUCKET,  # only an autotuning key: B rounded up to a power of two
    HAS_SCALES: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KP: tl.constexpr,
    CAP: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    APPEND_ELEMENTS: tl.constexpr = APPEND_ELEMENTS,
    FLUSH_ELEMENTS: tl.constexpr = FLUSH_ELEMENTS,
):
    # Scratch, indexed by slot = query row * n_splits + split: BEST [slot, KP] the
    # sorted top-KP keys, BUF [slot, CAP] unsorted candidate keys, CNT [slot] how many,
    # TILE [slot, TILE_W] one tile row of scores. THR [B]: the shared k-th best.
    CHUNK_M: tl.constexpr = max(1, min(BLOCK_M, APPEND_ELEMENTS // BLOCK_N))
    FLUSH_M: tl.constexpr = max(1, min(BLOCK_M, FLUSH_ELEMENTS // CAP))
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    slot = rows.to(tl.int64) * n_splits + split
    # Whole tiles per split (of the widest BLOCK_N); trailing splits may be empty.
    rows_per_split = tl.cdiv(tl.cdiv(N, n_splits), SPLIT_ALIGN) * SPLIT_ALIGN
    lo = split * rows_per_split
    hi = tl.minimum(lo + rows_per_split, N)

    # Empty top-KP lists and candidate buffers.
    for r in tl.range(0, tl.minimum(BLOCK_M, B - row0), FLUSH_M, num_stages=1):
        init_rows = row0 + r + tl.arange(0, FLUSH_M)
        init_slot = (init_rows.to(tl.int64) * n_splits + split)[:, None]
        init_ok = (init_rows < B)[:, None]
        tl.store(
            BEST + init_slot * KP + tl.arange(0, KP)[None, :], tl.full([FLUSH_M, KP], KEY_MIN, tl.int64), mask=init_ok
        )
        tl.store(
            BUF + init_slot * CAP + tl.arange(0, CAP)[None, :], tl.full([FLUSH_M, CAP], KEY_MIN, tl.int64), mask=init_ok
        )
    tl.store(CNT + slot, tl.zeros([BLOCK_M], tl.int32), mask=row_ok)

    threshold = tl.full([BLOCK_M], float("-inf"), tl.float32)  # this program's k-th best
    fill = 0  # the fullest candidate buffer
    offs_k = tl.arange(0, BLOCK_K)
    q_ptrs = Q + rows.to(tl.int64)[:, None] * stride_qb + offs_k[None, :]

    # One extra step past the last tile (all columns masked, nothing loaded) does the
    # final merge, so the sorting network is inlined once: two copies doubled the
    # compile time.
    for start in range(lo, hi + BLOCK_N, BLOCK_N):
        if (fill > CAP - BLOCK_N) | ((start >= hi) & (fill > 0)):  # no room for a tile, or done
            threshold = _flush(BEST, BUF, CNT, THR, row0, split, n_splits, B, k, BLOCK_M, KP, CAP, FLUSH_M)
            fill = 0

        # The best k-th score any program has published: a lower bound of the final
        # k-th score. Read through L2 (.cg) to see other SMs' updates; staleness only
        # lets more candidates through.
        shared = tl.load(THR + rows, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        # int64 offsets: N * d passes 2**31 for N = 10M, d = 768.
        x_ptrs = X + cols.to(tl.int64)[:, None] * stride_xn + offs_k[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for kk in range(0, d, BLOCK_K):
            k_ok = (kk + offs_k) < d
            q = tl.load(q_ptrs + kk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptrs + kk, mask=col_ok[:, None] & k_ok[None, :], other=0)
            acc = tl.dot(q.to(DOT_DTYPE), tl.trans(x.to(DOT_DTYPE)), acc, input_precision=DOT_PRECISION)
        if HAS_SCALES:
            acc = acc * tl.load(SCALES + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]

        # The steady state: one compare per score, and nothing passes.
        passed = _passes(acc, threshold, shared) & row_ok[:, None] & col_ok[None, :]
        if tl.max(tl.max(passed.to(tl.int32), axis=1), axis=0) > 0:
            tl.store(TILE + slot[:, None] * TILE_W + tl.arange(0, BLOCK_N)[None, :], acc, mask=row_ok[:, None])
            fill = _append_candidates(
                TILE,
                BEST,
                BUF,
                CNT,
                THR,
                row0,
                split,
                n_splits,
                B,
                k,
                start,
                hi,
                BLOCK_M,
                BLOCK_N,
                TILE_W,
                KP,
                CAP,
                CHUNK_M,
            )


@triton.jit
def _topk_merge_kernel(BEST, THR, SCORES, IDS, n_keys, k, KP: tl.constexpr, CHUNK: tl.constexpr):
    """Row b's top-k over its splits' top-KP lists, decoded into (score, id)."""
    b = tl.program_id(0)
    # Keys scoring below the final shared k-th best cannot be in the top-k: chunks
    # entirely below it (most of them, with hundreds of splits) skip the sort.
    thr = tl.load(THR + b)
    floor = tl.where(thr > float("-inf"), _score_keys(thr, tl.full([], 0x7FFFFFFF, tl.int32)), KEY_MIN)
    best = tl.full([1, KP], KEY_MIN, tl.int64)
    for c in range(0, n_keys, CHUNK):
        offs = c + tl.arange(0, CHUNK)
        cand = tl.load(BEST + b.to(tl.int64) * n_keys + offs, mask=offs < n_keys, other=KEY_MIN)
        if tl.max(cand, axis=0) >= floor:
            best = _merge_sorted(best, cand[None, :], KP)
    offs = tl.arange(0, KP)[None, :]
    out = b.to(tl.int64) * k + offs
    tl.store(SCORES + out, _key_scores(best), mask=offs < k)
    tl.store(IDS + out, _key_ids(best), mask=offs < k)


# Without .maxnreg, ptxas (with the --regAllocOptLevel=2 Triton passes) aimed some 4-warp
# kernels at 168 registers, three CTAs an SM, and spilled; an explicit cap of 255 lets it
# allocate what the kernel needs (210-250, no spills).
MAX_REGISTERS = 255


def _configs(shapes) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": kk}, num_warps=w, num_stages=s, maxnreg=MAX_REGISTERS)
        for m, n, kk, w, s in shapes
    ]


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), all spill-free on sm_80 and sm_90
# (python -m pyrag.gpu_report). Tensor-core tiles (fp16, bf16, int8 corpora): BLOCK_M=16
# is tl.dot's minimum and the memory-bound choice for a handful of queries; 64 and 128
# rows reuse each corpus tile across more queries (BLOCK_M flop per corpus byte at fp16).
# 16 warps capped registers at 128 and spilled; BM=128 x BN=64 at 8 warps hit 255.
CONFIGS = _configs(
    [
        (16, 128, 64, 4, 4),
        (16, 64, 128, 4, 4),
        (32, 128, 64, 8, 4),
        (64, 64, 64, 8, 3),
        (64, 128, 64, 8, 3),
        (128, 32, 64, 8, 3),
    ]
)
# fp32 without TF32 runs on the CUDA cores, whose dot took 255 registers at every tile
# size tried (16..64 x 32..64 x 16..32); only this one is spill-free on both archs. fp32
# corpora are the slow path: use fp16/bf16/int8 for speed.
FP32_CONFIGS = _configs(
    [
        (16, 64, 16, 4, 3),
    ]
)


def _prune_configs(configs, named_args, **kwargs):
    family = FP32_CONFIGS if kwargs["DOT_DTYPE"] == tl.float32 else CONFIGS
    # More query rows per program than the batch has only wastes dot work.
    kept = [c for c in family if c.kwargs["BLOCK_M"] <= max(16, named_args["B_BUCKET"])]
    return kept or family[:1]


_topk_scan_autotuned = triton.autotune(
    CONFIGS + FP32_CONFIGS,
    key=["B_BUCKET", "d", "KP"],
    prune_configs_by={"early_config_prune": _prune_configs},
    restore_value=["THR"],  # benchmark runs must not see thresholds raised by earlier ones
)(_topk_scan_kernel)


def dot_dtype(queries: torch.dtype, corpus: torch.dtype, interpreted: bool):
    """The dtype both tiles are converted to before tl.dot, and its input precision.

    Same 16-bit dtype on both sides (or an int8 corpus with 16-bit queries, which
    converts exactly): the tensor cores. Anything else: fp32 without TF32."""
    half = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
    if queries in half and (corpus == queries or corpus == torch.int8):
        if not (interpreted and queries == torch.bfloat16):
            return half[queries], "ieee"
    return tl.float32, "ieee"


def _splits(b: int, n: int, block_m: int, target: int) -> int:
    """Corpus splits for BLOCK_M: about `target` programs in all, so that every SM has
    work even for B = 1, but each split scans at least MIN_ROWS_PER_SPLIT rows."""
    return max(1, min(triton.cdiv(target, triton.cdiv(b, block_m)), triton.cdiv(n, MIN_ROWS_PER_SPLIT)))


def topk_scores(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    scales: torch.Tensor | None = None,
    *,
    config: triton.Config | None = None,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, k] float32, ids [B, k] int64), the reference's semantics.

    config: run this configuration instead of autotuning (the interpreter always runs
    one: the first of its dtype's family unless given). num_splits: corpus splits
    instead of the occupancy heuristic. Both exist for tests and benchmarks.
    """
    interpreted = is_interpreted(_topk_scan_kernel)
    check_device(queries, corpus, scales, interpreted=interpreted)
    _check_args(queries, corpus, k, scales)
    b, d = queries.shape
    n = corpus.shape[0]
    scores = torch.full((b, k), float("-inf"), dtype=torch.float32, device=queries.device)
    ids = torch.full((b, k), -1, dtype=torch.int64, device=queries.device)
    if b == 0 or n == 0:
        return scores, ids

    q = queries if queries.stride(1) == 1 else queries.contiguous()
    x = corpus if corpus.stride(1) == 1 else corpus.contiguous()
    kp = max(16, next_pow2(min(k, n)))  # never keep more than N; 16 limits recompiles
    dtype, precision = dot_dtype(q.dtype, x.dtype, interpreted)
    family = FP32_CONFIGS if dtype == tl.float32 else CONFIGS
    if interpreted and config is None:
        config = family[0]
    candidates = [config] if config is not None else family
    # Scratch is sized before autotuning picks a config: for the most splits (the
    # largest BLOCK_M), the widest tile and room for two tiles of candidates.
    target = 4 if interpreted else 4 * num_sms(q.device.index or 0)
    splits_of = {c.kwargs["BLOCK_M"]: num_splits or _splits(b, n, c.kwargs["BLOCK_M"], target) for c in candidates}
    max_splits = max(splits_of.values())
    tile_w = max(c.kwargs["BLOCK_N"] for c in candidates)
    cap = max(kp, 2 * tile_w)
    best = torch.empty((b, max_splits, kp), dtype=torch.int64, device=q.device)
    buf = torch.empty((b, max_splits, cap), dtype=torch.int64, device=q.device)
    cnt = torch.empty((b, max_splits), dtype=torch.int32, device=q.device)
    tile = torch.empty((b, max_splits, tile_w), dtype=torch.float32, device=q.device)
    thr = torch.full((b,), float("-inf"), dtype=torch.float32, device=q.device)

    # The threshold is the min(k, KP)-th best: when k > KP the corpus has <= KP rows.
    args = (
        q,
        x,
        scales if scales is not None else q,
        best,
        buf,
        cnt,
        tile,
        thr,
        b,
        n,
        d,
        min(k, kp),
        q.stride(0),
        x.stride(0),
        min(next_pow2(b), 256),
    )
    meta = dict(HAS_SCALES=scales is not None, DOT_DTYPE=dtype, DOT_PRECISION=precision, KP=kp, CAP=cap, TILE_W=tile_w)
    grid = lambda m: (triton.cdiv(b, m["BLOCK_M"]), splits_of[m["BLOCK_M"]])  # noqa: E731
    if config is not None:
        _topk_scan_kernel[grid(config.kwargs)](*args, **meta, **config.all_kwargs(), **launch_options())
    else:
        _topk_scan_autotuned[grid](*args, **meta, **launch_options())
        config = _topk_scan_autotuned.best_config

    n_keys = splits_of[config.kwargs["BLOCK_M"]] * kp  # the slots the scan used: a prefix
    _topk_merge_kernel[(b,)](
        best,
        thr,
        scores,
        ids,
        n_keys,
        k,
        KP=kp,
        CHUNK=min(max(kp, 1024), next_pow2(n_keys)),
        num_warps=4,
        maxnreg=MAX_REGISTERS,
        **launch_options(),
    )
    if not bool(torch.isfinite(scores[:, : min(k, n)]).all()):
        raise ValueError("topk_scores: a score is NaN or Inf")
    return scores, ids


def _check_args(queries, corpus, k, scales) -> None:
    if queries.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"backend='triton' takes float32, float16 or bfloat16 queries, got {queries.dtype}")
    if corpus.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.int8):
        raise TypeError(f"backend='triton' scans float32, float16, bfloat16 or int8 corpora, got {corpus.dtype}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"backend='triton' supports k from 1 to {MAX_K}, got {k}")
    n = corpus.shape[0]
    if n > MAX_ROWS:
        raise ValueError(f"backend='triton' scans at most {MAX_ROWS} corpus rows, got {n}")
    if scales is not None and (tuple(scales.shape) != (n,) or not scales.is_floating_point()):
        raise ValueError(f"scales must be a float tensor of shape [{n}], got {scales.dtype} {tuple(scales.shape)}")
