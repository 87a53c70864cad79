"""pyrag.TextIndex: passages + metadata in SQLite, vectors in a DenseIndex.

The oracle for search is a DenseIndex holding the same vectors under the same keys (the
TextIndex must only map ids, texts and metadata around it), and for float32 also torch
matmul + topk. Plumbing tests use a deterministic encoder (a seeded random unit vector
per text), so they are exact and quick; tests/test_text_encoders.py covers real models.
"""

import hashlib
import os
import sqlite3
import threading

import numpy as np
import pytest
import torch

import pyrag
from pyrag.text import Hit, Passage, StaleIndexError, TextIndex
from pyrag.text import store as text_store

DTYPES = ["float32", "bfloat16", "int8"]
DIM = 16


def vec(text: str, dim: int = DIM) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    return torch.nn.functional.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=0)


def hash_encoder(texts):
    return torch.stack([vec(t) for t in texts]) if texts else torch.empty(0, DIM)


TEXTS = [f"passage {i} about topic {i % 7}" for i in range(60)]
METAS = [{"n": i, "topic": i % 7, "even": i % 2 == 0, "tags": ["a", "b"][: i % 3]} for i in range(60)]
IDS = [f"doc-{i}" for i in range(60)]


def state(index: TextIndex):
    """Everything observable: ids, passages, and the hits of a few searches."""
    ids = index.ids
    return (
        ids,
        index.get(ids),
        index.generation,
        len(index),
        index.search(["passage 3 about topic 3", "passage 41 about topic 6"], 5),
    )


def files(path):
    return sorted(
        os.path.relpath(os.path.join(d, f), path)
        for d, _, fs in os.walk(path)
        for f in fs
        if not f.endswith(("-wal", "-shm"))
    )


@pytest.fixture(params=["memory", "directory"])
def where(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "idx"


# ---------------------------------------------------------------------- basics
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_search_get_roundtrip(dtype, where):
    index = TextIndex.from_texts(TEXTS, hash_encoder, METAS, IDS, dtype=dtype, path=where)
    assert len(index) == 60 and index.ids == IDS and index.dim == DIM and index.dtype == dtype
    assert "doc-7" in index and "nope" not in index and 7 not in index
    for i in (0, 17, 59):
        hits = index.search(TEXTS[i], k=3)
        assert isinstance(hits[0], Hit)
        assert (hits[0].id, hits[0].text, hits[0].metadata) == (IDS[i], TEXTS[i], METAS[i])
        assert hits[0].score == pytest.approx(1.0, abs=1e-5 if dtype == "float32" else 2e-2)
        assert hits[0].score >= hits[1].score >= hits[2].score
    assert index.get(["doc-3", "doc-1"]) == [Passage("doc-3", TEXTS[3], METAS[3]), Passage("doc-1", TEXTS[1], METAS[1])]
    index.close()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 5, 60, 100])
def test_search_matches_a_dense_index_of_the_same_vectors(dtype, k):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, DIM, generator=g)
    q = torch.randn(7, DIM, generator=g)
    index = TextIndex(None, dtype=dtype)
    index.add_texts(TEXTS[:30], METAS[:30], IDS[:30], vectors=x[:30])
    index.add_texts(TEXTS[30:], METAS[30:], IDS[30:], vectors=x[30:].numpy())  # numpy in
    index.delete(["doc-4", "doc-33"])
    ref = pyrag.DenseIndex(DIM, dtype, keep_originals=False)
    keep = [i for i in range(60) if i not in (4, 33)]
    ref.add(x[keep], torch.tensor(keep))
    want_s, want_i = ref.search(q, min(k, 58))
    got = index.search(q, k)
    assert len(got) == 7
    for b in range(7):
        assert [h.id for h in got[b]] == [IDS[i] for i in want_i[b].tolist()]
        assert [h.score for h in got[b]] == want_s[b].tolist()
        assert all(h.text == TEXTS[int(h.id[4:])] for h in got[b])
    if dtype == "float32":
        ts, ti = torch.topk(q @ x[keep].T, min(k, 58), dim=1)
        assert torch.allclose(torch.tensor([[h.score for h in hs] for hs in got]), ts, atol=1e-5)


