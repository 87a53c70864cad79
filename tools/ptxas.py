"""The one reader of `ptxas -v` reports, and the row shape every GPU resource report uses
(tools/gpu_report.py for the Triton kernels, tools/gpu_report_cuda.py for csrc/cuda)."""

from __future__ import annotations

import dataclasses
import re

_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_SPILLS = re.compile(r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers")
_SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One kernel of a ptxas report."""

    name: str  # mangled
    arch: str  # "sm_80", ...
    registers: int
    spills: int  # bytes: spill stores + spill loads
    static_smem: int  # bytes of static shared memory


@dataclasses.dataclass(frozen=True)
class Row:
    """One kernel x configuration x arch of a resource report."""

    kernel: str  # e.g. "topk_scores._topk_scan_kernel", "cuda.topk_scan"
    config: str  # its configuration and specialisation
    arch: str  # "sm_80" or "sm_90"
    registers: int = 0  # per thread
    spill_bytes: int = 0  # 0 is required
    shared_bytes: int = 0  # static + dynamic, per block
    shared_limit: int = 0  # the most a block may use
    error: str = ""  # "" when it compiled; else why not (the row then fails)

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0 and self.shared_bytes <= self.shared_limit


def parse_ptxas(text: str) -> list[Entry]:
    """The kernel entries of `ptxas -v` output, in order."""
    entries: list[Entry] = []
    current: dict | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = {"name": m["name"], "arch": m["arch"], "spills": 0}
        elif current is not None and (m := _SPILLS.search(line)):
            current["spills"] = int(m["stores"]) + int(m["loads"])
        elif current is not None and (m := _USED.search(line)):
            s = _SMEM.search(line)
            entries.append(
                Entry(current["name"], current["arch"], int(m["regs"]), current["spills"], int(s["smem"]) if s else 0)
            )
            current = None
    return entries


def format_table(rows: list[Row]) -> str:
    head = ("kernel", "config", "arch", "regs", "spill B", "smem B", "limit B", "status")
    body = [
        (
            r.kernel,
            r.config,
            r.arch,
            str(r.registers),
            str(r.spill_bytes),
            str(r.shared_bytes),
            str(r.shared_limit),
            "ok" if r.ok else (r.error or "FAIL"),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *body]:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
