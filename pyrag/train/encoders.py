"""A differentiable text encoder over a sentence-transformers model.

SentenceTransformer.encode runs under no_grad; training needs the forward pass with
gradient, from texts to embeddings. This wrapper is that forward pass, usable as a
Retriever's query or passage encoder and as an AsyncReindexer's encoder.
sentence-transformers is not imported here: the model object carries what is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch


class SentenceTransformerEncoder(torch.nn.Module):
    """texts -> [B, dim] embeddings of a SentenceTransformer, with gradient.

    The model's own pipeline (pooling, normalisation) applies, so the embeddings match
    model.encode(texts) up to float rounding.

    sub_batches: the texts are sorted by length and split into at most this many
        forwards, each padded only to its own longest text. One forward over a batch of 16
        cloze queries of up to 64 word pieces spends 46% of its tokens on padding; four
        sorted sub-batches take a fifth off a training step's encoder time
        (docs/domain_adaptation.md). Every text's embedding depends on its own tokens
        only, so the result is the same.
    """

    def __init__(self, model: Any, *, sub_batches: int = 4) -> None:
        super().__init__()
        if not ((hasattr(model, "preprocess") or hasattr(model, "tokenize")) and isinstance(model, torch.nn.Module)):
            raise TypeError(f"model must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
        if isinstance(sub_batches, bool) or not isinstance(sub_batches, int) or sub_batches < 1:
            raise ValueError(f"sub_batches must be a positive int, got {sub_batches!r}")
        self.model = model
        self.sub_batches = sub_batches

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        texts = list(texts)
        parts_n = min(self.sub_batches, len(texts))
        if parts_n <= 1:
            return self._forward(texts)
        # Character length orders texts closely enough by token count, without tokenizing twice.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bounds = [len(order) * j // parts_n for j in range(parts_n + 1)]
        parts = [order[bounds[j] : bounds[j + 1]] for j in range(parts_n)]
        out = torch.cat([self._forward([texts[i] for i in part]) for part in parts])
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return out[inverse.to(out.device)]

    def _forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        # sentence-transformers >= 5 calls it preprocess (tokenize is deprecated); the
        # features may hold non-tensor entries, which stay as they are.
        prepare: Any = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepare(texts).items()}
        out: torch.Tensor = self.model(features)["sentence_embedding"]
        return out


def transformer_blocks(module: torch.nn.Module) -> Optional[torch.nn.ModuleList]:
    """The module's stack of transformer blocks: its longest nn.ModuleList (BERT's
    encoder.layer, GPT-2's h, Llama's layers), or None if it has none."""
    stacks = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    return max(stacks, key=len) if stacks else None


def train_last_blocks(module: torch.nn.Module, n: int) -> int:
    """Freezes every parameter registered before the last n transformer blocks; returns
    how many blocks train (all of them when there are fewer than n; 0 when the module has
    no stack of blocks, and then nothing is frozen).

    Parameters come in registration order (embeddings, block 0, ..., block L-1, final
    norm, heads), so everything before the first parameter of block L-n is frozen and
    everything from it on trains: the frozen part runs without an autograd graph, and the
    backward pass and the optimiser update cover the last n blocks only.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of blocks to train must be a positive int, got {n!r}")
    blocks = transformer_blocks(module)
    if blocks is None:
        return 0
    n = min(n, len(blocks))
    first_trained = {id(p) for p in blocks[len(blocks) - n].parameters()}
    training = False
    for p in module.parameters():
        training = training or id(p) in first_trained
        p.requires_grad_(training)
    return n
