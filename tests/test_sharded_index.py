"""pyrag.distributed.ShardedIndex on 2, 3 and 4 processes (gloo on loopback), against one
DenseIndex holding every row: the same results bit for bit, in every dtype, with
exact=True, uneven and empty shards, ranks without queries, k past every shard and the
total, ties across shards and user ids; get, remove, add, a Retriever over it; save, then
load on another number of ranks; and the failures, each under a time limit so that a
hang fails the test. What each rank runs is in tests/sharded_workers.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The spawned ranks import the workers by name: tests/ must be on sys.path (spawn passes it on).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sharded_workers
from sharded_workers import run_ranks


def test_two_ranks_agree_with_one_index_and_fail_together(tmp_path):
    run_ranks(2, tmp_path, ("equivalence",), ("failures",))


def test_save_on_three_load_on_four_then_on_two(tmp_path):
    run_ranks(3, tmp_path, ("equivalence", str(tmp_path / "by3")))
    run_ranks(4, tmp_path, ("load_and_compare", 3, 3, str(tmp_path / "by3"), str(tmp_path / "by4")))
    run_ranks(2, tmp_path, ("load_and_compare", 3, 4, str(tmp_path / "by4")))
    for dtype in sharded_workers.DTYPES:
        assert (
            sorted(p.split("-")[0] for p in os.listdir(tmp_path / "by4" / dtype)) == ["manifest.json"] + ["shard"] * 4
        )


def test_a_rank_that_hangs_or_dies_does_not_hang_the_others(tmp_path):
    run_ranks(3, tmp_path, ("hang_and_death",), limit_s=120, exit_codes={2: 3})
    assert sorted(p.name for p in tmp_path.glob("survived*")) == ["survived0", "survived1"]


def test_the_benchmark_runs_at_a_tiny_size():
    """benchmarks/bench_sharded.py end to end (it checks that both configurations return
    the same ids before it times them); no timing is asserted."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    args = ["--n", "3000", "--dim", "16", "--batch", "5", "--pairs", "2"]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_sharded.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("overhead x") == 2 and "ISA path" in proc.stdout
