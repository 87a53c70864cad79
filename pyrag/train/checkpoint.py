"""Training checkpoints: one directory holding the trainer's state and, when an
AsyncReindexer keeps the index fresh, the index in service.

    checkpoint/
        trainer.safetensors        models, optimiser, RNG, step, config; written last
        index-<step>-<token>       the index, through its own save() (the contract's)

Every file is written atomically (temp file, fsync, rename). The index is written first
under a fresh name and trainer.safetensors, which names it, last: a crash at any moment
leaves the previous checkpoint whole, and the next save removes index files that no
trainer.safetensors names. The optimiser state is torch's own state_dict, serialised by
torch.save and read back with torch.load(weights_only=True).

With a pyrag.distributed.ShardedReindexer, every rank calls save and load (they are
collective): the index folder is a ShardedIndex save (a shard file per rank and its
manifest, written last), rank 0 writes trainer.safetensors after it with every rank's
RNG state, and load opens the index through its manifest on every rank.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from pyrag.distributed import ShardedIndex, ShardedReindexer
from pyrag.distributed.collective import Comm
from pyrag.index import VersionedIndex, storage
from pyrag.reindex import AsyncReindexer

if TYPE_CHECKING:
    from pyrag.train.trainer import Trainer

FORMAT = "pyrag.train.checkpoint"
FORMAT_VERSION = "2"
STATE_FILE = "trainer.safetensors"
_INDEX_PREFIX = "index-"


class CheckpointFormatError(storage.FormatError):
    """The folder is not a pyrag training checkpoint, or it is corrupted."""


def save(trainer: Trainer, path: str | os.PathLike[str]) -> None:
    """Writes `trainer`'s state (and its reindexer's index in service) into the directory
    `path`, created if needed. A refresh still running is not saved: the resumed run
    starts from the index in service and refreshes again at the next due step."""
    directory = os.fspath(path)
    os.makedirs(directory, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for role, module in trainer.trainable_modules().items():
        for name, t in module.state_dict().items():
            tensors[f"{role}/{name}"] = t.detach().cpu().clone()  # clone: tied weights share storage
    buf = io.BytesIO()
    torch.save(trainer.optimizer.state_dict(), buf)
    tensors["optimizer"] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "step": str(trainer.state.step),
        "config": json.dumps(asdict(trainer.config)), "evals": json.dumps(trainer.state.evals),
    }  # fmt: skip
    reindexer = trainer.reindexer
    if isinstance(reindexer, ShardedReindexer):
        comm = Comm(reindexer.index.group)
        states = comm.all_gather(torch.get_rng_state().to(comm.device), "checkpoint (rng)").cpu()
        for rank, state in enumerate(states.reshape(comm.world, -1)):
            tensors[f"rng/torch/rank{rank}"] = state

        def write_last(name: str) -> None:
            _write_state(directory, tensors, dict(meta, index=name, index_kind="sharded"))

        reindexer.save_index(directory, f"{_INDEX_PREFIX}{trainer.state.step:09d}-", write_last)
        return
    if reindexer is not None:
        name = f"{_INDEX_PREFIX}{trainer.state.step:09d}-{secrets.token_hex(4)}"
        reindexer.index.snapshot().save(os.path.join(directory, name))
        meta["index"] = name
    _write_state(directory, tensors, meta)


def _write_state(directory: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """trainer.safetensors, naming the index already written; then the index files of
    earlier (or interrupted) saves go."""
    storage.save_tensors(os.path.join(directory, STATE_FILE), tensors, meta)
    for entry in os.listdir(directory):
        if entry.startswith(_INDEX_PREFIX) and entry != meta.get("index"):
            _remove(os.path.join(directory, entry))


def load(trainer: Trainer, path: str | os.PathLike[str]) -> None:
    """Restores a checkpoint written by save() into `trainer`'s models, optimiser and
    reindexer (which must be idle). The config must match in mode and in what trains.

    FileNotFoundError if there is no checkpoint at `path`; CheckpointFormatError (a
    ValueError) for a malformed or corrupted one, or one that does not fit this trainer
    (other models, optimiser or index). Everything is read and checked before the trainer
    changes: on any error it is left exactly as it was."""
    directory = os.fspath(path)
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.isdir(directory) or not os.path.exists(state_path):
        raise FileNotFoundError(f"no pyrag training checkpoint at {directory} (no {STATE_FILE})")
    if trainer.reindexer is not None and trainer.reindexer.busy:
        raise RuntimeError("cannot load a checkpoint while the reindexer is refreshing; wait() for it first")
    try:
        tensors, meta = storage.load_tensors(state_path)
    except storage.FormatError as e:
        raise CheckpointFormatError(str(e)) from None
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"{state_path}: not a pyrag training checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"{state_path}: unsupported checkpoint version {meta.get('format_version')!r}")
    step, evals, saved = _read_progress(state_path, meta)
    cfg = trainer.config
    for key in ("mode", "train_passage_encoder", "encoder_layers"):
        if saved.get(key) != getattr(cfg, key):
            raise CheckpointFormatError(
                f"{state_path}: checkpoint has {key}={saved.get(key)!r} but this trainer has {getattr(cfg, key)!r}"
            )
    modules = trainer.trainable_modules()
    states = {role: _module_state(state_path, role, module, tensors) for role, module in modules.items()}
    reindexer = trainer.reindexer
    rng = tensors.get("rng/torch")
    if isinstance(reindexer, ShardedReindexer):  # each rank resumes its own RNG
        rng = tensors.get(f"rng/torch/rank{reindexer.index.rank}", rng)
    if rng is None or rng.dtype != torch.uint8 or tuple(rng.shape) != tuple(torch.get_rng_state().shape):
        raise CheckpointFormatError(f"{state_path}: missing or malformed RNG state")
    try:
        torch.Generator().set_state(rng.clone())  # a scratch generator checks the state
    except RuntimeError as e:
        raise CheckpointFormatError(f"{state_path}: bad RNG state ({e})") from None
    optimizer_state = _optimizer_state(state_path, tensors.get("optimizer"), trainer.optimizer)
    index = _read_index(directory, state_path, meta, trainer) if "index" in meta else None

    # Everything is read and checked: now change the trainer. The optimiser first, as its
    # load is the one step torch may still refuse: it is rolled back if it does.
    before = copy.deepcopy(trainer.optimizer.state_dict())
    try:
        trainer.optimizer.load_state_dict(optimizer_state)
    except Exception as e:
        trainer.optimizer.load_state_dict(before)
        raise CheckpointFormatError(f"{state_path}: bad optimiser state ({type(e).__name__}: {e})") from None
    for role, module in modules.items():
        module.load_state_dict(states[role], strict=True)
    torch.set_rng_state(rng.clone())
    if isinstance(index, ShardedIndex) and isinstance(reindexer, ShardedReindexer):
        reindexer.restore(index)
    elif isinstance(index, VersionedIndex) and isinstance(reindexer, AsyncReindexer):
        current = index.snapshot()
        reindexer.restore(current.index, version=current.version, step=current.step)
    trainer.restore_state(step, evals)


def _read_progress(state_path: str, meta: dict[str, str]) -> tuple[int, list[tuple[int, float]], dict[str, Any]]:
    """(step, evals, saved config) from the metadata."""
    try:
        saved = json.loads(meta["config"])
        step = int(meta["step"])
        evals = [(int(s), float(r)) for s, r in json.loads(meta["evals"])]
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CheckpointFormatError(f"{state_path}: bad checkpoint contents ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict) or step < 0:
        raise CheckpointFormatError(f"{state_path}: bad checkpoint contents (config or step)")
    return step, evals, saved


def _module_state(
    state_path: str, role: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The saved state of `module` (its role's tensors), checked against the module's own
    names and shapes, so that load_state_dict cannot fail half-way."""
    prefix = f"{role}/"
    got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    want = module.state_dict()
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got))[:3], sorted(set(got) - set(want))[:3]
        raise CheckpointFormatError(
            f"{state_path}: the checkpoint's {role} does not match this trainer's "
            f"(missing {missing}, unexpected {extra})"
        )
    for name, t in got.items():
        if t.shape != want[name].shape or t.dtype.is_floating_point != want[name].dtype.is_floating_point:
            raise CheckpointFormatError(
                f"{state_path}: {role}/{name} is {t.dtype} {tuple(t.shape)} in the checkpoint but "
                f"{want[name].dtype} {tuple(want[name].shape)} in this trainer"
            )
    return got


