"""Hugging Face Trainer integration: a TrainerCallback that drives an AsyncReindexer.

    from pyrag.integrations.hf import AsyncReindexCallback
    reindexer = pyrag.AsyncReindexer(passage_encoder, passages, schedule="0-100:10,100-:500")
    retriever = pyrag.Retriever(query_encoder, reindexer.index, passage_encoder=passage_encoder,
                                passages=passages)
    trainer = transformers.Trainer(model=model_using_retriever, args=args,
                                   callbacks=[AsyncReindexCallback(reindexer)])
    trainer.train()

After each optimiser step the callback tells the reindexer the global step, which starts
a refresh when one is due and raises, in the training loop, any failure of a background
refresh. Each log entry gains the index version and its staleness; each checkpoint folder
gains the index in service (pyrag_index.safetensors, written by the index's own save with
its version and snapshot step), which `load_index` puts back into service on resume.

transformers is optional for pyrag: it is imported here, when this module is.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("pyrag.integrations.hf needs transformers (pip install transformers)") from e

from pyrag.index import VersionedIndex
from pyrag.reindex import AsyncReindexer

INDEX_FILE = "pyrag_index.safetensors"


class AsyncReindexCallback(TrainerCallback):
    """Drives `reindexer` from a transformers.Trainer.

    Args:
        reindexer: the AsyncReindexer whose index the model's Retriever searches.
        save_index: write the index in service into each checkpoint folder.
        wait_at_end: at the end of training, wait for a running refresh to finish (so the
            final index reflects the last snapshot) instead of abandoning it.
        close_at_end: close the reindexer when training ends.
    """

    def __init__(
        self,
        reindexer: AsyncReindexer,
        *,
        save_index: bool = True,
        wait_at_end: bool = False,
        close_at_end: bool = True,
    ):
        if not isinstance(reindexer, AsyncReindexer):
            raise TypeError(f"reindexer must be a pyrag AsyncReindexer, got {type(reindexer).__name__}")
        self.reindexer = reindexer
        self.save_index = save_index
        self.wait_at_end = wait_at_end
        self.close_at_end = close_at_end

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reindexer.step(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        # The Trainer appends its log entry to log_history before the callbacks run.
        if state.log_history:
            state.log_history[-1]["index_version"] = self.reindexer.version
            state.log_history[-1]["index_staleness"] = self.reindexer.staleness(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.save_index or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        save_index(self.reindexer, folder)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.wait_at_end:
            self.reindexer.wait()
        if self.close_at_end:
            self.reindexer.close()


def save_index(reindexer: AsyncReindexer, folder: str | os.PathLike[str]) -> None:
    """Writes the index in service, with its version and snapshot step, into `folder`."""
    reindexer.index.snapshot().save(os.path.join(folder, INDEX_FILE))


def load_index(reindexer: AsyncReindexer, folder: str | os.PathLike[str]) -> None:
    """Puts the index saved in a checkpoint folder back into service (resume_from_checkpoint)."""
    current = VersionedIndex.load(os.path.join(folder, INDEX_FILE)).snapshot()
    reindexer.restore(current.index, version=current.version, step=current.step)
