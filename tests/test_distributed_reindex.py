"""pyrag.distributed.ShardedReindexer on several processes (gloo on loopback): every rank
re-encodes its own passages in the background and switches to a new version at the same
step, a slow rank never holds up a step, searches see exactly one version, a failure on
one rank raises on every rank; and a Trainer's checkpoint over a sharded index goes
through the manifest and resumes exactly. What each rank runs is in
tests/sharded_workers.py; each run is under a time limit."""

from __future__ import annotations

import sys
from pathlib import Path

# The spawned ranks import the workers by name: tests/ must be on sys.path (spawn passes it on).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_workers import run_ranks


def test_two_ranks_switch_together_and_a_trainer_resumes_through_the_manifest(tmp_path):
    run_ranks(2, tmp_path, ("refresh", "int8"), ("trainer_checkpoint",))


def test_three_ranks_switch_together(tmp_path):
    run_ranks(3, tmp_path, ("refresh", "float32"))
