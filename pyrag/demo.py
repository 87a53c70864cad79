"""The pyrag demo: questions answered from the Python documentation that ships with CPython.

    python -m pyrag.demo [--k 3] [--question "..."] [--generator PATH]

The corpus is what every CPython carries: the pydoc topics (pydoc_data.topics, the
language reference behind `help("for")`) and the docstrings of the standard library's
most used modules, read from their source with `ast` (no module is imported). They are
chunked into passages, encoded with all-MiniLM-L6-v2 (``pip install pyrag[text]``) and
indexed in a pyrag.TextIndex. The index is cached under $PYRAG_CACHE_DIR (default
~/.cache/pyrag), keyed by the Python version and the sources' sizes and times, so the
second run takes seconds.

For each question it prints the top passages with their source (the topic, or
`module.function`) and score, and the time taken. With --generator PATH (a local
Hugging Face causal LM), it also generates an answer from the passages through
pyrag.GeneratorAdapter and prints the sources with their retriever weights.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # imported when the demo runs, so that `--help` answers at once
    from pyrag.text import TextIndex

__all__ = ["DEMO_MODULES", "DEMO_TOPICS", "QUESTIONS", "corpus", "main"]

# The standard library's most used modules: ~2,800 passages with the pydoc topics, which
# MiniLM encodes in about a minute on 2 cores (see docs/text_index.md for the figures).
DEMO_MODULES = (
    "abc",
    "argparse",
    "asyncio.runners",
    "asyncio.tasks",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures.thread",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "posixpath",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "traceback",
    "types",
    "typing",
    "unittest.case",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
)

# The pydoc topics to index: None for all of them (~1,000 passages).
DEMO_TOPICS: Optional[tuple[str, ...]] = None

QUESTIONS = (
    "How do I run a shell command and capture its output?",
    "How can I sort a list of dictionaries by one of their keys?",
    "What does the with statement do?",
    "How do I parse command-line arguments?",
    "How do I generate a secure random token for a password reset link?",
    "How do I find all files matching a pattern in a directory tree?",
    "What is the difference between is and ==?",
    "How do I read rows from a CSV file?",
)

_CORPUS_VERSION = "1"  # bump when the passages change for the same sources
_PASSAGE_CHARS = 600
_SIGNATURE_CHARS = 120


# ---------------------------------------------------------------------- the corpus
def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_file(root: Path, module: str) -> Optional[Path]:
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _sources() -> list[tuple[str, Path]]:
    root = _stdlib()
    out = []
    for m in DEMO_MODULES:
        f = _module_file(root, m)
        if f is not None:  # a trimmed Python may lack one; the demo runs on what is there
            out.append((m, f))
    return out


def _signature(node: Union[ast.FunctionDef, ast.AsyncFunctionDef]) -> str:
    args = node.args
    text = ast.unparse(args)
    if text.startswith(("self, ", "cls, ")):
        text = text.split(", ", 1)[1]
    elif text in ("self", "cls"):
        text = ""
    return f"({text})" if len(text) <= _SIGNATURE_CHARS else f"({text[:_SIGNATURE_CHARS]}...)"


def _docstring_passages(module: str, path: Path, rel: str) -> list[tuple[str, dict[str, Any]]]:
    """(text, metadata) for the docstrings of a module, its public functions and classes,
    and their public methods, each headed by the object's name and signature."""
    from pyrag.text.chunking import chunk_text

    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    items: list[tuple[str, str, str, str, int]] = []  # (qualified name, kind, header, docstring, line)
    doc = ast.get_docstring(tree)
    if doc:
        items.append((module, "module", f"module {module}", doc, 1))

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                if doc:
                    items.append((name, "class", f"class {name}", doc, node.lineno))
                if not in_class:
                    visit(node.body, name, True)
            elif doc:
                items.append(
                    (name, "method" if in_class else "function", f"{name}{_signature(node)}", doc, node.lineno)
                )

    visit(tree.body, module, False)
    out = []
    for name, kind, header, doc, line in items:
        for c in chunk_text(doc, _PASSAGE_CHARS - len(header) - 1 if len(header) < 300 else _PASSAGE_CHARS, 80):
            out.append(
                (f"{header}\n{c.text}", {"source": name, "kind": kind, "file": rel, "line": line, "offset": c.offset})
            )
    return out


def _topic_passages() -> list[tuple[str, dict[str, Any]]]:
    from pydoc_data.topics import topics

    from pyrag.text.chunking import chunk_text

    out = []
    for name in sorted(topics if DEMO_TOPICS is None else set(DEMO_TOPICS) & set(topics)):
        for c in chunk_text(topics[name], _PASSAGE_CHARS, 80):
            out.append((c.text, {"source": f"topic:{name}", "kind": "topic", "offset": c.offset}))
    return out


def corpus() -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """The demo's passages: (texts, metadatas, ids), pydoc topics first."""
    root = _stdlib()
    rows = _topic_passages()
    for module, path in _sources():
        rows += _docstring_passages(module, path, path.relative_to(root).as_posix())
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    ids: list[str] = []
    seen: dict[str, int] = {}
    for text, meta in rows:
        base = f"{meta['source']}@{meta['offset']}"
        n = seen[base] = seen.get(base, 0) + 1  # a name defined twice (platform branches)
        ids.append(base if n == 1 else f"{base}~{n}")
        texts.append(text)
        metas.append(meta)
    return texts, metas, ids


