"""Ad-hoc check of issue 3's bar table (the benchmark suite, benchmarks/bench_topk_scores.py,
is the reference measurement). Everything is measured side by side in one process, with
the cases interleaved and best-of-reps, on `--threads` threads:

    python benchmarks/dev_bar.py [--n 1000000] [--d 384] [--reps 5] [--memory]

Prints the floor (read bandwidth from torch.sum over the corpus, fp32 GEMM rate from
torch.mm), every case's time, its ratio to the floor and to fp32, and with --memory the
peak RSS growth of a B=1024 search per dtype (VmHWM, reset through /proc/self/clear_refs).
"""

import argparse
import time

import torch

import pyrag


def best_of(fns, reps):
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def rss_peak_growth(fn):
    """Peak resident-memory growth (bytes) while fn runs."""

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default="", help="CPU path to force, e.g. avx2 (default: the best one)")
    ap.add_argument("--memory", action="store_true")
    a = ap.parse_args()
    from topk_cases import cpu_model, cpu_path

    from pyrag import _C

    _C.set_cpu_isa(a.isa)
    print(f"{cpu_model()}, {cpu_path()}, {a.threads} threads", flush=True)
    torch.set_num_threads(a.threads)
    pyrag.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.n, a.d, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    index = {}
    for dtype in ("float32", "bfloat16", "int8"):
        t = time.perf_counter()
        index[dtype] = pyrag.DenseIndex(a.d, dtype)
        for part in torch.split(x, 1 << 18):
            index[dtype].add(part)
        print(f"built {dtype} index in {time.perf_counter() - t:.1f} s", flush=True)

    gemm_q = torch.randn(256, a.d, generator=g)
    gemm_x = x[:100_000]
    rates = best_of({"bw": lambda: x.sum(), "gemm": lambda: gemm_q @ gemm_x.T}, a.reps)
    bandwidth = x.numel() * 4 / rates["bw"]
    gemm = 2 * 256 * gemm_x.shape[0] * a.d / rates["gemm"]
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s, fp32 GEMM {gemm / 1e9:.1f} GFLOP/s")

    for B in (1, 16, 256):
        q = torch.randn(B, a.d, generator=g)
        q /= q.norm(dim=1, keepdim=True)
        fns = {
            "bw": lambda: x.sum(),
            "fp32 plain": lambda q=q: pyrag.topk_scores(q, x, a.k),
            "fp32": lambda q=q: index["float32"].search(q, a.k),
            "bf16": lambda q=q: index["bfloat16"].search(q, a.k),
            "int8": lambda q=q: index["int8"].search(q, a.k),
        }
        if B == 16:
            fns["bf16 exact"] = lambda q=q: index["bfloat16"].search(q, a.k, exact=True)
            fns["int8 exact"] = lambda q=q: index["int8"].search(q, a.k, exact=True)
        t = best_of(fns, a.reps)
        floor = max(t["bw"], 2 * B * a.n * a.d / gemm)
        print(
            f"B={B}: floor {floor * 1e3:.1f} ms (bandwidth part {t['bw'] * 1e3:.1f} ms, "
            f"GEMM part {2 * B * a.n * a.d / gemm * 1e3:.1f} ms)"
        )
        for name, sec in t.items():
            if name == "bw":
                continue
            print(
                f"  {name:11s} {sec * 1e3:8.1f} ms  {sec / floor:5.2f}x floor  {sec / t['fp32']:5.2f}x fp32", flush=True
            )
    if a.memory:
        q = torch.randn(1024, a.d, generator=g)
        for dtype, ix in index.items():
            for exact in (False, True) if dtype != "float32" else (False,):
                grow = rss_peak_growth(lambda ix=ix, exact=exact: ix.search(q, a.k, exact=exact))
                print(f"memory growth, B=1024, {dtype}{' exact' if exact else ''}: {grow / 2**20:.1f} MiB")
        grow = rss_peak_growth(lambda q=q: pyrag.topk_scores(q, x, a.k))
        print(f"memory growth, B=1024, fp32 plain: {grow / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
