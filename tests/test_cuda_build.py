"""The CUDA kernels of csrc/cuda compile for sm_80 and sm_90 with no register spills.

The rows come from ptxas's report of the installed pyrag._cuda build when it covered an
architecture, else from compiling csrc/cuda with nvcc here (tools/gpu_report_cuda.py).
Skipped when neither a pyrag._cuda build nor nvcc is there.
"""

from __future__ import annotations

import pytest
from gpu_report_cuda import cuda_rows, unavailable_reason
from ptxas import Entry, parse_ptxas

ARCHS = ("sm_80", "sm_90")
# Every instantiation the launchers can reach: 3 corpus paths x 6 k buckets of topk_scan,
# 6 buckets of topk_merge, and the three loss kernels in float32 and float64.
K_BUCKETS = [32, 64, 128, 256, 512, 1024]
EXPECTED = (
    {("topk_scan", f"{c}, k<={k}") for c in ("f32 simt", "f16 mma", "bf16 mma") for k in K_BUCKETS}
    | {("topk_merge", f"k<={k}") for k in K_BUCKETS}
    | {(name, t) for name in ("lsr_weights", "lsr_kl", "lsr_kl_backward") for t in ("f32", "f64")}
)
# The static + dynamic shared memory every kernel may use without opting in per launch:
# then any sm_80+ GPU runs them (sm_86/89 allow 99 KiB per block, sm_80 163, sm_90 227).
SHARED_MEMORY_LIMIT = 48 * 1024


@pytest.fixture(scope="module")
def rows():
    reason = unavailable_reason(ARCHS)
    if reason is not None:
        pytest.skip(reason)
    return cuda_rows(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_is_built(rows, arch):
    built = {(r.kernel.removeprefix("cuda."), r.config) for r in rows if r.arch == arch}
    assert built == EXPECTED


def test_no_register_spills(rows):
    spilled = [r for r in rows if r.spill_bytes]
    assert not spilled, "\n".join(
        f"{r.arch} {r.kernel} [{r.config}]: {r.registers} registers, {r.spill_bytes} bytes of spills" for r in spilled
    )


def test_shared_memory_fits_without_opt_in(rows):
    if any(r.error for r in rows):
        pytest.skip("no built pyrag._cuda or pyrag._cuda_emu to tell the dynamic shared memory")
    too_big = [r for r in rows if r.shared_bytes > SHARED_MEMORY_LIMIT]
    assert not too_big, too_big


def test_parse_ptxas_reads_spills_registers_and_shared_memory():
    text = """\
ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'
ptxas info    : Function properties for _Z1kv
    16 bytes stack frame, 16 bytes spill stores, 52 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1gv' for 'sm_90'
ptxas info    : Function properties for _Z1gv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""
    assert parse_ptxas(text) == [Entry("_Z1kv", "sm_80", 128, 68, 1024), Entry("_Z1gv", "sm_90", 40, 0, 0)]