def _fingerprint(encoder_name: str, compute: str) -> str:
    """Changes when the corpus or the encoder would: Python's version, each source's
    size and time, the demo's passage rules."""
    import pydoc_data.topics

    h = hashlib.sha256()
    h.update(f"{_CORPUS_VERSION}|{sys.version}|{encoder_name}|{compute}|{DEMO_MODULES}|{DEMO_TOPICS}".encode())
    for f in [Path(pydoc_data.topics.__file__)] + [p for _, p in _sources()]:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- build or load
def _index(cache_dir: Path, rebuild: bool, log: Callable[[str], None]) -> tuple[TextIndex, bool]:
    from pyrag.text import TextIndex
    from pyrag.text.cache import CachedEncoder
    from pyrag.text.encoders import load_encoder

    t0 = time.perf_counter()
    spec = "minilm"
    encoder = load_encoder(spec)
    log(
        f"encoder all-MiniLM-L6-v2 loaded in {time.perf_counter() - t0:.1f} s "
        f"(computes in {str(encoder.compute_dtype).replace('torch.', '')})"
    )
    path = cache_dir / f"demo-{_fingerprint(spec, str(encoder.compute_dtype))}"
    if path.is_dir() and not rebuild:
        try:
            index = TextIndex.load(path, encoder=encoder, mmap=True)
            log(f"index loaded from the cache {path} ({len(index):,} passages)")
            return index, False
        except (ValueError, OSError) as e:  # a damaged cache: build it again
            log(f"cached index unusable ({e}); rebuilding")
    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    texts, metas, ids = corpus()
    log(
        f"corpus: {len(texts):,} passages (pydoc topics and docstrings of {len(_sources())} modules) "
        f"read in {time.perf_counter() - t0:.1f} s"
    )
    t0 = time.perf_counter()
    tmp = cache_dir / f".{path.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    index = TextIndex.from_texts(texts, CachedEncoder(encoder, cache_dir), metas, ids, path=tmp, progress=None)
    index.close()
    os.replace(tmp, path)  # a run interrupted while building leaves no half-built cache entry
    index = TextIndex.load(path, encoder=encoder, mmap=True)
    dt = time.perf_counter() - t0
    log(f"encoded and indexed in {dt:.1f} s ({len(texts) / dt:.0f} passages/s); cached in {path}")
    return index, True


def _generate(index: TextIndex, path: str, questions: Sequence[str], k: int, tau: float, max_new_tokens: int) -> None:
    import torch

    import pyrag

    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ImportError("--generator needs transformers: pip install transformers") from e
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    lm = pyrag.GeneratorAdapter(model, tokenizer, template="Context:\n{context}\n\nQuestion: {query}\nAnswer:")
    print(f"\ngenerator {path} loaded in {time.perf_counter() - t0:.1f} s")
    for q in questions:
        hits = index.search(q, k)
        if not hits:
            continue
        scores = torch.tensor([[h.score for h in hits]])
        weights = pyrag.lsr_weights(scores, tau)[0].tolist()  # p_R = softmax(scores / tau)
        t0 = time.perf_counter()
        result = lm.generate(q, [h.text for h in hits], weights=weights, max_new_tokens=max_new_tokens, do_sample=False)
        dt = time.perf_counter() - t0
        print(f"\nQ: {q}\nA: {' '.join(result.text.split()) or '(empty)'}   [{dt:.1f} s]")
        for s, h in zip(result.sources, hits):
            state = "in prompt" if s.included and not s.truncated else ("cut" if s.included else "left out")
            print(f"   p_R={s.weight:.3f}  {h.metadata['source']}  ({state})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pyrag.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--k", type=int, default=3, help="passages per question (default 3)")
    p.add_argument(
        "--question",
        action="append",
        default=None,
        metavar="TEXT",
        help="ask this instead of the built-in questions (repeatable)",
    )
    p.add_argument(
        "--generator", default=None, metavar="PATH", help="a local Hugging Face causal LM folder: also generate answers"
    )
    p.add_argument("--tau", type=float, default=0.1, help="retriever temperature of the weights (default 0.1)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length (default 48)")
    p.add_argument("--rebuild", action="store_true", help="ignore the cached index")
    p.add_argument("--cache-dir", default=None, help="default: $PYRAG_CACHE_DIR or ~/.cache/pyrag")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    if args.tau <= 0:
        p.error(f"--tau must be > 0, got {args.tau}")
    if args.generator is not None and not Path(args.generator).is_dir():
        p.error(f"--generator {args.generator}: no such model folder")

    import torch

    import pyrag
    from pyrag.text.cache import default_cache_dir

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"pyrag {pyrag.__version__}, Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    index, built = _index(cache_dir, args.rebuild, log)
    questions = args.question or list(QUESTIONS)
    index.search(questions[0], args.k)  # warm-up: first-call costs are not search costs
    t0 = time.perf_counter()
    results = index.search(questions, args.k)
    t_search = time.perf_counter() - t0
    for q, hits in zip(questions, results):
        print(f"\nQ: {q}")
        for rank, h in enumerate(hits, 1):
            src = h.metadata["source"]
            where = f"  [{h.metadata['file']}:{h.metadata['line']}]" if "file" in h.metadata else ""
            text = " ".join(h.text.split())
            print(f"  {rank}. {h.score:.3f}  {src}{where}\n     {text[:240]}{'...' if len(text) > 240 else ''}")
    print()
    log(
        f"{len(questions)} questions searched over {len(index):,} passages in {t_search * 1e3:.0f} ms "
        f"({t_search / len(questions) * 1e3:.1f} ms per question, encoding included)"
    )
    if args.generator:
        _generate(index, args.generator, questions, args.k, args.tau, args.max_new_tokens)
    index.close()
    log(f"done ({'first run: built the index' if built else 'index from the cache'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
