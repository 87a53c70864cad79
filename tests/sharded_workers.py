"""What each rank runs in the multi-process tests of pyrag.distributed
(tests/test_sharded_index.py, tests/test_distributed_reindex.py).

The tests start the ranks with torch.multiprocessing (spawn): `main` joins a gloo group on
loopback and runs one scenario; a failed check writes its traceback for the test to show.
Every rank builds the same data from a seed, so each can hold the oracle: one DenseIndex
with every row, against which the ShardedIndex must agree bit for bit.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import pyrag
from pyrag.distributed import CollectiveError, ShardedIndex

DTYPES = ("float32", "bfloat16", "int8")


def main(scenarios: list[tuple], rank: int, world: int, init: str, out: str, timeout_s: float) -> None:
    """The entry point of a spawned rank: runs the scenarios ((name, *args) each) in turn."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    pyrag.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init}", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
        for name, *args in scenarios:
            globals()[name](rank, world, Path(out), *args)
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)  # without destroying a group other ranks may still wait on
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- checks
def same(got: tuple, want: tuple, what: str) -> None:
    """Bit-for-bit equality of (scores, ids) results."""
    gs, gi = (torch.as_tensor(t) for t in got)
    ws, wi = (torch.as_tensor(t) for t in want)
    assert gs.shape == ws.shape and gi.shape == wi.shape, f"{what}: shapes {gs.shape} vs {ws.shape}"
    assert torch.equal(gi, wi), f"{what}: ids differ\n{gi}\n{wi}"
    assert torch.equal(gs.contiguous().view(torch.int32), ws.contiguous().view(torch.int32)), f"{what}: scores differ"


def raises(exc: type, match: str, fn, *args, **kwargs) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except exc as e:
        assert match in str(e), f"expected {exc.__name__} with {match!r}, got {e!r}"
        return e
    raise AssertionError(f"expected {exc.__name__} ({match!r}), nothing raised")


def gather_ints(*values: int) -> list[list[int]]:
    t = torch.tensor(values, dtype=torch.int64)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [p.tolist() for p in parts]


# ----------------------------------------------------------------------------- data
def dataset(sizes: list[int], dim: int, seed: int, *, user_ids: bool, gaussian: bool = False):  # type: ignore[no-untyped-def]
    """Rows (integer-valued unless gaussian, with repeated rows so that scores tie across
    shards), their ids (None: automatic), dealt to the ranks by `sizes`."""
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    rows = torch.randn(total, dim, generator=g) if gaussian else torch.randint(-3, 4, (total, dim), generator=g).float()
    copies = rows[3::4].shape[0]
    rows[3::4] = rows[:copies]  # the same vector on two ranks (usually): equal scores, ties by id
    ids = None
    if user_ids:  # large, and not increasing within a shard
        ids = torch.randperm(total * 5, generator=g)[:total] * 7 + 10**12
    return rows, ids


