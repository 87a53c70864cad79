"""The top-k search cases and providers shared by bench_topk_scores.py (pytest-benchmark)
and report_topk_scores.py (side-by-side table).

A provider is one way to answer "the k best corpus rows per query": pyrag on a plain
tensor or on a DenseIndex of each dtype, and the baselines torch (matmul, then topk),
numpy (matmul, then argpartition) and FAISS IndexFlatIP (its SIMD scan and its BLAS
path). `Providers` builds each provider's index on first use and keeps only one such
index alive at a time, so a 1M x 384 run holds the 1.5 GB corpus plus one index.

Sizes come from the environment so that CI can run a tiny version:
PYRAG_BENCH_N (1000000), PYRAG_BENCH_D (384), PYRAG_BENCH_K (10),
PYRAG_BENCH_B ("1,16,256"), PYRAG_BENCH_THREADS (2), PYRAG_BENCH_ROUNDS (5),
PYRAG_BENCH_MEMORY_B (1024), PYRAG_BENCH_FLOOR_BYTES (1 GiB), PYRAG_BENCH_GEMM_SIZE (3072).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import floor
import numpy as np
import torch

import pyrag


@dataclass(frozen=True)
class Config:
    n: int = 1_000_000
    d: int = 384
    k: int = 10
    batches: tuple[int, ...] = (1, 16, 256)
    threads: int = 2
    rounds: int = 5
    memory_batch: int = 1024  # B of the peak-memory search; 0 skips it
    floor_bytes: int = 1 << 30  # read-bandwidth buffer (32x this machine's L3)
    gemm_size: int = 3072  # square fp32 GEMM for the compute rate

    @classmethod
    def from_env(cls, **overrides) -> Config:
        env = os.environ.get
        cfg = dict(
            n=int(env("PYRAG_BENCH_N", cls.n)),
            d=int(env("PYRAG_BENCH_D", cls.d)),
            k=int(env("PYRAG_BENCH_K", cls.k)),
            batches=parse_ints(env("PYRAG_BENCH_B", "1,16,256")),
            threads=int(env("PYRAG_BENCH_THREADS", cls.threads)),
            rounds=int(env("PYRAG_BENCH_ROUNDS", cls.rounds)),
            memory_batch=int(env("PYRAG_BENCH_MEMORY_B", cls.memory_batch)),
            floor_bytes=int(env("PYRAG_BENCH_FLOOR_BYTES", cls.floor_bytes)),
            gemm_size=int(env("PYRAG_BENCH_GEMM_SIZE", cls.gemm_size)),
        )
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**cfg)

    def describe(self) -> str:
        return f"N={self.n:,} d={self.d} k={self.k} threads={self.threads}"


def cpu_model() -> str:
    """The CPU's model name, family and model (from /proc/cpuinfo where there is one)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    import platform

    name = fields.get("model name") or fields.get("CPU part") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def cpu_path() -> str:
    """The CPU path pyrag runs and, per corpus dtype, the level whose kernel runs (a level
    without its own kernel for a dtype runs the next lower one's)."""
    from pyrag import _C

    kernels = ", ".join(f"{d} {_C.cpu_kernel_isa(d)}" for d in ("float32", "bfloat16", "int8"))
    return f"CPU path {_C.cpu_isa()} (kernels: {kernels})"


def parse_ints(text: str) -> tuple[int, ...]:
    """ "1,16,256" or "100k,1M" -> (1, 16, 256) / (100000, 1000000)."""
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        out.append(int(float(part[:-1] if scale > 1 else part) * scale))
    return tuple(out)


