"""LlamaIndex: a pyrag TextIndex as a `llama_index.core` vector store.

    from llama_index.core import StorageContext, VectorStoreIndex
    from pyrag.integrations.llamaindex import PyragVectorStore

    store = PyragVectorStore(path="kb.idx", dtype="int8")
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model,
                                            storage_context=StorageContext.from_defaults(vector_store=store))
    nodes = index.as_retriever(similarity_top_k=4).retrieve("how do I ...?")
    store = PyragVectorStore.load("kb.idx")                  # later: the nodes are all in there

Needs ``pip install pyrag[llamaindex]`` (llama-index-core). LlamaIndex computes the
embeddings and hands them over with the nodes; the store keeps each node's text and
metadata in the TextIndex's SQLite store (the node serialised as LlamaIndex's vector
stores do, so that query() gives back whole nodes) and its vector in the pyrag index.
add() replaces nodes whose id is already stored. query() ranks by inner product (cosine
for unit-length embeddings, as most embedding models give), and supports metadata
filters (every FilterOperator, AND / OR / NOT, nested), doc_ids and node_ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("pyrag.integrations.llamaindex needs llama-index-core: pip install pyrag[llamaindex]") from e

from pyrag.text import TextIndex
from pyrag.text.store import Metadata

__all__ = ["PyragVectorStore", "metadata_filter"]

_MISSING = object()


def _compare(op: FilterOperator, have: Any, want: Any) -> bool:
    if op == FilterOperator.IS_EMPTY:
        return have is _MISSING or have is None or have == "" or have == []
    if have is _MISSING:
        return op in (FilterOperator.NE, FilterOperator.NIN)
    try:
        if op == FilterOperator.EQ:
            return have == want
        if op == FilterOperator.NE:
            return have != want
        if op == FilterOperator.GT:
            return have > want
        if op == FilterOperator.GTE:
            return have >= want
        if op == FilterOperator.LT:
            return have < want
        if op == FilterOperator.LTE:
            return have <= want
    except TypeError:  # e.g. a str compared with an int: no match
        return False
    if op == FilterOperator.IN:
        return have in want
    if op == FilterOperator.NIN:
        return have not in want
    if op == FilterOperator.CONTAINS:
        return isinstance(have, list) and want in have
    if op == FilterOperator.ANY:
        return isinstance(have, list) and any(w in have for w in want)
    if op == FilterOperator.ALL:
        return isinstance(have, list) and all(w in have for w in want)
    if op == FilterOperator.TEXT_MATCH:
        return isinstance(have, str) and str(want) in have
    if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
        return isinstance(have, str) and str(want).lower() in have.lower()
    raise ValueError(f"unsupported filter operator {op!r}")


def _leaf(f: MetadataFilter) -> Callable[[Metadata], bool]:
    return lambda meta: _compare(FilterOperator(f.operator), meta.get(f.key, _MISSING), f.value)


def metadata_filter(filters: MetadataFilters) -> Callable[[Metadata], bool]:
    """A predicate metadata -> bool for LlamaIndex MetadataFilters."""
    parts: list[Callable[[Metadata], bool]] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(metadata_filter(f))
        elif isinstance(f, MetadataFilter):
            parts.append(_leaf(f))
        else:
            raise TypeError(f"unsupported filter {f!r}")
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return lambda meta: all(p(meta) for p in parts)
    if condition == FilterCondition.OR:
        return lambda meta: any(p(meta) for p in parts)
    if condition == FilterCondition.NOT:
        return lambda meta: not any(p(meta) for p in parts)
    raise ValueError(f"unsupported filter condition {condition!r}")


class PyragVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a pyrag.TextIndex.

    Args:
        path: a directory to keep the store in (created); None keeps it in memory.
        dtype: vector storage, "float32", "bfloat16" or "int8".
        keep_originals: bfloat16 / int8: keep float32 copies for exact ranking.
        index: an existing TextIndex to wrap instead (path / dtype are then ignored).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    _index: TextIndex = PrivateAttr()

    def __init__(
        self,
        path: Optional[str | os.PathLike[str]] = None,
        *,
        dtype: str = "float32",
        keep_originals: bool = False,
        index: Optional[TextIndex] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._index = (
            index
            if index is not None
            else TextIndex(None, dtype=dtype, path=path, keep_originals=keep_originals, progress=False)
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> PyragVectorStore:
        """Reopens a store kept in a directory."""
        return cls(index=TextIndex.load(path, encoder=None, mmap=mmap, progress=False))

    @classmethod
    def class_name(cls) -> str:
        return "PyragVectorStore"

    @property
    def client(self) -> TextIndex:
        """The TextIndex underneath."""
        return self._index

    # ------------------------------------------------------------------ writing
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Adds nodes with their embeddings (replacing nodes with the same id)."""
        nodes = list(nodes)
        if not nodes:
            return []
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            raise ValueError(
                f"nodes have no embedding: {missing[:5]}; embed them first "
                f"(VectorStoreIndex does so with its embed_model)"
            )
        texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        metadatas = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes]
        return self._index.upsert_texts(
            texts, metadatas, [n.node_id for n in nodes], vectors=[n.get_embedding() for n in nodes]
        )

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Deletes every node of the source document `ref_doc_id`."""
        ids = self._index.find({"ref_doc_id": ref_doc_id})
        if ids:
            self._index.delete(ids, missing="ignore")

    def delete_nodes(
        self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None, **delete_kwargs: Any
    ) -> None:
        """Deletes the nodes with these ids and / or matching these filters."""
        ids = self._select(node_ids, filters)
        if ids:
            self._index.delete(ids, missing="ignore")

    def clear(self) -> None:
        ids = self._index.ids
        if ids:
            self._index.delete(ids)

    # ------------------------------------------------------------------ reading
    def _select(self, node_ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> list[str]:
        if filters is None:
            return list(dict.fromkeys(node_ids or []))
        ids = self._index.find(metadata_filter(filters))
        if node_ids is None:
            return ids
        wanted = set(node_ids)
        return [i for i in ids if i in wanted]

    def get_nodes(
        self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None
    ) -> list[BaseNode]:
        ids = self._select(node_ids, filters) if (node_ids is not None or filters is not None) else self._index.ids
        return [metadata_dict_to_node(p.metadata, text=p.text) for p in self._index.get(ids, missing="ignore")]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The similarity_top_k nodes nearest to query.query_embedding (inner product),
        among those passing query.filters, query.doc_ids and query.node_ids (each list
        restricts only when it is not empty)."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ValueError(f"PyragVectorStore answers dense queries (mode DEFAULT), not {query.mode.value!r}")
        if query.query_embedding is None:
            raise ValueError("query_embedding is required: this store ranks by vectors")
        preds: list[Callable[[Metadata], bool]] = []
        if query.filters is not None:
            preds.append(metadata_filter(query.filters))
        # An empty list restricts nothing: VectorStoreIndex.as_retriever passes node_ids=[]
        # for stores that keep the text (it holds no node list of its own then).
        if query.doc_ids:
            docs = set(query.doc_ids)
            preds.append(lambda m: m.get("ref_doc_id") in docs)
        if query.node_ids:
            nodes = set(query.node_ids)
            preds.append(lambda m: json.loads(m["_node_content"]).get("id_") in nodes)
        match = (lambda m: all(p(m) for p in preds)) if preds else None
        hits = self._index.search(list(map(float, query.query_embedding)), query.similarity_top_k, filter=match)
        return VectorStoreQueryResult(
            nodes=[metadata_dict_to_node(h.metadata, text=h.text) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
        )
