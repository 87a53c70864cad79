"""The part of a default-recipe LSR step whose cost grows with the corpus: one exact search
of a batch of 16 query embeddings at depth TrainConfig().k in a float32 DenseIndex of N
rows, and the index.get of the distinct hits (what pyrag.train.modes.candidates does).

    python benchmarks/step_search_scaling.py                     # N = 20k, 50k, 100k, 1M; d = 384
    python benchmarks/step_search_scaling.py --sizes 20000,100000

Random unit vectors of MiniLM's width: the exact scan's cost does not depend on the values.
One torch thread, the sizes interleaved round by round, the median of --rounds rounds (the
first dropped as warm-up). The rest of a step (encoding the queries, LM calls on B·k
candidates, backward) does not depend on N; benchmarks/domain_adaptation.py --time-against
times whole steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyrag
from pyrag.train import TrainConfig


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,50000,100000,1000000", help="corpus sizes N, comma-separated")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=31)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    k = TrainConfig().k
    g = torch.Generator().manual_seed(0)
    indexes = {}
    for n in (int(s) for s in args.sizes.split(",")):
        index = pyrag.DenseIndex(args.dim)
        index.add(torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=1))
        indexes[n] = index
    q = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=g), dim=1)
    times: dict[int, list[float]] = {n: [] for n in indexes}
    for _ in range(args.rounds):
        for n, index in indexes.items():
            t0 = time.perf_counter()
            snap = index.snapshot()
            _, ids = snap.search(q, k)
            snap.get(torch.unique(ids))
            times[n].append(time.perf_counter() - t0)
    print(f"CPU ISA {pyrag.cpu_isa()}, 1 torch thread, d={args.dim}, {args.batch} queries, k={k}")
    for n, ts in times.items():
        print(f"  N={n:>10,}: search + get of the hits, median {statistics.median(ts[1:]) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
