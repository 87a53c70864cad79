"""An embedding cache: a named encoder's vectors kept on disk, keyed by text.

    encoder = CachedEncoder(load_encoder("minilm"))      # $PYRAG_CACHE_DIR or ~/.cache/pyrag
    TextIndex.from_texts(texts, encoder=encoder)          # the second time: no model runs

Rebuilding an index (another dtype, chunking that repeats passages, the demo's second
run) then costs a lookup per text instead of a forward pass. The cache is one SQLite
file (WAL, safe to share between processes); a vector's key is the SHA-256 of the
encoder's fingerprint (its spec and the precision it runs in), the kind (document or
query) and the text. Only encoders with a `name` can be cached: a bare callable has no
identity that survives the process.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pyrag.text.encoders import Encoder

__all__ = ["CachedEncoder", "default_cache_dir"]

_FILE = "embeddings.sqlite"


def default_cache_dir() -> Path:
    """$PYRAG_CACHE_DIR, else $XDG_CACHE_HOME/pyrag, else ~/.cache/pyrag."""
    if os.environ.get("PYRAG_CACHE_DIR"):
        return Path(os.environ["PYRAG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyrag"


class CachedEncoder:
    """Wraps a named encoder: vectors already computed come from the cache file."""

    def __init__(self, encoder: Encoder, cache_dir: Optional[str | os.PathLike] = None):
        if not encoder.name:
            raise ValueError("only an encoder with a name (a spec such as 'minilm') can be cached")
        self.encoder = encoder
        self.name: Optional[str] = encoder.name
        compute = str(getattr(encoder, "compute_dtype", "")).replace("torch.", "")
        self.fingerprint = f"{encoder.name}|{compute}|normalize={getattr(encoder, 'normalize', '')}"
        self.path = Path(cache_dir or default_cache_dir()) / _FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors "
            "(key BLOB PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL) WITHOUT ROWID"
        )
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def dim(self) -> Optional[int]:
        return self.encoder.dim

    @dim.setter
    def dim(self, value: Optional[int]) -> None:
        self.encoder.dim = value

    def __repr__(self) -> str:
        return f"CachedEncoder({self.encoder!r}, path={str(self.path)!r})"

    def _key(self, kind: str, text: str) -> bytes:
        return hashlib.sha256(f"{self.fingerprint}\0{kind}\0{text}".encode("utf-8", "surrogatepass")).digest()

    def _encode(self, texts: list[str], kind: str) -> torch.Tensor:
        keys = [self._key(kind, t) for t in texts]
        found: dict[bytes, torch.Tensor] = {}
        with self._lock:
            for i in range(0, len(keys), 900):
                part = keys[i : i + 900]
                q = f"SELECT key, dim, data FROM vectors WHERE key IN ({','.join('?' * len(part))})"
                for key, dim, data in self._db.execute(q, part):
                    found[key] = torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).reshape(dim)
        todo, queued = [], set()  # the first of each text not cached (a text may repeat)
        for i, k in enumerate(keys):
            if k not in found and k not in queued:
                queued.add(k)
                todo.append(i)
        self.misses += len(todo)
        self.hits += len(texts) - len(todo)
        if todo:
            fn = self.encoder.encode_queries if kind == "query" else self.encoder.encode_documents
            new = fn([texts[i] for i in todo])
            if not isinstance(new, torch.Tensor) or new.dim() != 2 or new.shape[0] != len(todo):
                return new  # let encode() report the bad output
            new = new.to("cpu", torch.float32).contiguous()
            rows = [(keys[i], new.shape[1], new[j].numpy().tobytes()) for j, i in enumerate(todo)]
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            for j, i in enumerate(todo):
                found[keys[i]] = new[j]
        return torch.stack([found[k] for k in keys]) if keys else torch.empty(0, self.dim or 0)

    def encode_documents(self, texts: list[str]) -> torch.Tensor:
        return self._encode(list(texts), "document")

    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        return self._encode(list(texts), "query")

    def close(self) -> None:
        self._db.close()
