"""The index file under concurrency, as tools/stress_save_load.py measures it with more
rounds: saves racing adds and removes on another thread, loads racing saves of another
process, and two processes saving over one path. Every file loaded is one whole index."""

from __future__ import annotations

import os

import pytest
import torch
from stress_save_load import DIM, check_index, load_racing_save, process_context, save_racing_add, vectors

import pyrag
from pyrag.index import storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_saves_racing_adds_are_all_loadable_and_right(tmp_path, dtype):
    tally = save_racing_add(dtype, 15, str(tmp_path))
    assert tally.saves == tally.loads == 15 and tally.unloadable == tally.wrong == 0, tally.first_problem


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_loads_racing_saves_of_another_process_are_whole(tmp_path, dtype):
    tally = load_racing_save(dtype, 12, str(tmp_path))
    assert tally.loads == 12 and tally.unloadable == tally.wrong == 0, tally.first_problem
    assert tally.saves > 0  # the saver did run meanwhile


def test_sharded_loads_racing_saves_of_another_process_are_whole(tmp_path):
    """A ShardedIndex save removes the files of the save it replaces: a load that read the
    old manifest starts again from the new one (on every rank together)."""
    from kill_writers import group_of_one

    undo = group_of_one()
    try:
        tally = load_racing_save("int8", 25, str(tmp_path), sharded=True)
    finally:
        undo()
    assert tally.loads == 25 and tally.unloadable == tally.wrong == 0, tally.first_problem
    assert tally.saves > 0


def _save_many(path: str, salt: int, times: int) -> None:
    index = pyrag.DenseIndex(DIM, "int8")
    ids = torch.arange(100 * salt)
    index.add(vectors(ids, salt), ids)
    for _ in range(times):
        index.save(path, metadata={"salt": str(salt)})


def test_two_processes_saving_over_one_path(tmp_path):
    path = str(tmp_path / "shared")
    ctx = process_context()
    procs = [ctx.Process(target=_save_many, args=(path, salt, 12)) for salt in (1, 2)]
    for p in procs:
        p.start()
    loads = 0
    while any(p.is_alive() for p in procs):
        if os.path.exists(path):
            loaded = pyrag.DenseIndex.load(path)
            salt = int(loaded.metadata["salt"])
            assert check_index(loaded, torch.arange(100 * salt), salt) is None
            loads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    # Neither writer removed the other's temp file (each save succeeded), and none is left.
    assert [e for e in os.listdir(tmp_path) if e.startswith(storage.TEMP_PREFIX)] == []