def set_threads(n: int) -> None:
    """Every library in the comparison runs on n threads."""
    torch.set_num_threads(n)
    pyrag.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    try:  # numpy's BLAS; threadpoolctl comes with scikit-learn, when installed
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def make_corpus(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """n unit-norm Gaussian rows [n, d] float32, like normalised embeddings."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x.div_(x.norm(dim=1, keepdim=True))


def make_queries(b: int, d: int, seed: int = 1) -> torch.Tensor:
    return make_corpus(b, d, seed)


# ---------------------------------------------------------------------- providers
class Unsupported(Exception):
    """This provider cannot run here (missing package, or a feature not built yet)."""


Search = Callable[[torch.Tensor, int], object]  # (queries [B, d], k) -> (scores, ids)


@dataclass(frozen=True)
class Provider:
    name: str
    label: str  # as printed in tables
    kind: str  # "pyrag" or "baseline"
    dtype: str  # corpus dtype it scans
    exact: bool  # returns exactly the fp32 top-k (up to float rounding)
    resource: str  # what it needs built: "tensor", "faiss", "index-<dtype>"


PROVIDERS = [
    Provider("pyrag-float32", "pyrag DenseIndex float32", "pyrag", "float32", True, "index-float32"),
    Provider("pyrag-tensor", "pyrag topk_scores(tensor)", "pyrag", "float32", True, "tensor"),
    Provider("pyrag-bfloat16", "pyrag DenseIndex bfloat16", "pyrag", "bfloat16", False, "index-bfloat16"),
    Provider("pyrag-bfloat16-exact", "pyrag bfloat16 exact=True", "pyrag", "bfloat16", True, "index-bfloat16"),
    Provider("pyrag-int8", "pyrag DenseIndex int8", "pyrag", "int8", False, "index-int8"),
    Provider("pyrag-int8-exact", "pyrag int8 exact=True", "pyrag", "int8", True, "index-int8"),
    Provider("torch", "torch matmul+topk", "baseline", "float32", True, "tensor"),
    Provider("numpy", "numpy matmul+argpartition", "baseline", "float32", True, "tensor"),
    Provider("faiss-scan", "faiss IndexFlatIP scan", "baseline", "float32", True, "faiss"),
    Provider("faiss-blas", "faiss IndexFlatIP BLAS", "baseline", "float32", True, "faiss"),
]
BY_NAME = {p.name: p for p in PROVIDERS}


def index_dtype_unsupported(dtype: str, exact: bool) -> str | None:
    """Why pyrag.DenseIndex cannot serve this dtype / exact search yet, or None."""
    try:
        pyrag.DenseIndex(4, dtype=dtype)
    except (TypeError, ValueError) as e:
        return f"DenseIndex(dtype={dtype!r}) is not supported by this build: {e}"
    if exact and "exact" not in inspect.signature(pyrag.DenseIndex.search).parameters:
        return "DenseIndex.search has no exact= argument in this build"
    return None


def unsupported(name: str) -> str | None:
    """Why the provider cannot run here, or None."""
    p = BY_NAME[name]
    if p.resource.startswith("index-") and p.dtype != "float32":
        return index_dtype_unsupported(p.dtype, p.exact)
    if p.resource == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "faiss is not installed (pip install faiss-cpu)"
    return None


class Providers:
    """Builds search functions over one corpus, keeping at most `max_alive` indexes.

    A search function holds its index: drop it before asking for another provider's,
    or the evicted index stays alive while the next one is built.
    """

    def __init__(self, corpus: torch.Tensor, max_alive: int = 1):
        self.corpus = corpus
        self.max_alive = max_alive
        self._built: dict[str, object] = {}  # resource key -> index, oldest first

    def release(self) -> None:
        self._built.clear()

    def _get(self, key: str, build: Callable[[], object]):
        if key not in self._built:
            while len(self._built) >= self.max_alive:  # free the oldest before building
                self._built.pop(next(iter(self._built)))
            self._built[key] = build()
        return self._built[key]

    def search_fn(self, name: str) -> Search:
        """The provider's search(queries, k); raises Unsupported with the reason."""
        reason = unsupported(name)
        if reason:
            raise Unsupported(reason)
        p = BY_NAME[name]
        x = self.corpus
        if p.resource.startswith("index-"):
            index = self._get(p.resource, lambda: _build_index(x, p.dtype))
            if p.dtype == "float32":
                return lambda q, k: index.search(q, k)
            return lambda q, k: index.search(q, k, exact=p.exact)
        if name == "pyrag-tensor":
            return lambda q, k: pyrag.topk_scores(q, x, k)
        if name == "torch":
            return lambda q, k: torch.topk(q @ x.T, k, dim=1)
        if name == "numpy":
            xn = x.numpy()
            return lambda q, k: _numpy_topk(q.numpy(), xn, k)
        if p.resource == "faiss":
            import faiss

            index = self._get("faiss", lambda: _build_faiss(x))
            # FAISS scans with SIMD below this many queries and calls BLAS from it up.
            threshold = 1 << 30 if name == "faiss-scan" else 0

            def search(q, k):
                faiss.cvar.distance_compute_blas_threshold = threshold
                return index.search(q.numpy(), k)

            return search
        raise KeyError(f"unknown provider {name!r}")


def _build_index(x: torch.Tensor, dtype: str):
    index = pyrag.DenseIndex(x.shape[1], dtype=dtype)
    index.add(x)
    return index


def _build_faiss(x: torch.Tensor):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x.numpy())
    return index


