"""Concurrent callers with and without pyrag.CoalescingSearcher, side by side in one run.

    python benchmarks/bench_concurrent.py [--n 1000000] [--d 384] [--k 10] [--callers 16]
        [--seconds 10] [--windows 0,5] [--repeats 3] [--threads 2]

`--callers` threads each issue B = 1 searches in a closed loop (the next query as soon as
the last result is back) over one float32 DenseIndex, for `--seconds`:

- direct: every thread calls index.search itself (each call scans the corpus);
- coalesced (one row per window_ms in --windows): every thread calls
  CoalescingSearcher.search, which scans the queued queries together.

Printed for each repeat: throughput (queries/s), median and p99 latency, the mean batch
and fused-scan time, and the ratios the issue's bar names: coalesced / direct throughput,
and median and p99 latency / one lone B = 1 search (timed on the idle index just before
and just after each closed loop; the shared machine drifts). A tiny-index run then shows
the Python-side cost per query that the searcher adds (checks, queueing, hand-offs
between threads under the GIL).

CPU ms/query is this process's CPU time (all threads) per query answered. On a shared
machine it is the fairer comparison: 16 direct searches run 16 x (kernel threads)
threads, which win a larger share of the cores from other jobs than one fused scan's
threads do, and that flatters direct's wall-clock throughput.

The CPU, the ISA path (pyrag.cpu_isa()), the kernel threads and the load average before
and after each repeat are printed with the figures: on a shared machine, read the spread
over repeats together with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Optional

import torch
from topk_cases import cpu_model

import pyrag


def build_index(n: int, d: int, seed: int = 0, chunk: int = 100_000) -> pyrag.DenseIndex:
    """n unit-norm random rows, added in chunks (peak memory ~ the index plus a chunk)."""
    index = pyrag.DenseIndex(d)
    index.reserve(n)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        x = torch.randn(min(chunk, n - start), d, generator=g)
        index.add(x / x.norm(dim=1, keepdim=True))
    return index


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def closed_loop(
    search: Callable[[torch.Tensor], object], queries: torch.Tensor, callers: int, seconds: float
) -> tuple[int, float, list[float], float]:
    """callers threads searching one query at a time until `seconds` have passed:
    (queries answered, wall seconds from the start to the last answer, latencies, CPU
    seconds the process spent meanwhile)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)
    deadline = [0.0]

    def caller(t: int) -> None:
        j = t
        start.wait()
        while time.perf_counter() < deadline[0]:
            q = queries[j % queries.shape[0]]
            t0 = time.perf_counter()
            search(q)
            latencies[t].append(time.perf_counter() - t0)
            j += callers

    pool = [threading.Thread(target=caller, args=(t,)) for t in range(callers)]
    for th in pool:
        th.start()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    deadline[0] = t0 + seconds
    start.wait()
    for th in pool:
        th.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    flat = [x for per in latencies for x in per]
    return len(flat), wall, flat, cpu


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(
    n: int = 1_000_000,
    d: int = 384,
    k: int = 10,
    callers: int = 16,
    seconds: float = 10.0,
    windows: tuple[float, ...] = (0.0, 5.0),
    repeats: int = 3,
    lone_reps: int = 8,
    max_batch: int = 64,
    index: Optional[pyrag.DenseIndex] = None,
) -> list[dict[str, float]]:
    print(
        f"CPU: {cpu_model()}; ISA path: {pyrag.cpu_isa()}; kernel threads: {pyrag.get_num_threads()}; "
        f"cores: {os.cpu_count()}"
    )
    print(f"index: {n:,} x {d} float32, k = {k}; {callers} callers, B = 1 each, {seconds:g} s per run")
    t = time.perf_counter()
    index = index if index is not None else build_index(n, d)
    print(f"built in {time.perf_counter() - t:.1f} s; load average {load()}")
    queries = build_index(1024, d, seed=1).vectors()
    batch = queries[:callers].contiguous()

    # The searcher answers exactly as the index does (tests/test_coalescing.py proves it
    # on integer data; here a spot check on the benchmark's own data).
    with pyrag.CoalescingSearcher(index) as s:
        for q in queries[:4]:
            got, want = s.search(q, k), index.search(q, k)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    rows = []
    for rep in range(repeats):
        load_before = load()
        fused = statistics.median(timed(lambda: index.search(batch, k), max(3, lone_reps // 2)))
        with pyrag.CoalescingSearcher(index) as s:
            lone_via = statistics.median(timed(lambda: s.search(queries[0], k), lone_reps))
            lone_plain = statistics.median(timed(lambda: index.search(queries[0], k), lone_reps))

        def measured(search: Callable[[torch.Tensor], object]) -> dict[str, float]:
            """The closed loop, with the lone B = 1 search that its latencies are compared
            with timed just before and just after it (the shared machine drifts)."""
            before = timed(lambda: index.search(queries[0], k), lone_reps)
            count, wall, lat, cpu = closed_loop(search, queries, callers, seconds)
            after = timed(lambda: index.search(queries[0], k), lone_reps)
            return {
                "qps": count / wall, "median": statistics.median(lat), "p99": percentile(lat, 99),
                "lone": statistics.median(before + after), "count": count, "cpu": cpu / count,
            }  # fmt: skip

        def coalesced(window: float) -> dict[str, float]:
            with pyrag.CoalescingSearcher(index, window_ms=window, max_batch=max_batch) as s:
                r = measured(lambda q: s.search(q, k))
                st = s.stats()
            return {**r, "batch": st["queries"] / st["scans"], "scan": st["scan_seconds"] / st["scans"]}

        # Alternate the order, so that neither side always runs first.
        if rep % 2 == 0:
            base = measured(lambda q: index.search(q, k))
            runs = {w: coalesced(w) for w in windows}
        else:
            runs = {w: coalesced(w) for w in windows}
            base = measured(lambda q: index.search(q, k))
        print(
            f"\nrepeat {rep + 1}/{repeats} (load {load_before} -> {load()}): lone B={callers} {fused * 1e3:.1f} ms "
            f"= {fused / lone_plain:.2f} x lone B=1 ({lone_plain * 1e3:.1f} ms); lone B=1 through the searcher "
            f"{lone_via * 1e3:.1f} ms ({lone_via / lone_plain:.3f} x)"
        )
        print(
            f"  {'mode':<18} {'lone ms':>7} {'queries/s':>9} {'median ms':>9} {'p99 ms':>8} {'batch':>6} "
            f"{'scan ms':>8} {'x direct qps':>12} {'median / lone':>13} {'p99 / lone':>10} {'CPU ms/query':>12}"
        )
        print(
            f"  {'direct':<18} {base['lone'] * 1e3:7.1f} {base['qps']:9.1f} {base['median'] * 1e3:9.1f} "
            f"{base['p99'] * 1e3:8.1f} {'':>6} {'':>8} {1.0:12.2f} {base['median'] / base['lone']:13.2f} "
            f"{base['p99'] / base['lone']:10.2f} {base['cpu'] * 1e3:12.1f}"
        )
        for w, r in runs.items():
            row = {
                "repeat": rep, "window_ms": w, "lone": r["lone"], "fused": fused, "lone_via": lone_via,
                "direct_qps": base["qps"], "direct_median": base["median"], "direct_p99": base["p99"],
                "qps": r["qps"], "median": r["median"], "p99": r["p99"], "batch": r["batch"], "scan": r["scan"],
                "speedup": r["qps"] / base["qps"], "median_ratio": r["median"] / r["lone"],
                "p99_ratio": r["p99"] / r["lone"], "cpu": r["cpu"], "direct_cpu": base["cpu"],
                "cpu_ratio": base["cpu"] / r["cpu"],
            }  # fmt: skip
            rows.append(row)
            print(
                f"  {f'coalesced {w:g} ms':<18} {r['lone'] * 1e3:7.1f} {r['qps']:9.1f} {r['median'] * 1e3:9.1f} "
                f"{r['p99'] * 1e3:8.1f} {r['batch']:6.1f} {r['scan'] * 1e3:8.1f} {row['speedup']:12.2f} "
                f"{row['median_ratio']:13.2f} {row['p99_ratio']:10.2f} {r['cpu'] * 1e3:12.1f}"
            )
    # Where the time goes besides the scan: the same callers over a tiny index, whose scan
    # costs microseconds, show the Python-side cost per query (checks, queueing, thread
    # hand-offs under the GIL) that the searcher adds.
    tiny = build_index(1000, d, seed=2)
    lone_tiny = statistics.median(timed(lambda: tiny.search(queries[0], k), 200))
    with pyrag.CoalescingSearcher(tiny) as s:
        lone_tiny_via = statistics.median(timed(lambda: s.search(queries[0], k), 200))
    count, wall, _, _ = closed_loop(lambda q: tiny.search(q, k), queries, callers, min(seconds, 2.0))
    direct_tiny = wall / count
    with pyrag.CoalescingSearcher(tiny, window_ms=0, max_batch=max_batch) as s:
        count, wall, _, _ = closed_loop(lambda q: s.search(q, k), queries, callers, min(seconds, 2.0))
        st = s.stats()
    print(
        f"\noverhead, over a 1,000-row index: lone B=1 {lone_tiny * 1e6:.0f} us, through the searcher "
        f"{lone_tiny_via * 1e6:.0f} us; {callers} callers direct "
        f"{direct_tiny * 1e6:.0f} us/query; coalesced {wall / count * 1e6:.0f} us/query "
        f"(mean batch {st['queries'] / st['scans']:.1f}, scan {st['scan_seconds'] / st['scans'] * 1e6:.0f} us)"
    )
    print("\nover the repeats (min / median / max); the bar: throughput >= 6 x direct, median <= 2.5 x lone B=1")
    for w in windows:
        mine = [r for r in rows if r["window_ms"] == w]
        for key, what in (
            ("speedup", "throughput x direct"),
            ("median_ratio", "median / lone"),
            ("p99_ratio", "p99 / lone"),
            ("cpu_ratio", "CPU per query: direct / coalesced"),
        ):
            vals = sorted(r[key] for r in mine)
            print(f"  window {w:g} ms  {what:<34} {vals[0]:.2f} / {statistics.median(vals):.2f} / {vals[-1]:.2f}")
    return rows


def main(argv: Optional[list[str]] = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--windows", default="0,5", help="window_ms values to run, comma-separated")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lone-reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: pyrag's)")
    a = ap.parse_args(argv)
    if a.threads is not None:
        pyrag.set_num_threads(a.threads)
    windows = tuple(float(w) for w in a.windows.split(","))
    return run(a.n, a.d, a.k, a.callers, a.seconds, windows, a.repeats, a.lone_reps, a.max_batch)


if __name__ == "__main__":
    main()
