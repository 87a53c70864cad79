"""Corpus readers: documents from a folder of .txt / .md / .rst / .html files, a JSONL
file or a CSV file, and their passages (chunks with ids and metadata).

    for doc in read_documents("docs/"):          # Document(id, text, metadata)
        ...
    texts, metadatas, ids = passages(read_documents("notes.jsonl"), size=800, overlap=100)

Each passage's metadata says where it came from: `source` (the file's path relative to
the folder, or ``file.jsonl:LINE`` / ``file.csv:ROW``, or the record's own "source"
field), `offset` (where the passage starts, in characters, in the document's text:
for HTML, the text extracted from it) and `chunk` (its number within the document),
plus the HTML page's `title` or the other fields of a JSONL / CSV record.
Passage ids are ``<document id>#<chunk>``.
"""

from __future__ import annotations

import csv
import fnmatch
import html.parser
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pyrag.text.chunking import DEFAULT_CHUNK_SIZE, chunk_text

__all__ = ["CorpusError", "Document", "TEXT_SUFFIXES", "html_to_text", "passages", "read_documents"]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


class CorpusError(ValueError):
    """The corpus cannot be read: missing, empty, or not in a supported form."""


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


# A piece of page text and whether it lies inside <pre>, or None for a paragraph break.
_Piece = Optional[tuple[str, bool]]


# ---------------------------------------------------------------------- HTML
# Elements that never have an end tag: a start tag of one opens nothing to close.
HTML_VOID_ELEMENTS = frozenset(
    {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source", "embed", "param", "track"}
)


class _HTMLText(html.parser.HTMLParser):
    """The readable text of a page: block elements become paragraphs (blank lines
    between), <pre> keeps its lines, and scripts, styles, navigation, headers, footers
    and Sphinx's permalink anchors are dropped. If the page marks its main content
    (<main>, role="main" or <article>), only that is kept."""

    _BLOCK = {
        "p",
        "div",
        "section",
        "article",
        "main",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "blockquote",
        "table",
        "tr",
        "td",
        "th",
        "figure",
        "figcaption",
        "header",
        "footer",
        "form",
        "hr",
        "br",
    }
    _SKIP = {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "nav",
        "head",
        "button",
        "header",
        "footer",
        "aside",
        "form",
    }
    _VOID = HTML_VOID_ELEMENTS

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title_parts: list[str] = []
        # The pieces of the whole body, and of the main content (<main>, role="main", <article>).
        self.body: list[_Piece] = []
        self.main: list[_Piece] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, skips, is main)
        self._skip = 0
        self._main = 0
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag in self._VOID:
            if tag in ("br", "hr"):
                self._break()
            return
        skips = tag in self._SKIP or "headerlink" in (a.get("class") or "").split()
        is_main = tag in ("main", "article") or a.get("role") == "main"
        self._stack.append((tag, skips, is_main))
        self._skip += skips
        self._main += is_main
        if tag == "pre":
            self._pre += 1
        if tag in self._BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if all(t != tag for t, _, _ in self._stack):
            return  # a stray end tag
        while self._stack:  # closes unclosed tags up to the matching one
            t, skips, is_main = self._stack.pop()
            self._skip -= skips
            self._main -= is_main
            if t == "pre":
                self._pre -= 1
            if t in self._BLOCK:
                self._break()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip:
            return
        piece = (data, self._pre > 0)
        self.body.append(piece)
        if self._main:
            self.main.append(piece)

    def _break(self) -> None:
        if not self._skip:
            self.body.append(None)
            if self._main:
                self.main.append(None)


def _paragraphs(pieces: list[_Piece]) -> list[str]:
    """Joins text pieces into paragraphs at the breaks (None): whitespace collapsed,
    except in paragraphs that hold <pre> text, which keep their lines."""
    out: list[str] = []
    cur: list[str] = []
    pre = False

    def flush() -> None:
        text = "".join(cur)
        text = "\n".join(ln.rstrip() for ln in text.strip("\n").split("\n")) if pre else " ".join(text.split())
        if text.strip():
            out.append(text)

    for piece in pieces + [None]:
        if piece is None:
            flush()
            cur, pre = [], False
        else:
            cur.append(piece[0])
            pre = pre or piece[1]
    return out


def html_to_text(page: str) -> tuple[str, str]:
    """(title, text) of an HTML page; paragraphs of the text are separated by blank lines."""
    p = _HTMLText()
    p.feed(page)
    p.close()
    main = _paragraphs(p.main)
    return " ".join("".join(p.title_parts).split()), "\n\n".join(main or _paragraphs(p.body))


# ---------------------------------------------------------------------- readers
def _excluded(rel: Path, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatch(str(rel), pat) or any(fnmatch.fnmatch(part, pat) for part in rel.parts) for pat in patterns
    )


