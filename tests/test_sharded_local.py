"""The single-process pieces of pyrag.distributed: the candidate merge against a sort of
every candidate, the row dealing and manifest of a save, DenseIndex.add_from and
contains (what re-sharding and routing stand on), and a ShardedIndex on a group of one
process (save, then load from several shard files)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrag
from pyrag.distributed import CollectiveError, ShardedIndex, manifest
from pyrag.distributed.merge import merge_topk

DTYPES = ("float32", "bfloat16", "int8")


# ----------------------------------------------------------------------------- merge
def reference_merge(scores, ids, k):
    """The k best (score, id) pairs of each row by sorting Python tuples."""
    out_s, out_i = [], []
    for s_row, i_row in zip(scores.tolist(), ids.tolist()):
        pairs = sorted(zip(s_row, i_row), key=lambda p: (-p[0], p[1]))[:k]
        pairs += [(-float("inf"), -1)] * (k - len(pairs))
        out_s.append([p[0] for p in pairs])
        out_i.append([p[1] for p in pairs])
    return torch.tensor(out_s, dtype=torch.float32).reshape(len(out_s), k), torch.tensor(out_i).reshape(len(out_i), k)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(0, 4),
    m=st.integers(0, 12),
    k=st.integers(1, 15),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_merge_matches_a_sort_of_every_candidate(b, m, k, levels, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (b, m), generator=g).float()  # few levels: many ties
    ids = torch.stack([torch.randperm(100, generator=g)[:m] for _ in range(b)]) if b else torch.empty(0, m).long()
    got = merge_topk(scores, ids.reshape(b, m), k)
    want = reference_merge(scores, ids.reshape(b, m), k)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_merge_keeps_negative_zero_and_infinite_scores_as_given():
    scores = torch.tensor([[0.0, -0.0, -torch.inf, 1e38]])
    ids = torch.tensor([[5, 2, 9, 7]])
    s, i = merge_topk(scores, ids, 5)
    assert i.tolist() == [[7, 2, 5, 9, -1]]
    assert s[0, 1].item() == 0.0 and torch.signbit(s[0, 1]) and not torch.signbit(s[0, 2])


# ----------------------------------------------------------------------------- dealing, manifest
@pytest.mark.parametrize("rows", [[0], [5], [3, 0, 7], [16, 16, 16, 1], [0, 0]])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_deal_gives_every_row_to_one_rank_evenly(rows, world):
    seen = []
    for rank in range(world):
        parts = manifest.deal(rows, world, rank)
        held = sum(b - a for _, a, b in parts)
        assert held in (sum(rows) // world, -(-sum(rows) // world))
        for f, a, b in parts:
            assert 0 <= a < b <= rows[f]
            seen += [(f, r) for r in range(a, b)]
    assert seen == [(f, r) for f, n in enumerate(rows) for r in range(n)]


def manifest_body(**changes):
    body = {
        "format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "dim": 4, "dtype": "int8",
        "keep_originals": True, "world_size": 1, "count": 3, "version": 2, "step": 0, "token": 5,
        "metadata": {}, "shards": [{"file": manifest.shard_file(0, 1, 5), "rows": 3, "bytes": 10, "checksum": "c"}],
    }  # fmt: skip
    body.update(changes)
    return body


def test_manifest_round_trip_and_corruption(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved ShardedIndex"):
        manifest.read(str(tmp_path))
    manifest.write(str(tmp_path), manifest_body())
    assert manifest.read(str(tmp_path)) == manifest_body()
    path = tmp_path / manifest.MANIFEST
    doc = json.loads(path.read_text())
    doc["count"] = 4
    path.write_text(json.dumps(doc))
    with pytest.raises(pyrag.IndexFormatError, match="checksum mismatch"):
        manifest.read(str(tmp_path))
    for bad in (manifest_body(count=4), manifest_body(dtype="float64"), manifest_body(world_size=2)):
        manifest.write(str(tmp_path), bad)
        with pytest.raises(pyrag.IndexFormatError, match="out of range"):
            manifest.read(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(pyrag.IndexFormatError, match="not a ShardedIndex manifest"):
        manifest.read(str(tmp_path))


# ----------------------------------------------------------------------------- DenseIndex pieces
def rows_and_ids(n, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randperm(10 * n, generator=g)[:n] + 100


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep_originals", [True, False])
def test_add_from_copies_rows_as_stored(dtype, keep_originals):
    x, ids = rows_and_ids(70, 19)
    source = pyrag.DenseIndex(19, dtype, keep_originals=keep_originals)
    source.add(x, ids)
    pick = ids[torch.randperm(70, generator=torch.Generator().manual_seed(1))[:33]]
    first, second = pick[:20], pick[20:]
    target = pyrag.DenseIndex(19, dtype, keep_originals=keep_originals)
    assert torch.equal(torch.sort(target.add_from(source, first)).values, torch.sort(first).values)
    target.add_from(source, second)
    assert target.version == 2 and len(target) == 33
    # Exactly the source's rows: as a subset of the source, they score and rank the same.
    reference = pyrag.DenseIndex(19, dtype, keep_originals=keep_originals)
    reference.add(x[torch.isin(ids, pick)], ids[torch.isin(ids, pick)])
    q = torch.randn(5, 19, generator=torch.Generator().manual_seed(2))
    for exact in (False, True) if keep_originals or dtype == "float32" else (False,):
        for k in (1, 7, 40):
            s1, i1 = target.search(q, k, exact=exact)
            s2, i2 = reference.search(q, k, exact=exact)
            assert torch.equal(i1, i2) and torch.equal(s1, s2)
    assert torch.equal(target.get(pick), source.get(pick))
    everything = pyrag.DenseIndex(19, dtype, keep_originals=keep_originals)
    everything.add_from(source)
    assert torch.equal(everything.ids, source.ids) and torch.equal(everything.vectors(), source.vectors())


def test_add_from_rejects_without_changing_anything():
    x, ids = rows_and_ids(10, 8)
    source = pyrag.DenseIndex(8, "int8")
    source.add(x, ids)
    target = pyrag.DenseIndex(8, "int8")
    target.add_from(source, ids[:3])
    with pytest.raises(ValueError, match="already in the index"):
        target.add_from(source, ids[2:5])
    with pytest.raises(KeyError, match="ids not in the index"):
        target.add_from(source, [int(ids[5]), 7])
    with pytest.raises(ValueError, match="duplicates"):
        target.add_from(source, [int(ids[6])] * 2)
    with pytest.raises(ValueError, match="dtype"):
        target.add_from(pyrag.DenseIndex(8, "bfloat16"))
    with pytest.raises(ValueError, match="originals"):
        target.add_from(pyrag.DenseIndex(8, "int8", keep_originals=False))
    with pytest.raises(TypeError, match="DenseIndex"):
        target.add_from(x)
    with pytest.raises(TypeError, match="read-only"):
        target.snapshot().add_from(source)
    assert len(target) == 3 and target.version == 1


def test_contains_answers_for_many_ids_at_once():
    x, ids = rows_and_ids(40, 4)
    index = pyrag.DenseIndex(4)
    assert index.contains([1, 2]).tolist() == [False, False]
    index.add(x, ids)
    ask = torch.stack([ids[:3], torch.tensor([-1, 0, 10**18])])
    assert index.contains(ask).tolist() == [[True] * 3, [False] * 3]
    assert index.contains(np.array([int(ids[5])])).tolist() == [True]
    assert index.contains(int(ids[7])).tolist() == [True]
    with pytest.raises(TypeError, match="integers"):
        index.contains(torch.tensor([1.0]))


# ----------------------------------------------------------------------------- a group of one
@pytest.fixture
def group_of_one(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedIndex(4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_save_of_several_shards_loads_on_one_rank(group_of_one, tmp_path, dtype):
    # Shard files of a 3-rank save, written here as that save's ranks would: then the
    # manifest. One rank loads all three.
    x, ids = rows_and_ids(50, 12, seed=3)
    sizes, token = [20, 0, 30], manifest.new_token()
    shards = []
    for r, (a, b) in enumerate([(0, 20), (20, 20), (20, 50)]):
        part = pyrag.DenseIndex(12, dtype)
        part.add(x[a:b], ids[a:b])
        name = manifest.shard_file(r, 3, token)
        part.save(tmp_path / name, metadata={"sharded.token": f"{token:016x}"})
        size, checksum = manifest.describe(str(tmp_path / name))
        shards.append({"file": name, "rows": sizes[r], "bytes": size, "checksum": checksum})
    body = manifest_body(dtype=dtype, dim=12, count=50, world_size=3, token=token, shards=shards)
    manifest.write(str(tmp_path), body)
    loaded = ShardedIndex.load(tmp_path)
    reference = pyrag.DenseIndex(12, dtype)
    reference.add(x, ids)
    assert (len(loaded), loaded.local_len, loaded.version, loaded.world_size) == (50, 50, 2, 1)
    q = torch.randn(4, 12)
    for exact in (False, True):
        s1, i1 = loaded.search(q, 9, exact=exact)
        s2, i2 = reference.search(q, 9, exact=exact)
        assert torch.equal(i1, i2) and torch.equal(s1, s2)
    # A shard file that is not this save's is refused.
    other = pyrag.DenseIndex(12, dtype)
    other.add(x[:20], ids[:20])
    other.save(tmp_path / shards[0]["file"])
    with pytest.raises(pyrag.IndexFormatError, match="does not match the manifest"):
        ShardedIndex.load(tmp_path)
    # Saving again on one rank replaces every file of the old save.
    loaded.save(tmp_path)
    assert sorted(p.split("-")[0] for p in os.listdir(tmp_path) if not p.startswith("init")) == [
        "manifest.json",
        "shard",
    ]
    again = ShardedIndex.load(tmp_path, mmap=True)
    assert torch.equal(again.search(q, 9)[1], reference.search(q, 9)[1])


def test_one_rank_errors_and_reads(group_of_one):
    index = ShardedIndex(4, "bfloat16")
    with pytest.raises(TypeError, match="unsupported index dtype"):
        ShardedIndex(4, "float16")
    ids = index.add(torch.eye(4))
    assert ids.tolist() == [0, 1, 2, 3] and len(index) == 4 and index.version == 1
    with pytest.raises(ValueError, match="queries have shape"):
        index.search(torch.zeros(2, 5), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(torch.zeros(2, 4), 0)
    with pytest.raises(KeyError, match="ids not in the index"):
        index.get([9])
    with pytest.raises(TypeError, match="integers"):
        index.get(torch.tensor([1.5]))
    assert index.remove([1, 2]) == 2 and len(index) == 2
    assert index.add(torch.ones(1, 4)).tolist() == [4]
    assert "ShardedIndex(dim=4" in repr(index)
    empty = ShardedIndex.from_shard(pyrag.DenseIndex(4))
    scores, found = empty.search(torch.zeros(2, 4), 3)
    assert found.tolist() == [[-1] * 3] * 2 and bool(torch.isneginf(scores).all())
    assert empty.get([-1]).tolist() == [[0.0] * 4] and empty.remove([]) == 0
    assert isinstance(index, pyrag.Index)
    assert issubclass(CollectiveError, RuntimeError)
