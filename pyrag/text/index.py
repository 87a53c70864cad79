"""TextIndex: passages with their metadata and vectors; texts or vectors in, hits out.

    index = pyrag.TextIndex.from_texts(texts, metadatas=[{"source": ...}, ...], path="docs.idx")
    hits = index.search("how do I read a file?", k=5)   # [Hit(id, text, metadata, score), ...]
    index = pyrag.TextIndex.load("docs.idx", mmap=True)  # later, in another process

The vectors live in a pyrag.DenseIndex (exact inner-product search, float32 / bfloat16 /
int8), the texts and metadata in SQLite. With `path`, every add_texts / delete commits to
that directory under the protocol in pyrag/text/store.py: it lands in both stores or in
neither, also if the process is killed at any moment. Without `path` the index lives in
memory (SQLite ":memory:") until `save(directory)`.

Every mutation checks all of its input (and encodes the texts) before it changes
anything; bad input raises ValueError / TypeError / KeyError and leaves the index as it
was. One TextIndex object may be shared by threads. Several processes may read one
store while one writes: a reader's search notices a newer committed generation and
reloads; a writer whose store was changed by another writer raises StaleIndexError.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TypedDict, TypeVar, Union, overload

import numpy as np
import torch

from pyrag import DenseIndex, IndexFormatError
from pyrag.text import store
from pyrag.text.encoders import DEFAULT_ENCODER, Encoder, EncoderLike, Vectors, as_encoder, encode
from pyrag.text.store import Metadata

__all__ = ["Filter", "Hit", "IndexInfo", "Metadata", "Passage", "StaleIndexError", "TextIndex", "VectorQuery"]

_DTYPES = ("float32", "bfloat16", "int8")


class _Stored(enum.Enum):
    """TextIndex.load's default encoder: the one recorded in the store."""

    ENCODER = enum.auto()


_STORED = _Stored.ENCODER

# search(filter=): metadata key: value pairs that must all be equal, or a predicate.
Filter = Union[Metadata, Callable[[Metadata], bool], None]
# A vector query whose shape only shows at run time: [dim] (one query) or [B, dim].
VectorQuery = Union[torch.Tensor, np.ndarray]

_T = TypeVar("_T")
_Undo = Optional[Callable[[], object]]  # what a mutation's in-memory step returns: its undo


@dataclass(frozen=True)
class Passage:
    """A stored passage: its id, text and metadata."""

    id: str
    text: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Hit(Passage):
    """A search result: the passage and its score (the inner product of the vectors;
    the cosine similarity for unit-norm encoders such as the default)."""

    score: float = 0.0


class StaleIndexError(RuntimeError):
    """Another process committed to this store since this TextIndex read it: reload it."""


class _InfoBase(TypedDict):
    passages: int
    dim: Optional[int]
    dtype: str
    encoder: Optional[str]
    generation: int
    keep_originals: bool
    path: Optional[str]


class IndexInfo(_InfoBase, total=False):
    """What TextIndex.info() returns; `files` (name -> bytes) and `bytes` (their sum)
    only for an index kept in a directory."""

    files: dict[str, int]
    bytes: int