def queries(counts: list[int], dim: int, seed: int, *, gaussian: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    q = (
        torch.randn(sum(counts), dim, generator=g)
        if gaussian
        else torch.randint(-2, 3, (sum(counts), dim), generator=g).float()
    )
    return q


def part(t, sizes: list[int], rank: int):  # type: ignore[no-untyped-def]
    if t is None:
        return None
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def build(sizes, dim, dtype, rows, ids, rank):  # type: ignore[no-untyped-def]
    sharded = ShardedIndex(dim, dtype)
    got = sharded.add(part(rows, sizes, rank), part(ids, sizes, rank))
    reference = pyrag.DenseIndex(dim, dtype)
    all_ids = reference.add(rows, ids)
    assert torch.equal(got, part(all_ids, sizes, rank)), "ids of the added rows"
    assert len(sharded) == len(reference) and sharded.local_len == sizes[rank]
    return sharded, reference


def compare_searches(sharded, reference, q, ks, what):  # type: ignore[no-untyped-def]
    for k in ks:
        for exact in (False, True):
            same(sharded.search(q, k, exact=exact), reference.search(q, k, exact=exact), f"{what} k={k} exact={exact}")


# ----------------------------------------------------------------------------- scenarios
CASES = {
    # world: [(row counts by rank, query counts by rank, dim)]
    2: [([9, 0], [3, 1], 24), ([1, 30], [0, 5], 37), ([16, 17], [4, 4], 16)],
    3: [([0, 5, 40], [2, 0, 3], 24), ([7, 7, 7], [1, 1, 0], 33)],
    4: [([3, 0, 21, 2], [0, 2, 1, 3], 24), ([10, 11, 12, 13], [2, 2, 2, 2], 40)],
}


def equivalence(rank: int, world: int, out: Path, save_to: str = "") -> None:
    """Every dtype, exact or not, uneven and empty shards, B_r = 0, k past every shard and
    the total, ties across shards, automatic and user ids: the same results as one
    DenseIndex, bit for bit. Then get, remove, add after remove, snapshots, a Retriever."""
    for case, (sizes, counts, dim) in enumerate(CASES[world]):
        for user_ids in (False, True):
            rows, ids = dataset(sizes, dim, seed=case, user_ids=user_ids)
            q = part(queries(counts, dim, seed=case), counts, rank)
            ks = [1, 3, max(sizes) + 1, sum(sizes) + 4]
            for dtype in DTYPES:
                sharded, reference = build(sizes, dim, dtype, rows, ids, rank)
                compare_searches(sharded, reference, q, ks, f"case {case} {dtype} user_ids={user_ids}")
    # All queries on one rank; one query as a 1-D tensor; numpy in, numpy out.
    sizes, dim = CASES[world][0][0], CASES[world][0][2]
    rows, ids = dataset(sizes, dim, seed=7, user_ids=True)
    for dtype in DTYPES:
        sharded, reference = build(sizes, dim, dtype, rows, ids, rank)
        q = queries([6], dim, seed=7) if rank == world - 1 else torch.empty(0, dim)
        compare_searches(sharded, reference, q, [2, 50], f"one rank asks, {dtype}")
        q1 = queries([1], dim, seed=8)[0]
        same(sharded.search(q1, 5), reference.search(q1, 5), "1-D query")
        got = sharded.search(q1.numpy(), 5)
        assert type(got[0]).__name__ == "ndarray"
        same(got, reference.search(q1.numpy(), 5), "numpy query")
    # Real-valued data: the same kernel scores each (query, row) pair wherever the row is.
    sizes, counts, dim = CASES[world][-1]
    rows, ids = dataset(sizes, dim, seed=11, user_ids=True, gaussian=True)
    q = part(queries(counts, dim, seed=11, gaussian=True), counts, rank)
    for dtype in DTYPES:
        sharded, reference = build(sizes, dim, dtype, rows, ids, rank)
        compare_searches(sharded, reference, q, [1, 10], f"gaussian {dtype}")

    get_remove_add(rank, world)
    retriever_and_snapshot(rank, world)
    if save_to:
        save_indexes(rank, world, Path(save_to))


def get_remove_add(rank: int, world: int) -> None:
    sizes, counts, dim = CASES[world][0]
    sizes = [s + 3 for s in sizes]
    rows, ids = dataset(sizes, dim, seed=3, user_ids=True)
    for dtype in DTYPES:
        sharded, reference = build(sizes, dim, dtype, rows, ids, rank)
        # get: any ids, from any rank, any shape, -1 gives zeros.
        g = torch.Generator().manual_seed(rank)
        ask = ids[torch.randint(0, len(ids), (2, 5), generator=g)]
        ask[0, 1] = -1
        got = sharded.get(ask)
        assert got.shape == (2, 5, dim) and torch.equal(got, reference.get(ask)), f"get {dtype}"
        empty = sharded.get(torch.empty(0, dtype=torch.int64))
        assert empty.shape == (0, dim)
        # An unknown id on one rank: a KeyError on every rank.
        bad = [int(ids[0]), 5] if rank == world - 1 else [int(ids[1])]
        raises(KeyError, "ids not in the index: [5]", sharded.get, bad)
        # remove: ids of other ranks; unknown ids change nothing anywhere.
        version, count = sharded.version, len(sharded)
        raises(KeyError, "ids not in the index: [6]", sharded.remove, [6] if rank == 0 else [])
        raises(ValueError, "duplicates", sharded.remove, [int(ids[0])])  # every rank passes it
        assert (sharded.version, len(sharded)) == (version, count)
        mine = [int(i) for i in ids[rank :: 2 * world]]
        every = [i for r in range(world) for i in [int(x) for x in ids[r :: 2 * world]]]
        assert sharded.remove(mine) == len(every) == reference.remove(every)
        assert len(sharded) == len(reference) and sharded.version == version + 1
        q = queries([3], dim, seed=5)
        compare_searches(sharded, reference, q, [2, len(reference) + 1], f"after remove {dtype}")
        # Automatic ids continue from the largest id on any rank, in rank order.
        extra = torch.randint(-3, 4, (2 * world, dim), generator=torch.Generator().manual_seed(9)).float()
        new = sharded.add(extra[2 * rank : 2 * rank + 2])
        assert torch.equal(new, reference.add(extra)[2 * rank : 2 * rank + 2])
        compare_searches(sharded, reference, q, [4], f"after add {dtype}")
        # Explicit ids already on another rank (or given twice): a ValueError everywhere, nothing added.
        version, count, local = sharded.version, len(sharded), sharded.local_len
        clash = [int(reference.ids[-1])] if rank == 0 else [10**16 + rank]  # the last rank's newest row
        raises(ValueError, "already in the index", sharded.add, extra[: len(clash)], clash)
        raises(ValueError, "more than one rank", sharded.add, extra[:1], [10**17])
        assert (sharded.version, len(sharded), sharded.local_len) == (version, count, local)


def retriever_and_snapshot(rank: int, world: int) -> None:
    sizes, counts, dim = CASES[world][1]
    rows, ids = dataset(sizes, dim, seed=4, user_ids=True)
    for dtype in DTYPES:
        sharded, reference = build(sizes, dim, dtype, rows, ids, rank)
        q = part(queries(counts, dim, seed=4), counts, rank).requires_grad_()
        a = pyrag.Retriever(None, sharded).retrieve(q, 4)
        b = pyrag.Retriever(None, reference).retrieve(q, 4)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores), f"retriever {dtype}"
        assert a.index_version == sharded.version
        if q.shape[0]:
            a.scores[a.mask].sum().backward()
            assert q.grad is not None
        # A snapshot keeps answering for the index as it was.
        snap = sharded.snapshot()
        before = snap.search(q.detach(), 3)
        sharded.add(torch.ones(1, dim), [10**13 + rank])
        same(snap.search(q.detach(), 3), before, "snapshot after add")
        assert snap.version + 1 == sharded.version
        raises(TypeError, "read-only", snap.add, torch.ones(1, dim))


