"""Chunking: long documents into passages, by paragraph, with a size limit and overlap.

    chunks = chunk_text(document, size=600, overlap=100)
    for c in chunks:
        assert document[c.offset:c.offset + len(c.text)] == c.text

A chunk is always a verbatim slice of the document, so its offset locates it exactly.
Paragraphs (separated by blank lines) are the units; consecutive paragraphs are packed
into a chunk while it stays within `size` characters. A paragraph longer than `size` is
split at sentence ends, a sentence longer than `size` at spaces, and a run with no space
at `size` characters. A new chunk starts with the trailing units of the previous one that
fit in `overlap` characters: so overlap happens where a paragraph was split into
sentences, and not across paragraph breaks wider than `overlap` (LangChain's recursive
splitter behaves the same way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

__all__ = ["Chunk", "chunk_text", "DEFAULT_CHUNK_SIZE", "DEFAULT_OVERLAP"]

# ~130 word pieces of English prose: about the 128-token inputs MiniLM was trained on,
# well under its 256-token window, so nothing is cut.
DEFAULT_CHUNK_SIZE = 600
DEFAULT_OVERLAP = 100

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    """One passage: `text` is document[offset:offset + len(text)]."""

    text: str
    offset: int


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_span(text: str, start: int, end: int, sep: re.Pattern) -> list[tuple[int, int]]:
    """The non-blank pieces of text[start:end] between matches of sep, as spans."""
    spans, pos = [], start
    for m in sep.finditer(text, start, end):
        spans.append(_strip_span(text, pos, m.start() if sep is _PARAGRAPH_BREAK else m.end()))
        pos = m.end()
    spans.append(_strip_span(text, pos, end))
    return [(s, e) for s, e in spans if e > s]


def _units(text: str, size: int) -> list[tuple[int, int]]:
    """Spans of at most `size` characters, in order: paragraphs, or the sentences, words
    or fixed-size pieces of those that are too long."""
    out: list[tuple[int, int]] = []
    for p in _split_span(text, 0, len(text), _PARAGRAPH_BREAK):
        if p[1] - p[0] <= size:
            out.append(p)
            continue
        for s in _split_span(text, p[0], p[1], _SENTENCE_END):
            if s[1] - s[0] <= size:
                out.append(s)
                continue
            out.extend(_pack(text, _split_span(text, s[0], s[1], _SPACE), size, 0, hard=True))
    return out


def _pack(
    text: str, units: list[tuple[int, int]], size: int, overlap: int, hard: bool = False
) -> list[tuple[int, int]]:
    """Greedily joins consecutive spans into spans of at most `size` characters; each new
    span repeats the previous one's trailing units that fit in `overlap`. With hard, a
    unit longer than size is cut into size-character pieces."""
    chunks: list[tuple[int, int]] = []
    cur: list[tuple[int, int]] = []  # the units of the chunk being built
    for u in units:
        if hard and u[1] - u[0] > size:
            if cur:
                chunks.append((cur[0][0], cur[-1][1]))
                cur = []
            chunks.extend(_strip_span(text, s, min(s + size, u[1])) for s in range(u[0], u[1], size))
            continue
        if cur and u[1] - cur[0][0] > size:
            chunks.append((cur[0][0], cur[-1][1]))
            # Overlap: keep the longest tail of units that fits in `overlap` and leaves
            # room for u.
            keep = len(cur)
            while keep > 0 and (cur[-1][1] - cur[keep - 1][0] <= overlap and u[1] - cur[keep - 1][0] <= size):
                keep -= 1
            cur = cur[keep:]
        cur.append(u)
    if cur:
        chunks.append((cur[0][0], cur[-1][1]))
    return [c for c in chunks if c[1] > c[0]]


def chunk_text(text: str, size: int = DEFAULT_CHUNK_SIZE, overlap: Optional[int] = None) -> list[Chunk]:
    """Splits a document into passages of at most `size` characters (see the module doc).

    Args:
        text: the document.
        size: the largest chunk, in characters (>= 1).
        overlap: how many characters of the previous chunk a chunk may repeat
            (0 <= overlap < size); default DEFAULT_OVERLAP, or size // 4 if smaller.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"chunk size must be an int >= 1, got {size!r}")
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, size // 4)
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be an int with 0 <= overlap < size ({size}), got {overlap!r}")
    return [Chunk(text[s:e], s) for s, e in _pack(text, _units(text, size), size, overlap)]