def _folder_files(root: Path, exclude: Sequence[str]) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        # Hidden folders (.git, ...) and excluded ones are not entered.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _excluded(rel_dir / d, exclude))
        for name in filenames:
            rel = rel_dir / name
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES) and not _excluded(rel, exclude):
                files.append(rel)
    return sorted(files)


def _read_file(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _folder_documents(root: Path, exclude: Sequence[str], progress: Optional[bool]) -> Iterator[Document]:
    from tqdm.auto import tqdm

    files = _folder_files(root, exclude)
    if not files:
        raise CorpusError(f"no {', '.join(TEXT_SUFFIXES)} files under {root}")
    for rel in tqdm(
        files, desc="read", unit="file", disable=None if progress is None else not progress, dynamic_ncols=True
    ):
        raw = _read_file(root / rel)
        meta: dict[str, str] = {}
        if rel.suffix.lower() in (".html", ".htm"):
            title, raw = html_to_text(raw)
            if title:
                meta["title"] = title
        yield Document(rel.as_posix(), raw, {"source": rel.as_posix(), **meta})


def _record_document(record: dict[str, Any], text_field: str, id_field: Optional[str], where: str) -> Document:
    if text_field not in record:
        raise CorpusError(f"{where}: no {text_field!r} field (fields: {', '.join(map(str, record))[:200]})")
    text = record[text_field]
    if not isinstance(text, str):
        raise CorpusError(f"{where}: field {text_field!r} is a {type(text).__name__}, not text")
    meta = {k: v for k, v in record.items() if k != text_field}
    doc_id = where
    if id_field is not None:
        if record.get(id_field) in (None, ""):
            raise CorpusError(f"{where}: no {id_field!r} field")
        doc_id = str(record[id_field])
    meta["source"] = meta["source"] if isinstance(meta.get("source"), str) and meta["source"] else where
    return Document(doc_id, text, meta)


def _jsonl_documents(path: Path, text_field: str, id_field: Optional[str]) -> Iterator[Document]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{where}: a JSON {type(record).__name__}, not an object")
            yield _record_document(record, text_field, id_field, where)


def _csv_documents(path: Path, text_field: str, id_field: Optional[str]) -> Iterator[Document]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        if text_field not in reader.fieldnames:
            raise CorpusError(
                f"{path}: no {text_field!r} column (columns: {', '.join(reader.fieldnames)}); "
                f"name the text column with --text-field"
            )
        for row_no, row in enumerate(reader, 1):
            if None in row:  # more cells than header columns
                raise CorpusError(f"{path.name}:{row_no}: more cells than columns")
            yield _record_document(row, text_field, id_field, f"{path.name}:{row_no}")


def read_documents(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    id_field: Optional[str] = None,
    exclude: Sequence[str] = (),
    progress: Optional[bool] = None,
) -> Iterator[Document]:
    """The documents of a corpus: a folder (its .txt, .md, .rst, .html files, recursively;
    hidden entries and those matching an `exclude` glob skipped), a .jsonl file (one JSON
    object per line, the text in `text_field`) or a .csv file (a header row, the text in
    column `text_field`). id_field: a JSONL / CSV field holding each document's id."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist")
    if path.is_dir():
        return _folder_documents(path, exclude, progress)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_documents(path, text_field, id_field)
    if suffix == ".csv":
        return _csv_documents(path, text_field, id_field)
    if suffix in TEXT_SUFFIXES:
        raw = _read_file(path)
        meta = {"source": path.name}
        if suffix in (".html", ".htm"):
            title, raw = html_to_text(raw)
            if title:
                meta["title"] = title
        return iter([Document(path.name, raw, meta)])
    raise CorpusError(f"cannot read {path}: expected a folder, a .jsonl, a .csv or a {'/'.join(TEXT_SUFFIXES)} file")


def passages(
    documents: Iterable[Document], size: int = DEFAULT_CHUNK_SIZE, overlap: Optional[int] = None
) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Chunks documents into passages: (texts, metadatas, ids). Raises CorpusError if
    there is no text at all, or if two documents share an id."""
    texts: list[str] = []
    metadatas: list[dict[str, Any]] = []
    ids: list[str] = []
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise CorpusError(f"two documents have the id {doc.id!r}")
        seen.add(doc.id)
        for i, c in enumerate(chunk_text(doc.text, size, overlap)):
            texts.append(c.text)
            metadatas.append({**doc.metadata, "offset": c.offset, "chunk": i})
            ids.append(f"{doc.id}#{i}")
    if not texts:
        raise CorpusError("the corpus has no text")
    return texts, metadatas, ids
