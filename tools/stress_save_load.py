"""Stress the index files under concurrency: `save` racing `add` / `remove` on another
thread, and `load` racing `save` in another process. Every loaded file is checked
exactly against what it must hold (integer-valued vectors, so every score is exact):

    python tools/stress_save_load.py --saves 600 --loads 300          # the measured run
    python tools/stress_save_load.py --saves 40 --loads 30            # what CI runs (tests/)

Prints, per dtype, how many files were saved / loaded, how many could not be loaded and
how many loaded something else than what was saved. tests/test_concurrency_files.py
runs the same functions with small counts.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

import pyrag

DIM = 32
DTYPES = ("float32", "bfloat16", "int8")


def process_context() -> mp.context.BaseContext:
    """Where test processes start: a fork server that imported torch and pyrag once (a
    fresh interpreter per process would import them again, seconds each)."""
    ctx = mp.get_context("forkserver")
    # torch._dynamo: the first optimiser imports it (seconds); once, in the server.
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "pyrag", "pyrag.train", "pyrag.reindex"])
    return ctx


def vectors(ids: torch.Tensor, salt: int = 0, dim: int = DIM) -> torch.Tensor:
    """The vector of each id: integers in [-127, 127], the first one 127, so that bf16 and
    int8 (scale 1) store them exactly and every inner product is exact in float32."""
    j = torch.arange(dim, dtype=torch.int64)
    v = (ids[:, None] * 1103515245 + j[None, :] * 12345 + salt * 7919) % 255 - 127
    v[:, 0] = 127
    return v.to(torch.float32)


def queries(n: int = 4, dim: int = DIM) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (n, dim), generator=g)
    q[:, 0] = 127  # int8 queries are quantised with scale 1: exactly
    return q.to(torch.float32)


def expected_search(ids: torch.Tensor, salt: int, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by brute force: scores descending, ties to the smaller id, -inf / -1 padding."""
    b = q.shape[0]
    scores = torch.full((b, k), float("-inf"))
    found = torch.full((b, k), -1, dtype=torch.int64)
    if ids.numel():
        by_id = torch.argsort(ids)
        s = (q @ vectors(ids, salt, q.shape[1]).T)[:, by_id]
        order = torch.argsort(-s, dim=1, stable=True)[:, :k]  # stable: ties keep the id order
        m = order.shape[1]
        scores[:, :m] = torch.gather(s, 1, order)
        found[:, :m] = ids[by_id][order]
    return scores, found


def check_index(index: pyrag.DenseIndex, ids: torch.Tensor, salt: int) -> str | None:
    """None if `index` holds exactly the vectors(ids, salt) in that row order, else what differs."""
    if not torch.equal(index.ids, ids):
        return f"ids differ: {len(index)} rows, expected {ids.numel()}"
    if ids.numel() and not torch.equal(index.get(ids), vectors(ids, salt, index.dim)):
        return "stored vectors differ"
    q = queries(dim=index.dim)
    k = min(ids.numel(), 5) + 1  # one padding column
    want = expected_search(ids, salt, q, k)
    exact_modes = [False, True] if index.keep_originals else [False]
    for exact in exact_modes:
        got = index.search(q, k, exact=exact)
        if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
            return f"search(exact={exact}) differs"
    if index.dtype != "float32" and index.keep_originals and ids.numel():
        # k = n: every row is rescored from the float32 originals, so a mixed-in file shows.
        got = index.search(q, ids.numel(), exact=True)
        if not torch.equal(got[0], expected_search(ids, salt, q, ids.numel())[0]):
            return "the float32 originals differ"
    return None


@dataclass
class Tally:
    dtype: str
    saves: int = 0
    loads: int = 0
    unloadable: int = 0
    wrong: int = 0
    max_rows: int = 0
    first_problem: str | None = None

    def note(self, problem: str) -> None:
        if self.first_problem is None:
            self.first_problem = problem

    def line(self, what: str) -> str:
        return (
            f"{what:<22} {self.dtype:<9} saves {self.saves:>5}  loads {self.loads:>5}  "
            f"unloadable {self.unloadable}  wrong {self.wrong}  (up to {self.max_rows} rows)"
            + (f"  first problem: {self.first_problem}" if self.first_problem else "")
        )


# --------------------------------------------------------------------------- save racing add
def save_racing_add(dtype: str, saves: int, directory: str, *, batch: int = 7, max_rows: int = 3000) -> Tally:
    """One thread adds `batch` rows at a time (and removes the oldest rows past
    `max_rows`) while this one saves the index and loads back every file it wrote. Each
    loaded file must hold exactly the rows of the version it records."""
    index = pyrag.DenseIndex(DIM, dtype)
    path = os.path.join(directory, f"racing-add-{dtype}.safetensors")
    history: dict[int, tuple[int, int]] = {0: (0, 0)}  # version -> the id range [lo, hi) it holds
    stop = threading.Event()
    errors: list[BaseException] = []

    def mutate() -> None:
        lo = hi = 0
        try:
            while not stop.is_set():
                if hi - lo > max_rows:
                    cut = lo + (hi - lo) // 2
                    history[index.version + 1] = (cut, hi)  # recorded before any save can see it
                    index.remove(range(lo, cut))
                    lo = cut
                else:
                    ids = torch.arange(hi, hi + batch)
                    history[index.version + 1] = (lo, hi + batch)
                    index.add(vectors(ids), ids)
                    hi += batch
        except BaseException as e:  # pragma: no cover - reported by the caller
            errors.append(e)

    tally = Tally(dtype)
    worker = threading.Thread(target=mutate, daemon=True)
    worker.start()
    try:
        for s in range(saves):
            index.save(path)
            tally.saves += 1
            try:
                loaded = pyrag.DenseIndex.load(path, mmap=bool(s % 2))
            except Exception as e:
                tally.unloadable += 1
                tally.note(f"{type(e).__name__}: {e}")
                continue
            tally.loads += 1
            lo, hi = history[loaded.version]
            tally.max_rows = max(tally.max_rows, len(loaded))
            problem = check_index(loaded, torch.arange(lo, hi), 0)
            if problem is not None:
                tally.wrong += 1
                tally.note(f"version {loaded.version}: {problem}")
    finally:
        stop.set()
        worker.join()
    if errors:
        raise errors[0]
    return tally


