"""Trainer: runs one training mode (pyrag/train/modes.py) with the plumbing around it:
parameter groups per component, the retriever's unfreeze step, warmup and decay,
gradient clipping, an AsyncReindexer when the passage encoder trains, held-out recall,
tqdm and a log line every N steps, and checkpoints that resume exactly (models,
optimiser, step, index and its version, RNG; pyrag/train/checkpoint.py)."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

import pyrag.eval as _eval
from pyrag.reindex import AsyncReindexer
from pyrag.retriever import Retriever
from pyrag.train import checkpoint
from pyrag.train.config import TrainConfig
from pyrag.train.encoders import train_last_blocks
from pyrag.train.example import Example
from pyrag.train.modes import LM, dpr_loss, marginal_loss, ra_dit_loss, replug_lsr_loss

if TYPE_CHECKING:
    from pyrag.distributed import ShardedReindexer


def recall_at_k(
    retriever: Retriever,
    examples: Sequence[Example],
    k: int = 10,
    *,
    match: str = "positive",
    passages: Optional[Sequence[str]] = None,
    batch_size: int = 64,
) -> float:
    """Fraction of examples with a hit among the k best passages of the index (success@k
    in pyrag.eval's terms), computed in eval mode without gradient (pyrag.eval.evaluate).

    match="positive": the example's own passage is retrieved (needs Example.positive).
    match="answer": some retrieved passage contains the answer's words, as in DPR's top-k
    retrieval accuracy: what an LM reading the passages needs. Needs the passage texts
    (`passages`, default retriever.passages).
    For per-query values, MRR, nDCG and confidence intervals use pyrag.eval directly.
    """
    if not examples:
        raise ValueError("recall_at_k needs at least one example")
    relevant = _eval.relevant_passages(examples, match, passages if passages is not None else retriever.passages)
    result = _eval.evaluate(retriever, [e.query for e in examples], relevant, k, batch_size=batch_size)
    return float(result.success.mean())


@dataclass
class StepRecord:
    step: int
    loss: float
    seconds: float
    refreshing: Optional[bool]  # a refresh was running at the step's start and end (True), at
    # neither (False), or at one of them (None)
    index_version: int
    staleness: int


@dataclass
class TrainState:
    step: int = 0
    history: list[StepRecord] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)


class Trainer:
    """Runs one of the four modes.

    Args:
        retriever: a pyrag.Retriever whose query_encoder is an nn.Module. To train the
            passage encoder too (cfg.train_passage_encoder), the retriever must re-embed
            hits with it (passage_encoder=..., passages=...), and `reindexer` keeps the
            index fresh: its encoder is the same module and retriever.index is
            reindexer.index.
        config: TrainConfig.
        train_data: Examples (query, answer, positive id; DPR needs the positive).
        lm: the LM callable (queries, contexts, targets) -> [B, K] log p(y|c∘x): a black
            box for REPLUG-LSR, an nn.Module or a GeneratorAdapter over one for the modes
            that train it. Unused by DPR.
        eval_data: held-out Examples, evaluated (pyrag.eval) every eval_every steps and by
            evaluate().
        reindexer: an AsyncReindexer (or, over a sharded index, a
            pyrag.distributed.ShardedReindexer), stepped after each optimiser step.
        checkpoint_path: where checkpoint_every writes (atomically).
        progress: show a tqdm bar. log: where the log lines go (default tqdm.write).
    """

    def __init__(
        self,
        retriever: Retriever,
        config: TrainConfig,
        train_data: Sequence[Example],
        *,
        lm: Optional[LM] = None,
        eval_data: Optional[Sequence[Example]] = None,
        reindexer: Optional[AsyncReindexer | ShardedReindexer] = None,
        checkpoint_path: Optional[str | os.PathLike[str]] = None,
        progress: bool = True,
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        cfg = config
        if not isinstance(retriever, Retriever):
            raise TypeError(f"retriever must be a pyrag.Retriever, got {type(retriever).__name__}")
        if not isinstance(retriever.query_encoder, torch.nn.Module):
            raise TypeError("the retriever's query_encoder must be a torch.nn.Module to be trained")
        if len(train_data) < cfg.batch_size:
            raise ValueError(f"train_data has {len(train_data)} examples, fewer than batch_size={cfg.batch_size}")
        if cfg.mode != "dpr" and lm is None:
            raise ValueError(f"mode {cfg.mode!r} needs an lm")
        if cfg.mode == "dpr" and any(e.positive is None for e in train_data):
            raise ValueError("mode 'dpr' needs a positive passage id on every example")
        self.lm_module = _lm_module(lm)
        if cfg.mode in ("ra_dit", "marginal") and self.lm_module is None:
            raise TypeError(
                f"mode {cfg.mode!r} trains the LM: pass an nn.Module or a GeneratorAdapter over one, not a black box"
            )
        if cfg.train_passage_encoder:
            if not isinstance(retriever.passage_encoder, torch.nn.Module):
                raise ValueError(
                    "train_passage_encoder needs the retriever to re-embed hits with an "
                    "nn.Module passage_encoder (Retriever(..., passage_encoder=, passages=))"
                )
            if reindexer is None:
                raise ValueError("train_passage_encoder needs an AsyncReindexer, or the index goes stale")
        if reindexer is not None and retriever.index is not reindexer.index:
            raise ValueError("retriever.index must be reindexer.index, so that searches see the refreshes")
        self.retriever = retriever
        self.config = cfg
        self.lm = lm
        self.train_data = list(train_data)
        self.eval_data = list(eval_data) if eval_data else None
        self.reindexer = reindexer
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        if log is None:
            from tqdm.auto import tqdm

            log = tqdm.write
        self.log = log
        self.state = TrainState()
        self._relevant: dict[str, list[frozenset[int]]] = {}  # eval_data's judgements, by match
        if cfg.encoder_layers is not None:
            # __init__ checked above that the encoders a run trains are nn.Modules.
            for encoder in (retriever.query_encoder, retriever.passage_encoder if cfg.train_passage_encoder else None):
                if isinstance(encoder, torch.nn.Module):
                    train_last_blocks(encoder, cfg.encoder_layers)
        self._modules = self._trainable_modules()
        groups = self._param_groups()
        # Fused: one kernel over every parameter. The default per-tensor loop took 0.15 s of
        # a 1.2 s MiniLM step on one CPU thread, the fused one 0.03 s.
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused)

    # ------------------------------------------------------------------ setup
    def _trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules this mode trains, by role; a module shared by two roles appears once."""
        cfg = self.config
        # __init__ checked that each of these is an nn.Module.
        modules = {"query_encoder": self.retriever.query_encoder}
        if cfg.train_passage_encoder and self.retriever.passage_encoder is not self.retriever.query_encoder:
            modules["passage_encoder"] = self.retriever.passage_encoder
        if cfg.mode in ("ra_dit", "marginal"):
            modules["lm"] = self.lm_module
        return {role: m for role, m in modules.items() if isinstance(m, torch.nn.Module)}

    def _base_lrs(self) -> dict[str, float]:
        cfg = self.config
        return {"query_encoder": cfg.lr_query, "passage_encoder": cfg.lr_passage, "lm": cfg.lr_lm}

    def lr_scale(self, step: int) -> float:
        """The factor on every base learning rate at `step` (warmup, then constant or linear decay)."""
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "linear":
            return max(0.0, (cfg.steps - step) / max(cfg.steps - cfg.warmup_steps, 1))
        return 1.0

    def _param_groups(self) -> list[dict]:
        lrs = self._base_lrs()
        groups: list[dict] = []
        seen: set[int] = set()
        for role, module in self._modules.items():
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": lrs[role], "role": role})
        return groups

    # ------------------------------------------------------------------ data
    def batch(self, step: int) -> list[Example]:
        """The examples of `step`: epochs of a seeded permutation, so the order follows
        from the step alone and a resumed run sees the same batches."""
        b = self.config.batch_size
        per_epoch = len(self.train_data) // b
        epoch, pos = divmod(step, per_epoch)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_data), generator=gen)[pos * b : (pos + 1) * b]
        return [self.train_data[i] for i in order.tolist()]

    # ------------------------------------------------------------------ one step
    def loss(self, step: int, batch: Sequence[Example]) -> torch.Tensor:
        """The loss of the configured mode on `batch` at `step`."""
        cfg = self.config
        queries, answers = [e.query for e in batch], [e.answer for e in batch]
        train_retriever = step >= cfg.freeze_retriever_steps
        # Hard negatives are drawn from the step alone, so a resumed run draws the same.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 0x5EED)
        # Before passage_start the passage encoder is frozen: the stored vectors are its embeddings.
        reembed = None if not cfg.train_passage_encoder or step >= cfg.passage_start else False
        if cfg.mode == "dpr":
            return dpr_loss(self.retriever, queries, [int(e.positive) for e in batch if e.positive is not None], cfg)
        lm = self.lm
        assert lm is not None  # __init__ requires one for every mode but DPR
        if cfg.mode == "replug_lsr":
            return replug_lsr_loss(self.retriever, lm, queries, answers, cfg, generator=gen, reembed=reembed)
        if cfg.mode == "ra_dit":
            train_lm = True
            if cfg.dual_schedule == "alternate" and train_retriever:
                train_lm, train_retriever = step % 2 == 0, step % 2 == 1
            return ra_dit_loss(
                self.retriever,
                lm,
                queries,
                answers,
                cfg,
                train_lm=train_lm,
                train_retriever=train_retriever,
                generator=gen,
                reembed=reembed,
            )
        return marginal_loss(
            self.retriever, lm, queries, answers, cfg, train_retriever=train_retriever, generator=gen, reembed=reembed
        )

    def train_step(self) -> StepRecord:
        """One optimiser step; then the reindexer is told the step count."""
        cfg = self.config
        step = self.state.step
        busy_before = self.reindexer.busy if self.reindexer else False
        t0 = time.perf_counter()
        for module in self._modules.values():
            module.train()
        retriever_frozen = step < cfg.freeze_retriever_steps
        if retriever_frozen and "lm" not in self._modules:
            loss = torch.zeros(())  # nothing trains yet (REPLUG-LSR / DPR before unfreezing)
        else:
            loss = self.loss(step, self.batch(step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.warmup_steps or cfg.lr_decay != "constant":
                lrs, scale = self._base_lrs(), self.lr_scale(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lrs[group["role"]] * scale
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], cfg.max_grad_norm
                )
            self.optimizer.step()  # parameters without a gradient (a frozen retriever) stay put
        self.state.step = step = step + 1
        if self.reindexer is not None:
            self.reindexer.step(step)  # timed too: a due refresh copies the weights here
        seconds = time.perf_counter() - t0
        busy_after = self.reindexer.busy if self.reindexer else False
        record = StepRecord(
            step,
            float(loss.detach()),
            seconds,
            busy_before if busy_before == busy_after else None,
            self.retriever.index.version,
            self.staleness(step),
        )
        if not math.isfinite(record.loss):
            raise FloatingPointError(f"loss is {record.loss} at step {step}")
        self.state.history.append(record)
        return record

    def staleness(self, step: int) -> int:
        """Steps between `step` and the encoder snapshot that built the index in service
        (0 without a reindexer: the index does not go stale)."""
        return self.reindexer.staleness(step) if self.reindexer is not None else 0

    # ------------------------------------------------------------------ the loop
    def evaluate(self, match: Optional[str] = None) -> _eval.RetrievalEval:
        """Per-query recall, success, MRR and nDCG at eval_k on eval_data, with the current
        encoders (in eval mode, without gradient; their modes are restored) and index.
        match: "positive" or "answer" (default config.eval_match; see pyrag.eval)."""
        if not self.eval_data:
            raise ValueError("no eval_data was given")
        match = self.config.eval_match if match is None else match
        if match not in self._relevant:
            self._relevant[match] = _eval.relevant_passages(self.eval_data, match, self.retriever.passages)
        result = _eval.evaluate(
            self.retriever, [e.query for e in self.eval_data], self._relevant[match], self.config.eval_k
        )
        if match == self.config.eval_match:
            self.state.evals.append((self.state.step, float(result.success.mean())))
        return result

    def train(self, steps: Optional[int] = None) -> TrainState:
        """Trains until step `steps` (default config.steps), from wherever the state is."""
        from tqdm.auto import tqdm

        cfg = self.config
        end = cfg.steps if steps is None else steps
        window: list[float] = []
        with tqdm(
            total=end,
            initial=self.state.step,
            desc=cfg.mode,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        ) as bar:
            while self.state.step < end:
                record = self.train_step()
                window.append(record.loss)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record.loss:.4f}",
                    index=f"v{record.index_version}",
                    stale=record.staleness,
                    refresh="yes" if self.reindexer and self.reindexer.busy else "no",
                )
                step = record.step
                measured = None
                if cfg.eval_every and self.eval_data and step % cfg.eval_every == 0:
                    measured = self.evaluate()
                if cfg.log_every and (step % cfg.log_every == 0 or step == end):
                    self.log(self._log_line(step, window, measured))
                    window = []
                if cfg.checkpoint_every and self.checkpoint_path and step % cfg.checkpoint_every == 0:
                    self.save_checkpoint(self.checkpoint_path)
        return self.state

    def _log_line(self, step: int, losses: list[float], measured: Optional[_eval.RetrievalEval]) -> str:
        parts = [f"step {step}", f"loss {statistics.fmean(losses):.4f}" if losses else "loss -"]
        if measured is not None:
            k, se = measured.k, _eval.standard_error(measured.success) if len(measured) > 1 else 0.0
            parts.append(
                f"held-out ({self.config.eval_match}) success@{k} {measured.success.mean():.3f} ±{se:.3f} "
                f"mrr@{k} {measured.mrr.mean():.3f} ndcg@{k} {measured.ndcg.mean():.3f}"
            )
        parts.append(f"index v{self.retriever.index.version} staleness {self.staleness(step)}")
        if self.reindexer is not None:
            s = self.reindexer.stats
            parts.append(f"refreshes {s.completed} skipped {s.skipped} running {self.reindexer.busy}")
        recent = [r.seconds for r in self.state.history[-len(losses) :]] if losses else []
        if recent:
            parts.append(f"{statistics.median(recent):.3f}s/step")
        return " | ".join(parts)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Writes the models, optimiser, step, RNG and (with a reindexer) the index in
        service with its version into the directory `path`, atomically (see
        pyrag/train/checkpoint.py)."""
        checkpoint.save(self, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restores a checkpoint written by save_checkpoint: the resumed run continues
        exactly as if never stopped."""
        checkpoint.load(self, path)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules this trainer optimises, by role ("query_encoder", "passage_encoder", "lm")."""
        return dict(self._modules)

    def restore_state(self, step: int, evals: list[tuple[int, float]]) -> None:
        """Sets the step counter and evaluation history (a checkpoint being loaded)."""
        self.state = TrainState(step=step, evals=list(evals))


def _lm_module(lm: Any) -> Optional[torch.nn.Module]:
    """The trainable module behind an LM callable, if any."""
    if isinstance(lm, torch.nn.Module):
        return lm
    model = getattr(lm, "model", None)
    if isinstance(model, torch.nn.Module):
        return model  # a GeneratorAdapter over a transformers model
    return None


def step_time_medians(history: Sequence[StepRecord]) -> tuple[Optional[float], Optional[float], int, int]:
    """(median seconds of steps with a refresh running throughout, median of steps with
    none, how many of each): the cost of background re-indexing to training."""
    busy = [r.seconds for r in history if r.refreshing is True]
    idle = [r.seconds for r in history if r.refreshing is False]
    return (statistics.median(busy) if busy else None, statistics.median(idle) if idle else None, len(busy), len(idle))
