"""The on-disk layout of a TextIndex and its SQLite schema.

A store is one directory:

    passages.sqlite            texts, metadata, id map and the store's meta (WAL mode)
    passages.sqlite-wal/-shm   SQLite's write-ahead log while the store is open
    vectors/<generation>.pyrag the vectors of that generation (a pyrag.DenseIndex file)

The commit protocol (TextIndex._commit) makes SQLite's COMMIT the single commit point:
the new generation's vector file is written (atomically: temp file, fsync, rename,
directory fsync) *before* the SQLite transaction that records that generation commits,
and the previous generation's file is unlinked only after. So at every instant the
generation recorded in SQLite has its complete vector file on disk, and any other file
under vectors/ is either the uncommitted file of a writer that died, a temp file of one,
or a superseded file not yet unlinked: `clean_vectors_dir` removes them, and only while
it holds SQLite's write lock (so it never races a live writer).

Passages are keyed by an int64 key (the id in the DenseIndex) and carry the user's string
id. Keys are never reused: `next_key` in the meta table only grows.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

from pyrag import IndexFormatError

FORMAT = "pyrag.TextIndex"
FORMAT_VERSION = "1"
DB_NAME = "passages.sqlite"
VECTORS_DIR = "vectors"
_T = TypeVar("_T")
# A passage's metadata: a JSON object.
Metadata = dict[str, Any]
# SQLite's default limit on bound parameters is 32766 since 3.32; stay far below it.
_PARAMS = 900

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE passages (
    key      INTEGER PRIMARY KEY,    -- the id in the DenseIndex
    id       TEXT NOT NULL UNIQUE,   -- the user's id
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL           -- a JSON object
);
"""


def connect(target: str | os.PathLike[str], *, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), shareable across
    threads (TextIndex serialises access), WAL journal, fsync at every commit."""
    target = os.fspath(target)
    if target != ":memory:" and not create and not os.path.isfile(target):
        raise IndexFormatError(f"{os.path.dirname(target)}: not a pyrag text index (no {DB_NAME})")
    try:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30.0)
        if target != ":memory:":
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{target}: not a readable SQLite database ({e})") from None
    return conn


def init_schema(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.strip().split(";\n"):
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_meta(conn: sqlite3.Connection, where: str) -> dict[str, str]:
    """The meta table, checked to be a TextIndex's; IndexFormatError otherwise."""
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        conn.execute("SELECT key, id, text, metadata FROM passages LIMIT 0")
    except sqlite3.DatabaseError as e:
        raise IndexFormatError(f"{where}: not a pyrag text index ({e})") from None
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{where}: not a pyrag text index (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{where}: unsupported text index format version {meta.get('format_version')!r}")
    return meta


def set_meta(conn: sqlite3.Connection, **values: object) -> None:
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(v), k) for k, v in values.items()])


def vectors_path(directory: str | os.PathLike[str], generation: int) -> Path:
    return Path(directory) / VECTORS_DIR / f"{generation:012d}.pyrag"


def clean_vectors_dir(directory: str | os.PathLike[str], generation: int) -> list[str]:
    """Removes every entry of vectors/ but the file of `generation`; returns their names.
    Call only while holding SQLite's write lock (BEGIN IMMEDIATE)."""
    keep = vectors_path(directory, generation).name if generation else None
    removed = []
    for entry in os.scandir(Path(directory) / VECTORS_DIR):
        if entry.name != keep:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:  # another process's cleanup got there first
                continue
            removed.append(entry.name)
    return removed


# ---------------------------------------------------------------------- rows
def _chunks(seq: list[_T], n: int = _PARAMS) -> Iterator[list[_T]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def existing_ids(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for part in _chunks(ids):
        q = f"SELECT id FROM passages WHERE id IN ({','.join('?' * len(part))})"
        found.update(r[0] for r in conn.execute(q, part))
    return found


def keys_of(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in _chunks(ids):
        q = f"SELECT id, key FROM passages WHERE id IN ({','.join('?' * len(part))})"
        out.update(conn.execute(q, part).fetchall())
    return out


def rows_of(conn: sqlite3.Connection, keys: Iterable[int]) -> dict[int, tuple[str, str, str]]:
    """key -> (id, text, metadata JSON) for the keys that exist."""
    out: dict[int, tuple[str, str, str]] = {}
    for part in _chunks(list(keys)):
        q = f"SELECT key, id, text, metadata FROM passages WHERE key IN ({','.join('?' * len(part))})"
        for key, id_, text, meta in conn.execute(q, part):
            out[key] = (id_, text, meta)
    return out


def insert(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str]]) -> None:
    conn.executemany("INSERT INTO passages (key, id, text, metadata) VALUES (?, ?, ?, ?)", rows)


def delete_keys(conn: sqlite3.Connection, keys: list[int]) -> None:
    for part in _chunks(keys):
        conn.execute(f"DELETE FROM passages WHERE key IN ({','.join('?' * len(part))})", part)


def all_keys(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT key FROM passages ORDER BY key")]


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM passages").fetchone()[0]


def dumps_metadata(metadata: object, i: int) -> str:
    if not isinstance(metadata, dict):
        raise TypeError(f"metadatas[{i}] is a {type(metadata).__name__}, not a dict")
    bad = [k for k in metadata if not isinstance(k, str)]
    if bad:
        raise TypeError(f"metadatas[{i}] has non-string keys: {bad[:3]!r}")
    try:
        return json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadatas[{i}] cannot be stored as JSON: {e}") from None


def loads_metadata(text: str) -> Metadata:
    meta: Metadata = json.loads(text)  # dumps_metadata wrote a JSON object
    return meta


def optional_int(value: Optional[str]) -> Optional[int]:
    return int(value) if value not in (None, "") else None
