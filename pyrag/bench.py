"""pyrag bench: exact top-k search with pyrag against torch (matmul + topk) and FAISS
(IndexFlatIP) on this machine, side by side in one run.

A corpus of N random unit vectors of dimension D is searched by batches of B random
unit queries for the k best inner products, by each method in turn (warm-up, then the
median of --repeats timed calls). pyrag is also timed with bfloat16 and int8 storage.
Every method's ids are checked against torch's (recall@k; the quantised dtypes are
approximate by design). Writes the figures as JSON and, with --out, a PNG plot; names
the CPU, the instruction-set path pyrag's kernels took and the thread count.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # imported when the benchmark runs, so that `pyrag --help` stays fast
    import torch

    import pyrag

# One search method under test: a query batch [B, dim] in, the top-k ids [B, k] out.
SearchFn = Callable[["torch.Tensor"], "torch.Tensor"]

__all__ = ["add_arguments", "machine", "measure", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="pyrag-bench.png",
        metavar="PNG",
        help="the plot (default pyrag-bench.png); the figures go beside it as .json",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures here (default: beside --out)")
    p.add_argument("--n", type=int, default=100_000, help="corpus vectors (default 100000)")
    p.add_argument("--dim", type=int, default=384, help="dimension (default 384)")
    p.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--batch", default="1,16,256", help="query batch sizes, comma-separated (default 1,16,256)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for every method (default: torch's)")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pyrag_isa() -> str:
    import pyrag

    fn = getattr(pyrag, "cpu_isa", None)  # the public name, where this pyrag has one
    if fn is None:
        try:
            import pyrag._C

            fn = pyrag._C.cpu_isa
        except (ImportError, AttributeError):
            return "unknown"
    return str(fn())


def machine() -> dict[str, Any]:
    import torch

    import pyrag

    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "pyrag_isa": _pyrag_isa(),
        "threads": torch.get_num_threads(),
        "pyrag": pyrag.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch of pages, kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _recall(ids: torch.Tensor, ref: torch.Tensor) -> float:
    import torch

    ids, ref = torch.as_tensor(ids), torch.as_tensor(ref)
    hit = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ref))
    return hit / ref.numel()


def measure(
    n: int, dim: int, k: int, batches: list[int], repeats: int, log: Optional[Callable[[str], None]] = None
) -> dict[str, Any]:
    """The figures of one run: {"machine", "config", "results": [{method, dtype, batch,
    ms, queries_per_s, recall, speedup_vs_torch}, ...]}."""
    import torch

    import pyrag

    log = log or (lambda s: None)
    g = torch.Generator().manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(max(batches), dim, generator=g), dim=1)
    methods: list[tuple[str, str, SearchFn]] = []

    def torch_search(q: torch.Tensor) -> torch.Tensor:
        return torch.topk(q @ corpus.T, k, dim=1).indices

    def pyrag_search(index: pyrag.DenseIndex) -> SearchFn:
        return lambda q: index.search(q, k)[1]

    methods.append(("torch matmul+topk", "float32", torch_search))
    for dtype in ("float32", "bfloat16", "int8"):
        index = pyrag.DenseIndex(dim, dtype, keep_originals=False)
        index.add(corpus)
        methods.append(("pyrag DenseIndex", dtype, pyrag_search(index)))
    try:
        import faiss

        flat = faiss.IndexFlatIP(dim)
        flat.add(corpus.numpy())
        faiss.omp_set_num_threads(torch.get_num_threads())
        methods.insert(1, ("FAISS IndexFlatIP", "float32", lambda q: torch.from_numpy(flat.search(q.numpy(), k)[1])))
    except ImportError:
        log("faiss is not installed (pip install faiss-cpu): FAISS is left out")

    results = []
    for b in batches:
        q = queries[:b].contiguous()
        ref = torch_search(q)
        torch_ms = None
        for name, dtype, fn in methods:
            ms = _median_ms(functools.partial(fn, q), repeats)
            torch_ms = ms if torch_ms is None else torch_ms
            row = {
                "method": name,
                "dtype": dtype,
                "batch": b,
                "ms": round(ms, 4),
                "queries_per_s": round(b / ms * 1e3, 1),
                "recall_vs_torch": round(_recall(fn(q), ref), 4),
                "speedup_vs_torch": round(torch_ms / ms, 3),
            }
            results.append(row)
            log(
                f"B={b:<4} {name:<20} {dtype:<9} {ms:9.3f} ms  {row['queries_per_s']:>10,.0f} q/s  "
                f"x{row['speedup_vs_torch']:.2f} vs torch  recall {row['recall_vs_torch']:.3f}"
            )
    return {
        "machine": machine(),
        "config": {"n": n, "dim": dim, "k": k, "batches": batches, "repeats": repeats},
        "results": results,
    }


def plot(figures: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A grouped bar chart of queries/s per batch size and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["results"]
    batches = figures["config"]["batches"]
    series = list(dict.fromkeys((r["method"], r["dtype"]) for r in rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 5))
    for j, (method, dtype) in enumerate(series):
        ys = [
            next(r["queries_per_s"] for r in rows if r["batch"] == b and (r["method"], r["dtype"]) == (method, dtype))
            for b in batches
        ]
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(batches))]
        bars = ax.bar(xs, ys, width, label=f"{method} ({dtype})")
        for bar, b in zip(bars, batches):
            r = next(r for r in rows if r["batch"] == b and (r["method"], r["dtype"]) == (method, dtype))
            ax.annotate(
                f"x{r['speedup_vs_torch']:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(batches)), [f"B={b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("queries per second (log scale)")
    m, c = figures["machine"], figures["config"]
    ax.set_title(
        f"top-{c['k']} over {c['n']:,} x {c['dim']} vectors (bf16 / int8: quantised scores, "
        f"recall in the JSON); labels: speed-up over torch\n"
        f"{m['cpu']}, pyrag ISA {m['pyrag_isa']}, {m['threads']} threads",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    batches = []
    for part in str(args.batch).split(","):
        try:
            batches.append(int(part))
        except ValueError:
            raise ValueError(f"--batch takes comma-separated ints, got {args.batch!r}") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--batch sizes must be >= 1, got {args.batch!r}")
    if args.n < args.k or args.k < 1 or args.dim < 1 or args.repeats < 1:
        raise ValueError("need --n >= -k >= 1, --dim >= 1 and --repeats >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("the plot needs matplotlib: pip install matplotlib (or pip install pyrag[text])")
    m = machine()
    print(
        f"{m['cpu']}; pyrag ISA {m['pyrag_isa']}; {m['threads']} threads; torch {m['torch']}; "
        f"faiss {m['faiss'] or '(not installed)'}"
    )
    print(f"{args.n:,} x {args.dim} corpus, k={args.k}, median of {args.repeats}")
    figures = measure(args.n, args.dim, args.k, batches, args.repeats, log=print)
    json_path = args.json or str(Path(args.out).with_suffix(".json"))
    Path(json_path).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures: {json_path}")
    plot(figures, args.out)
    print(f"plot: {args.out}")
    return 0
