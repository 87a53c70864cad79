"""Checkpoint loads are total (issue 18): a malformed checkpoint, or one that does not fit
the trainer, is a CheckpointFormatError (a pyrag.FormatError, a ValueError), and the
trainer is left exactly as it was: models, optimiser, step, RNG and index in service."""

from __future__ import annotations

import io
import os

import pytest
import torch
from fuzz_loaders import tiny_trainer

import pyrag
from pyrag.index import storage
from pyrag.train.checkpoint import CheckpointFormatError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def trainers():
    made = []

    def make():
        made.append(tiny_trainer())
        return made[-1]

    yield make
    for t in made:
        t.reindexer.close()


def trainer_state(trainer) -> tuple:
    weights = [t.clone() for m in trainer.trainable_modules().values() for t in m.state_dict().values()]
    opt = trainer.optimizer.state_dict()
    moments = [v.clone() for s in opt["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    snap = trainer.reindexer.index.snapshot()
    return weights, moments, trainer.state.step, torch.get_rng_state(), snap.version, snap.index.ids


def same(a: tuple, b: tuple) -> bool:
    def eq(x, y):
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        return x == y

    return eq(a, b)


def saved_checkpoint(trainer, path) -> tuple[dict, dict]:
    for p in trainer.optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()
    trainer.save_checkpoint(path)
    tensors, meta = storage.load_tensors(os.path.join(path, "trainer.safetensors"))
    meta.pop("checksum")
    return {k: v.clone() for k, v in tensors.items()}, meta


def rewrite(path, tensors, meta) -> None:
    storage.save_tensors(os.path.join(path, "trainer.safetensors"), tensors, meta)


def torch_bytes(obj) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def bad_rng(t, m):
    state = t["rng/torch"]
    state[-8:] = 255  # the mt19937 position past its 624 words: torch refuses it
    state[:-8].zero_()


CASES = {
    "invalid RNG state": (bad_rng, "bad RNG state"),
    "RNG of the wrong size": (lambda t, m: t.__setitem__("rng/torch", t["rng/torch"][:-1]), "RNG state"),
    "a weight of another shape": (
        lambda t, m: t.__setitem__("query_encoder/weight", torch.zeros(3, 3)),
        r"query_encoder/weight is torch.float32 \(3, 3\) in the checkpoint",
    ),
    "an integer weight": (
        lambda t, m: t.__setitem__("passage_encoder/weight", t["passage_encoder/weight"].long()),
        "passage_encoder/weight is torch.int64",
    ),
    "a weight missing": (lambda t, m: t.pop("query_encoder/weight"), "does not match this trainer's"),
    "an extra weight": (lambda t, m: t.__setitem__("query_encoder/extra", torch.zeros(1)), "unexpected"),
    "optimiser bytes cut": (
        lambda t, m: t.__setitem__("optimizer", t["optimizer"][:100].clone()),
        "bad optimiser state",
    ),
    "optimiser is a list": (lambda t, m: t.__setitem__("optimizer", torch_bytes([1, 2])), "does not match"),
    "optimiser moment of another shape": (
        lambda t, m: t.__setitem__(
            "optimizer",
            torch_bytes(
                {
                    "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2, 2)}},
                    "param_groups": [{"params": [0, 1], "lr": 1e-3}],
                }
            ),
        ),
        "does not match",
    ),
    "step not a number": (lambda t, m: m.__setitem__("step", "x"), "bad checkpoint contents"),
    "negative step": (lambda t, m: m.__setitem__("step", "-1"), "config or step"),
    "evals with an infinite step": (lambda t, m: m.__setitem__("evals", "[[1e999, 0.5]]"), "OverflowError"),
    "config not an object": (lambda t, m: m.__setitem__("config", "[1]"), "config or step"),
    "another mode": (lambda t, m: m.__setitem__("config", '{"mode": "replug_lsr"}'), "mode='replug_lsr'"),
    "index name with a path": (lambda t, m: m.__setitem__("index", "index-1-../../x"), "bad index name"),
    "index missing": (lambda t, m: m.__setitem__("index", "index-000000001-abcdef01"), "which is missing"),
    "not a checkpoint": (lambda t, m: m.__setitem__("format", "other"), "not a pyrag training checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_checkpoint_is_a_format_error_and_changes_nothing(tmp_path, trainers, case):
    change, match = CASES[case]
    tensors, meta = saved_checkpoint(trainers(), tmp_path)
    change(tensors, meta)
    rewrite(tmp_path, tensors, meta)
    trainer = trainers()
    torch.manual_seed(123)
    before = trainer_state(trainer)
    with pytest.raises(CheckpointFormatError, match=match):
        trainer.load_checkpoint(tmp_path)
    assert same(trainer_state(trainer), before)
    assert issubclass(CheckpointFormatError, pyrag.FormatError) and issubclass(CheckpointFormatError, ValueError)


def test_an_index_of_another_size_is_a_format_error(tmp_path, trainers):
    _, meta = saved_checkpoint(trainers(), tmp_path)
    other = pyrag.DenseIndex(8)
    other.add(torch.ones(3, 8))
    other.save(tmp_path / meta["index"])
    trainer = trainers()
    before = trainer_state(trainer)
    with pytest.raises(CheckpointFormatError, match="an index of 3 vectors"):
        trainer.load_checkpoint(tmp_path)
    assert same(trainer_state(trainer), before)


def test_a_damaged_index_file_is_a_format_error(tmp_path, trainers):
    _, meta = saved_checkpoint(trainers(), tmp_path)
    path = tmp_path / meta["index"]
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointFormatError, match="its index is unreadable.*checksum mismatch"):
        trainers().load_checkpoint(tmp_path)


def test_a_good_checkpoint_still_loads_whole(tmp_path, trainers):
    source = trainers()
    saved_checkpoint(source, tmp_path)
    trainer = trainers()
    trainer.load_checkpoint(tmp_path)
    want = trainer_state(source)
    got = trainer_state(trainer)
    assert same(got[0], want[0]) and same(got[1], want[1]) and got[2] == want[2]
