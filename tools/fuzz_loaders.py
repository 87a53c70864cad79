"""Fuzz every loader of a pyrag file format with hypothesis: each generated file must load
(and then work: search, get, a training step's state) or raise pyrag's format error
(pyrag.FormatError, a ValueError); any other exception, a crash or a hang is a failure.

    python tools/fuzz_loaders.py --cases 14000     # the measured run (cases over all loaders)
    python tools/fuzz_loaders.py --cases 300       # quick

The cases are headers and metadata written by hand (odd JSON, odd types, odd sizes),
mutations of real files (a tensor dropped, reshaped, retyped or refilled; metadata
changed; the checksum recomputed so that the checks behind it are reached, or not), and
byte-level damage (truncation, flipped bytes, a wrong header length). tests/test_fuzz_loaders.py
runs the same strategies with fewer cases. LOADERS lists the loaders: a new file format
(the text store's, the sharded manifest) adds one entry.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hypothesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyrag
from pyrag.index import storage

CASE_TIMEOUT_S = 60  # a case slower than this is a hang: the process dies with a traceback
SMALL = st.integers(0, 40)

# ----------------------------------------------------------------------------- file bytes
JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
JSON_ANY = st.recursive(
    JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)


def encode_file(header: Any, data: bytes, *, header_text: bytes | None = None, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte header length, the header (JSON of `header` unless
    header_text is given), the data."""
    raw = header_text if header_text is not None else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def tensors_to_file(
    tensors: dict[str, torch.Tensor], metadata: dict[str, Any], *, crc: str | None = "right"
) -> tuple[dict[str, Any], bytes]:
    """(header, data) of `tensors` (widest first, like the writer), with a right checksum
    (or one of the older kind, over the tensors only), a wrong one, or none."""
    entries: dict[str, Any] = {}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        tag = storage._TAGS[t.dtype]
        entries[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    meta = dict(metadata)
    if crc == "right":
        meta["checksum"] = storage.checksum(tensors, meta)
    elif crc == "v1":
        meta["checksum"] = storage._checksum_v1(tensors)
    elif crc == "wrong":
        meta["checksum"] = "crc32:deadbeef"
    return {"__metadata__": meta, **entries}, b"".join(chunks)


@st.composite
def damaged(draw: st.DrawFn, header: dict[str, Any], data: bytes) -> bytes:
    """The file of (header, data), perhaps with its JSON or bytes damaged."""
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "length", "append", "json", "deep"]))
    if how == "json":  # the header text itself cut or garbled
        text = json.dumps(header).encode()
        cut = draw(st.integers(0, len(text)))
        return encode_file(None, data, header_text=text[:cut] + draw(st.binary(max_size=8)))
    if how == "deep":
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        return encode_file(None, data, header_text=b"[" * depth + b"]" * depth)
    if how == "length":
        return encode_file(header, data, length=draw(st.integers(0, 2**64 - 1)))
    blob = encode_file(header, data)
    if how == "truncate":
        return blob[: draw(st.integers(0, len(blob)))]
    if how == "flip" and blob:
        at = draw(st.integers(0, len(blob) - 1))
        return blob[:at] + bytes([blob[at] ^ draw(st.integers(1, 255))]) + blob[at + 1 :]
    if how == "append":
        return blob + draw(st.binary(min_size=1, max_size=64))
    return blob


@st.composite
def handmade_files(draw: st.DrawFn, names: list[str], meta_keys: list[str], meta_values: list[str]) -> bytes:
    """Headers written by hand: tensors of any dtype and shape, metadata from the format's
    keys and values; then metadata, an entry or one of its fields replaced by any JSON
    value, an offset shifted, or an entry deleted."""
    chosen = draw(st.lists(st.sampled_from(names) | st.text(max_size=6), max_size=4, unique=True))
    tensors = {name: draw(odd_tensor(None)) for name in chosen if name != "__metadata__"}
    meta = draw(
        st.dictionaries(st.sampled_from(meta_keys) | st.text(max_size=6), st.sampled_from(meta_values), max_size=6)
    )
    header, data = tensors_to_file(tensors, meta, crc=draw(st.sampled_from(["right", "right", "wrong", "none"])))
    for _ in range(draw(st.integers(0, 2)) if header else 0):
        target = draw(st.sampled_from(sorted(header)))
        how = draw(st.sampled_from(["replace", "field", "offset", "delete"]))
        if how == "replace" or (how in ("field", "offset") and not isinstance(header[target], dict)):
            header[target] = draw(JSON_ANY)
        elif how == "field":
            header[target][draw(st.sampled_from(["dtype", "shape", "data_offsets", "checksum"]))] = draw(JSON_ANY)
        elif how == "offset":
            offsets = header[target].get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
                offsets[draw(st.integers(0, 1))] += draw(st.sampled_from([-1, 1, 2, 4, 2**40]))
        else:
            header.pop(target)
        if not header:
            break
    return draw(damaged(header, data))


