"""Reference training loops for retrievers (and the LMs they serve), with asynchronous
re-indexing: REPLUG-LSR, RA-DIT dual, end-to-end marginal (RAG) and DPR.

    from pyrag.train import Trainer, TrainConfig
    trainer = Trainer(retriever, TrainConfig(mode="replug_lsr", k=10), examples, lm=lm)
    trainer.train()

See pyrag/train/loop.py for the loop and its four loss functions, cloze.py for
self-supervised cloze queries from a corpus, lms.py for two small LMs (a black-box
copy/unigram model and a tiny transformer), encoders.py for a trainable wrapper over
sentence-transformers models.
"""
from pyrag.train.cloze import BLANK, ClozeTask, Example, make_cloze_task
from pyrag.train.encoders import SentenceTransformerEncoder
from pyrag.train.lms import CopyLM, TinyClozeLM
from pyrag.train.loop import (MODES, StepRecord, TrainConfig, Trainer, TrainState, dpr_loss,
                              marginal_loss, ra_dit_loss, recall_at_k, replug_lsr_loss,
                              step_time_medians)

__all__ = [
    "BLANK",
    "ClozeTask",
    "CopyLM",
    "Example",
    "MODES",
    "SentenceTransformerEncoder",
    "StepRecord",
    "TinyClozeLM",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "dpr_loss",
    "make_cloze_task",
    "marginal_loss",
    "ra_dit_loss",
    "recall_at_k",
    "replug_lsr_loss",
    "step_time_medians",
]
