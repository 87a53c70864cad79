"""pytest-benchmark suite for top-k search: pyrag against torch, numpy and FAISS.

    pytest benchmarks/bench_topk_scores.py --benchmark-only

Cases: N=1,000,000, d=384, k=10, B in {1, 16, 256}, 2 threads (PYRAG_BENCH_* to
change them, see topk_cases.py), plus the peak RSS growth of one search at B=1024.
Providers and baselines are defined once, in topk_cases.py. After the run, the
terminal summary prints the ratio table of report_topk_scores.py (time / floor,
speedups, dtype ratios, recall), with the floor measured in the same session.
"""

import pytest
from peak_memory import peak_rss_growth
from report_topk_scores import MEMORY_PROVIDERS
from topk_cases import (
    PROVIDERS,
    SESSION_RESULTS,
    Config,
    Providers,
    Results,
    Unsupported,
    make_corpus,
    make_queries,
    result_ids,
    set_threads,
)

CFG = Config.from_env()


@pytest.fixture(scope="session")
def results():
    """The session's measurements; the floor rates are taken at its start and end."""
    set_threads(CFG.threads)
    res = Results(CFG)
    res.record_machine()
    res.record_load()
    res.measure_rates()
    SESSION_RESULTS.append(res)  # for the terminal summary (conftest.py)
    yield res
    res.measure_rates()
    res.record_load()


@pytest.fixture(scope="session")
def providers(results):
    # One corpus for the session (1.5 GB at N=1M); Providers keeps one index at a time.
    p = Providers(make_corpus(CFG.n, CFG.d))
    yield p
    p.release()


@pytest.fixture(scope="session")
def queries():
    return make_queries(max(CFG.batches + (CFG.memory_batch,)), CFG.d)


def search_or_skip(providers: Providers, name: str):
    try:
        return providers.search_fn(name)
    except Unsupported as e:
        pytest.skip(str(e))


# provider is the innermost parametrize, so it varies slowest: each index is built once.
@pytest.mark.parametrize("b", CFG.batches)
@pytest.mark.parametrize("provider", [p.name for p in PROVIDERS])
def test_topk_scores(benchmark, results, providers, queries, provider, b):
    fn = search_or_skip(providers, provider)
    benchmark.group = f"topk_scores {CFG.describe()} B={b}"
    floor_s = results.rates[0].floor_s(CFG.n, CFG.d, b)
    benchmark.extra_info["floor_ms"] = floor_s * 1e3
    out = benchmark.pedantic(fn, args=(queries[:b], CFG.k), rounds=CFG.rounds, warmup_rounds=1, iterations=1)
    results.ids[(provider, b)] = result_ids(out)
    if benchmark.enabled:
        results.times[(provider, b)] = list(benchmark.stats.stats.data)
        benchmark.extra_info["x_floor"] = benchmark.stats.stats.min / floor_s


@pytest.mark.skipif(CFG.memory_batch < 1, reason="PYRAG_BENCH_MEMORY_B=0")
@pytest.mark.parametrize("provider", MEMORY_PROVIDERS)
def test_topk_scores_peak_memory(benchmark, results, providers, queries, provider):
    fn = search_or_skip(providers, provider)
    fn(queries[:1], CFG.k)  # lazy set-up (thread pools, first-call caches) is not the search
    benchmark.group = f"topk_scores peak RSS growth, B={CFG.memory_batch}"
    growth, _ = benchmark.pedantic(
        peak_rss_growth, args=(fn, queries[: CFG.memory_batch], CFG.k), rounds=1, iterations=1
    )
    results.memory[provider] = growth
    benchmark.extra_info["peak_rss_growth_MiB"] = (growth.peak_bytes or 0) / 2**20
    benchmark.extra_info["peak_anon_growth_MiB"] = growth.anon_bytes / 2**20