# ----------------------------------------------------------------------------- DenseIndex files
INDEX_TENSORS = ["packed", "ids", "scales", "norms", "errors", "originals", "vectors"]
INDEX_META = ["format", "format_version", "layout", "dim", "dtype", "version", "checksum", "user.versioned.version"]
INDEX_VALUES = [
    "pyrag.DenseIndex", "pyrag.packed16x4", "1", "2", "3", "0", "-1", "8", "65537", "1e3", "abc", "",
    "float32", "bfloat16", "int8", "float16", "9" * 30, "crc32:00000000",
]  # fmt: skip


Base = tuple[dict[str, torch.Tensor], dict[str, str], torch.Tensor]


def real_index(dtype: str, n: int, dim: int, keep: bool, ids: str) -> Base:
    """The tensors and metadata of a real saved index, and its float32 vectors."""
    index = pyrag.DenseIndex(dim, dtype, keep_originals=keep)
    g = torch.Generator().manual_seed(n * 100 + dim)
    order = {"increasing": torch.arange(n), "shuffled": torch.randperm(n, generator=g) * 5}[ids]
    vectors = torch.randn(n, dim, generator=g)
    index.add(vectors, order)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "i")
        index.save(path)
        tensors, meta = storage.load_tensors(path)
    meta.pop("checksum")
    return {k: v.clone() for k, v in tensors.items()}, meta, vectors


@st.composite
def odd_tensor(draw: st.DrawFn, like: torch.Tensor | None) -> torch.Tensor:
    """A tensor like `like` (same dtype and shape) with odd values, or one of another
    dtype or shape."""
    kind = draw(st.sampled_from(["values", "shape", "dtype"]))
    if like is not None and kind == "values" and like.numel() and like.dtype != torch.bool:
        t = like.clone()
        flat = t.reshape(-1)
        at = draw(st.integers(0, flat.numel() - 1))
        if t.dtype.is_floating_point:
            flat[at] = draw(st.sampled_from([float("nan"), float("inf"), -1.0, -0.0, 1e38, 0.0]))
        elif t.dtype == torch.int64:
            flat[at] = draw(st.sampled_from([-1, -(2**63), 2**63 - 1, int(flat[0]), int(flat[-1]) + 1]))
        else:
            flat[at] = draw(st.integers(0, 255)) if t.dtype == torch.uint8 else draw(st.integers(-128, 127))
        return t
    dtype = draw(st.sampled_from([torch.uint8, torch.int64, torch.float32, torch.bfloat16, torch.int8, torch.bool]))
    if like is not None and kind == "dtype":
        shape = list(like.shape)
    else:
        shape = draw(st.lists(st.integers(0, 20), max_size=3))
    count = 1
    for s in shape:
        count *= s
    nbytes = count * torch.empty(0, dtype=dtype).element_size()
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    raw = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()


BASES: dict[tuple, Base] = {}


def _base(key: tuple) -> Base:
    if key not in BASES:
        BASES[key] = real_index(*key)
    tensors, meta, vectors = BASES[key]
    return {k: v.clone() for k, v in tensors.items()}, dict(meta), vectors


