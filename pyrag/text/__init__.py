"""Texts in, passages with their sources out: the document-level index and its parts.

* `TextIndex` (index.py): passages + metadata in SQLite, vectors in a pyrag.DenseIndex;
* encoders.py: sentence-transformers, Hugging Face AutoModel (mean pooling), callables;
* chunking.py: long documents into passages, by paragraph, with a size limit and overlap;
* corpus.py: documents from a folder (.txt .md .rst .html), a JSONL or a CSV file;
* cache.py: an on-disk embedding cache for named encoders;
* store.py: the directory layout and SQLite schema behind TextIndex.

docs/text_index.md describes the design (storage, commit protocol) and its figures.
"""

from pyrag.text.chunking import Chunk, chunk_text
from pyrag.text.encoders import CallableEncoder, Encoder, HuggingFaceEncoder, SentenceTransformerEncoder, load_encoder
from pyrag.text.index import Hit, Passage, StaleIndexError, TextIndex

__all__ = [
    "CallableEncoder",
    "Chunk",
    "Encoder",
    "Hit",
    "HuggingFaceEncoder",
    "Passage",
    "SentenceTransformerEncoder",
    "StaleIndexError",
    "TextIndex",
    "chunk_text",
    "load_encoder",
]
