"""The machine's physical floor for a top-k search, from two rates measured now.

    floor(case) = max(corpus bytes / read bandwidth, 2·B·N·d / fp32 GEMM rate)

A search must read the whole corpus once and do 2·B·N·d flops; it can do neither
faster than a streaming read or a large GEMM on the same threads. Both rates are
best-of-several, on the thread count of the case, measured in the same run as the
timings they are compared with (the machine is shared, so rates drift between runs).

    python benchmarks/floor.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from read_probe import read_probe


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first touch, thread pool start
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class _threads:
    """torch's intra-op thread count set to n inside the block."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def measure_read_bandwidth(threads: int = 2, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Streaming read bandwidth in bytes/s: the best of several reads of a buffer.

    The probes read each byte once with almost no arithmetic, on a 1 GiB buffer (32x
    this machine's 32 MiB L3), so they run at the memory's read speed: pyrag's
    read probe (read_probe.c: one contiguous slice per thread, XOR of 64-bit words) and torch's sum
    and max. torch's reductions alone under-read this machine: in one run they
    measured 23 GB/s while a B=1 DenseIndex search streamed its 1.5 GB at 42 GB/s,
    and a floor that a kernel can beat is no floor.
    """
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    with _threads(threads):
        best = min(
            _best_time(lambda: read_probe(x.data_ptr(), x.numel() * 4, threads), repeats),
            _best_time(lambda: x.sum(), repeats),
            _best_time(lambda: x.amax(), repeats),
        )
    return x.numel() * 4 / best


def read_searches(x: torch.Tensor, threads: int) -> dict:
    """Search-shaped callables (queries and k ignored) that each stream x's bytes once:
    pyrag's read probe and torch's sum, to time beside the searches over the same x."""
    x = x.contiguous()
    nbytes = x.numel() * x.element_size()
    return {
        "read probe": lambda queries, k: read_probe(x.data_ptr(), nbytes, threads),
        "torch sum": lambda queries, k: x.sum(),
    }


def measure_gemm_rate(threads: int = 2, size: int = 3072, repeats: int = 5) -> float:
    """fp32 GEMM rate in flop/s: torch.mm on square matrices large enough to be compute-bound."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    with _threads(threads):
        best = _best_time(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * size**3 / best


@dataclass(frozen=True)
class MachineRates:
    read_bytes_per_s: float
    gemm_flops_per_s: float
    threads: int

    def bandwidth_s(self, n: int, d: int, bytes_per_element: float = 4) -> float:
        return n * d * bytes_per_element / self.read_bytes_per_s

    def compute_s(self, n: int, d: int, b: int) -> float:
        return 2 * b * n * d / self.gemm_flops_per_s

    def floor_s(self, n: int, d: int, b: int, bytes_per_element: float = 4) -> float:
        """Seconds below which no search of B queries over an [N, d] corpus can run."""
        return max(self.bandwidth_s(n, d, bytes_per_element), self.compute_s(n, d, b))

    def bound(self, n: int, d: int, b: int, bytes_per_element: float = 4) -> str:
        """Which limit sets the floor: "bandwidth" or "compute"."""
        return "bandwidth" if self.bandwidth_s(n, d, bytes_per_element) >= self.compute_s(n, d, b) else "compute"

    def describe(self) -> str:
        return (
            f"read bandwidth {self.read_bytes_per_s / 1e9:.1f} GB/s, "
            f"fp32 GEMM {self.gemm_flops_per_s / 1e9:.1f} GFLOP/s, {self.threads} threads"
        )


def measure(threads: int = 2, nbytes: int = 1 << 30, gemm_size: int = 3072, repeats: int = 5) -> MachineRates:
    """Both rates, on `threads` threads."""
    return MachineRates(
        measure_read_bandwidth(threads, nbytes, repeats), measure_gemm_rate(threads, gemm_size, repeats), threads
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--bytes",
        type=int,
        default=1 << 30,
        help="read buffer size in bytes; keep it well above the last-level cache",
    )
    p.add_argument("--gemm-size", type=int, default=3072)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=384)
    args = p.parse_args(argv)
    rates = measure(args.threads, args.bytes, args.gemm_size)
    print(rates.describe())
    print(f"floor for N={args.n:,} d={args.d} fp32:")
    for b in (1, 16, 256, 1024):
        print(f"  B={b:<5} {rates.floor_s(args.n, args.d, b) * 1e3:9.2f} ms ({rates.bound(args.n, args.d, b)}-bound)")


if __name__ == "__main__":
    main()