@st.composite
def index_files(draw: st.DrawFn) -> bytes:
    """Mutations of real index files, or handmade ones."""
    if draw(st.integers(0, 4)) == 0:
        return draw(handmade_files(INDEX_TENSORS, INDEX_META, INDEX_VALUES))
    key = (
        draw(st.sampled_from(["float32", "bfloat16", "int8"])),
        draw(st.sampled_from([0, 1, 17, 40])),
        draw(st.sampled_from([1, 3, 8])),
        draw(st.booleans()),
        draw(st.sampled_from(["increasing", "shuffled"])),
    )
    tensors, meta, vectors = _base(key)
    if key[0] == "float32" and draw(st.integers(0, 5)) == 0:  # format version 1: row-major vectors
        tensors = {"ids": tensors["ids"], "vectors": vectors.clone()}
        meta["format_version"] = "1"
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["meta", "drop meta", "tensor", "drop tensor", "add tensor"]))
        if what == "meta":
            meta[draw(st.sampled_from(INDEX_META))] = draw(st.sampled_from(INDEX_VALUES) | st.text(max_size=6))
        elif what == "drop meta" and meta:
            meta.pop(draw(st.sampled_from(sorted(meta))))
        elif what == "tensor" and tensors:
            name = draw(st.sampled_from(sorted(tensors)))
            tensors[name] = draw(odd_tensor(tensors[name]))
        elif what == "drop tensor" and tensors:
            tensors.pop(draw(st.sampled_from(sorted(tensors))))
        elif what == "add tensor":
            tensors[draw(st.sampled_from(INDEX_TENSORS))] = draw(odd_tensor(None))
    crc = draw(st.sampled_from(["right"] * 7 + ["v1", "wrong", "none"]))
    header, data = tensors_to_file(tensors, meta, crc=crc)
    return draw(damaged(header, data))


def load_index(path: str, mmap: bool) -> str:
    """Loads and uses an index; 'ok' or raises."""
    index = pyrag.DenseIndex.load(path, mmap=mmap)
    n = len(index)
    q = torch.ones(2, index.dim)
    for exact in [False, True] if index.keep_originals else [False]:
        scores, ids = index.search(q, 3, exact=exact)
        valid = ids >= 0
        assert int(valid.sum()) == 2 * min(n, 3), "search returned padding inside the results"
        assert bool(torch.isin(ids[valid], index.ids).all()), "search returned ids the index does not hold"
    if n:
        assert index.get(index.ids[:2]).shape == (min(n, 2), index.dim)
    if n == 0 or int(index.ids.max()) < 2**63 - 1:  # room for an automatic id
        index.add(torch.zeros(1, index.dim))
    return "ok"


def load_versioned(path: str, mmap: bool) -> str:
    index = pyrag.VersionedIndex.load(path, mmap=mmap)
    index.search(torch.ones(1, index.dim), 2)
    return "ok"


def load_tensors(path: str, mmap: bool) -> str:
    storage.load_tensors(path, mmap=mmap)
    return "ok"


# ----------------------------------------------------------------------------- checkpoints
CKPT_META = ["format", "format_version", "step", "config", "evals", "index"]
CKPT_VALUES = [
    "pyrag.train.checkpoint", "2", "1", "0", "-1", "7", "1e999", "[]", "{}", "[[1, 2.5]]", "[[1e999, 1]]",
    "[[\"a\", 1]]", "[1]", "null", '{"mode": "dpr", "train_passage_encoder": true}',
    '{"mode": "replug_lsr", "train_passage_encoder": true}', "index-000000001-abcd", "index-1-../x",
    "index-000000001-abcd\x00", "../trainer.safetensors", "9" * 5000,
]  # fmt: skip
CKPT_ROWS, CKPT_FEATURES, CKPT_DIM = 20, 4, 8


def tiny_trainer():  # type: ignore[no-untyped-def]
    """A DPR trainer that trains both encoders, with a reindexer: every part of a checkpoint."""
    from pyrag.reindex import AsyncReindexer
    from pyrag.train import Example, TrainConfig, Trainer

    torch.manual_seed(0)
    query_encoder = torch.nn.Linear(CKPT_FEATURES, CKPT_DIM, bias=False)
    passage_encoder = torch.nn.Linear(CKPT_FEATURES, CKPT_DIM, bias=False)
    features = torch.randn(CKPT_ROWS, CKPT_FEATURES)
    reindexer = AsyncReindexer(passage_encoder, features, dtype="int8", schedule="none", progress=False)
    retriever = pyrag.Retriever(query_encoder, reindexer.index, passages=features, passage_encoder=passage_encoder)
    cfg = TrainConfig(mode="dpr", train_passage_encoder=True, batch_size=2, steps=100)
    return Trainer(retriever, cfg, [Example("q", "a", 0)] * 2, reindexer=reindexer, progress=False, log=lambda s: None)


