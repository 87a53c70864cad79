"""SIGKILL every writer of pyrag's files at random moments and check what it leaves.

Each trial starts a process that writes states k, k+1, ... of one writer back to back,
kills it with SIGKILL after a random delay, then checks that:

  1. the files load, and hold one whole state: the last one the writer finished, or the
     one it was renaming into place when it died (never a mix, never an error);
  2. the next write (here, in this process) succeeds and leaves 0 temporary files:
     whatever the killed writer left behind is removed by it.

    python tools/kill_writers.py --trials 30          # the measured run
    python tools/kill_writers.py --trials 2           # what CI runs (tests/test_kill_writers.py)

WRITERS lists every writer. A new file format adds one entry: write(directory, k) writes
state k, read(directory) loads what is there, checks it against the state it claims and
returns that k, and leftovers(directory) lists what a killed write left behind.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

import pyrag
from pyrag.index import storage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stress_save_load import DIM, check_index, process_context, vectors


@dataclass(frozen=True)
class Writer:
    name: str
    prepare: Callable[[int], Any]  # builds state k in memory
    commit: Callable[[Any, str], None]  # writes a prepared state into the directory: the writer under test
    read: Callable[[str], int]  # loads the directory, checks it whole, returns its k
    leftovers: Callable[[str], list[str]]  # files other than the state: what a killed write left
    window_s: float  # kills land uniformly in [0, window_s] after the first commit starts
    release: Callable[[Any], None] = lambda state: None
    setup: Callable[[], Callable[[], None]] = lambda: lambda: None  # per process; returns its undo

    def write(self, directory: str, k: int) -> None:
        state = self.prepare(k)
        try:
            self.commit(state, directory)
        finally:
            self.release(state)


def _dense_leftovers(directory: str) -> list[str]:
    """Everything but the index file."""
    return sorted(e for e in os.listdir(directory) if e != "index.safetensors")


# ----------------------------------------------------------------------------- DenseIndex.save
DENSE_ROWS = 20000


def _dense_rows(k: int) -> int:
    return DENSE_ROWS + (k % 5) * 97  # sizes differ from state to state


def _dense_prepare(dtype: str) -> Callable[[int], Any]:
    def prepare(k: int) -> tuple[pyrag.DenseIndex, int]:
        index = pyrag.DenseIndex(DIM, dtype)
        ids = torch.arange(_dense_rows(k))
        index.add(vectors(ids, k), ids)
        return index, k

    return prepare


def _dense_commit(state: tuple[pyrag.DenseIndex, int], directory: str) -> None:
    index, k = state
    index.save(os.path.join(directory, "index.safetensors"), metadata={"state": str(k)})


def _dense_read(directory: str) -> int:
    index = pyrag.DenseIndex.load(os.path.join(directory, "index.safetensors"))
    k = int(index.metadata["state"])
    problem = check_index(index, torch.arange(_dense_rows(k)), k)
    if problem is not None:
        raise AssertionError(f"state {k}: {problem}")
    return k


# ----------------------------------------------------------------------------- Trainer checkpoints
CKPT_ROWS, CKPT_FEATURES = 8000, 8


def _trainer(k: int) -> Any:
    """A small trainer whose whole state (weights, learning rates, step, evals and the
    reindexer's index with its version) is a function of k."""
    from pyrag.reindex import AsyncReindexer
    from pyrag.train import Example, TrainConfig, Trainer

    g = torch.Generator().manual_seed(1000 + k)
    query_encoder = torch.nn.Linear(CKPT_FEATURES, DIM, bias=False)
    passage_encoder = torch.nn.Linear(CKPT_FEATURES, DIM, bias=False)
    with torch.no_grad():
        query_encoder.weight.copy_(torch.randn(DIM, CKPT_FEATURES, generator=g))
        passage_encoder.weight.copy_(torch.randn(DIM, CKPT_FEATURES, generator=g))
    features = torch.zeros(CKPT_ROWS, CKPT_FEATURES)
    ids = torch.arange(CKPT_ROWS)
    index = pyrag.DenseIndex(DIM, "bfloat16")
    index.add(vectors(ids, k), ids)
    reindexer = AsyncReindexer(passage_encoder, features, index=index, schedule="none", progress=False)
    reindexer.restore(index, version=k, step=k)
    retriever = pyrag.Retriever(query_encoder, reindexer.index, passages=features, passage_encoder=passage_encoder)
    cfg = TrainConfig(mode="dpr", train_passage_encoder=True, batch_size=2, steps=10**6)
    trainer = Trainer(
        retriever, cfg, [Example("q", "a", 0)] * 2, reindexer=reindexer, progress=False, log=lambda line: None
    )
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-3 * (k + 1)
    trainer.restore_state(k, [(k, k / 100)])
    return trainer


def _checkpoint_commit(trainer: Any, directory: str) -> None:
    trainer.save_checkpoint(directory)


def _checkpoint_release(trainer: Any) -> None:
    trainer.reindexer.close()


def _checkpoint_read(directory: str) -> int:
    trainer = _trainer(0)
    with trainer.reindexer:
        trainer.load_checkpoint(directory)
        k = trainer.state.step
        want = _trainer(k)
        with want.reindexer:
            for role, module in want.trainable_modules().items():
                got = trainer.trainable_modules()[role].state_dict()
                if any(not torch.equal(got[n], t) for n, t in module.state_dict().items()):
                    raise AssertionError(f"state {k}: {role} weights differ")
            if [g["lr"] for g in trainer.optimizer.param_groups] != [g["lr"] for g in want.optimizer.param_groups]:
                raise AssertionError(f"state {k}: learning rates differ")
        if trainer.state.evals != [(k, k / 100)] or trainer.reindexer.version != k:
            raise AssertionError(f"state {k}: evals or index version differ")
        problem = check_index(trainer.reindexer.index.snapshot().index, torch.arange(CKPT_ROWS), k)
        if problem is not None:
            raise AssertionError(f"state {k}: the checkpoint's index: {problem}")
    return k


def _checkpoint_leftovers(directory: str) -> list[str]:
    """Everything but trainer.safetensors and the index it names: temp files, and an
    index file of a save killed between the index and the state file."""
    _, meta = storage.load_tensors(os.path.join(directory, "trainer.safetensors"), verify=False)
    return sorted(e for e in os.listdir(directory) if e not in ("trainer.safetensors", meta.get("index")))


# ----------------------------------------------------------------------------- TextIndex.add_texts
TEXT_BATCH, TEXT_DIM = 200, 32


def text_encoder(texts: list[str]) -> torch.Tensor:
    """A deterministic encoder: integer-valued vectors from a hash of the text (exact in
    every dtype, see stress_save_load.vectors)."""
    import hashlib

    keys = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:6], "little") for t in texts]
    return vectors(torch.tensor(keys, dtype=torch.int64), 0, TEXT_DIM)


