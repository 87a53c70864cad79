"""In-cache throughput of the scan kernels, one thread: compares tiles and ISA paths
without DRAM in the way (issue 17's AVX2 tuning).

    python benchmarks/dev_kernels.py [--isa avx2] [--n 8192] [--b 16,256] [--reps 15]

N rows (8192 x 384 float32 = 12 MiB) fit in L3 (on a quiet machine: other jobs sharing the L3
can push them out, then B=1 shows the read rate); each case is timed as process CPU
time, best of --reps, so time the scheduler gave to other processes on a shared machine
does not count. Prints fp32 GFLOP/s and bf16 / int8 time as a multiple of fp32's, and
names the CPU and the path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pyrag
from pyrag import _C
from pyrag.index import packed as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topk_cases import cpu_model, cpu_path, parse_ints


def packed(dtype: str, x: torch.Tensor):
    n, d = x.shape
    blocks = -(-n // 16)
    data = torch.empty((blocks, T.block_bytes(dtype, d)), dtype=torch.uint8)
    rows, scales = x, None
    if dtype != "float32":
        rows, sc, _, _ = T.encode_rows(dtype, x)
        if sc is not None:
            scales = torch.zeros(blocks * 16)
            scales[:n] = sc
    T.pack_rows(dtype, rows, data, 0)
    return T.PackedCorpus(dtype, d, data, n, scales)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", default="", help="CPU path to force (default: the best one)")
    p.add_argument("--n", type=lambda s: parse_ints(s)[0], default=8192)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--b", type=parse_ints, default=(16, 256))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args(argv)
    _C.set_cpu_isa(a.isa)
    torch.set_num_threads(1)
    pyrag.set_num_threads(1)
    print(f"{cpu_model()}, {cpu_path()}, 1 thread, N={a.n:,} d={a.d} k={a.k}, CPU time, best of {a.reps}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.n, a.d, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    corpora = {dtype: packed(dtype, x) for dtype in ("float32", "bfloat16", "int8")}
    for b in a.b:
        q = torch.randn(b, a.d, generator=g)
        best = {dtype: float("inf") for dtype in corpora}
        for _ in range(a.reps):
            for dtype, corpus in corpora.items():
                t = time.process_time()
                T.search(q, corpus, a.k)
                best[dtype] = min(best[dtype], time.process_time() - t)
        f = best["float32"]
        print(
            f"B={b:<4} fp32 {f * 1e3:7.2f} ms ({2 * b * a.n * a.d / f / 1e9:5.1f} GFLOP/s) | "
            f"bf16 {best['bfloat16'] * 1e3:7.2f} ms ({best['bfloat16'] / f:.2f}x) | "
            f"int8 {best['int8'] * 1e3:7.2f} ms ({best['int8'] / f:.2f}x)",
            flush=True,
        )
    _C.set_cpu_isa("")


if __name__ == "__main__":
    main()
