"""Resource usage of the hand-written CUDA kernels (csrc/cuda) from `ptxas -v`, per kernel
and architecture, for tools/gpu_report.py (which prints the rows and fails on spills).
A developer tool: not part of the wheel.

    python tools/gpu_report_cuda.py          # prints one row per kernel and arch

`cuda_rows(archs=("80", "90"), num_warps=8)` returns one tools/ptxas.Row per kernel
instantiation and architecture: kernel "cuda.topk_scan", "cuda.topk_merge",
"cuda.lsr_weights", "cuda.lsr_kl" or "cuda.lsr_kl_backward"; config the instantiation
("f16 mma, k<=1024": corpus path and k bucket, for the top-k kernels; "f32" / "f64" for
the losses); shared_bytes the static part ptxas reports plus the dynamic part the
launcher requests with `num_warps` warps per block in the largest case (one query per
block). The CUDA kernels launch without opting in to more than 48 KiB of shared memory
per block, so that is their limit on every arch. A row whose dynamic part is unknown (no
built pyrag._cuda or pyrag._cuda_emu to ask) fails with that reason.

Where the rows come from: the build of pyrag._cuda keeps ptxas's report (CMake passes
-Xptxas=-v and csrc/cuda/ptxas_log.sh saves it; it is installed as pyrag/_cuda_ptxas/),
so the rows describe the binary that is installed. Architectures that build did not
cover are compiled here from the source tree with `nvcc -Xptxas -v` (a few minutes).
Without either, those architectures have no rows and `unavailable_reason()` says why.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ptxas import Entry, Row, parse_ptxas

DEFAULT_ARCHS = ("80", "90")
SHARED_LIMIT = 48 * 1024
_SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"

_KERNEL = re.compile(r"(?P<kernel>\w+)_kernel<(?P<args>.*)>\(")
_CORPUS = {
    "SimtScorer": ("f32 simt", 0),
    "MmaScorer<pyrag::cuda::F16>": ("f16 mma", 1),
    "MmaScorer<pyrag::cuda::Bf16>": ("bf16 mma", 2),
}


def cuda_rows(archs: Iterable[str] = DEFAULT_ARCHS, num_warps: int = 8) -> list[Row]:
    """ptxas resource usage of every CUDA kernel for each of `archs` (see the module doc)."""
    archs = _arch_numbers(archs)
    entries = [e for e in _built_entries() if e.arch.removeprefix("sm_") in archs]
    missing = _missing(archs, entries)
    if missing and unavailable_reason(missing) is None:
        entries += _compiled_entries(missing)
    module = _any_built_module()
    demangled = _demangle(sorted({e.name for e in entries}))
    rows = [_row(e, demangled[e.name], module, num_warps) for e in entries]
    return sorted(rows, key=_order)


def _order(row: Row):
    k = re.search(r"k<=(\d+)", row.config)
    return row.arch, row.kernel, re.sub(r"k<=\d+", "", row.config), int(k[1]) if k else 0


def unavailable_reason(archs: Iterable[str] = DEFAULT_ARCHS) -> Optional[str]:
    """Why cuda_rows(archs) cannot report every one of `archs`, or None if it can."""
    missing = _missing(_arch_numbers(archs), _built_entries())
    if not missing:
        return None
    what = f"no ptxas report of a pyrag._cuda build for sm_{', sm_'.join(missing)}"
    if shutil.which("nvcc") is None:
        return f"{what}, and no nvcc to compile csrc/cuda"
    if not _SOURCE_DIR.joinpath("cuda").is_dir():
        return f"{what}, and no CUDA sources at {_SOURCE_DIR / 'cuda'}"
    return None


def _arch_numbers(archs: Iterable[str]) -> list[str]:
    return [str(a).removeprefix("sm_") for a in archs]


def _missing(archs: list[str], entries: list[Entry]) -> list[str]:
    have = {e.arch.removeprefix("sm_") for e in entries}
    return [a for a in archs if a not in have]


def _built_logs() -> list[Path]:
    spec = importlib.util.find_spec("pyrag._cuda")
    if spec is None or spec.origin is None:
        return []
    return sorted(Path(spec.origin).parent.joinpath("_cuda_ptxas").glob("*.txt"))


def _built_entries() -> list[Entry]:
    return [e for log in _built_logs() for e in parse_ptxas(log.read_text(errors="replace"))]


def _compiled_entries(archs: list[str]) -> list[Entry]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    sources = sorted(_SOURCE_DIR.joinpath("cuda").glob("*.cu"))
    with tempfile.TemporaryDirectory() as tmp:

        def compile_one(src: Path) -> str:
            cmd = [
                "nvcc",
                "-std=c++17",
                "--expt-relaxed-constexpr",
                "-O3",
                f"-I{_SOURCE_DIR}",
                "-c",
                *gencode,
                "--threads",
                "0",
                "-Xptxas=-v",
                str(src),
                "-o",
                str(Path(tmp) / (src.name + ".o")),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc failed on {src.name}:\n{done.stderr[-4000:]}")
            return done.stderr

        with concurrent.futures.ThreadPoolExecutor() as pool:
            logs = list(pool.map(compile_one, sources))
    return [e for text in logs for e in parse_ptxas(text)]


def _any_built_module():
    for name in ("pyrag._cuda", "pyrag._cuda_emu"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _demangle(names: list[str]) -> dict[str, str]:
    if shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _row(entry: Entry, demangled: str, module, num_warps: int) -> Row:
    kernel, config, dynamic = _describe(demangled, module, num_warps)
    error = "" if dynamic is not None else "dynamic shared memory unknown (no built pyrag._cuda or pyrag._cuda_emu)"
    return Row(
        f"cuda.{kernel}",
        config,
        entry.arch,
        entry.registers,
        entry.spills,
        entry.static_smem + (dynamic or 0),
        SHARED_LIMIT,
        error,
    )


def _describe(demangled: str, module, num_warps: int) -> tuple[str, str, Optional[int]]:
    """(kernel, config, dynamic shared memory) from a demangled kernel name."""
    m = _KERNEL.search(demangled)
    if m is None:
        return demangled, "", None
    kernel, args = m["kernel"], [a.strip() for a in _split_template_args(m["args"])]
    if kernel == "topk_scan":
        corpus, corpus_type = _CORPUS.get(args[0].split("topk::")[-1], (args[0], None))
        k = 32 * int(args[1])
        dynamic = (
            None if module is None or corpus_type is None else module.topk_scan_smem_bytes(corpus_type, k, num_warps)
        )
        return kernel, f"{corpus}, k<={k}", dynamic
    if kernel == "topk_merge":
        k = 32 * int(args[0])
        return kernel, f"k<={k}", None if module is None else module.topk_merge_smem_bytes(k, num_warps)
    dtype = {"float": "f32", "double": "f64"}.get(args[0], args[0])
    return kernel, dtype, 0


def _split_template_args(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


if __name__ == "__main__":
    for row in cuda_rows():
        print(row)