def _text_batch(k: int) -> tuple[list[str], list[str], list[dict]]:
    ids = [f"b{k}-{i}" for i in range(TEXT_BATCH)]
    return [f"passage {x}" for x in ids], ids, [{"batch": k} for _ in ids]


def _text_commit(k: int, directory: str) -> None:
    """State k: the store holds batches 0..k, added one add_texts call each."""
    from pyrag.text import TextIndex

    path = os.path.join(directory, "store")
    texts, ids, metadatas = _text_batch(k)
    if k == 0:
        TextIndex.from_texts(texts, text_encoder, metadatas, ids, path=path).close()
        return
    with TextIndex.load(path, encoder=text_encoder) as index:
        index.add_texts(texts, metadatas, ids)


def _text_read(directory: str) -> int:
    from pyrag.text import TextIndex

    with TextIndex.load(os.path.join(directory, "store"), encoder=text_encoder) as index:
        ids = index.ids
        k = len(ids) // TEXT_BATCH - 1
        want = [x for j in range(k + 1) for x in _text_batch(j)[1]]
        if sorted(ids) != sorted(want):
            raise AssertionError(f"the store holds {len(ids)} passages, not batches 0..{k} whole")
        passages = index.get(want)
        texts = [p.text for p in passages]
        if texts != [f"passage {x}" for x in want] or [p.metadata["batch"] for p in passages] != [
            int(x[1:].split("-")[0]) for x in want
        ]:
            raise AssertionError(f"state {k}: texts or metadata differ")
        if not torch.equal(index.get_vectors(want), text_encoder(texts)):
            raise AssertionError(f"state {k}: vectors disagree with the texts")
    return k


def _text_leftovers(directory: str) -> list[str]:
    """Everything in the store but SQLite's files and the committed generation's vectors."""
    import sqlite3

    path = os.path.join(directory, "store")
    with sqlite3.connect(os.path.join(path, "passages.sqlite")) as db:
        gen = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    db.close()
    sqlite_files = {"passages.sqlite", "passages.sqlite-wal", "passages.sqlite-shm", "vectors"}
    top = [e for e in os.listdir(path) if e not in sqlite_files]
    vec = [f"vectors/{e}" for e in os.listdir(os.path.join(path, "vectors")) if e != f"{gen:012d}.pyrag"]
    return sorted(top + vec)


# ----------------------------------------------------------------------------- ShardedIndex.save
SHARDED_ROWS = 6000


