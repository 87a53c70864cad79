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

import io
import json
import os
import secrets
import shutil
from dataclasses import asdict
from typing import TYPE_CHECKING

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
    reindexer (which must be idle). The config must match in mode and in what trains."""
    directory = os.fspath(path)
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.isdir(directory) or not os.path.exists(state_path):
        raise FileNotFoundError(f"no pyrag training checkpoint at {directory} (no {STATE_FILE})")
    tensors, meta = storage.load_tensors(state_path)
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"{state_path}: not a pyrag training checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"{state_path}: unsupported checkpoint version {meta.get('format_version')!r}")
    try:
        saved = json.loads(meta["config"])
        step = int(meta["step"])
        evals = [(int(s), float(r)) for s, r in json.loads(meta["evals"])]
        optimizer_state = torch.load(io.BytesIO(tensors["optimizer"].numpy().tobytes()), weights_only=True)
        rng = tensors["rng/torch"]
    except (KeyError, ValueError, TypeError, RuntimeError, EOFError) as e:
        raise CheckpointFormatError(f"{state_path}: bad checkpoint contents ({type(e).__name__}: {e})") from None
    cfg = trainer.config
    for key in ("mode", "train_passage_encoder"):
        if not isinstance(saved, dict) or saved.get(key) != getattr(cfg, key):
            got = saved.get(key) if isinstance(saved, dict) else None
            raise ValueError(f"checkpoint has {key}={got!r} but this trainer has {getattr(cfg, key)!r}")
    index: VersionedIndex | ShardedIndex | None = None
    reindexer = trainer.reindexer
    sharded = isinstance(reindexer, ShardedReindexer)
    if reindexer is not None and "index" in meta:
        name = meta["index"]
        if not name.startswith(_INDEX_PREFIX) or os.sep in name:
            raise CheckpointFormatError(f"{state_path}: bad index name {name!r}")
        saved_kind, kind = meta.get("index_kind", "single"), "sharded" if sharded else "single"
        if saved_kind != kind:
            raise ValueError(f"checkpoint holds a {saved_kind} index but this trainer's reindexer keeps a {kind} one")
        if isinstance(reindexer, ShardedReindexer):  # collective: every rank opens its shard through the manifest
            index = ShardedIndex.load(os.path.join(directory, name), group=reindexer.index.group)
            rng = tensors.get(f"rng/torch/rank{reindexer.index.rank}", rng)
        else:
            index = VersionedIndex.load(os.path.join(directory, name))
    # Everything is read and checked: now change the trainer.
    for role, module in trainer.trainable_modules().items():
        prefix = f"{role}/"
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    groups = optimizer_state.get("param_groups", []) if isinstance(optimizer_state, dict) else []
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in trainer.optimizer.param_groups]:
        raise ValueError("the checkpoint's optimiser has other parameter groups than this trainer's")
    trainer.optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    if isinstance(index, ShardedIndex) and isinstance(reindexer, ShardedReindexer):
        reindexer.restore(index)
    elif isinstance(index, VersionedIndex) and isinstance(reindexer, AsyncReindexer):
        current = index.snapshot()
        reindexer.restore(current.index, version=current.version, step=current.step)
    trainer.restore_state(step, evals)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
