"""Ad-hoc scaling check for docs/cpu_kernel.md: how DenseIndex.search time grows with N
(100k to 2M) and with B (1 to 1024), per dtype, on `--threads` threads. Best of
`--reps`; prints time and time per row (per query-row for B) so a cache cliff would
show as a jump in the normalised column. --cpu-time measures CPU seconds of the
process instead of wall time: on a machine shared with other jobs that is what the
search costs, independent of how long the scheduler keeps the cores away.

    python benchmarks/dev_scaling.py [--dtypes float32,int8] [--reps 3] [--cpu-time]
"""

import argparse
import time

import torch

import pyrag

CLOCK = time.perf_counter


def best(fn, reps):
    out = float("inf")
    for _ in range(reps):
        t = CLOCK()
        fn()
        out = min(out, CLOCK() - t)
    return out


def build(dtype, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = pyrag.DenseIndex(d, dtype)
    for start in range(0, n, 1 << 18):
        x = torch.randn(min(1 << 18, n - start), d, generator=g)
        index.add(x / x.norm(dim=1, keepdim=True))
    return index


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default="", help="CPU path to force, e.g. avx2 (default: the best one)")
    ap.add_argument("--dtypes", default="float32,int8")
    ap.add_argument("--ns", default="100000,250000,500000,1000000,2000000")
    ap.add_argument("--bs", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--cpu-time", action="store_true")
    a = ap.parse_args()
    from topk_cases import cpu_model, cpu_path

    from pyrag import _C

    _C.set_cpu_isa(a.isa)
    print(f"{cpu_model()}, {cpu_path()}, {a.threads} threads", flush=True)
    if a.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    torch.set_num_threads(a.threads)
    pyrag.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(1024, a.d, generator=g)
    for dtype in a.dtypes.split(","):
        print(f"## {dtype}: time vs N (B=1 and B=16)")
        print("| N | B=1 ms | ns/row | B=16 ms | ns/(query*row) |")
        print("|---|---|---|---|---|")
        for n in map(int, a.ns.split(",")):
            index = build(dtype, n, a.d)
            t1 = best(lambda index=index: index.search(queries[:1], a.k), a.reps)
            t16 = best(lambda index=index: index.search(queries[:16], a.k), a.reps)
            print(
                f"| {n:,} | {t1 * 1e3:.1f} | {t1 / n * 1e9:.2f} | {t16 * 1e3:.1f} | {t16 / n / 16 * 1e9:.3f} |",
                flush=True,
            )
            if n == 1_000_000:
                keep = index
            del index
        print(f"## {dtype}: time vs B (N=1,000,000)")
        print("| B | ms | ms per query | ns/(query*row) |")
        print("|---|---|---|---|")
        for b in map(int, a.bs.split(",")):
            t = best(lambda keep=keep, b=b: keep.search(queries[:b], a.k), a.reps if b < 512 else 1)
            print(f"| {b} | {t * 1e3:.1f} | {t / b * 1e3:.2f} | {t / b / 1e6 * 1e9:.3f} |", flush=True)
        del keep


if __name__ == "__main__":
    main()
