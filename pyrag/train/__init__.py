"""Reference training loops for retrievers (and the LMs they serve), with asynchronous
re-indexing: REPLUG-LSR, RA-DIT dual, end-to-end marginal (RAG) and DPR.

    from pyrag.train import Trainer, TrainConfig
    trainer = Trainer(retriever, TrainConfig(mode="replug_lsr"), examples, lm=lm)
    trainer.train()

config.py holds the settings, modes.py the four loss functions and the LM-scored candidate
sets they share, trainer.py the loop,
checkpoint.py checkpoints that resume exactly, encoders.py a trainable wrapper over
sentence-transformers models.
"""

from pyrag.train.config import MODES, TrainConfig
from pyrag.train.encoders import SentenceTransformerEncoder
from pyrag.train.example import Example
from pyrag.train.modes import Candidates, candidates, dpr_loss, marginal_loss, ra_dit_loss, replug_lsr_loss
from pyrag.train.trainer import StepRecord, Trainer, TrainState, recall_at_k, step_time_medians

__all__ = [
    "MODES",
    "Candidates",
    "Example",
    "SentenceTransformerEncoder",
    "StepRecord",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "candidates",
    "dpr_loss",
    "marginal_loss",
    "ra_dit_loss",
    "recall_at_k",
    "replug_lsr_loss",
    "step_time_medians",
]
