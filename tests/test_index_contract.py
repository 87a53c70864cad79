"""The index contract (pyrag.index.Index) on every index and dtype: get(ids) in O(n·d)
through the id -> row map, ties to the smaller id (user ids included, exact=True
included, every backend), snapshots that pin one state, versions that count mutations,
save / load that restore dtype, ids, version and options.

Data are integer-valued so that every score is exact and ties are real.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag.index import packed

DTYPES = ["float32", "bfloat16", "int8"]
D = 12


def integer_rows(n, d=D, seed=0, high=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-high, high + 1, (n, d), generator=g).float()


def as_scored(dtype, x):
    """The vectors as an index of `dtype` scores them (its get())."""
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).float()
    values, scales = pyrag.reference.quantize_int8(x)
    return values.float() * scales[:, None]


def brute_force(queries, rows, ids, k):
    """float32 top-k with ties to the smaller id: the contract's order."""
    scores = queries @ rows.T
    out_s = torch.full((queries.shape[0], k), float("-inf"))
    out_i = torch.full((queries.shape[0], k), -1, dtype=torch.int64)
    for b in range(queries.shape[0]):
        order = sorted(range(len(ids)), key=lambda j: (-float(scores[b, j]), int(ids[j])))[:k]
        out_s[b, : len(order)] = scores[b, order]
        out_i[b, : len(order)] = ids[order]
    return out_s, out_i


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_index_implements_the_contract(dtype):
    index = pyrag.DenseIndex(D, dtype)
    index.add(integer_rows(5))
    for obj in (index, index.snapshot(), pyrag.VersionedIndex(index), pyrag.VersionedIndex(index).snapshot()):
        assert isinstance(obj, pyrag.Index)
        assert (obj.dim, obj.dtype, len(obj)) == (D, dtype, 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("user_ids", [False, True])
def test_get_returns_the_vectors_as_scored_after_removals(dtype, user_ids):
    x = integer_rows(70, seed=1)
    index = pyrag.DenseIndex(D, dtype)
    ids = torch.randperm(70, generator=torch.Generator().manual_seed(2)) * 7 + 3 if user_ids else torch.arange(70)
    index.add(x[:40], ids[:40] if user_ids else None)
    index.add(x[40:], ids[40:] if user_ids else None)
    removed = ids[[0, 5, 41, 69]]
    index.remove(removed)
    keep = [i for i in range(70) if int(ids[i]) not in set(removed.tolist())]
    expected = as_scored(dtype, x)
    want = torch.tensor([int(ids[i]) for i in keep[::-1]])  # any order
    got = index.get(want)
    assert got.dtype == torch.float32 and got.shape == (len(keep), D)
    assert torch.equal(got, expected[keep[::-1]])
    # any shape; -1 is padding (zeros), never an error
    grid = torch.tensor([[int(ids[keep[0]]), -1], [-1, int(ids[keep[3]])]])
    out = index.get(grid)
    assert out.shape == (2, 2, D)
    assert torch.equal(out[0, 0], expected[keep[0]]) and torch.equal(out[1, 1], expected[keep[3]])
    assert not out[0, 1].any() and not out[1, 0].any()
    with pytest.raises(KeyError, match=str(int(removed[0]))):
        index.get([int(ids[keep[0]]), int(removed[0])])
    assert index.get([]).shape == (0, D)


def test_get_reads_only_the_rows_asked_for(monkeypatch):
    index = pyrag.DenseIndex(D, "int8")
    index.add(integer_rows(5000, seed=3))

    def no_full_read(*args, **kwargs):
        raise AssertionError("get() unpacked the corpus")

    monkeypatch.setattr(packed, "unpack_rows", no_full_read)
    monkeypatch.setattr(pyrag.DenseIndex, "vectors", no_full_read)
    assert index.get([4999, 0, 17]).shape == (3, D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_ties_go_to_the_smaller_user_id(dtype, exact, backend):
    # Every row scores the same: the k smallest ids win, whatever the insertion order.
    x = torch.ones(40, D)
    ids = torch.randperm(40, generator=torch.Generator().manual_seed(4)) + 1000
    index = pyrag.DenseIndex(D, dtype)
    index.add(x[:25], ids[:25])
    index.add(x[25:], ids[25:])
    scores, found = index.search(torch.ones(2, D), 10, exact=exact, backend=backend)
    assert found[0].tolist() == sorted(ids.tolist())[:10] == found[1].tolist()
    assert torch.equal(scores, torch.full((2, 10), float(D)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exact", [False, True])
def test_search_orders_by_score_then_id_on_integer_data(dtype, exact):
    x = integer_rows(300, seed=5, high=1)  # many exact ties
    ids = torch.randperm(300, generator=torch.Generator().manual_seed(6)) * 3
    index = pyrag.DenseIndex(D, dtype)
    index.add(x, ids)
    q = integer_rows(4, seed=7, high=1)
    scores, found = index.search(q, 17, exact=exact)
    # Rows and queries in {-1, 0, 1}: bf16 holds them exactly, and int8 scores them as
    # (127 * 127 * the integer dot) * (1/127)^2, so the ranking and its ties are exact.
    expect_s, expect_i = brute_force(q, x, ids, 17)
    assert torch.equal(found, expect_i)
    torch.testing.assert_close(scores, expect_s)


class _Model:
    """What a DenseIndex should hold: id -> float32 vector."""

    def __init__(self):
        self.rows: dict[int, torch.Tensor] = {}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_adds_and_removes_keep_the_id_map_exact(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    index = pyrag.DenseIndex(4, dtype)
    model = _Model()
    rng = random.Random(data.draw(st.integers(0, 1000)))
    for _ in range(data.draw(st.integers(1, 8))):
        if model.rows and rng.random() < 0.3:
            gone = rng.sample(sorted(model.rows), rng.randint(1, len(model.rows)))
            index.remove(gone)
            for i in gone:
                del model.rows[i]
        else:
            n = rng.randint(0, 20)
            x = torch.tensor([[rng.randint(-2, 2) for _ in range(4)] for _ in range(n)], dtype=torch.float32)
            if rng.random() < 0.5:
                new = rng.sample([i for i in range(200) if i not in model.rows], n)
                got = index.add(x.reshape(n, 4), new)
            else:
                got = index.add(x.reshape(n, 4))
            for i, row in zip(got.tolist(), x):
                model.rows[i] = row
    ids = sorted(model.rows)
    assert len(index) == len(ids) and sorted(index.ids.tolist()) == ids
    for i in ids[:5]:
        assert i in index
    assert 10_000 not in index and -5 not in index and 2**70 not in index
    if ids:
        vectors = torch.stack([model.rows[i] for i in ids])
        assert torch.equal(index.get(ids), as_scored(dtype, vectors))
        q = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
        expect_s, expect_i = brute_force(q, vectors, torch.tensor(ids), 6)
        scores, found = index.search(q, 6, exact=dtype != "float32")
        assert torch.equal(found, expect_i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_snapshots_keep_their_state_and_refuse_mutation(dtype):
    index = pyrag.DenseIndex(D, dtype)
    index.add(integer_rows(30, seed=8))
    snap = index.snapshot()
    version = index.version
    before = snap.search(torch.ones(1, D), 5)
    index.add(integer_rows(30, seed=9) * 3)
    index.remove([0, 1, 2])
    assert index.version == version + 2 and snap.version == version and len(snap) == 30
    after = snap.search(torch.ones(1, D), 5)
    assert torch.equal(before[1], after[1]) and torch.equal(
        snap.get([0]), as_scored(dtype, integer_rows(30, seed=8))[:1]
    )
    with pytest.raises(TypeError, match="read-only"):
        snap.add(integer_rows(1))
    with pytest.raises(TypeError, match="read-only"):
        snap.remove([5])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep_originals", [True, False])
def test_save_and_load_restore_dtype_ids_version_options_and_metadata(tmp_path, dtype, keep_originals):
    index = pyrag.DenseIndex(D, dtype, keep_originals=keep_originals)
    index.add(integer_rows(50, seed=10), torch.randperm(50) * 2 + 1)
    index.remove([int(index.ids[3])])
    index.save(tmp_path / "i.pyrag", metadata={"note": "hello"})
    loaded = pyrag.DenseIndex.load(tmp_path / "i.pyrag")
    assert (loaded.dtype, loaded.version, loaded.keep_originals) == (dtype, index.version, index.keep_originals)
    assert loaded.metadata == {"note": "hello"}
    assert torch.equal(loaded.ids, index.ids) and torch.equal(loaded.get(index.ids), index.get(index.ids))
    q = integer_rows(3, seed=11)
    assert all(torch.equal(a, b) for a, b in zip(loaded.search(q, 7), index.search(q, 7)))
    loaded.add(integer_rows(2, seed=12))  # a loaded index takes adds, ties still by id
    assert loaded.version == index.version + 1


def test_versioned_index_saves_and_loads_its_version(tmp_path):
    index = pyrag.DenseIndex(D, "int8")
    index.add(integer_rows(20))
    versioned = pyrag.VersionedIndex(index, version=4, step=40)
    versioned.save(tmp_path / "v.pyrag")
    loaded = pyrag.VersionedIndex.load(tmp_path / "v.pyrag")
    assert (loaded.version, loaded.step, loaded.dtype, len(loaded)) == (4, 40, "int8", 20)


def test_reserve_keeps_adds_from_reallocating():
    index = pyrag.DenseIndex(D, "int8")
    index.reserve(1000)
    index.add(integer_rows(10))
    buffer = index._snap.packed
    for s in range(10, 1000, 99):
        index.add(integer_rows(min(99, 1000 - s), seed=s))
    assert index._snap.packed.data_ptr() == buffer.data_ptr() and len(index) == 1000
    with pytest.raises(ValueError, match="capacity"):
        index.reserve(-1)


def test_a_snapshot_is_the_same_object_exactly_while_nothing_changes():
    index = pyrag.DenseIndex(D, "int8")
    index.add(integer_rows(10))
    first = index.snapshot()
    assert index.snapshot() is first and first.snapshot() is first
    index.add(integer_rows(1, seed=2))
    second = index.snapshot()
    assert second is not first and len(second) == 11 and len(first) == 10
