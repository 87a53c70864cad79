"""pyrag.integrations.langchain against the real langchain-core and langchain-tests:
the standard VectorStoreIntegrationTests suite (sync and async) on stores in a directory,
for every vector dtype, plus what the suite does not cover (filters, scores, retriever,
reopening, bad input)."""

import pytest
import torch

pytest.importorskip("langchain_core", reason="pip install pyrag[langchain]")
langchain_tests = pytest.importorskip("langchain_tests", reason="pip install langchain-tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

from pyrag.integrations.langchain import PyragVectorStore  # noqa: E402

DTYPES = ["float32", "bfloat16", "int8"]


class TestStandardSuite(VectorStoreIntegrationTests):
    """langchain-tests' own suite; every test runs once per dtype."""

    @pytest.fixture(params=DTYPES)
    def vectorstore(self, request, tmp_path):
        store = PyragVectorStore(self.get_embeddings(), path=tmp_path / "store", dtype=request.param)
        yield store
        store.index.close()


@pytest.fixture(params=DTYPES)
def store(request, tmp_path):
    s = PyragVectorStore(DeterministicFakeEmbedding(size=16), path=tmp_path / "kb", dtype=request.param)
    yield s
    s.index.close()


DOCS = [Document(page_content=f"passage number {i}", metadata={"n": i, "even": i % 2 == 0}) for i in range(20)]


def test_scores_are_cosines_and_relevance_in_unit_range(store):
    store.add_documents(DOCS, ids=[str(i) for i in range(20)])
    emb = store.embeddings
    q = torch.nn.functional.normalize(torch.tensor(emb.embed_query("passage number 3"), dtype=torch.float32), dim=0)
    docs = torch.nn.functional.normalize(
        torch.tensor(emb.embed_documents([d.page_content for d in DOCS]), dtype=torch.float32), dim=1
    )
    want = torch.topk(docs @ q, 5)
    got = store.similarity_search_with_score("passage number 3", k=5)
    assert got[0][0].id == "3"
    tol = 1e-5 if store.index.dtype == "float32" else 2e-2
    assert torch.allclose(torch.tensor([s for _, s in got]), want.values, atol=tol)
    rel = store.similarity_search_with_relevance_scores("passage number 3", k=5)
    assert all(0.0 <= r <= 1.0 for _, r in rel)
    assert rel[0][1] == pytest.approx(1.0, abs=1e-2)


def test_filter_dict_and_callable(store):
    store.add_documents(DOCS)
    even = store.similarity_search("passage number 3", k=4, filter={"even": True})
    assert len(even) == 4 and all(d.metadata["even"] for d in even)
    big = store.similarity_search("passage number 3", k=50, filter=lambda m: m["n"] >= 15)
    assert sorted(d.metadata["n"] for d in big) == [15, 16, 17, 18, 19]


def test_retriever(store):
    store.add_documents(DOCS, ids=[str(i) for i in range(20)])
    retriever = store.as_retriever(search_kwargs={"k": 3})
    docs = retriever.invoke("passage number 7")
    assert len(docs) == 3 and docs[0].id == "7"
    thresholded = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99, "k": 3}
    ).invoke("passage number 7")
    assert [d.id for d in thresholded] == ["7"]


class WordHashEmbeddings(Embeddings):
    """A bag of words: the sum of one seeded random vector per word (punctuation ignored),
    so texts with the same words have the same vector."""

    def _one(self, text):
        words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
        return sum(
            (torch.randn(32, generator=torch.Generator().manual_seed(sum(map(ord, w)) * 7919 + len(w))) for w in words),
            torch.zeros(32),
        ).tolist()

    def embed_documents(self, texts):
        return [self._one(t) for t in texts]

    def embed_query(self, text):
        return self._one(text)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mmr_prefers_diverse_documents(dtype):
    store = PyragVectorStore(WordHashEmbeddings(), dtype=dtype)
    docs = [
        Document(page_content="cats are small felines"),
        Document(page_content="Cats are small felines!"),
        Document(page_content="the stock market fell today"),
    ]
    store.add_documents(docs, ids=["a", "a2", "b"])
    near = store.similarity_search("cats are small felines", k=2)
    assert {d.id for d in near} == {"a", "a2"}
    mmr = store.max_marginal_relevance_search("cats are small felines", k=2, fetch_k=3, lambda_mult=0.1)
    assert mmr[0].id == "a" and mmr[1].id == "b"  # the near-duplicate is passed over
    assert [
        d.id
        for d in store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3, "lambda_mult": 0.1}).invoke(
            "cats are small felines"
        )
    ] == ["a", "b"]


async def test_async_retriever(store):
    await store.aadd_documents(DOCS, ids=[str(i) for i in range(20)])
    docs = await store.as_retriever(search_kwargs={"k": 2}).ainvoke("passage number 11")
    assert docs[0].id == "11"


def test_reopen_from_directory(tmp_path):
    emb = DeterministicFakeEmbedding(size=16)
    s = PyragVectorStore.from_documents(DOCS, emb, ids=[str(i) for i in range(20)], path=tmp_path / "kb", dtype="int8")
    before = s.similarity_search_with_score("passage number 5", k=3)
    s.index.close()
    again = PyragVectorStore.load(tmp_path / "kb", emb, mmap=True)
    assert again.similarity_search_with_score("passage number 5", k=3) == before
    again.delete(["5"])
    assert again.get_by_ids(["5", "6"]) == [
        Document(id="6", page_content="passage number 6", metadata={"n": 6, "even": True})
    ]
    again.index.close()


def test_delete_all_and_bad_input_leave_store_unchanged(store):
    store.add_texts(["a", "b"], [{"x": 1}, {"x": 2}], ids=["1", "2"])
    with pytest.raises(ValueError, match="2 metadatas for 1 texts|got 2 metadatas"):
        store.add_texts(["c"], [{"x": 3}, {"x": 4}])
    with pytest.raises(TypeError, match="JSON"):
        store.add_texts(["c"], [{"x": object()}])
    assert sorted(d.id for d in store.get_by_ids(["1", "2", "3"])) == ["1", "2"]
    store.delete()
    assert store.similarity_search("a", k=1) == []
