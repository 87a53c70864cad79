"""python tools/gpu_report.py: registers, spills and shared memory of every GPU kernel,
for sm_80 (A100) and sm_90 (H100), without a GPU. A developer tool: not part of the wheel.

Each Triton kernel is compiled ahead of time with
`triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32))`,
once per autotune configuration (topk_scores) or per launch shape the launcher picks
(the loss kernels), and the PTX is assembled again with `ptxas -v` -- the same ptxas
Triton used for that arch, from the triton wheel (`ptxas-blackwell`, CUDA 13.4, for
sm_90: Triton 3.9 emits PTX 9.4, which older ptxas reject) -- to read registers and
spills. Shared memory is Triton's dynamic allocation (metadata.shared) plus ptxas's
static count, checked against the arch's per-block maximum.

Rows of the CUDA kernels (csrc/cuda) come from tools/gpu_report_cuda.py. Every row is a
tools/ptxas.Row (kernel, config, arch, registers, spill_bytes, shared_bytes,
shared_limit, error).

The report prints a table and exits 1 if any row has spills, shared memory over its
limit, or an error; 0 otherwise. `--full` also compiles every topk_scores config for
every corpus dtype and KP in {16, 128, 1024}, which takes several minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ptxas import Row, format_table, parse_ptxas

ARCHS = {"sm_80": 80, "sm_90": 90}
# Maximum dynamic shared memory per block (opt-in): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One compilation: a kernel (module, attribute), its argument types, constexprs and
    launch options, described in plain values so that worker processes can rebuild it."""

    module: str
    kernel: str
    signature: dict  # argument name -> Triton type ("*fp16", "i32", "fp32"); constexprs omitted
    constexprs: dict  # name -> value; dtypes as their names ("fp16")
    aligned: tuple  # arguments that are 16-byte aligned pointers or multiples of 16
    num_warps: int
    num_stages: int
    label: str
    maxnreg: int | None = None


# ------------------------------------------------------------------ what is compiled
def _topk_specs(full: bool) -> list[Spec]:
    from pyrag.kernels import topk_scores as T

    ptr = {
        "Q": "*fp16",
        "X": "*fp16",
        "SCALES": "*fp32",
        "BEST": "*i64",
        "BUF": "*i64",
        "CNT": "*i32",
        "TILE": "*fp32",
        "THR": "*fp32",
    }
    ints = ["B", "N", "d", "k", "stride_qb", "stride_xn", "B_BUCKET"]
    aligned = tuple(ptr) + ("d", "stride_qb", "stride_xn")
    # (queries, corpus, dot dtype): what dot_dtype() picks on a GPU.
    dtypes = {
        "fp16": ("fp16", "fp16", "fp16"),
        "bf16": ("bf16", "bf16", "bf16"),
        "fp32": ("fp32", "fp32", "fp32"),
        "int8": ("fp16", "i8", "fp16"),
    }

    def spec(config, dtype, kp):
        qd, xd, dot = dtypes[dtype]
        family = T.FP32_CONFIGS if dtype == "fp32" else T.CONFIGS
        tile_w = max(c.kwargs["BLOCK_N"] for c in family)  # as the autotuned launch sizes it
        cap = max(kp, 2 * tile_w)
        sig = {**ptr, "Q": "*" + qd, "X": "*" + xd, **{n: "i32" for n in ints}}
        const = {
            "HAS_SCALES": dtype == "int8",
            "DOT_DTYPE": dot,
            "DOT_PRECISION": "ieee",
            "KP": kp,
            "CAP": cap,
            "TILE_W": tile_w,
            "APPEND_ELEMENTS": T.APPEND_ELEMENTS,
            "FLUSH_ELEMENTS": T.FLUSH_ELEMENTS,
            **config.kwargs,
        }
        kw = config.kwargs
        label = (
            f"BM={kw['BLOCK_M']} BN={kw['BLOCK_N']} BK={kw['BLOCK_K']} w={config.num_warps} "
            f"s={config.num_stages} {dtype} KP={kp}"
        )
        return Spec(
            "pyrag.kernels.topk_scores",
            "_topk_scan_kernel",
            sig,
            const,
            aligned,
            config.num_warps,
            config.num_stages,
            label,
            config.maxnreg,
        )

    if full:
        specs = [spec(c, dt, kp) for c in T.CONFIGS for dt in ("fp16", "bf16", "int8") for kp in (16, 128, 1024)]
        specs += [spec(c, "fp32", kp) for c in T.FP32_CONFIGS for kp in (16, 128, 1024)]
    else:
        # Every config at k = 100 (the benchmark's), in fp16 or, for the fp32 family,
        # fp32; then the other 16-bit dtypes and the extreme KP on the first config.
        specs = [spec(c, "fp16", 128) for c in T.CONFIGS] + [spec(c, "fp32", 128) for c in T.FP32_CONFIGS]
        specs += [spec(T.CONFIGS[0], dt, 128) for dt in ("bf16", "int8")]
        specs += [spec(T.CONFIGS[0], "fp16", kp) for kp in (16, 1024)]
    merge_sig = {"BEST": "*i64", "THR": "*fp32", "SCORES": "*fp32", "IDS": "*i64", "n_keys": "i32", "k": "i32"}
    for kp in (128, 1024):
        specs.append(
            Spec(
                "pyrag.kernels.topk_scores",
                "_topk_merge_kernel",
                merge_sig,
                {"KP": kp, "CHUNK": max(kp, 1024)},
                ("BEST", "THR", "SCORES", "IDS"),
                4,
                3,
                f"KP={kp} CHUNK={max(kp, 1024)} w=4",
                T.MAX_REGISTERS,
            )
        )
    return specs


