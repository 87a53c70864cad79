"""TrainConfig: every setting of a training run (all of them are saved in checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MODES = ("replug_lsr", "ra_dit", "marginal", "dpr")


@dataclass
class TrainConfig:
    """Settings of a training run (all of them are saved in checkpoints).

    The defaults are the recipe measured in docs/domain_adaptation.md (REPLUG-LSR of a
    query encoder's last 4 blocks, each query's top 50 as candidates, 150 steps of 16 at
    lr 5e-5, τ_R 0.1):
    `python benchmarks/domain_adaptation.py` reproduces its figures with nothing set.

    tau_retriever / tau_lm: temperatures of p_R = softmax(s/τ_R) and p_LSR = softmax(log p_LM/τ_LM).
    direction: "reverse" is KL(p_LSR ‖ p_R), what the REPLUG and Atlas code optimise;
        "forward" is KL(p_R ‖ p_LSR), the REPLUG paper's formula.
    freeze_retriever_steps: the retriever does not train before this step (Atlas's
        freeze_retriever_steps); the LM does, in the modes that train it.
    passage_start: with train_passage_encoder, the passage encoder trains from this step
        on; before it only the query encoder does, against the stored vectors (Atlas's
        query-side-first remedy for a stale index).
    dual_schedule: RA-DIT: "joint" sums both losses each step; "alternate" trains the LM
        on even steps and the retriever on odd ones.
    k / in_batch / hard_negatives / hard_negative_depth: the candidates the LM scores for
        each query in the LM-supervised modes (pyrag/train/modes.py): its retrieved top k;
        with in_batch = m, also the top m passages of every other query in the batch
        (m = k: the union of the batch's retrieved passages); with hard_negatives = n, n
        passages drawn at random from its ranks k+1 to k + hard_negative_depth. At most
        k + n + (B − 1)·m LM calls per query: a step's cost does not grow with the corpus.
        The whole corpus as candidates is k = len(index) (a search and LM calls over all of it).
        DPR: hard_negatives is the number of retrieved non-positive passages per query
        added as negatives.
    eval_k / eval_match: the held-out measure the trainer logs: recall@eval_k, MRR and
        nDCG (pyrag.eval) with relevance by the example's own passage ("positive") or by
        any passage holding the answer ("answer").
    encoder_layers: the encoders a run trains (the query encoder, and the passage encoder
        with train_passage_encoder) train only their last encoder_layers transformer
        blocks and what follows them; the embeddings and earlier blocks are frozen
        (requires_grad set False when the Trainer is built). The blocks are the module's
        longest nn.ModuleList (BERT's encoder.layer); a module with fewer blocks trains all
        of them, one with none trains whole. None leaves requires_grad as the caller set
        it. Training 4 of MiniLM's 6 kept the gain of training all 6, at two thirds of
        the step time (docs/domain_adaptation.md).
    warmup_steps / lr_decay: every learning rate rises linearly over the first warmup_steps
        steps, then stays ("constant") or falls linearly to 0 at `steps` ("linear"), as
        Atlas's scheduler does. The rate follows from the step alone, so a resumed run
        continues the same schedule.
    """

    mode: str = "replug_lsr"
    steps: int = 150
    batch_size: int = 16
    k: int = 50
    tau_retriever: float = 0.1
    tau_lm: float = 1.0
    direction: str = "reverse"
    lr_query: float = 5e-5
    lr_passage: float = 2e-5
    lr_lm: float = 1e-3
    encoder_layers: Optional[int] = 4
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    warmup_steps: int = 0
    lr_decay: str = "constant"
    train_passage_encoder: bool = False
    passage_start: int = 0
    freeze_retriever_steps: int = 0
    dual_schedule: str = "joint"
    in_batch: int = 0
    hard_negatives: int = 0
    hard_negative_depth: int = 100
    eval_k: int = 10
    eval_match: str = "positive"
    eval_every: int = 0  # 0: evaluate only when asked
    log_every: int = 50
    checkpoint_every: int = 0  # 0: never (needs checkpoint_path)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dual_schedule not in ("joint", "alternate"):
            raise ValueError(f"dual_schedule must be 'joint' or 'alternate', got {self.dual_schedule!r}")
        if self.eval_match not in ("positive", "answer"):
            raise ValueError(f"eval_match must be 'positive' or 'answer', got {self.eval_match!r}")
        for name in ("steps", "batch_size", "k", "eval_k", "hard_negative_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.lr_decay not in ("constant", "linear"):
            raise ValueError(f"lr_decay must be 'constant' or 'linear', got {self.lr_decay!r}")
        for name in (
            "freeze_retriever_steps",
            "hard_negatives",
            "eval_every",
            "log_every",
            "checkpoint_every",
            "warmup_steps",
            "passage_start",
            "in_batch",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.in_batch > self.k:
            raise ValueError(
                f"in_batch takes each query's top in_batch of its k retrieved: got {self.in_batch} > k={self.k}"
            )
        if self.encoder_layers is not None and (
            not isinstance(self.encoder_layers, int) or isinstance(self.encoder_layers, bool) or self.encoder_layers < 1
        ):
            raise ValueError(f"encoder_layers must be a positive int or None, got {self.encoder_layers!r}")
        for name in ("tau_retriever", "tau_lm", "lr_query", "lr_passage", "lr_lm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
