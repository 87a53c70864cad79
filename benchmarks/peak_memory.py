"""Peak resident-memory growth of a call: how far the process's RSS rose above its
level before the call, at the highest point during it.

Two figures, because a memory-mapped file counts in RSS too:
- all pages: the kernel keeps the RSS high-water mark (VmHWM) and lets a process
  reset it by writing "5" to /proc/self/clear_refs, so this peak is exact however
  short. It includes pages of mapped files (e.g. an index's mmapped originals) that
  the call touched; the kernel can drop those at any time, they are page cache.
- anonymous pages (RssAnon: heap, buffers, scores): the kernel keeps no high-water
  mark for these, so a watcher process samples /proc/<pid>/status every 0.5 ms. It
  runs outside this process so that it samples even while a kernel holds the GIL;
  an allocation is seen unless it lives for less than about a millisecond.
Linux only.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from dataclasses import dataclass

# Prints "ready", then samples RssAnon (kB) until a line arrives on stdin, then prints the peak.
_WATCHER = r"""
import select, sys
path = f"/proc/{sys.argv[1]}/status"
def rss_anon():
    with open(path) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
peak = rss_anon()
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.0005)[0]:
    peak = max(peak, rss_anon())
print(max(peak, rss_anon()), flush=True)
"""


@dataclass(frozen=True)
class MemoryGrowth:
    peak_bytes: int | None  # all resident pages, from VmHWM (None where it cannot be reset)
    anon_bytes: int  # anonymous pages, sampled

    def describe(self) -> str:
        total = "n/a" if self.peak_bytes is None else f"{self.peak_bytes / 2**20:.1f} MiB"
        return f"{total} (anonymous {self.anon_bytes / 2**20:.1f} MiB)"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth(fn, *args):
    """(MemoryGrowth, fn's result) for one call fn(*args)."""
    gc.collect()
    with subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as watcher:
        try:
            if watcher.stdout.readline().strip() != "ready":
                raise OSError("the memory watcher could not read /proc")
            rss_before, anon_before = _status_kb("VmRSS"), _status_kb("RssAnon")
            exact_total = _reset_high_water_mark()
            out = fn(*args)
            total_peak = _status_kb("VmHWM") if exact_total else None
            watcher.stdin.write("stop\n")
            watcher.stdin.flush()
            anon_peak = int(watcher.stdout.readline())
        finally:
            watcher.kill()  # no-op once it has exited; stops it if fn raised
    growth = MemoryGrowth(
        None if total_peak is None else max(0, total_peak - rss_before) * 1024, max(0, anon_peak - anon_before) * 1024
    )
    return growth, out