def _loss_specs() -> list[Spec]:
    from pyrag.kernels import lsr
    from pyrag.kernels import marginal_nll as mn

    specs = []
    for block in (1024, lsr.MAX_BLOCK_K):
        _, warps = lsr._block_k(block)
        sig = {
            "L": "*bf16",
            "MASK": "*i1",
            "OUT": "*bf16",
            "K": "i32",
            "stride_l": "i32",
            "stride_m": "i32",
            "stride_o": "i32",
            "tau": "fp32",
        }
        specs.append(
            Spec(
                "pyrag.kernels.lsr",
                "_lsr_weights_kernel",
                sig,
                {"HAS_MASK": True, "BLOCK_K": block, "ACC": "fp32"},
                ("L", "MASK", "OUT"),
                warps,
                3,
                f"BLOCK_K={block} w={warps} bf16 masked",
            )
        )
        sig = {
            "S": "*bf16",
            "L": "*bf16",
            "MASK": "*i1",
            "GRAD": "*bf16",
            "KL": "*bf16",
            "GRAD_S": "*bf16",
            "K": "i32",
            "stride_s": "i32",
            "stride_l": "i32",
            "stride_m": "i32",
            "stride_gs": "i32",
            "tau_r": "fp32",
            "tau_l": "fp32",
        }
        for backward in (False, True):
            for reverse in (False, True):
                specs.append(
                    Spec(
                        "pyrag.kernels.lsr",
                        "_lsr_kl_kernel",
                        sig,
                        {"HAS_MASK": True, "REVERSE": reverse, "BACKWARD": backward, "BLOCK_K": block, "ACC": "fp32"},
                        ("S", "L", "MASK", "GRAD", "KL", "GRAD_S"),
                        warps,
                        3,
                        f"BLOCK_K={block} w={warps} bf16 {'reverse' if reverse else 'forward'}"
                        f"{' backward' if backward else ''}",
                    )
                )
    sig = {
        "S": "*bf16",
        "LM": "*bf16",
        "MASK": "*i1",
        "TMASK": "*i1",
        "GRAD": "*bf16",
        "NLL": "*bf16",
        "LSE": "*fp32",
        "GRAD_S": "*bf16",
        "GRAD_LM": "*bf16",
        "K": "i32",
        "T": "i32",
        **{
            n: "i32"
            for n in (
                "stride_s",
                "stride_m",
                "stride_lb",
                "stride_lk",
                "stride_lt",
                "stride_tm",
                "stride_gs",
                "stride_glb",
                "stride_glk",
                "stride_glt",
            )
        },
        "tau": "fp32",
    }
    for k, t in ((4096, 1), (32, 512)):  # the sequence shape and a token shape
        block_k, block_t = mn._blocks(k, t)
        for backward in (False, True):
            specs.append(
                Spec(
                    "pyrag.kernels.marginal_nll",
                    "_marginal_nll_kernel",
                    sig,
                    {
                        "HAS_MASK": True,
                        "HAS_TMASK": t > 1,
                        "BACKWARD": backward,
                        "BLOCK_K": block_k,
                        "BLOCK_T": block_t,
                        "ACC": "fp32",
                    },
                    ("S", "LM", "MASK", "TMASK", "GRAD", "NLL", "LSE", "GRAD_S", "GRAD_LM"),
                    4,
                    3,
                    f"BLOCK_K={block_k} BLOCK_T={block_t} w=4 bf16{' backward' if backward else ''}",
                )
            )
    return specs


