"""pyrag.text.corpus: documents from folders (.txt .md .rst .html), JSONL and CSV, and
their passages, whose metadata locate them in the document's text."""

import json

import pytest

from pyrag.text.corpus import CorpusError, Document, html_to_text, passages, read_documents


def test_html_main_content_paragraphs_and_pre():
    page = """<html><head><title> The  Title </title><style>p {}</style></head><body>
    <header>Site header</header><nav><a>Home</a></nav>
    <main><h1>Heading<a class="headerlink" href="#h">¶</a></h1>
    <p>First   paragraph
    spans lines &amp; has <code>code</code>.</p>
    <pre>def f():
        return 1</pre>
    <ul><li>one</li><li>two</li></ul>
    <script>alert(1)</script></main>
    <aside>Related</aside><footer>Footer</footer></body></html>"""
    title, text = html_to_text(page)
    assert title == "The Title"
    assert text.split("\n\n") == [
        "Heading",
        "First paragraph spans lines & has code.",
        "def f():\n        return 1",
        "one",
        "two",
    ]


def test_html_without_main_keeps_the_body_and_tolerates_bad_markup():
    title, text = html_to_text("<p>Alpha<p>Beta</div><br>Gamma</b></span>")
    assert title == "" and text.split("\n\n") == ["Alpha", "Beta", "Gamma"]


def test_folder_reader(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "_build").mkdir()
    (tmp_path / "a" / "x.md").write_text("# X\n\nmarkdown text")
    (tmp_path / "b.txt").write_text("plain text")
    (tmp_path / "c.HTML").write_text("<title>C</title><p>html text</p>")
    (tmp_path / "d.rst").write_text("rst text")
    (tmp_path / ".git" / "e.txt").write_text("hidden")
    (tmp_path / "_build" / "f.txt").write_text("excluded")
    (tmp_path / "g.pdf").write_bytes(b"%PDF")
    docs = list(read_documents(tmp_path, exclude=["_*"], progress=False))
    assert [d.id for d in docs] == ["a/x.md", "b.txt", "c.HTML", "d.rst"]
    assert docs[2] == Document("c.HTML", "html text", {"source": "c.HTML", "title": "C"})
    assert "_build/f.txt" in [d.id for d in read_documents(tmp_path, progress=False)]
    assert [d.id for d in read_documents(tmp_path / "b.txt")] == ["b.txt"]


def test_passages_metadata_points_into_the_document(tmp_path):
    body = "\n\n".join(f"Paragraph {i}. " + "word " * 40 for i in range(10))
    (tmp_path / "long.txt").write_text(body)
    texts, metas, ids = passages(read_documents(tmp_path, progress=False), size=300, overlap=50)
    assert len(texts) > 3 and ids[:2] == ["long.txt#0", "long.txt#1"]
    for t, m in zip(texts, metas):
        assert body[m["offset"] : m["offset"] + len(t)] == t and m["source"] == "long.txt"
    assert [m["chunk"] for m in metas] == list(range(len(texts)))


def test_jsonl(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(
        json.dumps({"text": "one", "source": "https://example.org/1", "n": 1})
        + "\n\n"
        + json.dumps({"text": "two", "n": 2})
        + "\n"
    )
    docs = list(read_documents(f))
    assert docs == [
        Document("d.jsonl:1", "one", {"source": "https://example.org/1", "n": 1}),
        Document("d.jsonl:3", "two", {"n": 2, "source": "d.jsonl:3"}),
    ]
    f.write_text('{"body": "x", "id": "a"}\n{"body": "y", "id": "a"}\n')
    with pytest.raises(CorpusError, match="two documents have the id 'a'"):
        passages(read_documents(f, text_field="body", id_field="id"))


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"text": "ok"}\n[1, 2]\n', r"d.jsonl:2: a JSON list, not an object"),
        ('{"text": "ok"}\n{"txt": "x"}\n', r"d.jsonl:2: no 'text' field"),
        ('{"text": 3}\n', r"field 'text' is a int, not text"),
        ('{"text": "a"\n', r"d.jsonl:1: not valid JSON"),
    ],
)
def test_jsonl_errors(tmp_path, content, match):
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(CorpusError, match=match):
        list(read_documents(f))


def test_csv(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text('title,text\nfirst,"a, quoted\n\nmulti-line text"\nsecond,plain\n')
    docs = list(read_documents(f))
    assert docs[0] == Document("t.csv:1", "a, quoted\n\nmulti-line text", {"title": "first", "source": "t.csv:1"})
    assert passages(docs)[2] == ["t.csv:1#0", "t.csv:2#0"]
    f.write_text("a,b\n1,2,3\n")
    with pytest.raises(CorpusError, match="no 'text' column"):
        list(read_documents(f))
    with pytest.raises(CorpusError, match="more cells than columns"):
        list(read_documents(f, text_field="a"))


def test_missing_unsupported_and_empty(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_documents(tmp_path / "nope")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(CorpusError, match="cannot read .*x.pdf"):
        read_documents(tmp_path / "x.pdf")
    with pytest.raises(CorpusError, match="no .txt, .md"):
        list(read_documents(tmp_path))
    with pytest.raises(CorpusError, match="the corpus has no text"):
        passages([Document("a", "   ")])