def _optimizer_state(state_path: str, raw: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The saved optimiser state_dict, checked against `optimizer`: the same parameter
    groups, and per-parameter state of the parameters' shapes."""
    if raw is None or raw.dtype != torch.uint8 or raw.dim() != 1:
        raise CheckpointFormatError(f"{state_path}: missing or malformed optimiser state")
    try:
        state = torch.load(io.BytesIO(raw.numpy().tobytes()), weights_only=True)
    except Exception as e:  # untrusted bytes: torch.load can fail in many ways
        raise CheckpointFormatError(f"{state_path}: bad optimiser state ({type(e).__name__}: {e})") from None
    bad = CheckpointFormatError(f"{state_path}: the optimiser state does not match this trainer's optimiser")
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise bad
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise bad
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise bad
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in groups for i in g["params"]]
    if len(set(map(repr, saved_ids))) != len(saved_ids) or not all(isinstance(i, int) for i in saved_ids):
        raise bad
    shapes = {i: p.shape for i, p in zip(saved_ids, params)}
    for key, entry in state["state"].items():
        if key not in shapes or not isinstance(entry, dict):
            raise bad
        for value in entry.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shapes[key]:
                raise bad
    return state


def _read_index(
    directory: str, state_path: str, meta: dict[str, str], trainer: Trainer
) -> VersionedIndex | ShardedIndex | None:
    """The index the checkpoint names, checked against the trainer's reindexer. With a
    ShardedReindexer this is collective: every rank opens its shard through the manifest."""
    reindexer = trainer.reindexer
    if reindexer is None:
        return None
    name = meta["index"]
    if not re.fullmatch(r"index-[0-9]+-[0-9a-f]+", name):
        raise CheckpointFormatError(f"{state_path}: bad index name {name!r}")
    sharded = isinstance(reindexer, ShardedReindexer)
    saved_kind, kind = meta.get("index_kind", "single"), "sharded" if sharded else "single"
    if saved_kind != kind:
        raise CheckpointFormatError(
            f"{state_path}: holds a {saved_kind} index but this trainer's reindexer keeps a {kind} one"
        )
    index_path = os.path.join(directory, name)
    try:
        if isinstance(reindexer, ShardedReindexer):
            return ShardedIndex.load(index_path, group=reindexer.index.group)
        index = VersionedIndex.load(index_path)
    except FileNotFoundError:
        raise CheckpointFormatError(f"{state_path}: names the index {name}, which is missing") from None
    except storage.FormatError as e:
        raise CheckpointFormatError(f"{state_path}: its index is unreadable ({e})") from None
    current = reindexer.index
    if index.dim != current.dim or len(index) != len(current):  # the dtype may differ: the checkpoint's wins
        raise CheckpointFormatError(
            f"{index_path}: an index of {len(index)} vectors of dim {index.dim}, but this trainer's reindexer "
            f"serves {len(current)} of dim {current.dim}"
        )
    return index


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
