"""One REPLUG-LSR training step at real scale, for every index dtype: what the
retrieval layer adds to a step must not grow with the corpus.

    python benchmarks/bench_training_step.py                       # N = 100k, 1M, 4M; d = 384
    python benchmarks/bench_training_step.py --sizes 100000 --dtypes int8 --repeats 3
    python benchmarks/bench_training_step.py --refresh 1000000     # + the peak memory of a refresh
    pytest benchmarks/bench_training_step.py --benchmark-only      # a small size, under pytest-benchmark

A step: encode 16 queries with a small encoder (an MLP over 64 features), retrieve k = 32
with pyrag.Retriever (the fused search without gradient, then q · index.get(ids) under
autograd), lsr_loss against fixed LM scores, backward, optimiser step. Printed side by
side, per N and dtype, measured in one run with the cases interleaved round by round:
- step: the whole step (the minimum over rounds by default: on a shared host noise only
  adds time, so the fastest round is the cost of the work; --stat median for the median);
- search: index.search on the same query embeddings, alone;
- step - search: what the training layer adds (it must stay flat as N grows): the step's
  time less the time spent inside DenseIndex.search during that same step (timed in
  place, so the search's own noise at large N does not leak into the difference);
- call / search: a Retriever call on query embeddings (no encoder) over index.search
  on the same queries (the bar: <= 1.2);
- peak RSS growth of one step (all resident pages, and anonymous pages).

--refresh N also builds an int8 index of N rows, then measures the peak RSS growth of
one AsyncReindexer refresh of it against the int8 index's own size plus one chunk.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import peak_rss_growth
from topk_cases import cpu_model

import pyrag

DIM, FEATURES, BATCH, K = 384, 64, 16, 32
BUILD_CHUNK = 1 << 18


class QueryEncoder(torch.nn.Module):
    """A small trainable query encoder: 64 features -> 384 dims."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 256), torch.nn.GELU(), torch.nn.Linear(256, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.net(x), dim=-1)


def synthetic_rows(start: int, n: int, dim: int = DIM) -> torch.Tensor:
    """Unit vectors for rows [start, start + n), the same whatever the chunking."""
    g = torch.Generator().manual_seed(1_000_003 + start)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def build_index(n: int, dtype: str) -> pyrag.DenseIndex:
    index = pyrag.DenseIndex(DIM, dtype)
    index.reserve(n)
    for start in range(0, n, BUILD_CHUNK):
        index.add(synthetic_rows(start, min(BUILD_CHUNK, n - start)))
    return index


