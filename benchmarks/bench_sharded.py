"""The cost of sharding on one machine: a ShardedIndex over 2 processes x 1 thread
against one DenseIndex in 1 process x 2 threads, over the same corpus and queries.

    python benchmarks/bench_sharded.py                       # N = 2M, d = 384, B = 16 and 256, k = 10
    python benchmarks/bench_sharded.py --n 200000 --pairs 5   # a quick look

Two ranks start (gloo on loopback). Each generates its half of the rows chunk by chunk
from per-chunk seeds (nothing is sent), and rank 0 also builds the single index of the
whole corpus from the same chunks. Then pairs of searches, one of each configuration,
their order alternating: the single index searched by rank 0 with 2 kernel threads
while rank 1 waits in a blocking barrier (its CPU time meanwhile is printed: ~0), and the
sharded search with 1 thread on each rank, each rank asking B / 2 of the queries. The
overhead is the sharded time over the single time, per pair; the script prints every
pair's ratio, their median, quartiles and range, the CPU and the ISA path, and checks
first that both configurations return the same ids. The machine should be quiet: the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from topk_cases import cpu_model

import pyrag
from pyrag.distributed import ShardedIndex

CHUNK = 1 << 16


def chunk_rows(c: int, n: int, dim: int) -> torch.Tensor:
    rows = min(CHUNK, n - c * CHUNK)
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(1000 + c))


def rank_main(rank: int, args: argparse.Namespace, init: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init}", rank=rank, world_size=2, timeout=timedelta(seconds=1800)
    )
    chunks = -(-args.n // CHUNK)
    lo, hi = rank * args.n // 2, (rank + 1) * args.n // 2  # this rank's rows: half of them
    queries = torch.randn(max(args.batch), args.dim, generator=torch.Generator().manual_seed(7))
    for dtype in args.dtypes:
        t0 = time.perf_counter()
        part = pyrag.DenseIndex(args.dim, dtype, keep_originals=False)
        part.reserve(hi - lo)
        single = None
        if rank == 0:
            single = pyrag.DenseIndex(args.dim, dtype, keep_originals=False)
            single.reserve(args.n)
        pyrag.set_num_threads(1)
        for c in range(chunks):
            a, b = max(lo, c * CHUNK), min(hi, (c + 1) * CHUNK)
            if single is not None or a < b:
                x = chunk_rows(c, args.n, args.dim)
                if single is not None:
                    single.add(x)
                if a < b:  # under the ids the single index gives these rows
                    part.add(x[a - c * CHUNK : b - c * CHUNK], torch.arange(a, b))
        sharded = ShardedIndex.from_shard(part)
        build_s = time.perf_counter() - t0
        if rank == 0:
            print(
                f"\n{dtype}: built in {build_s:.0f} s ({len(sharded)} rows, {sharded.local_len} on rank 0)", flush=True
            )
        for b in args.batch:
            q = queries[:b]
            mine_q = q[rank * b // 2 : (rank + 1) * b // 2]
            # The same answers first: rank 0 compares both ranks' ids with the single index's.
            _, ids = sharded.search(mine_q, args.k)
            padded = torch.full((b - b // 2, args.k), -2, dtype=torch.int64)
            padded[: ids.shape[0]] = ids
            both = [torch.empty_like(padded) for _ in range(2)]
            dist.all_gather(both, padded)
            if single is not None:
                got = torch.cat([both[0][: b // 2], both[1][: b - b // 2]])
                assert torch.equal(got, single.search(q, args.k)[1]), "the sharded and single indexes disagree"
            ratios, singles, shardeds, idle_cpu = [], [], [], []
            sharded.search(mine_q, args.k)  # warm the exchange
            for i in range(args.pairs):
                a = s = 0.0
                # One search of each configuration, their order alternating from pair to
                # pair, so that a change in the machine's load falls on both alike.
                for config in ("single", "sharded") if i % 2 == 0 else ("sharded", "single"):
                    if config == "single":  # 1 process x 2 threads; rank 1 blocks in the barrier
                        dist.barrier()
                        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                        if single is not None:
                            pyrag.set_num_threads(2)
                            t = time.perf_counter()
                            single.search(q, args.k)
                            a = time.perf_counter() - t
                        dist.barrier()
                        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                        if rank == 1:
                            idle_cpu.append(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
                    else:  # 2 processes x 1 thread
                        pyrag.set_num_threads(1)
                        dist.barrier()
                        t = time.perf_counter()
                        sharded.search(mine_q, args.k)
                        s = time.perf_counter() - t
                if single is not None:
                    singles.append(a)
                    shardeds.append(s)
                    ratios.append(s / a)
            spent = gather_float(statistics.fmean(idle_cpu) if idle_cpu else 0.0)
            if rank == 0:
                print(
                    f"  B={b:4d} k={args.k}: 1x2 {statistics.median(singles) * 1e3:8.1f} ms  "
                    f"2x1 {statistics.median(shardeds) * 1e3:8.1f} ms  overhead x{statistics.median(ratios):.3f} "
                    f"(pairs {min(ratios):.3f} .. {max(ratios):.3f}, quartiles {quartiles(ratios)}: "
                    f"{' '.join(f'{r:.3f}' for r in ratios)})  rank 1 CPU while waiting {spent[1] * 1e3:.0f} ms/search",
                    flush=True,
                )
        del sharded, part, single
    dist.barrier()
    dist.destroy_process_group()


def quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f} .. {q3:.3f}"


def gather_float(v: float) -> list[float]:
    t = torch.tensor([v], dtype=torch.float64)
    parts = [torch.empty_like(t) for _ in range(2)]
    dist.all_gather(parts, t)
    return [float(p) for p in parts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    ap.add_argument("--pairs", type=int, default=15)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); ISA path: {pyrag.cpu_isa()}; torch {torch.__version__}")
    print(f"N={args.n} d={args.dim} k={args.k}; {args.pairs} pairs of searches (one of each configuration)")
    print(f"load average before: {os.getloadavg()}", flush=True)
    init = f"/tmp/pyrag-bench-sharded-{os.getpid()}"
    try:
        mp.start_processes(rank_main, args=(args, init), nprocs=2, start_method="spawn")
    finally:
        if os.path.exists(init):
            os.unlink(init)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