_CKPT: dict[str, Any] = {}


def _checkpoint_base() -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    if not _CKPT:
        trainer = tiny_trainer()
        # A real optimiser state (AdamW moments) to mutate.
        for p in trainer.optimizer.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        trainer.optimizer.step()
        with tempfile.TemporaryDirectory() as d:
            trainer.save_checkpoint(d)
            tensors, meta = storage.load_tensors(os.path.join(d, "trainer.safetensors"))
            with open(os.path.join(d, meta["index"]), "rb") as f:
                index_bytes = f.read()
        trainer.reindexer.close()
        meta.pop("checksum")
        _CKPT.update(tensors={k: v.clone() for k, v in tensors.items()}, meta=meta, index=index_bytes)
    return {k: v.clone() for k, v in _CKPT["tensors"].items()}, dict(_CKPT["meta"]), _CKPT["index"]


@st.composite
def optimizer_bytes(draw: st.DrawFn, good: torch.Tensor) -> torch.Tensor:
    """The optimiser's torch.save bytes, mutated: flipped or cut bytes, or another object."""
    how = draw(st.sampled_from(["flip", "cut", "object", "random"]))
    raw = bytearray(good.numpy().tobytes())
    if how == "flip" and raw:
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] ^= draw(st.integers(1, 255))
    elif how == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "object":
        state = torch.load(io.BytesIO(bytes(raw)), weights_only=True)
        choice = draw(st.sampled_from(["list", "no state", "bad params", "bad moment", "extra param"]))
        if choice == "list":
            state = [1, 2]
        elif choice == "no state":
            state.pop("state")
        elif choice == "bad params":
            state["param_groups"][0]["params"] = ["x"]
        elif choice == "bad moment":
            entry = next(iter(state["state"].values()))
            entry["exp_avg"] = torch.zeros(3, 3, 3)
        else:
            state["state"][99] = {"step": torch.tensor(1.0)}
        buf = io.BytesIO()
        torch.save(state, buf)
        raw = bytearray(buf.getvalue())
    else:
        raw = bytearray(draw(st.binary(max_size=200)))
    return torch.frombuffer(raw or bytearray(b"\0"), dtype=torch.uint8)[: len(raw)].clone()


@st.composite
def checkpoint_dirs(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(trainer.safetensors bytes, the index file's bytes or None for no file)."""
    tensors, meta, index = _checkpoint_base()
    if draw(st.integers(0, 5)) == 0:
        state = draw(handmade_files(sorted(tensors), CKPT_META, CKPT_VALUES))
        return state, index
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["meta", "drop meta", "tensor", "drop tensor", "optimizer", "index"]))
        if what == "meta":
            meta[draw(st.sampled_from(CKPT_META))] = draw(st.sampled_from(CKPT_VALUES) | st.text(max_size=6))
        elif what == "drop meta":
            meta.pop(draw(st.sampled_from(sorted(meta))), None)
        elif what == "tensor" and tensors:
            name = draw(st.sampled_from(sorted(tensors)))
            tensors[name] = draw(odd_tensor(tensors[name]))
        elif what == "drop tensor" and tensors:
            tensors.pop(draw(st.sampled_from(sorted(tensors))))
        elif what == "optimizer":
            tensors["optimizer"] = draw(optimizer_bytes(_CKPT["tensors"]["optimizer"]))
        else:
            index = draw(st.none() | index_files())
    header, data = tensors_to_file(tensors, meta, crc=draw(st.sampled_from(["right"] * 8 + ["wrong"])))
    return draw(damaged(header, data)), index


_TRAINER: dict[str, Any] = {}


def load_checkpoint(directory: str, _: bool) -> str:
    if not _TRAINER:
        _TRAINER["t"] = tiny_trainer()
    trainer = _TRAINER["t"]
    trainer.load_checkpoint(directory)
    trainer.retriever.index.search(torch.ones(1, CKPT_DIM), 2)
    return "ok"