class Step:
    """The training step over one index; the same encoder weights and queries for every
    index, so that every case does the same work apart from the corpus."""

    def __init__(self, index: pyrag.DenseIndex):
        torch.manual_seed(0)
        self.encoder = QueryEncoder()
        self.optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=1e-4)
        self.retriever = pyrag.Retriever(self.encoder, index, tau=0.1)
        self.features = torch.randn(BATCH, FEATURES, generator=torch.Generator().manual_seed(1))
        self.lm_scores = -5 * torch.rand(BATCH, K, generator=torch.Generator().manual_seed(2))
        self.index = index
        with torch.no_grad():
            self.embeddings = self.encoder(self.features).float()

    def step(self) -> float:
        hits = self.retriever(self.features, K)
        loss = pyrag.lsr_loss(hits.scores, self.lm_scores, mask=hits.mask, tau_retriever=0.1, direction="reverse")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def search(self) -> None:
        self.index.search(self.embeddings, K)

    def call(self) -> None:
        self.retriever.retrieve(self.embeddings.requires_grad_(), K)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class SearchClock:
    """Accumulates the time spent in DenseIndex.search while active (the Retriever
    searches a snapshot, which is a DenseIndex too)."""

    def __init__(self) -> None:
        self.total = 0.0

    def __enter__(self) -> SearchClock:
        self._original = original = pyrag.DenseIndex.search
        clock = self

        def search(index, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(index, *args, **kwargs)
            finally:
                clock.total += time.perf_counter() - t0

        pyrag.DenseIndex.search = search
        return self

    def __exit__(self, *exc) -> None:
        pyrag.DenseIndex.search = self._original


def timed_step(case: Step) -> tuple[float, float]:
    """(the whole step, the step less its own search time)."""
    with SearchClock() as clock:
        t = timed(case.step)
    return t, t - clock.total


def measure(n: int, dtypes: list[str], repeats: int, stat=min) -> list[dict]:
    cases = {}
    for dtype in dtypes:
        t0 = time.perf_counter()
        cases[dtype] = Step(build_index(n, dtype))
        print(f"  built N={n:,} {dtype} in {time.perf_counter() - t0:.1f} s", flush=True)
    times: dict[str, dict[str, list[float]]] = {d: {"step": [], "search": [], "call": [], "layer": []} for d in dtypes}
    for case in cases.values():  # warm-up: first-touch pages, thread pools
        case.step(), case.search(), case.call()
    for _ in range(repeats):  # rounds, each dtype in turn: drift on a shared host hits all alike
        for dtype, case in cases.items():
            times[dtype]["search"].append(timed(case.search))
            times[dtype]["call"].append(timed(case.call))
            step, layer = timed_step(case)
            times[dtype]["step"].append(step)
            times[dtype]["layer"].append(layer)
    rows = []
    for dtype, case in cases.items():
        growth, _ = peak_rss_growth(case.step)
        med = {name: stat(v) for name, v in times[dtype].items()}
        rows.append({"n": n, "dtype": dtype, **med, "peak": growth.peak_bytes, "anon": growth.anon_bytes})
    del cases
    gc.collect()
    return rows


def index_bytes(index: pyrag.DenseIndex) -> int:
    """The index's in-memory size: packed rows, ids, scales and the exact-search bounds."""
    snap = index._snap
    return sum(
        t.numel() * t.element_size()
        for t in (snap.packed, snap.ids, snap.scales, snap.norms, snap.errors)
        if t is not None
    )


class RowEncoder(torch.nn.Module):
    """Passages are row numbers; each is encoded as the same synthetic row, through a
    trainable scale, so that a refresh does real (if cheap) work per chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return synthetic_rows(int(rows[0]), len(rows)) * self.scale


def measure_refresh(n: int, chunk: int) -> dict:
    encoder = RowEncoder()
    index = build_index(n, "int8")
    passages = torch.arange(n)
    size = index_bytes(index)
    with pyrag.AsyncReindexer(
        encoder, passages, index=index, chunk_size=chunk, progress=False, schedule="none"
    ) as reindexer:
        del index
        gc.collect()

        def refresh() -> None:
            reindexer.refresh(1)
            reindexer.wait()

        growth, _ = peak_rss_growth(refresh)
        assert reindexer.version == 1 and reindexer.index.dtype == "int8"
    chunk_bytes = chunk * DIM * 4  # one chunk of float32 embeddings
    return {
        "n": n,
        "index_bytes": size,
        "chunk_bytes": chunk_bytes,
        "peak": growth.peak_bytes,
        "anon": growth.anon_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000,4000000", help="corpus sizes N, comma-separated")
    p.add_argument("--dtypes", default="float32,bfloat16,int8")
    p.add_argument("--repeats", type=int, default=7, help="rounds per size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stat", choices=("min", "median"), default="min", help="how rounds are summarised")
    p.add_argument("--refresh", type=int, default=0, help="also measure a refresh of an int8 index of this size")
    p.add_argument("--refresh-chunk", type=int, default=4096)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"pyrag {pyrag.__version__} | CPU {platform.processor() or platform.machine()} "
        f"({cpu_model()}) | path {pyrag.cpu_isa()} | {args.threads} threads | d={DIM} B={BATCH} k={K} | "
        f"{args.stat} of {args.repeats} rounds"
    )
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += measure(n, args.dtypes.split(","), args.repeats, min if args.stat == "min" else statistics.median)
    print(
        f"\n{'N':>10} {'dtype':>9} {'step ms':>9} {'search ms':>10} {'step-search ms':>15} "
        f"{'call/search':>12} {'peak RSS MiB':>13} {'anon MiB':>9}"
    )
    for r in rows:
        peak = "n/a" if r["peak"] is None else f"{r['peak'] / 2**20:.1f}"
        print(
            f"{r['n']:>10,} {r['dtype']:>9} {r['step'] * 1e3:>9.2f} {r['search'] * 1e3:>10.2f} "
            f"{r['layer'] * 1e3:>15.2f} {r['call'] / r['search']:>12.3f} {peak:>13} "
            f"{r['anon'] / 2**20:>9.1f}"
        )
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        print("\nstep - search at the largest N over the smallest (the bar: within 20%):")
        for dtype in args.dtypes.split(","):
            by_n = {r["n"]: r["layer"] for r in rows if r["dtype"] == dtype}
            print(
                f"  {dtype:>9}: {by_n[sizes[-1]] * 1e3:.2f} / {by_n[sizes[0]] * 1e3:.2f} ms = "
                f"{by_n[sizes[-1]] / by_n[sizes[0]]:.2f}"
            )
    if args.refresh:
        r = measure_refresh(args.refresh, args.refresh_chunk)
        base = r["index_bytes"] + r["chunk_bytes"]
        peak = r["peak"] if r["peak"] is not None else r["anon"]
        print(
            f"\nrefresh of a {r['n']:,} x {DIM} int8 index: index {r['index_bytes'] / 2**20:.1f} MiB, "
            f"chunk {r['chunk_bytes'] / 2**20:.1f} MiB; peak RSS growth {peak / 2**20:.1f} MiB "
            f"(anonymous {r['anon'] / 2**20:.1f}) = {peak / base:.3f} x (index + chunk) (the bar: <= 1.3)"
        )


# ----------------------------------------------------------------------------- pytest-benchmark
def _small_case(dtype: str) -> Step:
    n = int(os.environ.get("PYRAG_BENCH_STEP_N", "20000"))
    return Step(build_index(n, dtype))


def _bench(benchmark, dtype: str) -> None:
    case = _small_case(dtype)
    case.step()
    benchmark(case.step)


def test_step_float32(benchmark):
    _bench(benchmark, "float32")


def test_step_bfloat16(benchmark):
    _bench(benchmark, "bfloat16")


def test_step_int8(benchmark):
    _bench(benchmark, "int8")


if __name__ == "__main__":
    main()
