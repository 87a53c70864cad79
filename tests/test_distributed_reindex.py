"""pyrag.distributed.ShardedReindexer on several processes (gloo on loopback): every rank
re-encodes its own passages in the background and switches to a new version at the same
step, a slow rank never holds up a step, searches see exactly one version, a failure on
one rank raises on every rank; and a Trainer's checkpoint over a sharded index goes
through the manifest and resumes exactly. What each rank runs is in
tests/sharded_workers.py; each run is under a time limit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The spawned ranks import the workers by name: tests/ must be on sys.path (spawn passes it on).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_workers import run_ranks


@pytest.mark.parametrize("world, dtype", [(2, "int8"), (3, "float32")])
def test_every_rank_switches_at_the_same_step(tmp_path, world, dtype):
    run_ranks("refresh", world, tmp_path, dtype)


def test_trainer_checkpoint_goes_through_the_manifest(tmp_path):
    run_ranks("trainer_checkpoint", 2, tmp_path)
