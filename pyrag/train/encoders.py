"""A differentiable text encoder over a sentence-transformers model.

SentenceTransformer.encode runs under no_grad; training needs the forward pass with
gradient, from texts to embeddings. This wrapper is that forward pass, usable as a
Retriever's query or passage encoder and as an AsyncReindexer's encoder.
sentence-transformers is not imported here: the model object carries what is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class SentenceTransformerEncoder(torch.nn.Module):
    """texts -> [B, dim] embeddings of a SentenceTransformer, with gradient.

    The model's own pipeline (pooling, normalisation) applies, so the embeddings match
    model.encode(texts) up to float rounding.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        if not ((hasattr(model, "preprocess") or hasattr(model, "tokenize")) and isinstance(model, torch.nn.Module)):
            raise TypeError(f"model must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
        self.model = model

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        device = next(self.model.parameters()).device
        # sentence-transformers >= 5 calls it preprocess (tokenize is deprecated); the
        # features may hold non-tensor entries, which stay as they are.
        prepare: Any = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepare(list(texts)).items()}
        out: torch.Tensor = self.model(features)["sentence_embedding"]
        return out
