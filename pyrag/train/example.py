"""A training or evaluation example (query, answer, supporting passage), and the word
tokenization that answer matching uses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]+")


@dataclass(frozen=True)
class Example:
    """One training or evaluation query: the question text, the answer the LM should
    produce, and the id of the passage that supports it (None when unknown)."""

    query: str
    answer: str
    positive: Optional[int] = None


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what answer matching (a passage holds every word of the
    answer) compares."""
    return [w.lower() for w in _WORD.findall(text)]
