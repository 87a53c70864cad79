"""pyrag.text.chunking: paragraphs packed into chunks of at most `size` characters, each
a verbatim slice of the document at its offset, covering all of its text, in order,
with at most `overlap` characters shared between neighbours."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrag.text import chunk_text
from pyrag.text.chunking import Chunk

WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=12)
SENTENCE = st.lists(WORD, min_size=1, max_size=12).map(lambda ws: " ".join(ws) + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=6).map(" ".join)
DOCUMENT = st.tuples(
    st.lists(PARAGRAPH, min_size=0, max_size=8), st.sampled_from(["\n\n", "\n \n", "\n\n\n", "\r\n\r\n"])
).map(lambda t: t[1].join(t[0]))


def covered(text, chunks):
    """Every non-space character of the text lies inside some chunk."""
    inside = [False] * len(text)
    for c in chunks:
        for i in range(c.offset, c.offset + len(c.text)):
            inside[i] = True
    return all(inside[i] for i, ch in enumerate(text) if not ch.isspace())


@settings(max_examples=300, deadline=None)
@given(DOCUMENT, st.integers(8, 300), st.integers(0, 100))
def test_chunk_properties(text, size, overlap):
    overlap = min(overlap, size - 1)
    chunks = chunk_text(text, size, overlap)
    for c in chunks:
        assert text[c.offset : c.offset + len(c.text)] == c.text
        assert 0 < len(c.text) <= size
        assert c.text == c.text.strip()
    assert covered(text, chunks)
    for a, b in zip(chunks, chunks[1:]):
        assert a.offset < b.offset  # in document order
        assert a.offset + len(a.text) - b.offset <= overlap  # neighbours share <= overlap


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400), st.integers(1, 50))
def test_any_text_is_covered(text, size):
    chunks = chunk_text(text, size, 0)
    assert covered(text, chunks)
    assert all(text[c.offset : c.offset + len(c.text)] == c.text and len(c.text) <= size for c in chunks)


def test_paragraphs_are_packed_and_never_split_when_they_fit():
    doc = "First para.\n\nSecond para.\n\nThird one here."
    assert chunk_text(doc, 100) == [Chunk(doc, 0)]  # default overlap: min(100, size // 4)
    assert chunk_text(doc, 30, 0) == [Chunk("First para.\n\nSecond para.", 0), Chunk("Third one here.", 27)]


def test_long_paragraph_splits_at_sentences_with_overlap():
    doc = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    # "Four five six." (14 chars) fits the 16-char overlap and is repeated; "Seven eight
    # nine." (17) does not.
    assert chunk_text(doc, 32, 16) == [
        Chunk("One two three. Four five six.", 0),
        Chunk("Four five six. Seven eight nine.", 15),
        Chunk("Ten eleven twelve.", 48),
    ]
    assert [c.text for c in chunk_text(doc, 32, 0)] == [
        "One two three. Four five six.",
        "Seven eight nine.",
        "Ten eleven twelve.",
    ]


def test_words_and_runs_longer_than_size():
    assert [c.text for c in chunk_text("alpha beta gamma delta", 11, 0)] == ["alpha beta", "gamma delta"]
    assert [c.text for c in chunk_text("x" * 25, 10, 0)] == ["x" * 10, "x" * 10, "x" * 5]


def test_empty_and_blank():
    assert chunk_text("") == [] and chunk_text(" \n\n \t") == []


@pytest.mark.parametrize(
    "args,exc,match",
    [
        (("x", 0), ValueError, "chunk size must be an int >= 1"),
        (("x", 10, 10), ValueError, "overlap must be an int with 0 <= overlap < size"),
        (("x", 10, -1), ValueError, "overlap"),
        (("x", 10.0), ValueError, "chunk size"),
        ((b"x",), TypeError, "text must be a str"),
    ],
)
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        chunk_text(*args)