def _numpy_topk(q: np.ndarray, x: np.ndarray, k: int):
    scores = q @ x.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def result_ids(result) -> torch.Tensor:
    """The ids of any provider's result, as an int64 tensor [B, k]."""
    ids = result[1]
    return torch.as_tensor(np.asarray(ids), dtype=torch.int64)


def recall_at_k(ids: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean fraction of each query's true top-k ids that appear in its returned top-k."""
    hits = (ids.unsqueeze(2) == truth.unsqueeze(1)).any(dim=1) & (truth >= 0)
    return float(hits.sum()) / float((truth >= 0).sum())


# ---------------------------------------------------------------------- timing
def time_search(fn: Search, q: torch.Tensor, k: int, rounds: int, warmup: int = 1):
    """(seconds of each of `rounds` timed calls, the last result), after `warmup` calls."""
    times, outs = time_interleaved({"": fn}, q, k, rounds, warmup)
    return times[""], outs[""]


def time_interleaved(fns: dict, q: torch.Tensor, k: int, rounds: int, warmup: int = 1, budget_s: float = 30.0):
    """({name: seconds per round}, {name: last result}) for several search functions,
    taking turns within each round, so that a slow spell of a shared machine hits
    them all alike instead of whichever ran during it.

    Slow cases get fewer rounds (at least 2) so that all rounds together take about
    budget_s: FAISS's forced scan at B=256 over 1M rows takes tens of seconds a call.
    """
    outs = {}
    t0 = time.perf_counter()
    for _ in range(warmup):
        for name, fn in fns.items():
            outs[name] = fn(q, k)
    per_round = (time.perf_counter() - t0) / max(warmup, 1)
    rounds = max(min(rounds, 2), min(rounds, int(budget_s / max(per_round, 1e-9))))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn(q, k)
            times[name].append(time.perf_counter() - t0)
    return times, outs


@dataclass
class Results:
    """Everything one run measured, for the report tables."""

    cfg: Config
    rates: list = field(default_factory=list)  # floor.MachineRates, start and end of run
    times: dict = field(default_factory=dict)  # (provider, B) -> [seconds]
    ids: dict = field(default_factory=dict)  # (provider, B) -> ids [B, k]
    memory: dict = field(default_factory=dict)  # provider -> peak_memory.MemoryGrowth
    skipped: dict = field(default_factory=dict)  # provider -> reason
    load: list = field(default_factory=list)  # 1-minute load average, start and end
    round_reads: dict = field(default_factory=dict)  # B -> read bytes/s of the probes in pyrag's rounds
    machine: str = ""  # the CPU and pyrag's CPU path during the run

    def record_machine(self) -> None:
        self.machine = f"{cpu_model()}, {cpu_path()}; torch's CPU capability {torch.backends.cpu.get_cpu_capability()}"

    def measure_rates(self) -> None:
        self.rates.append(floor.measure(self.cfg.threads, self.cfg.floor_bytes, self.cfg.gemm_size))

    def best(self, provider: str, b: int) -> float | None:
        t = self.times.get((provider, b))
        return min(t) if t else None

    def record_load(self) -> None:
        if hasattr(os, "getloadavg"):
            self.load.append(os.getloadavg()[0])


# The pytest suites' Results, printed by conftest.py's terminal summary.
SESSION_RESULTS: list[Results] = []