def group_of_one() -> Callable[[], None]:
    """A torch.distributed group of one rank (gloo) for ShardedIndex in this process; returns
    what tears it down (nothing if a group was already there)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return lambda: None
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # An in-memory store: no rendezvous file for a killed trial to leave behind.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return dist.destroy_process_group


def _sharded_prepare(k: int) -> Any:
    from pyrag.distributed import ShardedIndex

    index = ShardedIndex(DIM, "int8")
    ids = torch.arange(SHARDED_ROWS + (k % 5) * 97)
    index.add(vectors(ids, k), ids)
    return index, k


def _sharded_commit(state: Any, directory: str) -> None:
    index, k = state
    index.save(os.path.join(directory, "sharded"), metadata={"state": str(k)})


def _sharded_read(directory: str) -> int:
    from pyrag.distributed import ShardedIndex

    index = ShardedIndex.load(os.path.join(directory, "sharded"))
    k = int(index.metadata["state"])
    problem = check_index(index.shard, torch.arange(SHARDED_ROWS + (k % 5) * 97), k)
    if problem is not None:
        raise AssertionError(f"state {k}: {problem}")
    return k


def _sharded_leftovers(directory: str) -> list[str]:
    """Everything but the manifest and the shard files it names."""
    from pyrag.distributed import manifest

    path = os.path.join(directory, "sharded")
    doc = manifest.read(path)
    keep = {"manifest.json"} | {s["file"] for s in doc["shards"]}
    return sorted(e for e in os.listdir(path) if e not in keep)


WRITERS: list[Writer] = [
    *(
        Writer(f"DenseIndex.save {dtype}", _dense_prepare(dtype), _dense_commit, _dense_read, _dense_leftovers, 0.2)
        for dtype in ("float32", "bfloat16", "int8")
    ),
    Writer(
        "Trainer.save_checkpoint",
        _trainer,
        _checkpoint_commit,
        _checkpoint_read,
        _checkpoint_leftovers,
        0.4,
        _checkpoint_release,
    ),
    Writer("TextIndex.add_texts", lambda k: k, _text_commit, _text_read, _text_leftovers, 0.5),
    Writer(
        "ShardedIndex.save",
        _sharded_prepare,
        _sharded_commit,
        _sharded_read,
        _sharded_leftovers,
        0.3,
        setup=group_of_one,
    ),
]


AHEAD = 8  # states prepared before the first commit, so that kills land in commits


def _child(name: str, directory: str, start: int, progress: Connection) -> None:
    """Writes states start, start + 1, ... and reports each one written whole."""
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a killed process leaks.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(1)
    writer = next(w for w in WRITERS if w.name == name)
    writer.setup()
    prepared = [writer.prepare(k) for k in range(start, start + AHEAD)]
    progress.send(-1)  # started
    k = start
    while True:
        writer.commit(prepared.pop(0) if prepared else writer.prepare(k), directory)
        progress.send(k)
        k += 1


@dataclass
class Result:
    name: str
    trials: int = 0
    loadable: int = 0
    killed_mid_write: int = 0  # trials whose kill left a temp file behind
    leftovers_after_next_write: int = 0
    problems: list[str] | None = None


def run_trials(writer: Writer, trials: int, directory: str, seed: int = 0) -> Result:
    ctx = process_context()
    rng = random.Random(seed)
    result = Result(writer.name, problems=[])
    assert result.problems is not None
    undo = writer.setup()
    try:
        _trials(writer, trials, directory, ctx, rng, result)
    finally:
        undo()
    return result


def _trials(writer: Writer, trials: int, directory: str, ctx: Any, rng: random.Random, result: Result) -> None:
    assert result.problems is not None
    writer.write(directory, 0)
    last = 0
    for _ in range(trials):
        # A pipe, not shared semaphores: a killed child would leak those.
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(writer.name, directory, last + 1, send), daemon=True)
        child.start()
        send.close()
        if not receive.poll(120) or receive.recv() != -1:
            raise RuntimeError(f"{writer.name}: the writer process did not start")
        time.sleep(rng.uniform(0, writer.window_s))
        child.kill()
        child.join()
        finished = last
        while receive.poll():
            try:
                finished = receive.recv()  # the last state written whole
            except EOFError:
                break
        receive.close()
        result.trials += 1
        left = writer.leftovers(directory)
        result.killed_mid_write += bool(left)
        try:
            k = writer.read(directory)
            if not finished <= k <= finished + 1:
                raise AssertionError(f"loaded state {k}, but the writer had finished state {finished}")
            result.loadable += 1
        except Exception as e:
            result.problems.append(f"{type(e).__name__}: {e}")
            k = finished
        writer.write(directory, k + 1)  # the next write cleans up after the killed one
        left = writer.leftovers(directory)
        result.leftovers_after_next_write += len(left)
        if left:
            result.problems.append(f"left after the next write: {left}")
        last = k + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30, help="kills per writer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="run the writers whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    failed = False
    for writer in (w for w in WRITERS if args.only in w.name):
        with tempfile.TemporaryDirectory() as directory:
            t0 = time.perf_counter()
            r = run_trials(writer, args.trials, directory, args.seed)
            ok = r.loadable == r.trials and r.leftovers_after_next_write == 0
            failed |= not ok
            print(
                f"{r.name:<26} trials {r.trials:>3}  previous state loadable {r.loadable}/{r.trials} "
                f"({100 * r.loadable / max(r.trials, 1):.0f}%)  kills mid-write (temp file left) "
                f"{r.killed_mid_write}  temp files after the next write {r.leftovers_after_next_write}  "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for p in (r.problems or [])[:5]:
                print("   ", p)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
