"""Reference training loops: REPLUG-LSR, RA-DIT dual, end-to-end marginal and DPR.

Each mode is one short loss function built from the public pieces (Retriever, the
losses, an LM callable), meant to be read and copied into other trainers:

| mode         | trains                 | loss                                              |
| ------------ | ---------------------- | ------------------------------------------------- |
| "replug_lsr" | the retriever          | lsr_loss(retriever scores, frozen LM scores)      |
| "ra_dit"     | LM and retriever       | LM: -Σ_i Σ_j log p_LM(y_i|c_ij∘x_i); retriever: LSR |
| "marginal"   | both                   | marginal_nll (RAG): gradient to both              |
| "dpr"        | the retriever          | contrastive_loss with in-batch (+ hard) negatives |

`Trainer` runs one of them with the plumbing around it: parameter groups per component,
the retriever's unfreeze step, gradient clipping, an AsyncReindexer when the passage
encoder trains, held-out recall, tqdm and a log line every N steps, and checkpoints that
resume exactly (models, optimiser, step, index and its version, RNG).
"""
from __future__ import annotations

import functools
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from pyrag import storage
from pyrag.losses import contrastive_loss, lsr_loss, marginal_nll
from pyrag.reindex import AsyncReindexer
from pyrag.retriever import Retriever, _stored_vectors
from pyrag.train.cloze import Example, words

MODES = ("replug_lsr", "ra_dit", "marginal", "dpr")
CHECKPOINT_FORMAT = "pyrag.train.checkpoint"
CHECKPOINT_FORMAT_VERSION = "1"