class TextIndex:
    """Passages, their metadata and their vectors, searchable by text or by vector.

    Args:
        encoder: what turns texts into vectors: a spec ("minilm", the default; "st:PATH",
            "hf:PATH", a model folder), a SentenceTransformer, an Encoder, a callable
            list[str] -> [n, dim], or None (then add vectors and search by vector).
            A spec is loaded on first use.
        dtype: storage of the vectors: "float32", "bfloat16" or "int8".
        dim: the vector dimension, if known before the first add (else taken from it).
        path: a directory to keep the index in (created; must not hold anything else).
            Without it the index lives in memory until save().
        keep_originals: bfloat16 / int8 only: also keep the float32 vectors, so that
            search(..., exact=True) returns exactly the float32 ranking (costs 4 bytes
            per dimension per passage on disk).
        batch_size: texts per encoder call.
        progress: show a tqdm bar while encoding (None: only on a terminal).
    """

    # A spec string stays a string until the encoder is needed (loading takes seconds).
    _encoder: Union[str, Encoder, None]
    _recorded_encoder: str  # the spec in the store ("" for none)
    _path: Optional[Path]  # None: in memory
    _db: sqlite3.Connection
    _dtype: str
    _dim: Optional[int]  # None until the first vectors arrive
    _keep_originals: bool
    _index: Optional[DenseIndex]  # exactly the committed vectors; None while _dim is None
    _generation: int
    _data_version: Optional[int]  # SQLite's PRAGMA data_version when last read
    _mmap: bool
    _batch_size: int
    _progress: Optional[bool]
    _lock: threading.RLock

    def __init__(
        self,
        encoder: EncoderLike = DEFAULT_ENCODER,
        *,
        dtype: str = "float32",
        dim: Optional[int] = None,
        path: Optional[str | os.PathLike[str]] = None,
        keep_originals: bool = False,
        batch_size: int = 64,
        progress: Optional[bool] = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise TypeError(f"unsupported dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self._init_common(encoder, batch_size, progress)
        enc = self._encoder if not isinstance(self._encoder, str) else None
        if dim is not None and enc is not None and enc.dim is not None and enc.dim != dim:
            raise ValueError(f"encoder gives {enc.dim}-dim vectors but dim={dim} was asked for")
        self._dtype = dtype
        self._keep_originals = bool(keep_originals) and dtype != "float32"
        self._dim = dim if dim is not None else (enc.dim if enc is not None else None)
        self._index = self._new_dense() if self._dim is not None else None
        meta = {
            "format": store.FORMAT,
            "format_version": store.FORMAT_VERSION,
            "dim": "" if self._dim is None else str(self._dim),
            "dtype": dtype,
            "keep_originals": "1" if self._keep_originals else "0",
            "encoder": self._encoder_name(),
            "generation": "0",
            "next_key": "0",
        }
        self._recorded_encoder = meta["encoder"]
        if path is None:
            self._path = None
            self._db = store.connect(":memory:")
            store.init_schema(self._db, meta)
        else:
            self._path = Path(path)
            _make_empty_dir(self._path)
            (self._path / store.VECTORS_DIR).mkdir()
            self._db = store.connect(self._path / store.DB_NAME, create=True)
            store.init_schema(self._db, meta)
            _fsync_dir(self._path)

    def _init_common(self, encoder: EncoderLike, batch_size: int, progress: Optional[bool]) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self._encoder = encoder if isinstance(encoder, str) else as_encoder(encoder)
        self._batch_size = batch_size
        self._progress = progress
        self._lock = threading.RLock()
        self._generation = 0
        self._mmap = False
        self._data_version = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        encoder: EncoderLike = DEFAULT_ENCODER,
        metadatas: Optional[Sequence[Metadata]] = None,
        ids: Optional[Sequence[str]] = None,
        dtype: str = "float32",
        *,
        dim: Optional[int] = None,
        path: Optional[str | os.PathLike[str]] = None,
        keep_originals: bool = False,
        batch_size: int = 64,
        progress: Optional[bool] = None,
    ) -> TextIndex:
        """A new index holding `texts` (see __init__ for the other arguments)."""
        index = cls(
            encoder,
            dtype=dtype,
            dim=dim,
            path=path,
            keep_originals=keep_originals,
            batch_size=batch_size,
            progress=progress,
        )
        try:
            index.add_texts(texts, metadatas, ids)
        except BaseException:
            path = index._path
            index.close()
            if path is not None:  # nothing of the failed index stays behind
                _remove_store(path)
            raise
        return index

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: Union[EncoderLike, _Stored] = _STORED,
        mmap: bool = False,
        batch_size: int = 64,
        progress: Optional[bool] = None,
    ) -> TextIndex:
        """Opens the index in a directory. encoder: by default the one recorded in the
        store; pass another (of the same dimension) or None. mmap=True maps the vectors
        from disk instead of reading them into RAM."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no text index at {path}")
        if not path.is_dir():
            raise IndexFormatError(f"{path}: not a pyrag text index (not a directory)")
        db = store.connect(path / store.DB_NAME)
        try:
            meta = store.read_meta(db, str(path))
            dtype, dim = meta.get("dtype"), store.optional_int(meta.get("dim"))
            if dtype not in _DTYPES or (dim is not None and dim < 1):
                raise IndexFormatError(f"{path}: text index metadata is corrupt (dtype={dtype!r}, dim={dim!r})")
            self = cls.__new__(cls)
            self._init_common(
                (meta["encoder"] or None) if isinstance(encoder, _Stored) else encoder, batch_size, progress
            )
            self._path, self._db, self._dtype, self._dim = path, db, dtype, dim
            self._keep_originals = meta.get("keep_originals") == "1"
            self._recorded_encoder = meta["encoder"]
            self._mmap = bool(mmap)
            self._recover()
            self._reload()
        except BaseException:
            db.close()
            raise
        enc = self._encoder if not isinstance(self._encoder, str) else None
        if enc is not None and enc.dim is not None and dim is not None and enc.dim != dim:
            self.close()
            raise ValueError(f"encoder gives {enc.dim}-dim vectors but the index at {path} has dim {dim}")
        return self

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> Optional[int]:
        return self._dim

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def path(self) -> Optional[Path]:
        return self._path

    @property
    def generation(self) -> int:
        """How many mutations have been committed to this index."""
        return self._generation

    @property
    def encoder_name(self) -> Optional[str]:
        """The spec of the encoder the index was built with, as recorded in the store
        (None for an unnamed encoder); reading it never loads an encoder."""
        return self._recorded_encoder or None

    @property
    def encoder(self) -> Optional[Encoder]:
        """The encoder (loaded now if it was given as a spec)."""
        with self._lock:
            if isinstance(self._encoder, str):
                self._encoder = as_encoder(self._encoder)
            return self._encoder

    def __len__(self) -> int:
        with self._lock:  # the DenseIndex always holds exactly the committed passages
            return len(self._index) if self._index is not None else 0

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, str):
            return False
        with self._lock:
            return bool(store.existing_ids(self._db, [id_]))

    @property
    def ids(self) -> list[str]:
        """The passages' ids, in the order they were added."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM passages ORDER BY key")]

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return f"TextIndex(size={len(self)}, dim={self._dim}, dtype={self._dtype!r}{where})"

    def info(self) -> IndexInfo:
        """What the index holds, for people: sizes, dtype, encoder, files."""
        with self._lock:
            out: IndexInfo = {
                "passages": len(self),
                "dim": self._dim,
                "dtype": self._dtype,
                "encoder": self.encoder_name,
                "generation": self._generation,
                "keep_originals": self._keep_originals,
                "path": str(self._path) if self._path else None,
            }
            if self._path is not None:
                files = {p.name: p.stat().st_size for p in self._path.iterdir() if p.is_file()}
                vec = store.vectors_path(self._path, self._generation)
                if self._generation:
                    files[f"{store.VECTORS_DIR}/{vec.name}"] = vec.stat().st_size
                out["files"] = files
                out["bytes"] = sum(files.values())
            return out

    # ------------------------------------------------------------------ mutation
    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Optional[Sequence[Metadata]] = None,
        ids: Optional[Sequence[str]] = None,
        *,
        vectors: Optional[Vectors] = None,
    ) -> list[str]:
        """Adds passages and returns their ids (new uuid4 strings where ids is None).
        An id already in the index is an error (see upsert_texts to replace).

        vectors: their float vectors [n, dim], if already computed; else the encoder
        embeds the texts. All of it lands in the index, or none of it.
        """
        return self._write(texts, metadatas, ids, vectors, replace=False)

    def upsert_texts(
        self,
        texts: Sequence[str],
        metadatas: Optional[Sequence[Metadata]] = None,
        ids: Optional[Sequence[str]] = None,
        *,
        vectors: Optional[Vectors] = None,
    ) -> list[str]:
        """Like add_texts, but a passage whose id is already in the index is replaced
        (text, metadata and vector), in the same commit as the additions."""
        return self._write(texts, metadatas, ids, vectors, replace=True)

    def _write(
        self,
        texts: Iterable[object],
        metadatas: Optional[Iterable[object]],
        ids: Optional[Iterable[object]],
        vectors: object,
        replace: bool,
    ) -> list[str]:
        texts = _check_texts(texts)
        n = len(texts)
        meta_json = _check_metadatas(metadatas, n)
        ids = _check_new_ids(ids, n)
        given = _check_vectors(vectors, n, self._dim) if vectors is not None else None
        if n == 0:
            return []
        if given is None:
            encoder = self.encoder
            if encoder is None:
                raise ValueError("this index has no encoder: pass vectors=, or give an encoder")
            x = encode(encoder, texts, batch_size=self._batch_size, progress=self._progress, dim=self._dim)
        else:
            x = given

        def sql(conn: sqlite3.Connection) -> tuple[list[int], list[int]]:
            old = store.keys_of(conn, ids)
            if old and not replace:
                raise ValueError(f"ids already in the index: {sorted(old)[:5]} (upsert_texts replaces them)")
            store.delete_keys(conn, list(old.values()))
            start = int(store.read_meta(conn, self._where())["next_key"])
            keys = list(range(start, start + n))
            store.insert(conn, list(zip(keys, ids, texts, meta_json)))
            store.set_meta(conn, next_key=start + n, dim=x.shape[1])
            return keys, list(old.values())

        def apply(change: tuple[list[int], list[int]]) -> _Undo:
            keys, old = change
            if self._index is None:
                self._dim = x.shape[1]
                self._index = self._new_dense()
            index = self._index
            index.add(x, torch.tensor(keys, dtype=torch.int64))
            if old:  # last: once it returns, nothing in memory can fail before COMMIT
                try:
                    index.remove(torch.tensor(old, dtype=torch.int64))
                except BaseException:
                    index.remove(torch.tensor(keys, dtype=torch.int64))
                    raise
            return lambda: index.remove(torch.tensor(keys, dtype=torch.int64))

        self._commit(sql, apply)
        return ids

    def delete(self, ids: Sequence[str], *, missing: str = "raise") -> int:
        """Deletes passages by id; returns how many were deleted. An unknown id raises
        KeyError and deletes nothing, or with missing="ignore" is skipped."""
        ids = _check_ids(ids, "ids")
        _check_missing(missing)
        if len(set(ids)) != len(ids):
            raise ValueError("ids to delete contain duplicates")
        if not ids:
            return 0
        if missing == "ignore":
            with self._lock:
                self._refresh_if_changed()
                if not store.keys_of(self._db, ids):
                    return 0  # nothing to do: no new generation
        deleted = 0

        def sql(conn: sqlite3.Connection) -> list[int]:
            nonlocal deleted
            found = store.keys_of(conn, ids)
            unknown = [i for i in ids if i not in found]
            if unknown and missing == "raise":
                raise KeyError(f"ids not in the index: {unknown[:5]}")
            keys = [found[i] for i in ids if i in found]
            store.delete_keys(conn, keys)
            deleted = len(keys)
            return keys

        def apply(keys: list[int]) -> _Undo:
            if keys:
                assert self._index is not None  # passages exist, so their vectors do
                self._index.remove(torch.tensor(keys, dtype=torch.int64))
            return None  # in memory, nothing can fail between this and COMMIT

        self._commit(sql, apply)
        return deleted

    def _commit(self, sql: Callable[[sqlite3.Connection], _T], apply: Callable[[_T], _Undo]) -> None:
        """One mutation under the store's commit protocol (pyrag/text/store.py).

        In order: BEGIN IMMEDIATE (SQLite's write lock); check no other process
        committed since we read the store; the SQL changes and generation + 1; the
        in-memory DenseIndex change; with a directory, the new generation's vector file
        (atomic, fsynced); COMMIT, the commit point; then unlink the old vector file.
        On any failure before COMMIT: ROLLBACK, and the DenseIndex goes back to the last
        committed state (undone in memory, or reloaded from its committed file)."""
        with self._lock:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            old_gen, dim_before, index_before = self._generation, self._dim, self._index
            new_file: Optional[Path] = None
            undo: _Undo = None
            touched = committed = False
            try:
                gen = int(store.read_meta(conn, self._where())["generation"])
                if gen != old_gen:
                    raise StaleIndexError(
                        f"{self._where()} was changed by another process "
                        f"(generation {gen}, this object read {old_gen}); "
                        f"load it again"
                    )
                keys = sql(conn)
                store.set_meta(conn, generation=gen + 1)
                touched = True
                undo = apply(keys)
                if self._path is not None:
                    # Every commit (n >= 1 passages, or a delete of found ones) has vectors.
                    assert self._index is not None
                    new_file = store.vectors_path(self._path, gen + 1)
                    self._index.save(new_file)
                conn.execute("COMMIT")
                committed = True
            finally:
                if not committed:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if self._path is not None:
                        if new_file is not None and new_file.exists():
                            new_file.unlink()
                        self._dim, self._index = dim_before, index_before
                        if touched:
                            self._index = self._open_dense(old_gen)
                    elif undo is not None:
                        undo()
                        self._dim = dim_before
                        if index_before is None:
                            self._index = None
                    else:
                        self._dim, self._index = dim_before, index_before
            self._generation = gen + 1
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._path is not None:
                if old_gen:
                    try:
                        store.vectors_path(self._path, old_gen).unlink()
                    except OSError:  # committed all the same; the next load removes it
                        pass
                if self._mmap and new_file is not None:  # map the new file, not the rows in RAM
                    self._index = DenseIndex.load(new_file, mmap=True, verify=False)

    # ------------------------------------------------------------------ search
    @overload
    def search(self, queries: str, k: int = 5, *, filter: Filter = None, exact: bool = False) -> list[Hit]: ...

    @overload
    def search(
        self, queries: list[str] | tuple[str, ...], k: int = 5, *, filter: Filter = None, exact: bool = False
    ) -> list[list[Hit]]: ...

    @overload
    def search(
        self, queries: Sequence[float], k: int = 5, *, filter: Filter = None, exact: bool = False
    ) -> list[Hit]: ...

    @overload
    def search(
        self, queries: Sequence[Sequence[float]], k: int = 5, *, filter: Filter = None, exact: bool = False
    ) -> list[list[Hit]]: ...

    @overload
    def search(
        self, queries: VectorQuery, k: int = 5, *, filter: Filter = None, exact: bool = False
    ) -> list[Hit] | list[list[Hit]]: ...

    def search(
        self,
        queries: str | Sequence[str] | Sequence[float] | Sequence[Sequence[float]] | VectorQuery,
        k: int = 5,
        *,
        filter: Filter = None,
        exact: bool = False,
    ) -> list[Hit] | list[list[Hit]]:
        """The k best passages for each query.

        queries: one text, a list of texts, one vector [dim] or vectors [B, dim]. One
        query gives list[Hit], best first; several give one such list per query.
        filter: a dict (hits whose metadata has these key: value pairs) or a callable
        metadata -> bool. exact: for bfloat16 / int8 indexes made with keep_originals,
        rank by the float32 vectors.
        Fewer than k hits come back when the index (or the filter) has fewer.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        match = _matcher(filter)
        single, texts, q = _parse_queries(queries)
        if texts is not None:
            encoder = self.encoder
            if encoder is None:
                raise ValueError("this index has no encoder: search by vector, or give an encoder")
            q = (
                encode(encoder, texts, queries=True, batch_size=self._batch_size, progress=False, dim=self._dim)
                if texts
                else None
            )
        with self._lock:
            self._refresh_if_changed()
            if q is not None and self._dim is not None and q.shape[1] != self._dim:
                raise ValueError(f"queries have dim {q.shape[1]} but the index has dim {self._dim}")
            if q is None or q.shape[0] == 0:
                results: list[list[Hit]] = [] if not single else [[]]
            elif self._index is None or len(self._index) == 0:
                results = [[] for _ in range(q.shape[0])]
            else:
                results = self._search(self._index, q, k, match, exact)
        return results[0] if single else results

    def _search(
        self, index: DenseIndex, q: torch.Tensor, k: int, match: Optional[Callable[[Metadata], bool]], exact: bool
    ) -> list[list[Hit]]:
        n = len(index)
        fetch = min(n, k if match is None else max(4 * k, 32))
        results: dict[int, list[Hit]] = {}  # query row -> its hits, once complete
        todo = list(range(q.shape[0]))
        while todo:
            scores, keys = index.search(q[todo], fetch, exact=exact)
            rows = store.rows_of(self._db, {int(x) for x in keys.reshape(-1).tolist() if x >= 0})
            still = []
            for b, srow, krow in zip(todo, scores.tolist(), keys.tolist()):
                hits = []
                for s, key in zip(srow, krow):
                    if key < 0:
                        break
                    id_, text, meta_json = rows[key]
                    meta = store.loads_metadata(meta_json)
                    if match is None or match(meta):
                        hits.append(Hit(id_, text, meta, float(s)))
                        if len(hits) == k:
                            break
                if len(hits) < k and fetch < n:
                    still.append(b)  # the filter dropped too many: look further
                else:
                    results[b] = hits
            todo, fetch = still, min(n, fetch * 4)
        return [results[b] for b in range(q.shape[0])]

    def _refresh_if_changed(self) -> None:
        """Reloads if another process committed to the store since we last looked."""
        if self._path is None:
            return
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        gen = int(store.read_meta(self._db, self._where())["generation"])
        if gen != self._generation:
            self._reload()
        self._data_version = version

    # ------------------------------------------------------------------ reading
    def get(self, ids: Sequence[str], *, missing: str = "raise") -> list[Passage]:
        """The passages with these ids, in that order. An unknown id raises KeyError,
        or with missing="ignore" is left out."""
        ids = _check_ids(ids, "ids")
        _check_missing(missing)
        with self._lock:
            self._refresh_if_changed()
            keys = store.keys_of(self._db, ids)
            unknown = [i for i in ids if i not in keys]
            if unknown and missing == "raise":
                raise KeyError(f"ids not in the index: {unknown[:5]}")
            rows = store.rows_of(self._db, keys.values())
        return [Passage(i, rows[keys[i]][1], store.loads_metadata(rows[keys[i]][2])) for i in ids if i in keys]

    def get_vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """The stored vectors of these passages, float32 [len(ids), dim], as the index
        scores them (bfloat16 widened, int8 times its row scale); KeyError if any id
        is unknown."""
        ids = _check_ids(ids, "ids")
        with self._lock:
            self._refresh_if_changed()
            keys = store.keys_of(self._db, ids)
            unknown = [i for i in ids if i not in keys]
            if unknown:
                raise KeyError(f"ids not in the index: {unknown[:5]}")
            if not ids:
                return torch.empty((0, self._dim or 0), dtype=torch.float32)
            assert self._index is not None  # the passages exist, so their vectors do
            return self._index.get(torch.tensor([keys[i] for i in ids], dtype=torch.int64))

    def find(self, filter: Filter) -> list[str]:
        """The ids of the passages whose metadata match `filter` (a dict of key: value
        pairs, or a callable metadata -> bool), in the order they were added."""
        match = _matcher(filter)
        if match is None:
            raise TypeError("find needs a filter: a dict or a callable metadata -> bool")
        with self._lock:
            self._refresh_if_changed()
            rows = self._db.execute("SELECT id, metadata FROM passages ORDER BY key").fetchall()
        return [id_ for id_, meta in rows if match(store.loads_metadata(meta))]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes a copy of this index to a new directory (which must not exist or be
        empty), atomically: built beside it under a temporary name, then renamed."""
        path = Path(path)
        _check_empty_dir(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            with self._lock:
                (tmp / store.VECTORS_DIR).mkdir()
                if self._generation and self._index is not None:
                    self._index.save(store.vectors_path(tmp, self._generation))
                dest = store.connect(tmp / store.DB_NAME, create=True)
                try:
                    self._db.backup(dest)
                    dest.execute("PRAGMA journal_mode=WAL")  # the copy has the source's mode
                finally:
                    dest.close()
            _fsync_dir(tmp / store.VECTORS_DIR)
            _fsync_dir(tmp)
            os.replace(tmp, path)  # onto an empty directory or none
            _fsync_dir(path.parent)
        except BaseException:
            _remove_store(tmp)
            raise

    def close(self) -> None:
        """Closes the SQLite connection (searches and mutations then fail)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> TextIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _where(self) -> str:
        return str(self._path) if self._path is not None else "the in-memory text index"

    def _encoder_name(self) -> str:
        if isinstance(self._encoder, str):
            return self._encoder
        return (self._encoder.name or "") if self._encoder is not None else ""

    def _new_dense(self) -> DenseIndex:
        assert self._dim is not None  # called once vectors (and so the dimension) are known
        return DenseIndex(self._dim, self._dtype, keep_originals=self._keep_originals)

    def _directory(self) -> Path:
        """The store's directory, for what only an on-disk index does."""
        assert self._path is not None  # load() and the commit protocol run on a directory
        return self._path

    def _open_dense(self, generation: int) -> Optional[DenseIndex]:
        """The committed vectors of a generation (an empty index for generation 0)."""
        if generation == 0:
            return self._new_dense() if self._dim is not None else None
        return DenseIndex.load(store.vectors_path(self._directory(), generation), mmap=self._mmap)

    def _recover(self) -> None:
        """Removes what a writer that died left under vectors/, if no writer is active
        now (else leaves it: that writer may still commit it)."""
        path = self._directory()
        if not (path / store.VECTORS_DIR).is_dir():
            raise IndexFormatError(f"{path}: text index has no {store.VECTORS_DIR}/ folder")
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # locked by a writer, or a read-only store
            return
        finally:
            self._db.execute("PRAGMA busy_timeout = 30000")
        try:
            gen = int(store.read_meta(self._db, str(path))["generation"])
            store.clean_vectors_dir(path, gen)
        finally:
            self._db.execute("ROLLBACK")

    def _reload(self) -> None:
        """Reads the committed generation: its vector file, checked against SQLite."""
        for attempt in range(5):
            self._db.execute("BEGIN")  # one read snapshot for the meta and the keys
            try:
                meta = store.read_meta(self._db, str(self._path))
                gen = int(meta["generation"])
                self._dim = store.optional_int(meta["dim"])
                keys = store.all_keys(self._db)
                self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            finally:
                self._db.execute("COMMIT")
            try:
                index = self._open_dense(gen)
            except FileNotFoundError:
                if attempt == 4:
                    raise IndexFormatError(f"{self._path}: the vectors of generation {gen} are missing") from None
                continue  # a writer committed a newer generation and removed this one
            except ValueError as e:  # IndexFormatError: corrupt or foreign file
                raise IndexFormatError(f"{self._path}: vectors of generation {gen}: {e}") from None
            break
        have = index.ids.sort().values if index is not None else torch.empty(0, dtype=torch.int64)
        if index is not None and (index.dim != self._dim or index.dtype != self._dtype):
            raise IndexFormatError(
                f"{self._path}: the vector file has dim {index.dim} and dtype "
                f"{index.dtype}, the store says {self._dim} and {self._dtype}"
            )
        if not torch.equal(have, torch.tensor(keys, dtype=torch.int64)):
            raise IndexFormatError(
                f"{self._path}: the vector file holds {have.numel()} vectors but "
                f"SQLite {len(keys)} passages, or other ids: the store is inconsistent"
            )
        self._index, self._generation = index, gen


# ---------------------------------------------------------------------- input checks
# The checks take what a caller may really pass (anything iterable), not what the
# signatures promise: they are where a wrong type becomes a clear error.
def _check_texts(texts: Iterable[object]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    out: list[str] = []
    for i, t in enumerate(list(texts)):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str")
        out.append(t)
    return out


def _check_metadatas(metadatas: Optional[Iterable[object]], n: int) -> list[str]:
    if metadatas is None:
        return ["{}"] * n
    if isinstance(metadatas, dict):
        raise TypeError("metadatas must be a sequence of dicts, one per text")
    items = list(metadatas)
    if len(items) != n:
        raise ValueError(f"got {len(items)} metadatas for {n} texts")
    return [store.dumps_metadata(m if m is not None else {}, i) for i, m in enumerate(items)]


def _check_ids(ids: Iterable[object], what: str) -> list[str]:
    if isinstance(ids, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    out: list[str] = []
    for i, x in enumerate(list(ids)):
        if not isinstance(x, str) or not x:
            raise TypeError(f"{what}[{i}] is {x!r}; ids are non-empty strings")
        out.append(x)
    return out


def _check_missing(missing: str) -> None:
    if missing not in ("raise", "ignore"):
        raise ValueError(f"missing must be 'raise' or 'ignore', got {missing!r}")


def _check_new_ids(ids: Optional[Iterable[object]], n: int) -> list[str]:
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(n)]
    ids = _check_ids(ids, "ids")
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} texts")
    if len(set(ids)) != n:
        seen: set[str] = set()
        dup: list[str] = []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"ids contain duplicates: {dup[:5]}")
    return ids