# ----------------------------------------------------------------------------- TextIndex stores
TEXT_META = ["format", "format_version", "dim", "dtype", "keep_originals", "encoder", "generation", "next_key"]
TEXT_VALUES = [
    "pyrag.TextIndex", "1", "2", "0", "-1", "3", "32", "abc", "", "float32", "bfloat16", "int8", "float16",
    "9" * 30, "1e3", "minilm",
]  # fmt: skip
SQL_VALUES: list[Any] = [None, 0, -1, 2**62, 1.5, "", "x", "{", "[1]", "null", '"x"', '{"a": NaN}', '{"a": 1}', b"\xff"]
SQL_STATEMENTS = [
    "DROP TABLE passages", "DROP TABLE meta", "ALTER TABLE passages RENAME TO p2", "PRAGMA user_version = 7",
    "DELETE FROM passages", "CREATE TABLE extra (a)", "ALTER TABLE passages ADD COLUMN extra TEXT",
]  # fmt: skip
_TEXT: dict[str, str] = {}


def _text_base() -> str:
    """A real store, made once: 7 passages of dim 32 in float32, closed (no WAL left)."""
    if not _TEXT:
        from kill_writers import text_encoder

        from pyrag.text import TextIndex

        directory = tempfile.mkdtemp(prefix="pyrag-fuzz-text-")
        _CLOSE.append(lambda: shutil.rmtree(directory, ignore_errors=True))
        path = os.path.join(directory, "store")
        texts = [f"passage {i}" for i in range(7)]
        index = TextIndex.from_texts(texts, text_encoder, [{"i": i} for i in range(7)], path=path)
        index.delete([index.ids[0]])  # a generation past 1, a key gap
        index.close()
        _TEXT["path"] = path
    return _TEXT["path"]


@st.composite
def text_stores(draw: st.DrawFn) -> list[tuple]:
    """Mutations to apply to a copy of the real store (see _write_text_store)."""
    kinds = ["meta", "drop meta", "passage", "delete passage", "insert passage", "sql", "vector file",
             "remove vector file", "stray file", "db bytes", "no vectors dir"]  # fmt: skip
    out: list[tuple] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "meta":
            out.append(
                (kind, draw(st.sampled_from(TEXT_META)), draw(st.sampled_from(TEXT_VALUES) | st.text(max_size=5)))
            )
        elif kind == "drop meta":
            out.append((kind, draw(st.sampled_from(TEXT_META))))
        elif kind == "passage":
            out.append(
                (kind, draw(st.sampled_from(["key", "id", "text", "metadata"])), draw(st.sampled_from(SQL_VALUES)))
            )
        elif kind == "insert passage":
            out.append((kind, draw(st.sampled_from([-1, 0, 1, 3, 100, 2**63 - 1]))))
        elif kind == "sql":
            out.append((kind, draw(st.sampled_from(SQL_STATEMENTS))))
        elif kind == "vector file":
            out.append((kind, draw(index_files())))
        elif kind == "stray file":
            out.append((kind, draw(st.sampled_from(["000000000001.pyrag", "999999999999.pyrag", ".pyrag-tmp-x", "x"]))))
        elif kind == "db bytes":
            out.append((kind, draw(st.integers(0, 2**31)), draw(st.integers(1, 255)), draw(st.booleans())))
        else:
            out.append((kind,))
    return out


