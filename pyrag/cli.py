"""The `pyrag` command: build a text index from a corpus, search it, describe it, and
benchmark pyrag's search against torch and FAISS on this machine.

    pyrag build CORPUS -o DIR [--encoder minilm] [--dtype float32|bfloat16|int8] [--chunk-size N]
    pyrag search DIR "question" [-k 5] [--json]
    pyrag info DIR [--json]
    pyrag bench [--out report.png]

CORPUS is a folder of .txt / .md / .rst / .html files, a JSONL file or a CSV file with a
text column. Exit status: 0 on success, 1 when the input is bad (the message says why),
2 for a usage error (unknown option, missing argument).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # the commands import pyrag.text when they run: `pyrag --help` stays fast
    from pyrag.text.corpus import Document
    from pyrag.text.encoders import Encoder

__all__ = ["main"]


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _parser() -> argparse.ArgumentParser:
    from pyrag.text.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP

    p = argparse.ArgumentParser(prog="pyrag", description="Texts in, passages with their sources out.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="index a corpus into a directory",
        description="Chunk a corpus into passages, encode them and write a text index.",
    )
    b.add_argument("corpus", help="a folder of .txt/.md/.rst/.html files, a .jsonl file or a .csv file")
    b.add_argument("-o", "--out", required=True, metavar="DIR", help="the index directory to create")
    b.add_argument(
        "--encoder", default="minilm", help="'minilm' (default), 'st:PATH_OR_NAME', 'hf:PATH_OR_NAME' or a model folder"
    )
    b.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "int8"),
        help="how the vectors are stored (default float32)",
    )
    b.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="N",
        help=f"largest passage, in characters (default {DEFAULT_CHUNK_SIZE})",
    )
    b.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="N",
        help=f"characters a passage may repeat from the one before "
        f"(default {DEFAULT_OVERLAP}, or a quarter of --chunk-size if less)",
    )
    b.add_argument("--text-field", default="text", help="JSONL field / CSV column holding the text")
    b.add_argument("--id-field", default=None, help="JSONL field / CSV column holding a document id")
    b.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files or folders matching this pattern (repeatable), e.g. '_*'",
    )
    b.add_argument("--append", action="store_true", help="add to an existing index in DIR")
    b.add_argument(
        "--keep-originals", action="store_true", help="bfloat16/int8: also keep float32 vectors, for search --exact"
    )
    b.add_argument("--batch-size", type=int, default=64, help="texts per encoder call (default 64)")
    b.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="encoder compute precision (auto: bfloat16 where the CPU has it natively)",
    )
    b.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the embedding cache ($PYRAG_CACHE_DIR, ~/.cache/pyrag)",
    )

    s = sub.add_parser("search", help="search an index", description="Print the best passages for a question.")
    s.add_argument("index", metavar="DIR")
    s.add_argument("query", nargs="+", help="the question (several: one search each)")
    s.add_argument("-k", type=int, default=5, help="passages per question (default 5)")
    s.add_argument("--json", action="store_true", help="print a JSON array of hits, best first")
    s.add_argument("--encoder", default=None, help="encode the question with this encoder instead of the index's")
    s.add_argument("--exact", action="store_true", help="bfloat16/int8 index with --keep-originals: float32 ranking")
    s.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only passages whose metadata has KEY equal to VALUE (repeatable)",
    )
    s.add_argument("--mmap", action="store_true", help="map the vectors instead of reading them into RAM")

    i = sub.add_parser("info", help="describe an index", description="Print what an index holds.")
    i.add_argument("index", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")

    from pyrag import bench

    bench.add_arguments(
        sub.add_parser(
            "bench",
            help="pyrag against torch and FAISS on this machine",
            description=bench.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return p


# ---------------------------------------------------------------------- build
def _build(args: argparse.Namespace) -> int:
    from pyrag.text import TextIndex
    from pyrag.text.cache import CachedEncoder
    from pyrag.text.corpus import passages, read_documents
    from pyrag.text.encoders import load_encoder

    out = Path(args.out)
    if not args.append and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty: choose another directory, or --append to it")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    t0 = time.perf_counter()
    docs = read_documents(args.corpus, text_field=args.text_field, id_field=args.id_field, exclude=args.exclude)
    n_docs = 0

    def counted(it: Iterable[Document]) -> Iterator[Document]:
        nonlocal n_docs
        for d in it:
            n_docs += 1
            yield d

    texts, metadatas, ids = passages(counted(docs), args.chunk_size, args.overlap)
    t_read = time.perf_counter() - t0
    print(f"read {n_docs:,} documents -> {len(texts):,} passages in {t_read:.1f} s", file=sys.stderr)
    encoder: Encoder = load_encoder(args.encoder, args.precision)
    if not args.no_cache and encoder.name:
        encoder = CachedEncoder(encoder)
    t1 = time.perf_counter()
    if args.append:
        index = TextIndex.load(out, encoder=encoder, batch_size=args.batch_size, progress=True)
        try:
            if index.dtype != args.dtype:
                raise ValueError(f"{out} stores {index.dtype} vectors; --dtype {args.dtype} cannot be appended")
            index.add_texts(texts, metadatas, ids)
        except BaseException:
            index.close()
            raise
    else:
        index = TextIndex.from_texts(
            texts,
            encoder,
            metadatas,
            ids,
            dtype=args.dtype,
            path=out,
            keep_originals=args.keep_originals,
            batch_size=args.batch_size,
            progress=True,
        )
    t_index = time.perf_counter() - t1
    index.close()  # checkpoints SQLite's log into the database file
    total = time.perf_counter() - t0
    with TextIndex.load(out, encoder=None, mmap=True) as done:
        info = done.info()
    cached = f", {encoder.hits:,} embeddings from the cache" if isinstance(encoder, CachedEncoder) else ""
    print(
        f"indexed {len(texts):,} passages into {out} in {total:.1f} s: reading {t_read:.1f} s, "
        f"encoding + indexing {t_index:.1f} s ({len(texts) / t_index:.1f} passages/s{cached})"
    )
    vec = sum(v for k, v in info["files"].items() if k.startswith("vectors/"))
    print(
        f"{info['passages']:,} passages, dim {info['dim']}, {info['dtype']}; on disk {_human_bytes(info['bytes'])} "
        f"(vectors {_human_bytes(vec)})"
    )
    return 0


# ---------------------------------------------------------------------- search
def _where(pairs: Sequence[str]) -> Optional[dict[str, Any]]:
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise ValueError(f"--where takes KEY=VALUE, got {p!r}")
        try:
            out[key] = json.loads(value)  # 3 -> 3, "x" or x -> "x"
        except json.JSONDecodeError:
            out[key] = value
    return out


def _search(args: argparse.Namespace) -> int:
    from pyrag.text import TextIndex

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    load_kwargs = {} if args.encoder is None else {"encoder": args.encoder}
    with TextIndex.load(args.index, mmap=args.mmap, **load_kwargs) as index:
        if index.encoder is None:
            raise ValueError(f"{args.index} records no encoder: pass --encoder")
        t0 = time.perf_counter()
        results = index.search(list(args.query), args.k, filter=_where(args.where), exact=args.exact)
        elapsed = time.perf_counter() - t0
    if args.json:
        out = [
            [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits] for hits in results
        ]
        json.dump(out[0] if len(out) == 1 else out, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for question, hits in zip(args.query, results):
        print(f"Q: {question}")
        for rank, h in enumerate(hits, 1):
            where = h.metadata.get("source", h.id)
            if "offset" in h.metadata:
                where = f"{where} @{h.metadata['offset']}"
            title = f"  ({h.metadata['title']})" if h.metadata.get("title") else ""
            text = " ".join(h.text.split())
            print(f"{rank:>3}. {h.score:.3f}  {where}{title}\n     {text[:300]}{'...' if len(text) > 300 else ''}")
        if not hits:
            print("  (no passages)")
    print(f"{len(args.query)} question(s) in {elapsed * 1e3:.1f} ms (encoding and search)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- info
def _info(args: argparse.Namespace) -> int:
    from pyrag.text import TextIndex

    with TextIndex.load(args.index, encoder=None, mmap=True) as index:
        info = index.info()
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    print(
        f"{info['path']}: {info['passages']:,} passages, dim {info['dim']}, {info['dtype']} vectors"
        f"{' (+ float32 originals)' if info['keep_originals'] else ''}, encoder {info['encoder'] or '(none)'}, "
        f"generation {info['generation']}"
    )
    for name, size in sorted(info["files"].items()):
        print(f"  {name:<32} {_human_bytes(size):>12}")
    print(f"  {'total':<32} {_human_bytes(info['bytes']):>12}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from pyrag import IndexFormatError
    from pyrag.text.corpus import CorpusError

    try:
        if args.command == "build":
            return _build(args)
        if args.command == "search":
            return _search(args)
        if args.command == "info":
            return _info(args)
        from pyrag import bench

        return bench.run(args)
    except (
        CorpusError,
        IndexFormatError,
        ValueError,
        TypeError,
        KeyError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        ImportError,
    ) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pyrag: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyrag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