def save_indexes(rank: int, world: int, directory: Path) -> None:
    """Saves one index of each dtype (user ids, uneven shards) for another world size to load."""
    sizes, counts, dim = CASES[world][0]
    rows, ids = dataset(sizes, dim, seed=21, user_ids=True)
    for dtype in DTYPES:
        sharded, _ = build(sizes, dim, dtype, rows, ids, rank)
        sharded.save(directory / dtype, metadata={"saved_by": str(world)})


def load_and_compare(
    rank: int, world: int, out: Path, data_world: int, saved_by: int, directory: str, save_to: str = ""
) -> None:
    """Loads the indexes save_indexes wrote on `data_world` ranks (and re-saved by
    `saved_by` ranks) on `world` ranks: the same answers as one index holding those rows,
    each rank holding an even share; then saves them again (this world size)."""
    sizes, _, dim = CASES[data_world][0]
    rows, ids = dataset(sizes, dim, seed=21, user_ids=True)
    for dtype in DTYPES:
        loaded = ShardedIndex.load(Path(directory) / dtype)
        reference = pyrag.DenseIndex(dim, dtype)
        reference.add(rows, ids)
        assert (loaded.dim, loaded.dtype, len(loaded)) == (dim, dtype, len(reference))
        assert loaded.metadata == {"saved_by": str(saved_by)} and loaded.version == 1
        total = len(reference)
        assert loaded.local_len == (rank + 1) * total // world - rank * total // world
        counts = [r + 1 for r in range(world)]
        q = part(queries(counts, dim, seed=rank), counts, rank)
        compare_searches(loaded, reference, q, [1, 5, total + 2], f"loaded {dtype} on {world} from {saved_by}")
        ask = ids[rank::3]
        assert torch.equal(loaded.get(ask), reference.get(ask))
        if save_to:
            loaded.save(Path(save_to) / dtype, metadata={"saved_by": str(world)})