def _write_text_store(directory: str, mutations: list[tuple]) -> str:
    import sqlite3

    path = os.path.join(directory, "store")
    shutil.copytree(_text_base(), path)
    db_path = os.path.join(path, "passages.sqlite")
    vectors_dir = os.path.join(path, "vectors")
    for m in mutations:
        kind = m[0]
        if kind == "vector file" or kind == "remove vector file":
            for name in os.listdir(vectors_dir) if os.path.isdir(vectors_dir) else []:
                os.unlink(os.path.join(vectors_dir, name))
                if kind == "vector file":
                    with open(os.path.join(vectors_dir, name), "wb") as f:
                        f.write(m[1])
        elif kind == "stray file" and os.path.isdir(vectors_dir):
            with open(os.path.join(vectors_dir, m[1]), "wb") as f:
                f.write(b"stray")
        elif kind == "no vectors dir":
            shutil.rmtree(vectors_dir, ignore_errors=True)
        elif kind == "db bytes" and os.path.isfile(db_path):
            blob = bytearray(open(db_path, "rb").read())
            if blob:
                at = m[1] % len(blob)
                blob = blob[:at] if m[3] else blob[:at] + bytes([blob[at] ^ m[2]]) + blob[at + 1 :]
                with open(db_path, "wb") as f:
                    f.write(blob)
        else:
            try:
                db = sqlite3.connect(db_path, isolation_level=None)
                try:
                    if kind == "meta":
                        db.execute("UPDATE meta SET value = ? WHERE key = ?", (m[2], m[1]))
                    elif kind == "drop meta":
                        db.execute("DELETE FROM meta WHERE key = ?", (m[1],))
                    elif kind == "passage":
                        db.execute(
                            f"UPDATE passages SET {m[1]} = ? WHERE key = (SELECT min(key) FROM passages)", (m[2],)
                        )
                    elif kind == "delete passage":
                        db.execute("DELETE FROM passages WHERE key = (SELECT max(key) FROM passages)")
                    elif kind == "insert passage":
                        db.execute("INSERT INTO passages VALUES (?, 'extra', 'text', '{}')", (m[1],))
                    elif kind == "sql":
                        db.execute(m[1])
                finally:
                    db.close()
            except sqlite3.Error:
                pass  # the mutation itself was refused (a constraint, a damaged file): keep the store as it is
    return path


def load_text_store(path: str, mmap: bool) -> str:
    from pyrag.text import TextIndex

    with TextIndex.load(path, encoder=None, mmap=mmap) as index:
        ids = index.ids
        passages = index.get(ids)
        assert [p.id for p in passages] == ids
        if ids:
            hits = index.search(index.get_vectors(ids[:1])[0], 2)  # one query: a list of hits
            assert hits and {h.id for h in hits} <= set(ids)
    return "ok"


# ----------------------------------------------------------------------------- ShardedIndex saves
MANIFEST_FIELDS = ["dim", "dtype", "keep_originals", "world_size", "count", "version", "step", "token", "metadata",
                   "format", "format_version", "shards"]  # fmt: skip
MANIFEST_VALUES: list[Any] = [
    0, 1, 2, -1, 8, 32, 10**30, True, False, None, "", "int8", "float32", "float16", [], {}, {"a": 1}, [{}],
    "pyrag.ShardedIndex", 1.5,
]  # fmt: skip
SHARD_FIELDS = ["file", "rows", "bytes", "checksum"]
_SHARDED: dict[str, str] = {}
_CLOSE: list[Callable[[], None]] = []  # what close() undoes: the process group and base files made here


def _sharded_bases() -> list[str]:
    """Two real saves, made once: one by ShardedIndex.save on a group of one (one shard
    file), one of two shard files as a 2-rank save writes them (loaded on one rank, its
    rows are dealt from both)."""
    if not _SHARDED:
        from kill_writers import group_of_one

        from pyrag.distributed import ShardedIndex, manifest

        _CLOSE.append(group_of_one())
        root = tempfile.mkdtemp(prefix="pyrag-fuzz-sharded-")
        _CLOSE.append(lambda: shutil.rmtree(root, ignore_errors=True))
        index = ShardedIndex(8, "int8")
        index.add(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)))
        index.save(os.path.join(root, "one"), metadata={"note": "x"})
        two = os.path.join(root, "two")
        os.makedirs(two)
        token, shards = manifest.new_token(), []
        for r, (a, b) in enumerate([(0, 12), (12, 20)]):
            part = pyrag.DenseIndex(8, "bfloat16")
            part.add(torch.randn(b - a, 8, generator=torch.Generator().manual_seed(r)), torch.arange(a, b))
            name = manifest.shard_file(r, 2, token)
            part.save(os.path.join(two, name), metadata={"sharded.token": f"{token:016x}"})
            size, checksum = manifest.describe(os.path.join(two, name))
            shards.append({"file": name, "rows": b - a, "bytes": size, "checksum": checksum})
        body = {
            "format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "dim": 8, "dtype": "bfloat16",
            "keep_originals": True, "world_size": 2, "count": 20, "version": 3, "step": 0, "token": token,
            "metadata": {}, "shards": shards,
        }  # fmt: skip
        manifest.write(two, body)
        _SHARDED.update(one=os.path.join(root, "one"), two=two)
    return [_SHARDED["one"], _SHARDED["two"]]


