"""Asynchronous re-indexing: keep an index in step with a passage encoder that trains
(schedule.py: when; reindexer.py: the background worker that re-encodes and swaps)."""

from pyrag.reindex.reindexer import AsyncReindexer, ReindexError, ReindexStats
from pyrag.reindex.schedule import Schedule

__all__ = ["AsyncReindexer", "ReindexError", "ReindexStats", "Schedule"]