def test_query_forms():
    index = TextIndex.from_texts(TEXTS, hash_encoder, METAS, IDS)
    one = index.search(TEXTS[5], 2)
    assert index.search(vec(TEXTS[5]), 2) == one  # [dim] tensor
    assert index.search(vec(TEXTS[5]).numpy().astype(np.float64), 2) == one  # float64 numpy
    assert index.search(vec(TEXTS[5]).tolist(), 2) == one  # list of floats
    assert index.search([TEXTS[5], TEXTS[9]], 2) == [one, index.search(TEXTS[9], 2)]
    assert index.search(torch.stack([vec(TEXTS[5])]), 2) == [one]
    assert index.search([], 2) == []
    with pytest.raises(ValueError, match="dim 3 but the index has dim 16"):
        index.search(torch.ones(3), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        index.search(torch.full((DIM,), float("nan")), 2)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        index.search("x", 0)
    with pytest.raises(TypeError, match="filter must be a dict or a callable"):
        index.search("x", 2, filter=["topic"])


def test_empty_index():
    index = TextIndex(hash_encoder)
    assert len(index) == 0 and index.dim is None and index.ids == []
    assert index.search("anything", 3) == []
    assert index.search(["a", "b"], 3) == [[], []]
    assert index.search(torch.ones(DIM), 3) == []
    index.add_texts(["x"], ids=["x"])
    index.delete(["x"])
    assert index.search("x", 3) == [] and index.dim == DIM


# ---------------------------------------------------------------------- filters
@pytest.mark.parametrize("dtype", DTYPES)
def test_filters_match_brute_force(dtype, where):
    index = TextIndex.from_texts(TEXTS, hash_encoder, METAS, IDS, dtype=dtype, path=where)
    allhits = index.search("passage 12 about topic 5", 60)
    for flt, pred in [
        ({"topic": 3}, lambda m: m["topic"] == 3),
        ({"topic": 3, "even": True}, lambda m: m["topic"] == 3 and m["even"]),
        ({"tags": ["a"]}, lambda m: m["tags"] == ["a"]),
        ({"missing": 1}, lambda m: False),
        (lambda m: m["n"] > 55, lambda m: m["n"] > 55),
    ]:
        want = [h for h in allhits if pred(h.metadata)]
        for k in (1, 3, 50):
            assert index.search("passage 12 about topic 5", k, filter=flt) == want[:k]
        assert index.find(flt) == [i for i, m in zip(IDS, METAS) if pred(m)]
    index.close()


# ---------------------------------------------------------------------- mutation
def test_delete_and_upsert(where):
    index = TextIndex.from_texts(TEXTS[:10], hash_encoder, METAS[:10], IDS[:10], path=where)
    assert index.delete(["doc-2", "doc-5"]) == 2
    assert "doc-2" not in index and len(index) == 8
    assert all(h.id not in ("doc-2", "doc-5") for h in index.search(TEXTS[2], 10))
    assert index.delete(["doc-2", "doc-3"], missing="ignore") == 1
    assert index.delete(["gone"], missing="ignore") == 0
    gen = index.generation
    index.upsert_texts(["replaced text", "new text"], [{"v": 2}, {"v": 3}], ["doc-4", "doc-new"])
    assert index.generation == gen + 1
    assert index.get(["doc-4"]) == [Passage("doc-4", "replaced text", {"v": 2})]
    assert index.search("replaced text", 1)[0].id == "doc-4"
    assert all(h.id != "doc-4" for h in index.search(TEXTS[4], 10) if h.text == TEXTS[4])
    assert len(index) == 8 and index.ids[-2:] == ["doc-4", "doc-new"]
    generated = index.add_texts(["no id given"])
    assert len(generated) == 1 and len(generated[0]) == 36 and generated[0] in index
    index.close()


BAD_CALLS = {
    "wrong dim vectors": (lambda ix: ix.add_texts(["a"], vectors=torch.ones(1, 5)), ValueError, "dim 5 but"),
    "vectors rows": (lambda ix: ix.add_texts(["a", "b"], vectors=torch.ones(3, DIM)), ValueError, r"shape \(3, 16\)"),
    "NaN vector": (
        lambda ix: ix.add_texts(["a"], vectors=torch.full((1, DIM), float("nan"))),
        ValueError,
        "not finite",
    ),
    "inf vector": (
        lambda ix: ix.add_texts(["a"], vectors=torch.full((1, DIM), float("inf"))),
        ValueError,
        "not finite",
    ),
    "int vectors": (lambda ix: ix.add_texts(["a"], vectors=torch.ones(1, DIM, dtype=torch.int64)), TypeError, "floats"),
    "metadatas length": (lambda ix: ix.add_texts(["a"], [{}, {}]), ValueError, "2 metadatas for 1 texts"),
    "ids length": (lambda ix: ix.add_texts(["a"], ids=["x", "y"]), ValueError, "2 ids for 1 texts"),
    "duplicate ids": (lambda ix: ix.add_texts(["a", "b"], ids=["x", "x"]), ValueError, "duplicates"),
    "existing id": (lambda ix: ix.add_texts(["a", "b"], ids=["new", "doc-3"]), ValueError, "already in the index"),
    "empty id": (lambda ix: ix.add_texts(["a"], ids=[""]), TypeError, "non-empty strings"),
    "int id": (lambda ix: ix.add_texts(["a"], ids=[3]), TypeError, "non-empty strings"),
    "one string": (lambda ix: ix.add_texts("abc"), TypeError, "not one string"),
    "non-str text": (lambda ix: ix.add_texts(["a", 3]), TypeError, r"texts\[1\] is a int"),
    "metadata not a dict": (lambda ix: ix.add_texts(["a"], [["x"]]), TypeError, "not a dict"),
    "metadata not JSON": (lambda ix: ix.add_texts(["a"], [{"x": object()}]), TypeError, "JSON"),
    "metadata NaN": (lambda ix: ix.add_texts(["a"], [{"x": float("nan")}]), TypeError, "JSON"),
    "metadata key": (lambda ix: ix.add_texts(["a"], [{1: "x"}]), TypeError, "non-string keys"),
    "encoder dim": (
        lambda ix: _with_encoder(ix, lambda t: torch.ones(len(t), 8)),
        ValueError,
        "gives 8-dim vectors but the index has dim 16",
    ),
    "encoder NaN": (
        lambda ix: _with_encoder(ix, lambda t: torch.full((len(t), DIM), float("nan"))),
        ValueError,
        "non-finite vector",
    ),
    "encoder rows": (
        lambda ix: _with_encoder(ix, lambda t: torch.ones(len(t) + 1, DIM)),
        ValueError,
        r"returned shape \(2, 16\) for 1 texts",
    ),
    "encoder output": (lambda ix: _with_encoder(ix, lambda t: "not vectors"), TypeError, "returned str"),
    "delete unknown": (lambda ix: ix.delete(["doc-1", "nope"]), KeyError, "nope"),
    "delete duplicates": (lambda ix: ix.delete(["doc-1", "doc-1"]), ValueError, "duplicates"),
    "delete one string": (lambda ix: ix.delete("doc-1"), TypeError, "not one string"),
    "get unknown": (lambda ix: ix.get(["nope"]), KeyError, "nope"),
    "missing mode": (lambda ix: ix.delete(["doc-1"], missing="skip"), ValueError, "'raise' or 'ignore'"),
}


def _with_encoder(index, fn):
    from pyrag.text.encoders import CallableEncoder

    index._encoder = CallableEncoder(fn)  # a different encoder on the same index
    try:
        index.add_texts(["a"])
    finally:
        index._encoder = CallableEncoder(hash_encoder)


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_and_changes_nothing(name, where):
    call, exc, match = BAD_CALLS[name]
    index = TextIndex.from_texts(TEXTS[:10], hash_encoder, METAS[:10], IDS[:10], path=where)
    before = state(index)
    on_disk = files(where) if where else None
    with pytest.raises(exc, match=match):
        call(index)
    assert state(index) == before
    if where:
        assert files(where) == on_disk
        index.close()
        again = TextIndex.load(where, encoder=hash_encoder)
        assert state(again) == before
        again.close()


def test_a_failed_commit_rolls_back(tmp_path, monkeypatch):
    """A failure after the SQL changes and the in-memory change (here: the disk is full
    when the new vector file is written) leaves both stores at the previous generation."""
    index = TextIndex.from_texts(TEXTS[:10], hash_encoder, METAS[:10], IDS[:10], path=tmp_path / "idx")
    before, on_disk = state(index), files(tmp_path / "idx")

    def disk_full(self, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyrag.DenseIndex, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        index.add_texts(["one more"], ids=["x"])
    with pytest.raises(OSError, match="No space left"):
        index.delete(["doc-1"])
    with pytest.raises(OSError, match="No space left"):
        index.upsert_texts(["again"], ids=["doc-2"])
    monkeypatch.undo()
    assert state(index) == before and files(tmp_path / "idx") == on_disk
    index.add_texts(["one more"], ids=["x"])  # and it still works
    assert index.search("one more", 1)[0].id == "x"
    index.close()
    assert TextIndex.load(tmp_path / "idx", encoder=hash_encoder).search("one more", 1)[0].id == "x"


def test_no_encoder():
    index = TextIndex(None)
    with pytest.raises(ValueError, match="no encoder: pass vectors="):
        index.add_texts(["a"])
    index.add_texts(["a"], vectors=vec("a")[None])
    with pytest.raises(ValueError, match="no encoder: search by vector"):
        index.search("a", 1)
    assert index.search(vec("a"), 1)[0].text == "a"


def test_constructor_checks(tmp_path):
    with pytest.raises(TypeError, match="unsupported dtype 'float16'"):
        TextIndex(hash_encoder, dtype="float16")
    with pytest.raises(ValueError, match="dim must be a positive int"):
        TextIndex(hash_encoder, dim=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        TextIndex(hash_encoder, batch_size=0)
    with pytest.raises(TypeError, match="cannot use a int as an encoder"):
        TextIndex(3)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        TextIndex(hash_encoder, path=tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "mine"


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mmap", [False, True])
def test_directory_roundtrip(dtype, mmap, tmp_path):
    path = tmp_path / "idx"
    index = TextIndex.from_texts(TEXTS[:40], hash_encoder, METAS[:40], IDS[:40], dtype=dtype, path=path)
    index.delete(["doc-3"])
    before = state(index)
    index.close()
    assert sorted(os.listdir(path / "vectors")) == ["000000000002.pyrag"]
    again = TextIndex.load(path, encoder=hash_encoder, mmap=mmap)
    assert state(again) == before and again.dtype == dtype
    again.add_texts(TEXTS[40:], METAS[40:], IDS[40:])
    after = state(again)
    assert sorted(os.listdir(path / "vectors")) == ["000000000003.pyrag"]
    again.close()
    assert state(TextIndex.load(path, encoder=hash_encoder, mmap=mmap)) == after


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_a_copy(dtype, tmp_path):
    index = TextIndex.from_texts(TEXTS, hash_encoder, METAS, IDS, dtype=dtype)
    index.delete(["doc-8"])
    index.save(tmp_path / "copy")
    copy = TextIndex.load(tmp_path / "copy", encoder=hash_encoder)
    assert state(copy) == state(index)
    copy.add_texts(["only in the copy"], ids=["c"])
    assert "c" not in index
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temp dir left
    TextIndex(hash_encoder).save(tmp_path / "empty")
    assert len(TextIndex.load(tmp_path / "empty", encoder=hash_encoder)) == 0


def test_encoder_is_recorded_and_checked(tmp_path):
    from pyrag.text.encoders import CallableEncoder

    enc = CallableEncoder(hash_encoder, name="my-hash", dim=DIM)
    TextIndex.from_texts(TEXTS[:5], enc, path=tmp_path / "idx").close()
    with TextIndex.load(tmp_path / "idx", encoder=None) as ix:
        assert ix.encoder_name == "my-hash" and ix.encoder is None and ix.info()["encoder"] == "my-hash"
    with pytest.raises(ValueError, match="encoder gives 8-dim vectors but the index .* has dim 16"):
        TextIndex.load(tmp_path / "idx", encoder=CallableEncoder(hash_encoder, dim=8))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_keep_originals_exact_search_equals_float32(dtype, tmp_path):
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(200, DIM, generator=g), torch.randn(5, DIM, generator=g)
    ids = [str(i) for i in range(200)]
    exact = TextIndex(None, dtype=dtype, keep_originals=True, path=tmp_path / "q")
    exact.add_texts(ids, ids=ids, vectors=x)
    f32 = TextIndex(None)
    f32.add_texts(ids, ids=ids, vectors=x)
    assert exact.search(q, 10, exact=True) == f32.search(q, 10)
    exact.close()
    assert TextIndex.load(tmp_path / "q", encoder=None).search(q, 10, exact=True) == f32.search(q, 10)
    with pytest.raises(ValueError, match="keep_originals"):
        TextIndex.from_texts(TEXTS[:3], hash_encoder, dtype=dtype).search("x", 1, exact=True)


# ---------------------------------------------------------------------- foreign / corrupt stores
def _store(tmp_path):
    path = tmp_path / "idx"
    TextIndex.from_texts(TEXTS[:10], hash_encoder, METAS[:10], IDS[:10], path=path).close()
    return path


def _flip_byte(p, where=-100):
    data = bytearray(p.read_bytes())
    data[where] ^= 0xFF
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "empty directory": (lambda p: [f.unlink() for f in p.iterdir() if f.is_file()], "no passages.sqlite"),
    "not SQLite": (lambda p: (p / "passages.sqlite").write_bytes(b"hello" * 100), "not a readable SQLite database"),
    "foreign SQLite": (lambda p: _foreign_sqlite(p / "passages.sqlite"), "not a pyrag text index"),
    "other format version": (
        lambda p: _sql(p, "UPDATE meta SET value='99' WHERE key='format_version'"),
        "unsupported text index format version '99'",
    ),
    "bad dtype": (lambda p: _sql(p, "UPDATE meta SET value='float8' WHERE key='dtype'"), "metadata is corrupt"),
    "vectors corrupted": (lambda p: _flip_byte(p / "vectors" / "000000000001.pyrag"), "vectors of generation 1"),
    "vectors truncated": (lambda p: (p / "vectors" / "000000000001.pyrag").write_bytes(b"\0" * 16), "generation 1"),
    "vectors missing": (
        lambda p: (p / "vectors" / "000000000001.pyrag").unlink(),
        "vectors of generation 1 are missing",
    ),
    "no vectors folder": (
        lambda p: [f.unlink() for f in (p / "vectors").iterdir()] and (p / "vectors").rmdir(),
        "no vectors/ folder",
    ),
    "a row lost": (lambda p: _sql(p, "DELETE FROM passages WHERE id='doc-3'"), "inconsistent"),
    "vectors of another store": (lambda p: _swap_vectors(p), "inconsistent"),
}


def _sql(path, statement):
    conn = sqlite3.connect(path / "passages.sqlite")
    conn.execute(statement)
    conn.commit()
    conn.close()


def _foreign_sqlite(p):
    p.unlink()
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()


def _swap_vectors(p):
    other = pyrag.DenseIndex(DIM)
    other.add(torch.randn(10, DIM), torch.arange(100, 110))
    other.save(p / "vectors" / "000000000001.pyrag")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_foreign_or_corrupt_directory(name, tmp_path):
    corrupt, match = CORRUPTIONS[name]
    path = _store(tmp_path)
    corrupt(path)
    with pytest.raises(pyrag.IndexFormatError, match=match):
        TextIndex.load(path, encoder=hash_encoder)


def test_load_missing_or_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no text index"):
        TextIndex.load(tmp_path / "nothing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(pyrag.IndexFormatError, match="not a directory"):
        TextIndex.load(tmp_path / "f")
    pyrag.DenseIndex(4).save(tmp_path / "dense.pyrag")  # a DenseIndex file is not a text index
    with pytest.raises(pyrag.IndexFormatError):
        TextIndex.load(tmp_path / "dense.pyrag")


def test_load_removes_what_a_dead_writer_left(tmp_path):
    """The files a writer killed mid-commit can leave: its uncommitted next generation,
    a temp file of DenseIndex.save, and a superseded generation not yet unlinked."""
    path = _store(tmp_path)
    with TextIndex.load(path, encoder=hash_encoder) as ix:
        before = state(ix)
    vectors = path / "vectors"
    (vectors / "000000000002.pyrag").write_bytes(b"uncommitted")
    (vectors / ".tmp-abc.safetensors").write_bytes(b"half written")
    (vectors / "000000000000.pyrag").write_bytes(b"old")
    with TextIndex.load(path, encoder=hash_encoder) as ix:
        assert state(ix) == before
    assert os.listdir(vectors) == ["000000000001.pyrag"]


# ---------------------------------------------------------------------- several users
def test_two_processes_worth_of_handles(tmp_path):
    """Two TextIndex objects on one store (as two processes would hold): a reader sees
    the other's commits on its next search; a writer that missed them is refused."""
    path = _store(tmp_path)
    a = TextIndex.load(path, encoder=hash_encoder)
    b = TextIndex.load(path, encoder=hash_encoder)
    a.add_texts(["added by a"], ids=["a1"])
    assert b.search("added by a", 1)[0].id == "a1"  # b reloaded generation 2
    b.delete(["a1"])  # b is current: allowed
    before = state(b)
    with pytest.raises(StaleIndexError, match="changed by another process"):
        a.add_texts(["stale"], ids=["s"])  # a still holds generation 2
    assert state(b) == before and "s" not in b
    assert a.search("added by a", 1)[0].id != "a1"  # a catches up on read
    a.add_texts(["fresh"], ids=["f"])
    assert b.get(["f"])[0].text == "fresh"
    a.close()
    b.close()


def test_threads_share_one_index(tmp_path):
    index = TextIndex.from_texts(TEXTS[:10], hash_encoder, METAS[:10], IDS[:10], path=tmp_path / "idx")
    errors = []

    def writer(t):
        try:
            for i in range(5):
                index.add_texts([f"t{t} text {i}"], ids=[f"t{t}-{i}"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        try:
            for _ in range(20):
                for hits in index.search(TEXTS[:3], 3):
                    assert len(hits) == 3
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 25 and index.generation == 16
    index.close()
    assert len(TextIndex.load(tmp_path / "idx", encoder=hash_encoder)) == 25


def test_info_and_repr(tmp_path):
    index = TextIndex.from_texts(TEXTS, hash_encoder, METAS, IDS, dtype="int8", path=tmp_path / "idx")
    info = index.info()
    assert info["passages"] == 60 and info["dtype"] == "int8" and info["generation"] == 1
    vec_bytes = info["files"]["vectors/000000000001.pyrag"]
    assert vec_bytes == (tmp_path / "idx" / "vectors" / "000000000001.pyrag").stat().st_size
    assert "TextIndex(size=60, dim=16, dtype='int8'" in repr(index)
    assert text_store.FORMAT == "pyrag.TextIndex"
