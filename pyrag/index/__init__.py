"""Indexes: the contract every index implements (contract.py), the exact dense index
(dense.py) over its packed corpus (packed.py) and float32 originals (originals.py),
atomic verified files (storage.py), and the versioned index that asynchronous
re-indexing swaps (versioned.py)."""

from pyrag.index.contract import Index
from pyrag.index.dense import DenseIndex, IndexFormatError
from pyrag.index.storage import FormatError
from pyrag.index.versioned import IndexVersion, VersionedIndex

__all__ = ["DenseIndex", "FormatError", "Index", "IndexFormatError", "IndexVersion", "VersionedIndex"]