# ------------------------------------------------------------------ compiling one
def _ptxas_report(ptxas: str, ptx: str, arch: str) -> tuple[int, int, int]:
    """(registers, spill bytes, static shared bytes) from `ptxas -v`."""
    gpu = "sm_90a" if arch == "sm_90" else arch
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", src, "-o", src + ".o"],
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()[-500:]}")
    entries = parse_ptxas(run.stderr)
    return (
        max((e.registers for e in entries), default=0),
        sum(e.spills for e in entries),
        max((e.static_smem for e in entries), default=0),
    )


def _compile(spec: Spec, arch: str) -> Row:
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    try:
        fn = getattr(importlib.import_module(spec.module), spec.kernel)
        names = fn.arg_names
        dtypes = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
        const = {
            k: dtypes.get(v, v) if isinstance(v, str) and k != "DOT_PRECISION" else v
            for k, v in spec.constexprs.items()
        }
        signature = {n: spec.signature[n] if n in spec.signature else "constexpr" for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.aligned}
        kernel = triton.compile(
            ASTSource(fn, signature, const, attrs),
            target=GPUTarget("cuda", ARCHS[arch], 32),
            options={
                "num_warps": spec.num_warps,
                "num_stages": spec.num_stages,
                "maxnreg": spec.maxnreg,
                "enable_fp_fusion": True,
            },
        )
        regs, spills, static_smem = _ptxas_report(get_ptxas(ARCHS[arch]).path, kernel.asm["ptx"], arch)
        return Row(
            f"{spec.module.rsplit('.', 1)[1]}.{spec.kernel}",
            spec.label,
            arch,
            regs,
            spills,
            kernel.metadata.shared + static_smem,
            SHARED_LIMIT[arch],
        )
    except Exception as e:  # a failed compile is a failing row, not a crash of the report
        return Row(
            f"{spec.module.rsplit('.', 1)[1]}.{spec.kernel}",
            spec.label,
            arch,
            shared_limit=SHARED_LIMIT[arch],
            error=f"{type(e).__name__}: {' '.join(str(e).split())[-300:]}",
        )


def triton_rows(full: bool = False, workers: int | None = None) -> list[Row]:
    """Compile every Triton kernel spec for every arch, in parallel processes."""
    jobs = [(spec, arch) for spec in _topk_specs(full) + _loss_specs() for arch in ARCHS]
    # Fresh processes without TRITON_INTERPRET: the kernels must be real JIT functions.
    os.environ.pop("TRITON_INTERPRET", None)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=ctx) as pool:
        return list(pool.map(_compile, *zip(*jobs)))


def cuda_rows() -> list[Row]:
    """The rows of the CUDA kernels (tools/gpu_report_cuda.py)."""
    import gpu_report_cuda

    return gpu_report_cuda.cuda_rows()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/gpu_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every topk_scores config x dtype x KP")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_report needs the triton package (pip install triton; Linux only)", file=sys.stderr)
        return 2
    rows = triton_rows(args.full, args.workers) + cuda_rows()
    print(format_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} kernel x config x arch rows; {len(bad)} with spills, shared-memory overflow or errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
