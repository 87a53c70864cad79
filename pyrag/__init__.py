"""pyrag: a retrieval engine for retrieval-augmented generation.

import pyrag
index = pyrag.DenseIndex(384)
index.add(passage_embeddings)
scores, ids = index.search(query_embeddings, k=10)
"""

# The evaluation module (pyrag.eval.evaluate, paired_bootstrap, ...). Not in __all__: a star
# import would shadow the builtin eval.
from pyrag import eval as eval
from pyrag.generator import GenerationResult, GeneratorAdapter, Source
from pyrag.index import (
    CoalescingSearcher,
    DenseIndex,
    FormatError,
    Index,
    IndexFormatError,
    IndexVersion,
    SearcherClosedError,
    SearcherSnapshot,
    VersionedIndex,
)
from pyrag.losses import contrastive_loss, lsr_loss, lsr_weights, marginal_nll
from pyrag.ops import BACKENDS, BackendUnavailableError, get_num_threads, set_num_threads
from pyrag.ops._registry import compiled_extension as _compiled_extension
from pyrag.reindex import AsyncReindexer, ReindexError, Schedule
from pyrag.retriever import RetrievalResult, Retriever

# Last: pyrag.text builds on the names above.
from pyrag.text import Hit, Passage, TextIndex
from pyrag.topk import topk_scores

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The CPU instruction set the kernels run on this machine ("avx512bf16", "avx2",
    "scalar", ...): the best one supported, or the one PYRAG_CPU_ISA forces."""
    return str(_compiled_extension().cpu_isa())


def supported_cpu_isas() -> list[str]:
    """Every CPU instruction set path this machine can run, lowest first."""
    return list(_compiled_extension().supported_cpu_isas())


__all__ = [
    "BACKENDS",
    "AsyncReindexer",
    "BackendUnavailableError",
    "CoalescingSearcher",
    "DenseIndex",
    "FormatError",
    "GenerationResult",
    "GeneratorAdapter",
    "Hit",
    "Index",
    "IndexFormatError",
    "IndexVersion",
    "Passage",
    "ReindexError",
    "RetrievalResult",
    "Retriever",
    "Schedule",
    "SearcherClosedError",
    "SearcherSnapshot",
    "Source",
    "TextIndex",
    "VersionedIndex",
    "contrastive_loss",
    "cpu_isa",
    "get_num_threads",
    "lsr_loss",
    "lsr_weights",
    "marginal_nll",
    "set_num_threads",
    "supported_cpu_isas",
    "topk_scores",
]
