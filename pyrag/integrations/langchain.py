"""LangChain: a pyrag TextIndex as a `langchain_core` VectorStore, and so a retriever.

    from pyrag.integrations.langchain import PyragVectorStore

    store = PyragVectorStore.from_documents(docs, embeddings, path="kb.idx", dtype="int8")
    store.similarity_search_with_score("how do I ...?", k=4, filter={"lang": "en"})
    retriever = store.as_retriever(search_kwargs={"k": 4})      # or search_type="mmr"
    store = PyragVectorStore.load("kb.idx", embeddings)          # later

Needs ``pip install pyrag[langchain]`` (langchain-core). Texts and metadata live in the
TextIndex's SQLite store, vectors in its pyrag index; with `path`, every add and delete
is committed crash-safely to that directory. add_texts / add_documents with an id that
is already stored replace that document (LangChain's upsert semantics). With
normalize=True (the default) vectors are scaled to unit length, so scores are cosine
similarities, and relevance scores are (1 + cosine) / 2. Passes langchain-tests'
VectorStoreIntegrationTests, sync and async (tests/test_langchain.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union, cast

import torch

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("pyrag.integrations.langchain needs langchain-core: pip install pyrag[langchain]") from e

from pyrag.text import CallableEncoder, Hit, TextIndex
from pyrag.text.index import Filter

__all__ = ["PyragVectorStore"]


def _unit(x: Union[torch.Tensor, Sequence[float], Sequence[Sequence[float]]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def _encoder(embedding: Embeddings, normalize: bool) -> CallableEncoder:
    post = _unit if normalize else (lambda x: torch.as_tensor(x, dtype=torch.float32))
    return CallableEncoder(
        lambda texts: post(embedding.embed_documents(list(texts))),
        query_fn=lambda texts: post([embedding.embed_query(t) for t in texts]),
    )


class PyragVectorStore(VectorStore):
    """A LangChain VectorStore over a pyrag.TextIndex.

    Args:
        embedding: the LangChain Embeddings that encode documents and queries.
        path: a directory to keep the store in (created); None keeps it in memory.
        dtype: vector storage, "float32", "bfloat16" or "int8".
        normalize: scale vectors to unit length (cosine scores).
        keep_originals: bfloat16 / int8: keep float32 copies for exact ranking.
        index: an existing TextIndex to wrap instead (path / dtype are then ignored).
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        path: Optional[str | os.PathLike[str]] = None,
        dtype: str = "float32",
        normalize: bool = True,
        keep_originals: bool = False,
        index: Optional[TextIndex] = None,
    ) -> None:
        self._embedding = embedding
        self._normalize = bool(normalize)
        if index is None:
            index = TextIndex(
                _encoder(embedding, self._normalize),
                dtype=dtype,
                path=path,
                keep_originals=keep_originals,
                progress=False,
            )
        self.index = index

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], embedding: Embeddings, *, normalize: bool = True, mmap: bool = False
    ) -> PyragVectorStore:
        """Reopens a store saved in a directory (pass the same embedding model)."""
        index = TextIndex.load(path, encoder=_encoder(embedding, normalize), mmap=mmap, progress=False)
        return cls(embedding, normalize=normalize, index=index)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes a copy of the store to a new directory."""
        self.index.save(path)

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[list[dict[str, Any]]] = None,
        *,
        # Wider than VectorStore's list[str]: its own add_documents passes [doc.id, ...],
        # which holds None for the documents that have no id.
        ids: Optional[Sequence[Optional[str]]] = None,
        **kwargs: Any,
    ) -> list[str]:
        """Adds (or, for ids already stored, replaces) texts; returns their ids."""
        texts = list(texts)
        given = None if ids is None else [i if i else str(uuid.uuid4()) for i in ids]
        return self.index.upsert_texts(texts, metadatas, given)

    def delete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Deletes these ids (unknown ones are skipped), or everything with ids=None."""
        if ids is None:
            ids = self.index.ids
        self.index.delete(list(dict.fromkeys(ids)), missing="ignore")
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        passages = self.index.get(list(dict.fromkeys(ids)), missing="ignore")
        return [Document(id=p.id, page_content=p.text, metadata=p.metadata) for p in passages]

    # ------------------------------------------------------------------ searching
    def _vector(self, embedding: list[float]) -> torch.Tensor:
        """The query vector the index is searched with (unit length, with normalize)."""
        v = torch.as_tensor(embedding, dtype=torch.float32)
        return _unit(v) if self._normalize else v

    def _search(self, vector: torch.Tensor, k: int, filter: Filter) -> list[Hit]:
        hits = self.index.search(vector, k, filter=filter)
        return cast(list[Hit], hits)  # one vector [dim]: one list of hits

    @staticmethod
    def _documents(hits: list[Hit]) -> list[tuple[Document, float]]:
        return [(Document(id=h.id, page_content=h.text, metadata=h.metadata), h.score) for h in hits]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """filter: a dict of metadata key: value pairs, or a callable metadata -> bool."""
        return self._documents(self._search(self._vector(embedding), k, filter))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._documents(self._search(self._vector(self._embedding.embed_query(query)), k, filter))

    def similarity_search(self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter = None,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR over the fetch_k best hits, with their stored vectors (TextIndex.get_vectors)."""
        v = self._vector(embedding)
        hits = self._search(v, fetch_k, filter)
        if not hits:
            return []
        vectors = self.index.get_vectors([h.id for h in hits]).numpy()
        # embedding_list is typed list[list[float]] but is only used as a 2-D array; passing
        # the float32 array keeps MMR's cosines those of the stored vectors.
        picked = maximal_marginal_relevance(v.numpy(), vectors, lambda_mult=lambda_mult, k=k)  # type: ignore[arg-type]
        return [d for d, _ in self._documents([hits[i] for i in picked])]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, filter: Filter = None, **kwargs: Any
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if not self._normalize:
            raise ValueError(
                "relevance scores need normalize=True (cosine similarities); "
                "inner products of unnormalised vectors have no fixed range"
            )
        # Quantised scores of a vector with itself can pass 1 by a rounding error.
        return lambda score: min(1.0, max(0.0, (1.0 + score) / 2.0))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: Optional[list[dict[str, Any]]] = None,
        *,
        ids: Optional[list[str]] = None,
        **kwargs: Any,
    ) -> PyragVectorStore:
        """A new store holding these texts; kwargs go to the constructor (path, dtype, ...)."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