# ----------------------------------------------------------------------------- failures
def failures(rank: int, world: int, out: Path) -> None:
    """A rank that fails inside a collective makes every rank raise, at once (far below
    the group's timeout), with its message; the index keeps working afterwards."""
    sizes, counts, dim = CASES[world][1]  # the last rank holds rows
    rows, ids = dataset(sizes, dim, seed=1, user_ids=True)
    sharded, reference = build(sizes, dim, "int8", rows, ids, rank)
    q = queries([2], dim, seed=1)
    last = world - 1

    def timed(exc, match_mine, match_others, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        mine = rank == last
        raises(exc, match_mine if mine else match_others, fn, *args, **kwargs)
        assert time.monotonic() - t0 < 30, "the error took as long as the group's timeout"

    # A wrong dim on one rank: its ValueError before any data is sent; the same on the others.
    bad = torch.zeros(2, dim + 1) if rank == last else q
    timed(ValueError, "queries have shape (2,", f"rank {last}: queries have shape (2,", sharded.search, bad, 3)
    bad = torch.zeros(1, dim + 1) if rank == last else torch.zeros(1, dim)
    timed(ValueError, "vectors have shape", f"rank {last}: vectors have shape", sharded.add, bad)
    timed(
        TypeError,
        "float32",
        f"rank {last}: queries must be float32",
        sharded.search,
        q.double() if rank == last else q,
        3,
    )
    # Different k on the ranks.
    raises(ValueError, "different k", sharded.search, q, 3 + (rank == last))
    # An error in the middle of a search (the shard's scan fails on one rank).
    shard = sharded.shard

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the scan failed")

    if rank == last:
        shard.search = broken  # type: ignore[method-assign]
    timed(RuntimeError, "the scan failed", f"rank {last}: RuntimeError: the scan failed", sharded.search, q, 3)
    if rank == last:
        del shard.search
    # The ranks in different calls.
    try:
        if rank == 0:
            sharded.search(q, 3)
        else:
            sharded.get([int(ids[0])])
        raise AssertionError("no error when the ranks call different operations")
    except CollectiveError as err:
        assert "different collective calls" in str(err)
    # Still usable, and still right.
    compare_searches(sharded, reference, q, [3, 100], "after the failures")
    # A save that fails on one rank: every rank raises, and the previous save still loads.
    directory = out / "failed-save"
    sharded.save(directory)
    good = sorted(os.listdir(directory))

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    if rank == last:
        sharded.shard.save = full_disk  # type: ignore[method-assign]
    try:
        sharded.save(directory)
        raise AssertionError("the save did not fail")
    except OSError as err:
        assert rank == last and "No space" in str(err)
    except CollectiveError as err:
        assert rank != last and f"rank {last}: OSError" in str(err)
    if rank == last:
        del sharded.shard.save
    reloaded = ShardedIndex.load(directory)
    compare_searches(reloaded, reference, q, [5], "the save before a failed one")
    sharded.save(directory)
    if rank == 0:  # rank 0 removes the files of earlier saves before it returns
        assert len(os.listdir(directory)) == world + 1 and sorted(os.listdir(directory)) != good


def hang_and_death(rank: int, world: int, out: Path) -> None:
    """A rank that never makes a call, or dies in one: the others raise within the
    group's timeout, and every later call raises at once."""
    sizes, counts, dim = CASES[world][0]
    rows, ids = dataset(sizes, dim, seed=2, user_ids=False)
    short = dist.new_group(timeout=timedelta(seconds=4))
    sharded = ShardedIndex(dim, group=short)
    sharded.add(part(rows, sizes, rank))
    q = queries([1], dim, seed=2)
    dist.barrier()
    if rank == world - 1:
        time.sleep(1)  # alive, but never makes this search (it waits in the barrier below)
    else:
        t0 = time.monotonic()
        raises(CollectiveError, "timeout", sharded.search, q, 2)
        assert time.monotonic() - t0 < 4 + 20
        t0 = time.monotonic()
        raises(CollectiveError, "failed in an earlier call", sharded.search, q, 2)
        assert time.monotonic() - t0 < 1
    # A rank that dies: the others raise within the timeout (at once, when they talk to it).
    dist.barrier()
    other = dist.new_group(timeout=timedelta(seconds=4))
    sharded = ShardedIndex(dim, group=other)
    if rank == world - 1:
        os._exit(3)
    t0 = time.monotonic()
    raises(CollectiveError, "", sharded.search, q, 2)
    assert time.monotonic() - t0 < 4 + 20
    (out / f"survived{rank}").write_text("ok")
    os._exit(0)  # the default group has a dead member: leave without destroying it


# ----------------------------------------------------------------------------- re-indexing
class Table(torch.nn.Module):
    """A passage encoder: row p of an integer-valued table is passage p's vector."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randint(-4, 5, (n, dim), generator=g).float())

    def forward(self, passages) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return self.weight[torch.as_tensor(list(passages))]


def train_table(table: Table, step: int) -> None:
    """A training step: every row changes (so every version scores differently)."""
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        table.weight += torch.randint(-1, 2, table.weight.shape, generator=g).float()


def refresh(rank: int, world: int, out: Path, dtype: str) -> None:
    """Re-indexing in the background on every rank: a new version goes into service on
    every rank at the same step, never before the slowest rank has finished it, and never
    holding up a step; each search between steps matches exactly one version's vectors (a
    search mixing shards of two versions would match none, as every row changes at every
    step); a refresh that fails on one rank raises on every rank and is never served."""
    from pyrag.distributed import ShardedReindexer
    from pyrag.reindex import ReindexError

    sizes, dim = [5, 7, 4, 6][:world], 8
    total, start = sum(sizes), sum(sizes[:rank])
    table = Table(total, dim)
    weights = {0: table.weight.detach().clone()}
    gate, fail, built = out / f"release-{dtype}", {"next": False}, {"yet": False}

    def encode(model: Table, chunk) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if rank == world - 1 and built["yet"]:  # the slow rank: its first refresh waits for the gate
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if fail["next"]:
            fail["next"] = False
            raise RuntimeError("the encoder ran out of memory")
        return model(chunk)

    reindexer = ShardedReindexer(
        table, list(range(start, start + sizes[rank])), encode=encode, schedule="4-:4", chunk_size=2, dtype=dtype
    )
    built["yet"] = True
    index = reindexer.index
    assert len(index) == total and index.local_len == sizes[rank] and index.version == 0
    q = queries([2], dim, seed=rank)
    retriever = pyrag.Retriever(None, index)

    def check_search(step: int) -> tuple[int, int]:
        snap = index.snapshot()
        version, made_at = snap.version, snap.step
        reference = pyrag.DenseIndex(dim, dtype)
        reference.add(weights[made_at], torch.arange(total))
        for exact in (False, True):
            same(snap.search(q, 5, exact=exact), reference.search(q, 5, exact=exact), f"step {step} v{version}")
        hits = retriever.retrieve(q, 3)
        assert hits.index_version == index.version == version
        return version, made_at

    history = []
    with reindexer:
        for step in range(1, 31):
            train_table(table, step)
            weights[step] = table.weight.detach().clone()
            if step == 22 and rank == 0:
                fail["next"] = True  # the refresh due at step 24 fails on rank 0
            try:
                reindexer.step(step)
            except ReindexError as e:
                assert "encoder ran out of memory" in str(e.__cause__ or e), e
                history.append((-1, step, 0))
            history.append((step, *check_search(step)))
            if step == 9:
                # Steps 5..9 went on while the slow rank encoded (the refresh from step 4
                # is not served), and the refresh due at 8 was skipped. Now let it finish.
                assert index.version == 0 and reindexer.stats.skipped == 1
                if rank == 0:
                    gate.write_text("go")
            if step >= 9:
                reindexer.wait(60)  # from here on, refreshes finish between steps
    # The same history on every rank: versions switched at the same steps.
    everyone = gather_ints(*[x for h in history for x in h], len(history))
    assert all(e == everyone[0] for e in everyone), "the ranks switched versions at different steps"
    served = {h[1:] for h in history if h[0] > 0}
    # v0 (step 0); v1 from step 4 (served at step 10, after the gate); then refreshes from 12, 16, 20; the
    # one from 24 failed on rank 0 (raised at step 25 everywhere, never served); then 28.
    assert sorted(served) == [(0, 0), (1, 4), (2, 12), (3, 16), (4, 20), (5, 28)], sorted(served)
    assert [h[1] for h in history if h[0] == -1] == [25]
    assert next(h for h in history if h[0] == 10)[1:] == (1, 4)
    assert reindexer.stats.failed == 1 and reindexer.stats.completed == 5


def trainer_checkpoint(rank: int, world: int, out: Path) -> None:
    """A Trainer over a ShardedIndex kept by a ShardedReindexer: a checkpoint saves the
    index through its manifest, and a run resumed from it continues exactly as one that
    never stopped (losses, weights, index version)."""
    from pyrag.distributed import ShardedReindexer
    from pyrag.train import Example, TrainConfig, Trainer

    n, dim = 24, 16
    sizes = [n // world + (r < n % world) for r in range(world)]
    start = sum(sizes[:rank])
    vocab = 64
    texts = [" ".join(f"w{(7 * p + 3 * j) % vocab}" for j in range(6)) for p in range(n)]
    examples = [Example(" ".join(texts[p].split()[::2]), "", p) for p in range(n)]

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.embed = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))

        def forward(self, items) -> torch.Tensor:  # type: ignore[no-untyped-def]
            rows = [texts[i] if isinstance(i, int) else i for i in items]
            bags = [torch.tensor([int(w[1:]) for w in t.split()]) for t in rows]
            return torch.stack([self.embed[b].mean(0) for b in bags])

    cfg = TrainConfig(mode="dpr", steps=8, batch_size=4, hard_negatives=2, lr_query=0.05, log_every=0)

    def make() -> tuple[Trainer, ShardedReindexer]:
        encoder = Bag()  # queries and passages: training it makes the index stale
        reindexer = ShardedReindexer(encoder, list(range(start, start + sizes[rank])), schedule="0-:3")
        # DDP averages the gradients: every rank holds the same weights (rank 0's are saved).
        query_encoder = torch.nn.parallel.DistributedDataParallel(encoder)
        retriever = pyrag.Retriever(query_encoder, reindexer.index)
        return Trainer(retriever, cfg, examples, reindexer=reindexer, progress=False, log=lambda line: None), reindexer

    def run(trainer: Trainer, reindexer: ShardedReindexer, until: int) -> None:
        while trainer.state.step < until:
            trainer.train_step()
            reindexer.wait(60)  # refreshes finish between steps: the same versions in every run

    straight, r1 = make()
    with r1:
        run(straight, r1, 8)
        final = straight.retriever.index.search(queries([3], dim, seed=rank), 4)
    first, r2 = make()
    with r2:
        run(first, r2, 4)
        saved = (r2.index.version, r2.index.step)
        assert saved[0] >= 1, "a refresh is in service at the checkpoint"
        first.save_checkpoint(out / "ckpt")
        first.save_checkpoint(out / "ckpt")  # the second save replaces the first's index folder
    entries = sorted(p.name.split("-")[0] for p in (out / "ckpt").iterdir())
    assert entries == ["index", "trainer.safetensors"], entries
    torch.manual_seed(1000 + rank)  # whatever happens between the runs
    resumed, r3 = make()
    with r3:
        resumed.load_checkpoint(out / "ckpt")
        assert (r3.index.version, r3.index.step, resumed.state.step) == (*saved, 4)
        run(resumed, r3, 8)
        after = resumed.retriever.index.search(queries([3], dim, seed=rank), 4)
    losses = [r.loss for r in first.state.history + resumed.state.history]
    assert losses == [r.loss for r in straight.state.history], (losses, [r.loss for r in straight.state.history])
    assert [r.index_version for r in first.state.history + resumed.state.history] == [
        r.index_version for r in straight.state.history
    ]
    same(after, final, "index after resuming")
    assert torch.equal(resumed.retriever.query_encoder.module.embed, straight.retriever.query_encoder.module.embed)
    assert [r.index_version for r in resumed.state.history] == [r.index_version for r in straight.state.history][4:]


# ----------------------------------------------------------------------------- the harness (the tests' side)
def run_ranks(
    world: int,
    tmp: Path,
    *scenarios: tuple,
    limit_s: float = 240,
    group_timeout_s: float = 90,
    exit_codes: dict[int, int] | None = None,
) -> None:
    """Runs the scenarios ((name, *args) each, in turn: one start of the processes for
    all of them) on `world` ranks spawned with torch.multiprocessing; fails the test if a
    rank fails, or if they have not all finished after `limit_s` seconds (then they are
    killed: a hang fails, it does not block CI)."""
    scenario = "+".join(s[0] for s in scenarios)
    import pytest
    import torch.multiprocessing

    ctx = torch.multiprocessing.get_context("spawn")
    init = tmp / f"init-{uuid.uuid4().hex}"
    procs = [
        ctx.Process(
            target=main, args=(list(scenarios), rank, world, str(init), str(tmp), group_timeout_s), name=f"rank{rank}"
        )
        for rank in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + limit_s
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        if hung:
            pytest.fail(f"{scenario}: ranks {hung} of {world} still running after {limit_s} s (a hang)")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    expected = exit_codes or {}
    for rank, p in enumerate(procs):
        if p.exitcode != expected.get(rank, 0):
            err = tmp / f"rank{rank}.err"
            detail = err.read_text() if err.exists() else "(no traceback)"
            pytest.fail(f"{scenario}: rank {rank} of {world} exited with {p.exitcode}:\n{detail}")
