"""The read-bandwidth probe of the benchmarks' floor (read_probe.c), compiled on first use.

It lives with the benchmarks, not in pyrag's wheel: the first call compiles
read_probe.c with the system C compiler ($CC, else cc) into a cache directory
($PYRAG_BENCH_CACHE, else $XDG_CACHE_HOME/pyrag-bench or ~/.cache/pyrag-bench), keyed by a
hash of the source and the compiler, and loads it with ctypes (which releases the GIL
during the call, so the probe's threads run free).

    from read_probe import read_probe
    read_probe(address, nbytes, threads)   # XOR of the 64-bit words read
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_name("read_probe.c")


def cache_dir() -> Path:
    if os.environ.get("PYRAG_BENCH_CACHE"):
        return Path(os.environ["PYRAG_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyrag-bench"


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("benchmarks/read_probe.c needs a C compiler: set CC or install cc (gcc or clang)")
    return cc


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    cc = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    target = cache_dir() / f"read_probe-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place: concurrent first uses are safe.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, "-O2", "-shared", "-fPIC", "-pthread", str(SOURCE), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr}")
        os.replace(tmp, target)
    lib = ctypes.CDLL(str(target))
    lib.read_probe.restype = ctypes.c_uint64
    lib.read_probe.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    return lib


def read_probe(address: int, nbytes: int, threads: int) -> int:
    """Streams nbytes from address once on `threads` threads; returns the XOR of the
    64-bit words (and of the tail bytes), which proves every byte was read."""
    return int(_library().read_probe(address, nbytes, threads))
