"""pyrag over torch.distributed: an index sharded over the ranks of a process group
(ShardedIndex), its asynchronous re-indexing (ShardedReindexer), and the error every rank
raises when a collective call fails elsewhere (CollectiveError). See docs/distributed.md."""

from pyrag.distributed.collective import CollectiveError
from pyrag.distributed.reindex import ShardedReindexer
from pyrag.distributed.sharded import ShardedIndex

__all__ = ["CollectiveError", "ShardedIndex", "ShardedReindexer"]
