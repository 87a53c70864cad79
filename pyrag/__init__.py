"""pyrag: a retrieval engine for retrieval-augmented generation.

    import pyrag
    index = pyrag.DenseIndex(384)
    index.add(passage_embeddings)
    scores, ids = index.search(query_embeddings, k=10)
"""
from pyrag.generator import GenerationResult, GeneratorAdapter, Source
from pyrag.index import DenseIndex, IndexFormatError
from pyrag.losses import contrastive_loss, lsr_loss, lsr_weights, marginal_nll
from pyrag.ops import (BACKENDS, BackendUnavailableError, get_num_threads, set_num_threads,
                       topk_scores)
from pyrag.reindex import AsyncReindexer, ReindexError, Schedule, VersionedIndex
from pyrag.retriever import RetrievalResult, Retriever

__version__ = "0.1.0"

__all__ = [
    "AsyncReindexer",
    "ReindexError",
    "Schedule",
    "VersionedIndex",
    "BACKENDS",
    "BackendUnavailableError",
    "DenseIndex",
    "GenerationResult",
    "GeneratorAdapter",
    "IndexFormatError",
    "RetrievalResult",
    "Retriever",
    "Source",
    "contrastive_loss",
    "get_num_threads",
    "lsr_loss",
    "lsr_weights",
    "marginal_nll",
    "set_num_threads",
    "topk_scores",
]