@st.composite
def sharded_saves(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    """(which base, mutations to apply to a copy of it: see _write_sharded)."""
    kinds = ["field", "drop field", "shard field", "raw manifest", "shard file", "no shard file", "stray file"]
    out: list[tuple] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "field":
            out.append(
                (kind, draw(st.sampled_from(MANIFEST_FIELDS)), draw(st.sampled_from(MANIFEST_VALUES) | JSON_ANY))
            )
        elif kind == "drop field":
            out.append((kind, draw(st.sampled_from(MANIFEST_FIELDS))))
        elif kind == "shard field":
            value = draw(
                st.sampled_from(MANIFEST_VALUES) | st.sampled_from(["shard-00000-of-00001-1.safetensors", "../x"])
            )
            out.append((kind, draw(st.integers(0, 1)), draw(st.sampled_from(SHARD_FIELDS)), value))
        elif kind == "raw manifest":
            out.append((kind, draw(st.sampled_from(["cut", "flip", "deep", "huge int"])), draw(st.integers(0, 10**6))))
        elif kind == "shard file":
            out.append((kind, draw(st.integers(0, 1)), draw(index_files())))
        elif kind == "no shard file":
            out.append((kind, draw(st.integers(0, 1))))
        else:
            out.append((kind,))
    return draw(st.integers(0, 1)), out


def _write_sharded(directory: str, case: tuple[int, list[tuple]]) -> str:
    from pyrag.distributed import manifest

    which, mutations = case
    path = os.path.join(directory, "sharded")
    shutil.copytree(_sharded_bases()[which], path)
    mpath = os.path.join(path, "manifest.json")
    with open(mpath) as f:
        doc = json.load(f)
    doc.pop("checksum")
    shard_files = sorted(e for e in os.listdir(path) if e.startswith("shard-"))
    raw: bytes | None = None
    for m in mutations:
        kind = m[0]
        if kind == "field":
            doc[m[1]] = m[2]
        elif kind == "drop field":
            doc.pop(m[1], None)
        elif kind == "shard field" and isinstance(doc.get("shards"), list) and doc["shards"]:
            entry = doc["shards"][m[1] % len(doc["shards"])]
            if isinstance(entry, dict):
                entry[m[2]] = m[3]
        elif kind == "raw manifest":
            text = json.dumps(dict(doc, checksum=manifest._body_checksum(doc))).encode()
            how, at = m[1], m[2] % max(len(text), 1)
            raw = {
                "cut": text[:at],
                "flip": text[:at] + bytes([text[at] ^ 0x20]) + text[at + 1 :] if text else text,
                "deep": b"[" * 100_000 + b"]" * 100_000,
                "huge int": text.replace(b'"count": ', b'"count": ' + b"9" * 5000, 1),
            }[how]
        elif kind == "shard file":
            with open(os.path.join(path, shard_files[m[1] % len(shard_files)]), "wb") as f:
                f.write(m[2])
        elif kind == "no shard file":
            target = os.path.join(path, shard_files[m[1] % len(shard_files)])
            if os.path.exists(target):
                os.unlink(target)
        elif kind == "stray file":
            with open(os.path.join(path, "shard-00009-of-00010-ff.safetensors"), "wb") as f:
                f.write(b"stray")
    if raw is None:  # the manifest with a right checksum, so that the checks behind it are reached
        try:
            raw = json.dumps(dict(doc, checksum=manifest._body_checksum(doc))).encode()
        except (TypeError, ValueError):  # a value JSON cannot hold
            raw = b"{"
    with open(mpath, "wb") as f:
        f.write(raw)
    return path


def load_sharded(path: str, mmap: bool) -> str:
    from pyrag.distributed import ShardedIndex

    index = ShardedIndex.load(path, mmap=mmap)
    scores, ids = index.search(torch.ones(2, index.dim), 3)
    assert int((ids >= 0).sum()) == 2 * min(len(index), 3)
    return "ok"


def close() -> None:
    """Stops the cached trainer's reindexer, tears down the process group made here and
    removes the base files."""
    trainer = _TRAINER.pop("t", None)
    if trainer is not None:
        trainer.reindexer.close()
    while _CLOSE:
        _CLOSE.pop()()
    _SHARDED.clear()
    _TEXT.clear()


# ----------------------------------------------------------------------------- the loaders
@dataclass(frozen=True)
class Loader:
    name: str
    files: Callable[[], st.SearchStrategy]  # strategy of what to write
    write: Callable[[str, Any], str]  # writes a drawn case under a directory; returns the path to load
    load: Callable[[str, bool], str]  # loads the path (mmap or not): "ok", or raises
    errors: tuple[type[BaseException], ...]  # the documented exceptions


def _write_file(directory: str, blob: bytes) -> str:
    path = os.path.join(directory, "file.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _write_checkpoint(directory: str, case: tuple[bytes, bytes | None]) -> str:
    state, index = case
    path = os.path.join(directory, "ckpt")
    os.makedirs(path)
    _write_file(path, state)
    os.replace(os.path.join(path, "file.safetensors"), os.path.join(path, "trainer.safetensors"))
    if index is not None:
        with open(os.path.join(path, _CKPT["meta"]["index"]), "wb") as f:
            f.write(index)
    return path


# The errors each loader documents: IndexFormatError from every index load (docs/reliability.md).
LOADERS: list[Loader] = [
    Loader("DenseIndex.load", index_files, _write_file, load_index, (pyrag.IndexFormatError,)),
    Loader("VersionedIndex.load", index_files, _write_file, load_versioned, (pyrag.IndexFormatError,)),
    Loader(
        "storage.load_tensors",
        lambda: handmade_files(INDEX_TENSORS, INDEX_META, INDEX_VALUES),
        _write_file,
        load_tensors,
        (pyrag.FormatError,),
    ),
    Loader("Trainer.load_checkpoint", checkpoint_dirs, _write_checkpoint, load_checkpoint, (pyrag.FormatError,)),
    Loader("TextIndex.load", text_stores, _write_text_store, load_text_store, (pyrag.IndexFormatError,)),
    Loader("ShardedIndex.load", sharded_saves, _write_sharded, load_sharded, (pyrag.IndexFormatError,)),
]


def _gist(message: str) -> str:
    """An error message without its path and numbers: what kind of problem it names."""
    text = message.split(": ", 1)[-1]
    return "".join("#" if c.isdigit() else c for c in text)[:70]


def fuzz(loader: Loader, cases: int, seed: int = 0, messages: collections.Counter | None = None) -> collections.Counter:
    """Runs `cases` generated files through `loader`; returns the outcomes ('ok', or the
    documented error's type) and counts the errors' messages into `messages`. Raises on
    any other exception."""
    outcomes: collections.Counter = collections.Counter()
    directory = tempfile.mkdtemp(prefix="pyrag-fuzz-")

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=loader.files(), mmap=st.booleans())
    def one(case: Any, mmap: bool) -> None:
        work = tempfile.mkdtemp(dir=directory)
        try:
            path = loader.write(work, case)
            faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
            try:
                outcomes[loader.load(path, mmap)] += 1
            except loader.errors as e:
                outcomes[type(e).__name__] += 1
                if messages is not None:
                    messages[_gist(str(e))] += 1
            finally:
                faulthandler.cancel_dump_traceback_later()
        finally:
            shutil.rmtree(work)

    try:
        hypothesis.seed(seed)(one)()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=14000, help="cases in all, shared among the loaders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--messages", type=int, default=0, help="show the N commonest error messages per loader")
    parser.add_argument("--only", default="", help="fuzz the loaders whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaders = [loader for loader in LOADERS if args.only in loader.name]
    total = 0
    try:
        for i, loader in enumerate(loaders):
            t0 = time.perf_counter()
            messages: collections.Counter = collections.Counter()
            outcomes = fuzz(loader, args.cases // len(loaders), args.seed + i, messages)
            n = sum(outcomes.values())
            total += n
            detail = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
            print(f"{loader.name:<24} {n:>6} cases in {time.perf_counter() - t0:.0f} s: {detail}", flush=True)
            for message, count in messages.most_common(args.messages):
                print(f"    {count:>5}  {message}")
    finally:
        close()  # also when a case fails: no process group or base files left behind
    print(f"total: {total} cases, 0 undocumented exceptions, no crash, no hang")
    return 0


if __name__ == "__main__":
    sys.exit(main())