# --------------------------------------------------------------------------- load racing save
STATES = ((0, 900), (1, 2500), (2, 40))  # (salt, rows) of the indexes a saver alternates between


def _saver(path: str, dtype: str, progress: Connection, sharded: bool = False) -> None:
    """Saves the STATES over `path` round and round, reporting each save, until killed.
    sharded: as a ShardedIndex (on a group of one) into the directory `path`."""
    torch.set_num_threads(1)
    indexes: list = []
    if sharded:
        from kill_writers import group_of_one

        from pyrag.distributed import ShardedIndex

        group_of_one()
    for salt, rows in STATES:
        index = ShardedIndex(DIM, dtype) if sharded else pyrag.DenseIndex(DIM, dtype)
        ids = torch.arange(rows) * 3 + salt  # each state its own ids, sizes and vectors
        index.add(vectors(ids, salt), ids)
        indexes.append(index)
    indexes[0].save(path, metadata={"state": "0"})
    progress.send(0)
    i = 0
    while True:
        i += 1
        indexes[i % len(STATES)].save(path, metadata={"state": str(i % len(STATES))})
        progress.send(i)


def load_racing_save(dtype: str, loads: int, directory: str, *, sharded: bool = False) -> Tally:
    """Another process saves three different indexes over one path, round and round,
    while this one loads the path (mmap and not, in turn) and checks that each load is
    one of the three, whole: its ids, vectors, scores and float32 originals.
    sharded: ShardedIndex saves and loads (a group of one in each process)."""
    path = os.path.join(directory, f"racing-load-{dtype}" + ("-sharded" if sharded else ".safetensors"))
    ctx = process_context()
    receive, send = ctx.Pipe(duplex=False)  # not shared semaphores: the saver is killed
    saver = ctx.Process(target=_saver, args=(path, dtype, send, sharded), daemon=True)
    saver.start()
    send.close()
    tally = Tally(dtype)
    try:
        if not receive.poll(120):
            raise RuntimeError("the saver process did not start")
        for i in range(loads):
            try:
                if sharded:
                    from pyrag.distributed import ShardedIndex

                    whole = ShardedIndex.load(path, mmap=bool(i % 2))
                    loaded = whole.shard
                    loaded.metadata = whole.metadata
                else:
                    loaded = pyrag.DenseIndex.load(path, mmap=bool(i % 2))
            except Exception as e:
                tally.unloadable += 1
                tally.note(f"{type(e).__name__}: {e}")
                continue
            tally.loads += 1
            salt, rows = STATES[int(loaded.metadata["state"])]
            tally.max_rows = max(tally.max_rows, len(loaded))
            problem = check_index(loaded, torch.arange(rows) * 3 + salt, salt)
            if problem is not None:
                tally.wrong += 1
                tally.note(f"state {salt}: {problem}")
    finally:
        saver.kill()  # its temp file, if it was saving, is removed by the next save there
        saver.join()
        while receive.poll():
            try:
                tally.saves = receive.recv()
            except EOFError:
                break
        receive.close()
    return tally


def group_of_one():  # type: ignore[no-untyped-def]
    from kill_writers import group_of_one as make

    return make()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=600, help="saves racing add, per dtype")
    parser.add_argument("--loads", type=int, default=300, help="loads racing save, per dtype")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    bad = 0
    with tempfile.TemporaryDirectory() as directory:
        totals = {"saves": 0, "loads": 0, "unloadable": 0, "wrong": 0}
        undo = group_of_one()
        sharded_load = functools.partial(load_racing_save, sharded=True)
        for what, run, count in (
            ("save racing add", save_racing_add, args.saves),
            ("load racing save", load_racing_save, args.loads),
            ("ShardedIndex load racing save", sharded_load, args.loads),
        ):
            for dtype in args.dtypes:
                t0 = time.perf_counter()
                tally = run(dtype, count, directory)
                print(tally.line(what) + f"  {time.perf_counter() - t0:.0f} s", flush=True)
                bad += tally.unloadable + tally.wrong
                for key in totals:
                    totals[key] += getattr(tally, key)
        undo()
        print(
            f"total: {totals['saves']} saves, {totals['loads']} loads, "
            f"{totals['unloadable']} unloadable, {totals['wrong']} wrong"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
