"""Indexes: the contract every index implements (contract.py), the exact dense index
(dense.py) over its packed corpus (packed.py) and float32 originals (originals.py),
atomic verified files (storage.py), the versioned index that asynchronous
re-indexing swaps (versioned.py), and the searcher that serves concurrent callers with
fused scans (coalescing.py)."""

from pyrag.index.coalescing import CoalescingSearcher, SearcherClosedError, SearcherSnapshot
from pyrag.index.contract import Index
from pyrag.index.dense import DenseIndex, IndexFormatError
from pyrag.index.storage import FormatError
from pyrag.index.versioned import IndexVersion, VersionedIndex

__all__ = [
    "CoalescingSearcher",
    "DenseIndex",
    "FormatError",
    "Index",
    "IndexFormatError",
    "IndexVersion",
    "SearcherClosedError",
    "SearcherSnapshot",
    "VersionedIndex",
]