def _as_float32(x: object, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64) if isinstance(x, (list, tuple)) else x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what} must be a float tensor or array, got {type(x).__name__}") from e
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what} must hold floats, got {t.dtype}")
    return t.to(torch.float32)


def _check_vectors(vectors: object, n: int, dim: Optional[int]) -> torch.Tensor:
    x = _as_float32(vectors, "vectors")
    if x.dim() != 2 or x.shape[0] != n:
        raise ValueError(f"vectors have shape {tuple(x.shape)}; expected [{n}, dim] for {n} texts")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have dim {x.shape[1]} but the index has dim {dim}")
    if x.shape[1] == 0:
        raise ValueError("vectors have dim 0")
    if n and not bool(torch.isfinite(x).all()):
        row = int((~torch.isfinite(x)).any(1).nonzero()[0])
        raise ValueError(f"vectors[{row}] is not finite (NaN or inf)")
    return x.contiguous()


def _parse_queries(queries: object) -> tuple[bool, Optional[list[str]], Optional[torch.Tensor]]:
    """(single, texts or None, vectors or None)."""
    if isinstance(queries, str):
        return True, [queries], None
    if isinstance(queries, (list, tuple)) and all(isinstance(q, str) for q in queries):
        return False, list(queries), None
    q = _as_float32(queries, "queries")
    if q.dim() == 1:
        q, single = q.unsqueeze(0), True
    elif q.dim() == 2:
        single = False
    else:
        raise ValueError(f"queries have shape {tuple(q.shape)}; expected [dim] or [B, dim]")
    if q.numel() and not bool(torch.isfinite(q).all()):
        raise ValueError("queries hold NaN or inf")
    return single, None, q.contiguous()


def _matcher(filter: Filter) -> Optional[Callable[[Metadata], bool]]:
    if filter is None:
        return None
    if isinstance(filter, dict):
        items = list(filter.items())
        return lambda meta: all(k in meta and meta[k] == v for k, v in items)
    if not callable(filter):
        raise TypeError(f"filter must be a dict or a callable metadata -> bool, got {type(filter).__name__}")
    return lambda meta: bool(filter(meta))


# ---------------------------------------------------------------------- directories
def _check_empty_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory")


def _make_empty_dir(path: Path) -> None:
    _check_empty_dir(path)
    path.mkdir(parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_store(path: Path) -> None:
    """Removes a store directory this process created (only our files)."""
    for name in (store.DB_NAME, store.DB_NAME + "-wal", store.DB_NAME + "-shm", store.DB_NAME + "-journal"):
        try:
            (path / name).unlink()
        except FileNotFoundError:
            pass
    vec = path / store.VECTORS_DIR
    if vec.is_dir():
        for entry in vec.iterdir():
            entry.unlink()
        vec.rmdir()
    try:
        path.rmdir()
    except OSError:
        pass
