"""Ad-hoc timing for tuning the CPU kernels (issue 3). Not the benchmark suite: that is
benchmarks/bench_topk_scores.py. Interleaves the cases so load from other processes hits
them alike; prints best-of-reps times and ratios to the measured bandwidth floor.

    python benchmarks/dev_topk.py [--n 1000000] [--d 384] [--b 1,16,256] [--cases f32,f32p,bf16,int8]
                                  [--isa avx2] [--threads 1]

Names the CPU and the ISA path that ran; "cpu" is the process CPU time (what the cores
spent, steadier than wall time on a shared machine).
"""

import argparse
import time

import torch

import pyrag
from pyrag.index import packed as T


def packed(dtype, x):
    n, d = x.shape
    blocks = (n + 15) // 16
    data = torch.empty((blocks, T.block_bytes(dtype, d)), dtype=torch.uint8)
    scales = None
    if dtype == "float32":
        rows = x
    else:
        rows, sc, _, _ = T.encode_rows(dtype, x)
        if sc is not None:
            scales = torch.zeros(blocks * 16)
            scales[:n] = sc
    T.pack_rows(dtype, rows, data, 0)
    return T.PackedCorpus(dtype, d, data, n, scales)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--b", default="1,16,256")
    ap.add_argument("--cases", default="f32,f32p,bf16,int8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default="", help="CPU path to force (default: the best one)")
    a = ap.parse_args()
    from topk_cases import cpu_model, cpu_path

    from pyrag import _C

    _C.set_cpu_isa(a.isa)
    print(f"{cpu_model()}, {cpu_path()}, {a.threads} threads, N={a.n:,} d={a.d} k={a.k}")
    torch.set_num_threads(a.threads)
    pyrag.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.n, a.d)
    x /= x.norm(dim=1, keepdim=True)
    cases = a.cases.split(",")
    corp = {c: packed({"f32p": "float32", "bf16": "bfloat16", "int8": "int8"}[c], x) for c in cases if c != "f32"}
    for B in map(int, a.b.split(",")):
        q = torch.randn(B, a.d)
        fns = {"bw": lambda: x.sum()}
        for c in cases:
            if c == "f32":
                fns[c] = lambda q=q: pyrag.topk_scores(q, x, a.k, backend="cpu")
            else:
                fns[c] = lambda q=q, cc=corp[c]: T.search(q, cc, a.k)
        best = {name: float("inf") for name in fns}
        cpu = {name: float("inf") for name in fns}
        for _ in range(a.reps):
            for name, fn in fns.items():
                t, c0 = time.perf_counter(), time.process_time()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
                cpu[name] = min(cpu[name], time.process_time() - c0)
        floor = best["bw"]
        line = f"B={B:5d} bw-floor {floor * 1e3:6.1f} ms ({x.numel() * 4 / floor / 1e9:.1f} GB/s)"
        for c in cases:
            line += f" | {c} {best[c] * 1e3:6.1f} ms ({best[c] / floor:.2f}x"
            line += f", {best[c] / best['f32p']:.2f}x f32p)" if "f32p" in best and c != "f32p" else ")"
            line += f" cpu {cpu[c] * 1e3:.0f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    main()
