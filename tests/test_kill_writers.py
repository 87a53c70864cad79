"""SIGKILL during every writer of a pyrag file (issue 18): the previous state stays
loadable and whole, and the next write removes what the killed one left. CI runs two
random kills per writer and one kill at a known point mid-write; tools/kill_writers.py
runs the same trials for the measured run."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from kill_writers import WRITERS, run_trials
from stress_save_load import check_index, process_context, vectors

import pyrag
from pyrag.index import storage


@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_a_killed_writer_leaves_the_previous_state_and_the_next_write_cleans_up(tmp_path, writer):
    result = run_trials(writer, 2, str(tmp_path), seed=18)
    assert result.loadable == result.trials == 2, result.problems
    assert result.leftovers_after_next_write == 0, result.problems


def _save_and_hang(path: str, inside) -> None:  # type: ignore[no-untyped-def]
    """Saves a second index over `path`, and stops for good after its first data bytes."""
    index = pyrag.DenseIndex(8, "int8")
    ids = torch.arange(40)
    index.add(vectors(ids, 1, dim=8), ids)
    real = storage._bytes_of

    def hang(t):
        inside.set()
        threading.Event().wait()  # killed here
        return real(t)

    storage._bytes_of = hang  # the write pass; the checksum pass is done by then
    storage._crc_tensor = lambda t, c: 0
    index.save(path)


def test_a_kill_in_the_middle_of_writing_the_data(tmp_path):
    path = str(tmp_path / "index.safetensors")
    first = pyrag.DenseIndex(8, "int8")
    ids = torch.arange(30)
    first.add(vectors(ids, 0, dim=8), ids)
    first.save(path)
    ctx = process_context()
    inside = ctx.Event()
    child = ctx.Process(target=_save_and_hang, args=(path, inside), daemon=True)
    child.start()
    try:
        assert inside.wait(120)
        temp = [e for e in os.listdir(tmp_path) if e.startswith(storage.TEMP_PREFIX)]
        assert len(temp) == 1  # the dead writer's file, header written (not yet flushed)
    finally:
        child.kill()
        child.join()
    assert check_index(pyrag.DenseIndex.load(path), ids, 0) is None
    first.save(tmp_path / "other")  # any save in the directory removes the dead writer's file
    assert sorted(os.listdir(tmp_path)) == ["index.safetensors", "other"]
