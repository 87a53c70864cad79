"""Throughput of the x86 instruction sequences an int8 or bf16 kernel can be built from,
on one core, in multiply-accumulates per second: why the AVX2 int8 kernel uses vpmaddwd
and where its floor is (docs/cpu_kernel.md, "int8 without VNNI").

    python benchmarks/dev_ports.py [--reps 3]

Compiles a small C++ program (inline asm: 6 or 12 independent accumulator chains, no
memory traffic) with the system compiler and runs it. Each line is one sequence per 8
int32 lanes x 4 int8 products (32 MACs), or one ymm FMA (8 MACs) for fp32. Names the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topk_cases import cpu_model

SOURCE = r"""
#include <chrono>
#include <cstdio>
#define ITER 50000000L
#define S(x) #x
#define FMA(i) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" S(i) "\n"
// ymm13 / ymm14: corpus operands, ymm15: query, ymm12: ones; accumulators ymm0-5, temporaries ymm6-11
#define MADD2(a, t, u) "vpmaddwd %%ymm13, %%ymm15, %%ymm" S(t) "\n vpmaddwd %%ymm14, %%ymm15, %%ymm" S(u) "\n" \
  "vpaddd %%ymm" S(t) ", %%ymm" S(u) ", %%ymm" S(u) "\n vpaddd %%ymm" S(u) ", %%ymm" S(a) ", %%ymm" S(a) "\n"
#define SIGN(a, t) "vpsignb %%ymm13, %%ymm15, %%ymm" S(t) "\n vpmaddubsw %%ymm" S(t) ", %%ymm14, %%ymm" S(t) "\n" \
  "vpmaddwd %%ymm12, %%ymm" S(t) ", %%ymm" S(t) "\n vpaddd %%ymm" S(t) ", %%ymm" S(a) ", %%ymm" S(a) "\n"
#define UBS(a, t) "vpmaddubsw %%ymm15, %%ymm14, %%ymm" S(t) "\n vpmaddwd %%ymm12, %%ymm" S(t) ", %%ymm" S(t) "\n" \
  "vpaddd %%ymm" S(t) ", %%ymm" S(a) ", %%ymm" S(a) "\n"
template <class F> double secs(F f) {
  auto t = std::chrono::steady_clock::now(); f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
#define BENCH(name, body, macs) { double best = 1e9; for (int r = 0; r < REPS; ++r) \
  best = std::min(best, secs([] { for (long n = 0; n < ITER; ++n) __asm__ volatile(body ::: "memory"); })); \
  std::printf("%-48s %6.1f G MAC/s\n", name, ITER * (double)(macs) / best / 1e9); }
#include <algorithm>
int main() {
  BENCH("fp32: vfmadd231ps ymm (12 chains)",
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9) FMA(10) FMA(11), 12 * 8);
  BENCH("int8 exact: 2 vpmaddwd + 2 vpaddd",
        MADD2(0,6,7) MADD2(1,8,9) MADD2(2,10,11) MADD2(3,6,7) MADD2(4,8,9) MADD2(5,10,11), 6 * 32);
  BENCH("int8 exact: vpsignb + vpmaddubsw + vpmaddwd + vpaddd",
        SIGN(0,6) SIGN(1,7) SIGN(2,8) SIGN(3,9) SIGN(4,10) SIGN(5,11), 6 * 32);
  BENCH("int8 saturating: vpmaddubsw + vpmaddwd + vpaddd",
        UBS(0,6) UBS(1,7) UBS(2,8) UBS(3,9) UBS(4,10) UBS(5,11), 6 * 32);
}
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "ports.cpp", Path(tmp) / "ports"
        src.write_text(SOURCE)
        subprocess.run(["c++", "-O2", "-mavx2", f"-DREPS={args.reps}", str(src), "-o", str(exe)], check=True)
        print(f"{cpu_model()}, one core, best of {args.reps}")
        sys.stdout.flush()
        subprocess.run([str(exe)], check=True)


if __name__ == "__main__":
    main()