@dataclass
class TrainConfig:
    """Settings of a training run (all of them are saved in checkpoints).

    tau_retriever / tau_lm: temperatures of p_R = softmax(s/τ_R) and p_LSR = softmax(log p_LM/τ_LM).
    direction: "reverse" is KL(p_LSR ‖ p_R), what the REPLUG and Atlas code optimise;
        "forward" is KL(p_R ‖ p_LSR), the REPLUG paper's formula.
    freeze_retriever_steps: the retriever does not train before this step (Atlas's
        freeze_retriever_steps); the LM does, in the modes that train it.
    dual_schedule: RA-DIT: "joint" sums both losses each step; "alternate" trains the LM
        on even steps and the retriever on odd ones.
    hard_negatives: DPR: retrieved non-positive passages per query added as negatives.
    warmup_steps / lr_decay: every learning rate rises linearly over the first warmup_steps
        steps, then stays ("constant") or falls linearly to 0 at `steps` ("linear"), as
        Atlas's scheduler does. The rate follows from the step alone, so a resumed run
        continues the same schedule.
    """
    mode: str = "replug_lsr"
    steps: int = 1000
    batch_size: int = 16
    k: int = 10
    tau_retriever: float = 0.1
    tau_lm: float = 1.0
    direction: str = "reverse"
    lr_query: float = 2e-5
    lr_passage: float = 2e-5
    lr_lm: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    warmup_steps: int = 0
    lr_decay: str = "constant"
    train_passage_encoder: bool = False
    freeze_retriever_steps: int = 0
    dual_schedule: str = "joint"
    hard_negatives: int = 0
    eval_k: int = 10
    eval_every: int = 0       # 0: evaluate only when asked
    log_every: int = 50
    checkpoint_every: int = 0  # 0: never (needs checkpoint_path)
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dual_schedule not in ("joint", "alternate"):
            raise ValueError(f"dual_schedule must be 'joint' or 'alternate', got {self.dual_schedule!r}")
        for name in ("steps", "batch_size", "k", "eval_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.lr_decay not in ("constant", "linear"):
            raise ValueError(f"lr_decay must be 'constant' or 'linear', got {self.lr_decay!r}")
        for name in ("freeze_retriever_steps", "hard_negatives", "eval_every", "log_every", "checkpoint_every",
                     "warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("tau_retriever", "tau_lm", "lr_query", "lr_passage", "lr_lm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------- the losses
def replug_lsr_loss(retriever: Retriever, lm: Callable, queries, answers, cfg: TrainConfig) -> torch.Tensor:
    """REPLUG LSR: the retriever's distribution over its top k is pulled toward the LM's
    (how much each passage helps the LM produce the answer). The LM is a fixed black box."""
    hits = retriever(queries, k=cfg.k)
    with torch.no_grad():
        lm_scores = lm(queries, hits.passages, answers)
    return lsr_loss(hits.scores, lm_scores, tau_retriever=cfg.tau_retriever, tau_lm=cfg.tau_lm,
                    mask=hits.mask, direction=cfg.direction)


def ra_dit_loss(retriever: Retriever, lm: Callable, queries, answers, cfg: TrainConfig, *,
                train_lm: bool = True, train_retriever: bool = True) -> torch.Tensor:
    """RA-DIT dual instruction tuning: the LM learns to answer from each retrieved passage
    (-Σ_i Σ_j log p_LM(y_i|c_ij∘x_i), summed over the k passages, averaged over queries)
    and the retriever learns LSR from the same LM's scores."""
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and train_retriever):
        hits = retriever(queries, k=cfg.k)
    with torch.set_grad_enabled(grad and train_lm):
        lm_logp = lm(queries, hits.passages, answers)
    loss = hits.scores.new_zeros(())
    if train_lm:
        loss = loss - lm_logp.masked_fill(~hits.mask, 0.0).sum(dim=1).mean()
    if train_retriever:
        loss = loss + lsr_loss(hits.scores, lm_logp.detach(), tau_retriever=cfg.tau_retriever,
                               tau_lm=cfg.tau_lm, mask=hits.mask, direction=cfg.direction)
    return loss


def marginal_loss(retriever: Retriever, lm: Callable, queries, answers, cfg: TrainConfig, *,
                  train_retriever: bool = True) -> torch.Tensor:
    """End-to-end RAG: -log Σ_c p_R(c|x) p_LM(y|c∘x); the gradient reaches both models."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and train_retriever):
        hits = retriever(queries, k=cfg.k)
    lm_logp = lm(queries, hits.passages, answers)
    return marginal_nll(hits.scores, lm_logp, tau_retriever=cfg.tau_retriever, mask=hits.mask)


def dpr_loss(retriever: Retriever, queries, positives: Sequence[int], cfg: TrainConfig) -> torch.Tensor:
    """DPR: each query's labelled passage against the batch's other passages and, with
    cfg.hard_negatives, its best-ranked wrong passages. With a passage encoder on the
    retriever (cfg.train_passage_encoder) the passages are embedded live, else read from
    the index."""
    q = retriever.encode_queries(queries)
    pos = torch.as_tensor(list(positives), dtype=torch.int64)
    ids = pos
    negatives = None
    if cfg.hard_negatives:
        hits = retriever.retrieve(q.detach(), k=cfg.hard_negatives + 1, reembed=False)
        neg_ids = []
        for row, p in zip(hits.ids.tolist(), pos.tolist()):
            neg_ids += [i for i in row if i != p and i >= 0][:cfg.hard_negatives]
        ids = torch.cat([pos, torch.tensor(neg_ids, dtype=torch.int64)])
    if cfg.train_passage_encoder:
        unique, inverse = torch.unique(ids, return_inverse=True)
        emb = retriever.passage_encoder([retriever.passages[i] for i in unique.tolist()])[inverse]
    else:
        index = retriever.index.snapshot() if hasattr(retriever.index, "snapshot") else retriever.index
        emb = _stored_vectors(index, ids).to(q.device, q.dtype)
    d = emb[:len(pos)]
    if len(ids) > len(pos):
        negatives = emb[len(pos):]
    return contrastive_loss(q, d, tau=cfg.tau_retriever, negatives=negatives)


# ----------------------------------------------------------------------------- evaluation
RECALL_MATCHES = ("positive", "answer")


@torch.no_grad()
def recall_at_k(retriever: Retriever, examples: Sequence[Example], k: int = 10, *, match: str = "positive",
                passages: Optional[Sequence[str]] = None, batch_size: int = 64) -> float:
    """Fraction of examples with a hit among the k best passages of the index.

    match="positive": the example's own passage is retrieved (needs Example.positive).
    match="answer": some retrieved passage contains the answer's words, as in DPR's top-k
    retrieval accuracy: what an LM reading the passages needs. Needs the passage texts
    (`passages`, default retriever.passages).
    """
    if not examples:
        raise ValueError("recall_at_k needs at least one example")
    if match not in RECALL_MATCHES:
        raise ValueError(f"match must be one of {', '.join(RECALL_MATCHES)}, got {match!r}")
    if match == "positive" and any(e.positive is None for e in examples):
        raise ValueError("recall_at_k(match='positive') needs examples with a positive passage id")
    texts = passages if passages is not None else retriever.passages
    if match == "answer" and texts is None:
        raise ValueError("recall_at_k(match='answer') needs the passage texts")
    found = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        q = retriever.encode_queries([e.query for e in batch])
        _, ids = retriever.index.search(q.detach().float().cpu(), k)
        if match == "positive":
            pos = torch.tensor([e.positive for e in batch])
            found += int((ids == pos[:, None]).any(dim=1).sum())
        else:
            for e, row in zip(batch, ids.tolist()):
                answer = words(e.answer)
                found += any(set(answer) <= _word_set(texts[i]) for i in row if i >= 0)
    return found / len(examples)


@functools.lru_cache(maxsize=1 << 16)
def _word_set(text: str) -> frozenset:
    return frozenset(words(text))


# ----------------------------------------------------------------------------- trainer
@dataclass
class StepRecord:
    step: int
    loss: float
    seconds: float
    refreshing: Optional[bool]   # a refresh was running at the step's start and end (True), at
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
        eval_data: held-out Examples for recall@eval_k.
        reindexer: an AsyncReindexer, stepped after each optimiser step.
        checkpoint_path: where checkpoint_every writes (atomically).
        progress: show a tqdm bar. log: where the log lines go (default tqdm.write).
    """

    def __init__(self, retriever: Retriever, config: TrainConfig, train_data: Sequence[Example], *,
                 lm: Optional[Callable] = None, eval_data: Optional[Sequence[Example]] = None,
                 reindexer: Optional[AsyncReindexer] = None, checkpoint_path=None,
                 progress: bool = True, log: Optional[Callable[[str], None]] = None):
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
            raise TypeError(f"mode {cfg.mode!r} trains the LM: pass an nn.Module or a GeneratorAdapter "
                            f"over one, not a black box")
        if cfg.train_passage_encoder:
            if not isinstance(retriever.passage_encoder, torch.nn.Module):
                raise ValueError("train_passage_encoder needs the retriever to re-embed hits with an "
                                 "nn.Module passage_encoder (Retriever(..., passage_encoder=, passages=))")
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
        self._modules = self._trainable_modules()
        self.optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------ setup
    def _trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules this mode trains, by role; a module shared by two roles appears once."""
        cfg = self.config
        modules = {"query_encoder": self.retriever.query_encoder}
        if cfg.train_passage_encoder and self.retriever.passage_encoder is not self.retriever.query_encoder:
            modules["passage_encoder"] = self.retriever.passage_encoder
        if cfg.mode in ("ra_dit", "marginal"):
            modules["lm"] = self.lm_module
        return modules

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
        groups, seen = [], set()
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
        order = torch.randperm(len(self.train_data), generator=gen)[pos * b:(pos + 1) * b]
        return [self.train_data[i] for i in order.tolist()]

    # ------------------------------------------------------------------ one step
    def loss(self, step: int, batch: Sequence[Example]) -> torch.Tensor:
        """The loss of the configured mode on `batch` at `step`."""
        cfg = self.config
        queries, answers = [e.query for e in batch], [e.answer for e in batch]
        train_retriever = step >= cfg.freeze_retriever_steps
        if cfg.mode == "replug_lsr":
            return replug_lsr_loss(self.retriever, self.lm, queries, answers, cfg)
        if cfg.mode == "ra_dit":
            train_lm = True
            if cfg.dual_schedule == "alternate" and train_retriever:
                train_lm, train_retriever = step % 2 == 0, step % 2 == 1
            return ra_dit_loss(self.retriever, self.lm, queries, answers, cfg,
                               train_lm=train_lm, train_retriever=train_retriever)
        if cfg.mode == "marginal":
            return marginal_loss(self.retriever, self.lm, queries, answers, cfg,
                                 train_retriever=train_retriever)
        return dpr_loss(self.retriever, queries, [e.positive for e in batch], cfg)

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
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               cfg.max_grad_norm)
            self.optimizer.step()  # parameters without a gradient (a frozen retriever) stay put
        self.state.step = step = step + 1
        if self.reindexer is not None:
            self.reindexer.step(step)  # timed too: a due refresh copies the weights here
        seconds = time.perf_counter() - t0
        busy_after = self.reindexer.busy if self.reindexer else False
        index_step = getattr(self.retriever.index, "step", 0)
        record = StepRecord(step, float(loss.detach()), seconds,
                            busy_before if busy_before == busy_after else None,
                            getattr(self.retriever.index, "version", 0), step - index_step)
        if not math.isfinite(record.loss):
            raise FloatingPointError(f"loss is {record.loss} at step {step}")
        self.state.history.append(record)
        return record

    # ------------------------------------------------------------------ the loop
    def evaluate(self, match: str = "positive") -> float:
        """recall@eval_k on eval_data with the current query encoder and index (see
        recall_at_k for `match`)."""
        if not self.eval_data:
            raise ValueError("no eval_data was given")
        modules = self._modules.values()
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            recall = recall_at_k(self.retriever, self.eval_data, self.config.eval_k, match=match)
        finally:
            for m, t in zip(modules, was_training):
                m.train(t)
        if match == "positive":
            self.state.evals.append((self.state.step, recall))
        return recall

    def train(self, steps: Optional[int] = None) -> TrainState:
        """Trains until step `steps` (default config.steps), from wherever the state is."""
        from tqdm.auto import tqdm

        cfg = self.config
        end = cfg.steps if steps is None else steps
        window: list[float] = []
        with tqdm(total=end, initial=self.state.step, desc=cfg.mode, unit="step",
                  disable=not self.progress, dynamic_ncols=True) as bar:
            while self.state.step < end:
                record = self.train_step()
                window.append(record.loss)
                bar.update(1)
                bar.set_postfix(loss=f"{record.loss:.4f}", index=f"v{record.index_version}",
                                stale=record.staleness, refresh="yes" if self.reindexer and self.reindexer.busy else "no")
                step = record.step
                recall = None
                if cfg.eval_every and self.eval_data and step % cfg.eval_every == 0:
                    recall = self.evaluate()
                if cfg.log_every and (step % cfg.log_every == 0 or step == end):
                    self.log(self._log_line(step, window, recall))
                    window = []
                if cfg.checkpoint_every and self.checkpoint_path and step % cfg.checkpoint_every == 0:
                    self.save_checkpoint(self.checkpoint_path)
        return self.state

    def _log_line(self, step: int, losses: list[float], recall: Optional[float]) -> str:
        parts = [f"step {step}", f"loss {statistics.fmean(losses):.4f}" if losses else "loss -"]
        if recall is not None:
            parts.append(f"recall@{self.config.eval_k} {recall:.3f}")
        version = getattr(self.retriever.index, "version", 0)
        parts.append(f"index v{version} staleness {step - getattr(self.retriever.index, 'step', 0)}")
        if self.reindexer is not None:
            s = self.reindexer.stats
            parts.append(f"refreshes {s.completed} skipped {s.skipped} running {self.reindexer.busy}")
        recent = [r.seconds for r in self.state.history[-len(losses):]] if losses else []
        if recent:
            parts.append(f"{statistics.median(recent):.3f}s/step")
        return " | ".join(parts)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path) -> None:
        """Writes models, optimiser, step, RNG and (with a reindexer) the index in service
        and its version to one file, atomically, with a checksum.

        A refresh still running is not saved: the resumed run starts from the index in
        service, and its reindexer refreshes again at the next due step.
        """
        tensors: dict[str, torch.Tensor] = {}
        for role, module in self._modules.items():
            for name, t in module.state_dict().items():
                tensors[f"{role}/{name}"] = t.detach().cpu().clone()  # clone: tied weights share storage
        opt = self.optimizer.state_dict()
        scalars, scalar_tensors = {}, []
        for pid, pstate in opt["state"].items():
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    # as [1]: storage's checksum cannot view a 0-d tensor's bytes
                    tensors[f"optimizer/{pid}/{key}"] = value.detach().cpu().clone().reshape(value.shape or (1,))
                    if value.dim() == 0:
                        scalar_tensors.append(f"{pid}/{key}")
                else:
                    scalars[f"{pid}/{key}"] = value
        tensors["rng/torch"] = torch.get_rng_state()
        meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
                "step": str(self.state.step), "config": json.dumps(asdict(self.config)),
                "param_groups": json.dumps(opt["param_groups"]),
                "optimizer_scalars": json.dumps(scalars),
                "optimizer_0d": json.dumps(scalar_tensors),
                "evals": json.dumps(self.state.evals)}
        if self.reindexer is not None:
            current = self.reindexer.index.snapshot()
            tensors["index/vectors"] = current.index.vectors().clone()
            tensors["index/ids"] = current.index.ids
            meta["index_version"] = str(current.version)
            meta["index_step"] = str(current.step)
        storage.save_tensors(path, tensors, meta)

    def load_checkpoint(self, path) -> None:
        """Restores a checkpoint written by save_checkpoint into this trainer's models,
        optimiser and reindexer (which must be idle). The config must match in mode and
        in what trains."""
        tensors, meta = storage.load_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise storage.FormatError(f"{path}: not a pyrag training checkpoint")
        if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise storage.FormatError(f"{path}: unsupported checkpoint version {meta.get('format_version')!r}")
        saved = json.loads(meta["config"])
        for key in ("mode", "train_passage_encoder"):
            if saved[key] != getattr(self.config, key):
                raise ValueError(f"checkpoint has {key}={saved[key]!r} but this trainer has "
                                 f"{getattr(self.config, key)!r}")
        for role, module in self._modules.items():
            prefix = f"{role}/"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(state, strict=True)
        scalars = json.loads(meta["optimizer_scalars"])
        opt_state: dict[int, dict] = {}
        zero_dim = set(json.loads(meta["optimizer_0d"]))
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, pid, name = key.split("/", 2)
                opt_state.setdefault(int(pid), {})[name] = value.reshape(()) if f"{pid}/{name}" in zero_dim else value
        for key, value in scalars.items():
            pid, name = key.split("/", 1)
            opt_state.setdefault(int(pid), {})[name] = value
        groups = json.loads(meta["param_groups"])
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.optimizer.param_groups]:
            raise ValueError("the checkpoint's optimiser has other parameter groups than this trainer's")
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        torch.set_rng_state(tensors["rng/torch"])
        if self.reindexer is not None and "index/vectors" in tensors:
            from pyrag.index import DenseIndex
            index = DenseIndex(tensors["index/vectors"].shape[1])
            index.add(tensors["index/vectors"], tensors["index/ids"])
            self.reindexer.restore(index, version=int(meta["index_version"]), step=int(meta["index_step"]))
        self.state = TrainState(step=int(meta["step"]), evals=[tuple(e) for e in json.loads(meta["evals"])])


def _lm_module(lm) -> Optional[torch.nn.Module]:
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
    return (statistics.median(busy) if busy else None, statistics.median(idle) if idle else None,
            len(busy), len(idle))
