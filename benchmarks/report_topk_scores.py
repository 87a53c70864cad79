"""Side-by-side report for top-k search: every provider on the same cases in one
process, with the machine's floor measured in the same run.

    python benchmarks/report_topk_scores.py                 # N=1M d=384 k=10 B=1,16,256, 2 threads
    python benchmarks/report_topk_scores.py --scaling       # time vs N (100k..2M) and vs B (1..1024)
    python benchmarks/report_topk_scores.py --n 20000 --batch 1,8 --rounds 2   # a quick look
    python benchmarks/report_topk_scores.py --isa avx2      # force a lower CPU path

The report names the CPU and pyrag's CPU path (and which level's kernel each corpus
dtype runs).

Prints time per search for each provider (best of --rounds; pyrag's searches take
turns within each round), pyrag's time as a multiple
of the floor, its speedup over torch and over the better of torch and FAISS (naming
FAISS's faster path), the quantised/fp32 time ratios of issue 3 when the index supports
those dtypes, the recall of each provider against torch, and the peak RSS growth during
a search at B=1024. Sizes default to the PYRAG_BENCH_* variables (see topk_cases.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor
from peak_memory import peak_rss_growth
from topk_cases import (
    BY_NAME,
    PROVIDERS,
    Config,
    Providers,
    Results,
    make_corpus,
    make_queries,
    parse_ints,
    recall_at_k,
    result_ids,
    set_threads,
    time_interleaved,
    time_search,
    unsupported,
)

# Peak memory is reported for pyrag's searches and for torch, the baseline that holds B x N scores.
MEMORY_PROVIDERS = tuple(p.name for p in PROVIDERS if p.kind == "pyrag") + ("torch",)
# Issue 3's ratios: each quantised search against the fp32 index.
DTYPE_RATIOS = [
    ("pyrag-bfloat16", "bfloat16 / float32"),
    ("pyrag-int8", "int8 / float32"),
    ("pyrag-bfloat16-exact", "bfloat16 exact=True / float32"),
    ("pyrag-int8-exact", "int8 exact=True / float32"),
]
FAISS = ("faiss-scan", "faiss-blas")
# The scaling tables show pyrag's own growth; the baselines would take minutes at 2M x 1024.
SCALING_PROVIDERS = ("pyrag-float32", "pyrag-bfloat16", "pyrag-int8")
LABEL_W, COL_W = 42, 11


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_rates(rates: list) -> floor.MachineRates:
    """The floor uses the best rate seen in the run: the machine can do at least that."""
    return floor.MachineRates(
        max(r.read_bytes_per_s for r in rates), max(r.gemm_flops_per_s for r in rates), rates[0].threads
    )


# ---------------------------------------------------------------------- measuring
def run_cases(cfg: Config, names) -> Results:
    """Times every provider on every B.

    pyrag's searches take turns round by round (time_interleaved), with all of its
    indexes alive, so that its dtype ratios are not skewed by the shared machine's
    drift. The baselines then run one at a time, each with only its own index.
    """
    set_threads(cfg.threads)
    res = Results(cfg)
    res.record_machine()
    res.record_load()
    _log(res.machine)
    _log(f"measuring the floor rates ({cfg.threads} threads)")
    res.measure_rates()
    _log(f"building the corpus {cfg.describe()}")
    corpus = make_corpus(cfg.n, cfg.d)
    memory_batch = cfg.memory_batch
    queries = make_queries(max(cfg.batches + ((memory_batch,) if memory_batch else ())), cfg.d)
    for name in names:
        reason = unsupported(name)
        if reason:
            res.skipped[name] = reason
    runnable = [n for n in names if n not in res.skipped]
    pyrag_names = [n for n in runnable if BY_NAME[n].kind == "pyrag"]
    groups = [pyrag_names] + [[n] for n in runnable if n not in pyrag_names]
    providers = Providers(corpus, max_alive=len({BY_NAME[n].resource for n in pyrag_names}) or 1)
    for group in filter(None, groups):
        _log(f"building {', '.join(group)}")
        fns = {name: providers.search_fn(name) for name in group}
        # pyrag's rounds also stream the corpus once with the read probe and torch's sum,
        # so that the bandwidth floor is measured side by side with the searches it bounds.
        reads = floor.read_searches(corpus, cfg.threads) if group is pyrag_names else {}
        for b in cfg.batches:
            times, outs = time_interleaved({**fns, **reads}, queries[:b], cfg.k, cfg.rounds)
            if reads:
                best_read = min(min(times[name]) for name in reads)
                res.round_reads[b] = corpus.numel() * corpus.element_size() / best_read
                res.rates.append(floor.MachineRates(res.round_reads[b], 0.0, cfg.threads))
            for name in group:
                res.times[(name, b)] = times[name]
                res.ids[(name, b)] = result_ids(outs[name])
                _log(f"{name}: B={b} best {min(times[name]) * 1e3:.2f} ms")
        for name in group:
            if memory_batch and name in MEMORY_PROVIDERS:
                growth, _ = peak_rss_growth(fns[name], queries[:memory_batch], cfg.k)
                res.memory[name] = growth
                _log(f"{name}: B={memory_batch} peak RSS growth {growth.describe()}")
        del fns  # frees their indexes before the next ones are built
        providers.release()
    del corpus, providers
    res.measure_rates()
    res.record_load()
    return res


# ---------------------------------------------------------------------- formatting
def _row(label: str, cells) -> str:
    return f"{label:<{LABEL_W}}" + "".join(f"{c:>{COL_W}}" for c in cells)


def _ms(t: float | None) -> str:
    return "n/a" if t is None else f"{t * 1e3:.2f}"


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def format_report(res: Results) -> str:
    cfg, bs = res.cfg, res.cfg.batches
    rates = best_rates(res.rates)
    load = " -> ".join(f"{x:.2f}" for x in res.load)
    lines = [
        f"top-k search, {cfg.describe()}, best of {cfg.rounds} rounds (fewer, at least 2, "
        f"where a round takes over {30 / cfg.rounds:.0f} s)" + (f" (1-min load average {load})" if load else ""),
        *([res.machine] if res.machine else []),
        f"floor rates: {rates.describe()}",
    ]
    if len(res.rates) > 1:
        reads = ", ".join(f"{r.read_bytes_per_s / 1e9:.1f}" for r in res.rates)
        gemms = ", ".join(f"{r.gemm_flops_per_s / 1e9:.1f}" for r in res.rates if r.gemm_flops_per_s)
        lines.append(
            f"  (best of: read GB/s {reads}, at the start, in pyrag's rounds and at the end; "
            f"GEMM GFLOP/s {gemms}, at the start and the end)"
        )
    lines += [
        "",
        _row("time per search, ms", [f"B={b}" for b in bs]),
        _row("floor (fp32)", [_ms(rates.floor_s(cfg.n, cfg.d, b)) for b in bs]),
        _row("  floor is", [rates.bound(cfg.n, cfg.d, b) for b in bs]),
    ]
    names = [p.name for p in PROVIDERS if any((p.name, b) in res.times for b in bs)]
    for name in names:
        lines.append(_row(BY_NAME[name].label, [_ms(res.best(name, b)) for b in bs]))

    lines += ["", _row("ratios", [f"B={b}" for b in bs])]
    for name in ("pyrag-float32", "pyrag-tensor"):
        if name in names:
            lines.append(
                _row(
                    f"{BY_NAME[name].label} / floor",
                    [_x(_ratio(res.best(name, b), rates.floor_s(cfg.n, cfg.d, b))) for b in bs],
                )
            )
    if res.round_reads:
        # The same with the read rate of each B's own rounds: side by side in time, so a
        # slow spell of the shared machine hits the search and its floor alike.
        gemm = max(r.gemm_flops_per_s for r in res.rates)
        local = {b: floor.MachineRates(res.round_reads[b], gemm, cfg.threads) for b in bs if b in res.round_reads}
        for name in ("pyrag-float32", "pyrag-tensor"):
            if name in names:
                lines.append(
                    _row(
                        f"{BY_NAME[name].label} / rounds' floor",
                        [
                            _x(_ratio(res.best(name, b), local[b].floor_s(cfg.n, cfg.d, b))) if b in local else ""
                            for b in bs
                        ],
                    )
                )
    base = "pyrag-float32"
    if base in names:
        lines.append(_row("speedup vs torch", [_x(_ratio(res.best("torch", b), res.best(base, b))) for b in bs]))
        best_cells, which = [], []
        for b in bs:
            rivals = {n: res.best(n, b) for n in ("torch", *FAISS) if res.best(n, b) is not None}
            rival = min(rivals, key=rivals.get) if rivals else None
            best_cells.append(_x(_ratio(rivals.get(rival), res.best(base, b))))
            which.append(rival or "n/a")
        lines.append(_row("speedup vs best of torch and faiss", best_cells))
        lines.append(_row("  which was", which))
    if all(res.best(f, b) is not None for f in FAISS for b in bs):
        lines.append(
            _row(
                "faiss: faster path",
                ["scan" if res.best("faiss-scan", b) <= res.best("faiss-blas", b) else "BLAS" for b in bs],
            )
        )
    for name, label in DTYPE_RATIOS:
        if name in names and base in names:
            lines.append(_row(label, [_x(_ratio(res.best(name, b), res.best(base, b))) for b in bs]))

    truth_name = next((n for n in ("torch", "pyrag-float32") if n in names), None)
    if truth_name:
        lines += ["", _row(f"recall@{cfg.k} against {truth_name} (synthetic)", [f"B={b}" for b in bs])]
        for name in names:
            if name == truth_name:
                continue
            rec = [recall_at_k(res.ids[(name, b)], res.ids[(truth_name, b)]) for b in bs]
            flag = "" if BY_NAME[name].exact is False or min(rec) >= 0.999 else "  <- exact provider disagrees"
            lines.append(_row(BY_NAME[name].label, [f"{r:.4f}" for r in rec]) + flag)

    if res.memory:
        lines += [
            "",
            f"peak RSS growth during one search at B={cfg.memory_batch}, MiB",
            _row("", ["all pages", "anonymous"]),
        ]
        for name, g in res.memory.items():
            lines.append(
                _row(
                    BY_NAME[name].label,
                    ["n/a" if g.peak_bytes is None else f"{g.peak_bytes / 2**20:.1f}", f"{g.anon_bytes / 2**20:.1f}"],
                )
            )
        lines.append(
            "(all pages includes mapped-file pages the search touched, e.g. mmapped "
            "originals; anonymous is sampled every 0.5 ms)"
        )
    if res.skipped:
        lines += ["", "not run:"] + [f"  {n}: {r}" for n, r in res.skipped.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------- scaling
def run_scaling(cfg: Config, names, ns, bs, fixed_b: int) -> str:
    """Tables of time vs N (at B=fixed_b) and vs B (at N=cfg.n), to show linear growth."""
    set_threads(cfg.threads)
    res = Results(cfg)
    res.record_machine()
    res.measure_rates()
    corpus = make_corpus(max(ns + (cfg.n,)), cfg.d)
    queries = make_queries(max(bs + (fixed_b,)), cfg.d)
    skipped = {n: unsupported(n) for n in names if unsupported(n)}
    names = [n for n in names if n not in skipped]
    by_n, by_b = {}, {}
    for name in names:
        for n in ns:
            providers = Providers(corpus[:n])
            times, _ = time_search(providers.search_fn(name), queries[:fixed_b], cfg.k, cfg.rounds)
            by_n[(name, n)] = min(times)
            providers.release()
            _log(f"{name}: N={n} B={fixed_b} {min(times) * 1e3:.2f} ms")
        providers = Providers(corpus[: cfg.n])
        fn = providers.search_fn(name)
        for b in bs:
            times, _ = time_search(fn, queries[:b], cfg.k, cfg.rounds)
            by_b[(name, b)] = min(times)
            _log(f"{name}: N={cfg.n} B={b} {min(times) * 1e3:.2f} ms")
        del fn
        providers.release()
    del corpus
    res.measure_rates()
    r = best_rates(res.rates)

    def table(title, keys, key_label, case):
        head = [key_label, "floor ms"] + [c for n in names for c in (f"{n} ms", "x floor")]
        out = [title, "".join(f"{h:>{max(COL_W, len(h) + 2)}}" for h in head)]
        for key in keys:
            n, b = case(key)
            fl = r.floor_s(n, cfg.d, b)
            cells = [f"{key:,}", f"{fl * 1e3:.2f}"]
            for name in names:
                t = (by_n if title.startswith("time vs N") else by_b)[(name, key)]
                cells += [f"{t * 1e3:.2f}", f"{t / fl:.2f}x"]
            out.append("".join(f"{c:>{max(COL_W, len(h) + 2)}}" for c, h in zip(cells, head)))
        return out

    lines = [
        f"scaling, d={cfg.d} k={cfg.k} threads={cfg.threads}, best of {cfg.rounds} rounds",
        res.machine,
        f"floor rates: {r.describe()}",
        "x floor: each time against the float32 floor of its case",
        "",
    ]
    lines += table(f"time vs N (B={fixed_b})", ns, "N", lambda n: (n, fixed_b))
    lines += [""] + table(f"time vs B (N={cfg.n:,})", bs, "B", lambda b: (cfg.n, b))
    if skipped:
        lines += ["", "not run:"] + [f"  {n}: {why}" for n, why in skipped.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def main(argv=None) -> None:
    env = Config.from_env()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=lambda s: parse_ints(s)[0], default=env.n)
    p.add_argument("--d", type=int, default=env.d)
    p.add_argument("--k", type=int, default=env.k)
    p.add_argument("--batch", type=parse_ints, default=env.batches, help="e.g. 1,16,256")
    p.add_argument("--threads", type=int, default=env.threads)
    p.add_argument("--rounds", type=int, default=env.rounds)
    p.add_argument(
        "--providers",
        help="comma-separated, from: "
        + ", ".join(BY_NAME)
        + f" (default: all; with --scaling: {','.join(SCALING_PROVIDERS)})",
    )
    p.add_argument(
        "--memory-batch", type=int, default=env.memory_batch, help="B of the peak-memory search (0 to skip it)"
    )
    p.add_argument("--floor-bytes", type=int, default=env.floor_bytes)
    p.add_argument("--gemm-size", type=int, default=env.gemm_size)
    p.add_argument(
        "--isa",
        default="",
        help="pyrag CPU path to force, e.g. avx2 (default: the best this CPU has; PYRAG_CPU_ISA does the same)",
    )
    p.add_argument("--scaling", action="store_true", help="print time vs N and vs B instead")
    p.add_argument("--scaling-n", type=parse_ints, default=parse_ints("100k,200k,500k,1M,2M"))
    p.add_argument("--scaling-b", type=parse_ints, default=parse_ints("1,2,4,8,16,32,64,128,256,512,1024"))
    p.add_argument("--scaling-fixed-b", type=int, default=16, help="B of the time-vs-N table")
    args = p.parse_args(argv)
    chosen = args.providers or ",".join(SCALING_PROVIDERS if args.scaling else BY_NAME)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown providers {unknown}; choose from {', '.join(BY_NAME)}")
    if args.isa:
        from pyrag import _C

        try:
            _C.set_cpu_isa(args.isa)
        except ValueError as e:
            p.error(str(e))
    cfg = Config(
        n=args.n,
        d=args.d,
        k=args.k,
        batches=args.batch,
        threads=args.threads,
        rounds=args.rounds,
        memory_batch=args.memory_batch,
        floor_bytes=args.floor_bytes,
        gemm_size=args.gemm_size,
    )
    if args.scaling:
        print(run_scaling(cfg, names, args.scaling_n, args.scaling_b, args.scaling_fixed_b))
    else:
        print(format_report(run_cases(cfg, names)))


if __name__ == "__main__":
    main()
