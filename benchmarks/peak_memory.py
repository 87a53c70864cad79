"""Peak resident-memory growth of a call: how far the process's RSS rose above its
level before the call, at the highest point during it.

On Linux the kernel keeps the RSS high-water mark (VmHWM) and lets a process reset
it by writing "5" to /proc/self/clear_refs, so the peak is exact, however short.
Where that is not allowed, a thread samples /proc/self/statm every 0.2 ms instead
(a peak shorter than that can be missed; the result says which method was used).
"""
from __future__ import annotations

import gc
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth(fn, *args):
    """(bytes, method, fn's result): the peak RSS growth while fn(*args) ran.

    Raises OSError where /proc is missing (not Linux).
    """
    gc.collect()
    before = _rss_bytes()
    if _reset_high_water_mark():
        out = fn(*args)
        return max(0, _status_kb("VmHWM") * 1024 - before), "VmHWM", out
    peak = before
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn(*args)
    finally:
        done.set()
        t.join()
    peak = max(peak, _rss_bytes())
    return peak - before, "sampled", out
