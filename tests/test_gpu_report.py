"""tools/gpu_report.py: every GPU kernel and autotune config compiles ahead of time
for sm_80 and sm_90 on this GPU-less machine, with no register spills and no shared
memory over the per-block limit. The report runs in a child process (it must not share
a process with interpreter-mode triton), once for the whole module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import gpu_report
from ptxas import Row

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    run = subprocess.run(
        [sys.executable, "tools/gpu_report.py"], cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    return run


def test_every_kernel_config_and_arch_compiles_without_spills_or_shared_overflow(report):
    assert report.returncode == 0, f"gpu_report failed:\n{report.stdout[-12000:]}\n{report.stderr[-3000:]}"


def test_the_table_has_a_row_per_kernel_config_and_arch(report):
    from pyrag.kernels import topk_scores

    lines = report.stdout.splitlines()
    rows = [line for line in lines if line.endswith("  ok")]
    for arch in gpu_report.ARCHS:
        scan = [r for r in rows if r.startswith("topk_scores._topk_scan_kernel") and f" {arch} " in r]
        # each config at least once, plus the extra dtype / KP specialisations
        assert len(scan) >= len(topk_scores.CONFIGS) + len(topk_scores.FP32_CONFIGS), report.stdout
        for name in ("_topk_merge_kernel", "_lsr_weights_kernel", "_lsr_kl_kernel", "_marginal_nll_kernel"):
            assert any(name in r and f" {arch} " in r for r in rows), (name, arch)


@pytest.mark.parametrize(
    "row,ok",
    [
        (Row("k", "c", "sm_90", 100, 0, 1000, 232448), True),
        (Row("k", "c", "sm_90", 255, 8, 1000, 232448), False),  # a spill
        (Row("k", "c", "sm_80", 100, 0, 200000, 166912), False),  # over the shared limit
        (Row("k", "c", "sm_80", error="CompilationError: ..."), False),
    ],
)
def test_a_row_fails_on_spills_shared_overflow_or_errors(row, ok):
    assert row.ok is ok


def test_cuda_rows_fail_on_spills_unknown_or_excess_shared_memory():
    import gpu_report_cuda
    from ptxas import Entry

    def row(spills, dynamic):
        return (
            gpu_report_cuda._row(Entry("_Z1kv", "sm_90", 32, spills, 1024), "x_kernel<float>(", None, 8)
            if dynamic is None
            else Row("cuda.x", "f32", "sm_90", 32, spills, 1024 + dynamic, gpu_report_cuda.SHARED_LIMIT)
        )

    assert row(0, 0).ok and not row(4, 0).ok and not row(0, 60000).ok
    unknown = gpu_report_cuda._row(Entry("_Z1kv", "sm_90", 32, 0, 1024), "topk_scan_kernel<SimtScorer, 1>(", None, 8)
    assert not unknown.ok and "unknown" in unknown.error
    assert "cuda.topk_scan" in gpu_report.format_table([unknown])
