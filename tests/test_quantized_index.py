"""DenseIndex with bfloat16 and int8 storage: quantised search against the reference,
certified-exact search against a float32 index (bit for bit), mutation, persistence and
bad input."""

import os

import numpy as np
import pytest
import torch

import pyrag
from pyrag import _C, reference
from pyrag.backends.cpu import topk_packed_exact_with_stats

QDTYPES = ["bfloat16", "int8"]
ISAS = _C.supported_cpu_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa("")


def data(kind, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, d, generator=g)
    if kind == "unit":
        x = torch.randn(n, d, generator=g)
        return x / x.norm(dim=1, keepdim=True)
    if kind == "integer":  # exact dot products and many ties
        return torch.randint(-3, 4, (n, d), generator=g).float()
    if kind == "scaled":  # rows of very different norms: a loose bound, many candidates
        return torch.randn(n, d, generator=g) * torch.logspace(-3, 3, n)[torch.randperm(n, generator=g)].unsqueeze(1)
    if kind == "duplicates":  # 7 distinct rows, repeated: ties everywhere
        return torch.randn(7, d, generator=g).repeat(-(-n // 7), 1)[:n]
    raise AssertionError(kind)


def build(dtype, x, chunks=3):
    index = pyrag.DenseIndex(x.shape[1], dtype)
    for part in torch.tensor_split(x, chunks):
        index.add(part)
    return index


def quantised_reference(index, q, k):
    scores, rows = reference.topk_scores(q, index.vectors(), k, scales=index.scales(), quantized_queries=True)
    ids = index.ids
    return scores, torch.where(rows >= 0, ids[rows.clamp(min=0)], rows)


def assert_same(got, expected):
    assert torch.equal(got[1], expected[1]), (got[1], expected[1])
    assert torch.equal(got[0], expected[0]), (got[0] - expected[0]).abs().max()


# ------------------------------------------------------------------ search
@pytest.mark.parametrize("dtype", QDTYPES)
@pytest.mark.parametrize("n, d, k", [(1, 8, 1), (100, 37, 10), (3000, 64, 50), (40, 16, 60)])
def test_quantised_search_matches_the_reference(isa, dtype, n, d, k):
    x = data("normal", n, d, seed=n)
    index = build(dtype, x)
    q = torch.randn(6, d)
    assert_same(index.search(q, k), quantised_reference(index, q, k))


@pytest.mark.parametrize("dtype", QDTYPES)
@pytest.mark.parametrize("kind", ["normal", "unit", "integer", "scaled", "duplicates"])
@pytest.mark.parametrize("n, d, k", [(2000, 48, 10), (500, 7, 100), (30, 5, 50)])
def test_exact_search_equals_float32_search(isa, dtype, kind, n, d, k):
    x = data(kind, n, d, seed=d)
    exact = build(dtype, x).search(q := data(kind, 9, d, seed=99), k, exact=True)
    assert_same(exact, build("float32", x).search(q, k))


@pytest.mark.parametrize("dtype", QDTYPES)
def test_exact_search_falls_back_to_a_full_rescan_when_candidates_overflow(dtype):
    # Identical rows: every row is a candidate for every query, more than the cap allows
    # for a batch of 1024 queries, so each query rescans the originals.
    x = torch.randn(1, 24).repeat(3000, 1)
    x[1234] *= 1.001
    index = build(dtype, x)
    q = torch.randn(1024, 24)
    snap = index._snap
    scores, rows, stats = topk_packed_exact_with_stats(q, snap.corpus(dtype, 24), snap.originals, 5, None)
    assert stats["fallback_queries"] > 0
    assert_same((scores, rows), build("float32", x).search(q, 5))


@pytest.mark.parametrize("dtype", QDTYPES)
def test_exact_search_rescores_few_rows_on_unit_vectors(dtype):
    x = data("unit", 20000, 64)
    index = build(dtype, x)
    q = data("unit", 8, 64, seed=5)
    snap = index._snap
    _, _, stats = topk_packed_exact_with_stats(q, snap.corpus(dtype, 64), snap.originals, 10, None)
    assert stats["fallback_queries"] == 0
    assert stats["candidates"] < 8 * 400  # a small fraction of 8 x 20000


@pytest.mark.parametrize("dtype", ["float32"] + QDTYPES)
def test_search_follows_the_input_kind_and_rank(dtype):
    x = data("normal", 50, 12)
    index = build(dtype, x)
    q = torch.randn(12)
    s1, i1 = index.search(q, 4)
    assert s1.shape == i1.shape == (4,)
    s2, i2 = index.search(q.numpy(), 4)
    assert isinstance(s2, np.ndarray) and np.array_equal(i2, i1.numpy())
    s3, i3 = index.search(q, 60)  # k > len: padding
    assert i3[50:].tolist() == [-1] * 10 and bool(torch.isinf(s3[50:]).all())


@pytest.mark.parametrize("dtype", QDTYPES)
def test_other_backends_search_the_same_quantised_corpus(dtype):
    """Other backends score float32 queries against the same compact rows (the op's
    definition); the CPU rounds the query too, which moves every score by at most
    |q - rounded q| * max |row|, and so each of the k best scores by at most that."""
    x = data("normal", 300, 20)
    index = build(dtype, x)
    q = torch.randn(5, 20)
    vectors, scales = index.vectors(), index.scales()
    assert_same(index.search(q, 7, backend="reference"), reference.topk_scores(q, vectors, 7, scales=scales))
    if dtype == "int8":
        qv, qs = reference.quantize_int8(q)
        rounded = qv.float() * qs[:, None]
    else:
        rounded = q.to(torch.bfloat16).float()
    rows = vectors.float() * (scales[:, None] if scales is not None else 1.0)
    bound = (q - rounded).norm(dim=1, keepdim=True) * rows.norm(dim=1).max() * 1.001 + 1e-5
    cpu_scores, _ = index.search(q, 7)
    assert bool(((cpu_scores - index.search(q, 7, backend="reference")[0]).abs() <= bound).all())
    ref_exact = index.search(q, 7, exact=True, backend="reference")
    exact = index.search(q, 7, exact=True)
    assert torch.equal(ref_exact[1], exact[1])
    torch.testing.assert_close(ref_exact[0], exact[0])


# ------------------------------------------------------------------ mutation and persistence
@pytest.mark.parametrize("dtype", ["float32"] + QDTYPES)
def test_add_and_remove_keep_search_consistent(dtype):
    x = data("normal", 1000, 24)
    index = pyrag.DenseIndex(24, dtype)
    ids = index.add(x[:600], ids=torch.arange(600) * 10)
    index.add(x[600:])
    assert ids[:3].tolist() == [0, 10, 20] and len(index) == 1000
    index.remove(torch.arange(0, 300) * 10)
    keep = torch.cat([x[300:600], x[600:]])
    fresh = pyrag.DenseIndex(24, dtype)
    fresh.add(keep, ids=index.ids)
    q = torch.randn(5, 24)
    assert_same(index.search(q, 20), fresh.search(q, 20))
    if dtype != "float32":
        assert_same(index.search(q, 20, exact=True), fresh.search(q, 20, exact=True))


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("dtype", ["float32"] + QDTYPES)
def test_save_and_load_round_trip(tmp_path, dtype, mmap):
    x = data("normal", 777, 33)
    index = build(dtype, x)
    index.remove([3, 500])
    path = tmp_path / "index.safetensors"
    index.save(path)
    loaded = pyrag.DenseIndex.load(path, mmap=mmap)
    assert (loaded.dim, loaded.dtype, len(loaded)) == (33, dtype, 775)
    assert torch.equal(loaded.ids, index.ids)
    assert torch.equal(loaded.vectors(), index.vectors())
    q = torch.randn(4, 33)
    assert_same(loaded.search(q, 9), index.search(q, 9))
    if dtype != "float32":
        assert_same(loaded.search(q, 9, exact=True), index.search(q, 9, exact=True))
    # A loaded index keeps growing and shrinking like a fresh one.
    more = torch.randn(20, 33)
    for ix in (loaded, index):
        ix.add(more)
        ix.remove([0])
    assert_same(loaded.search(q, 9), index.search(q, 9))
    if dtype != "float32":
        assert_same(loaded.search(q, 9, exact=True), index.search(q, 9, exact=True))


@pytest.mark.parametrize("dtype", QDTYPES)
def test_index_without_originals(tmp_path, dtype):
    x = data("normal", 100, 8)
    index = pyrag.DenseIndex(8, dtype, keep_originals=False)
    index.add(x)
    with pytest.raises(ValueError, match="keep_originals=False"):
        index.search(torch.randn(8), 3, exact=True)
    index.save(tmp_path / "i.safetensors")
    loaded = pyrag.DenseIndex.load(tmp_path / "i.safetensors")
    q = torch.randn(3, 8)
    assert_same(loaded.search(q, 5), index.search(q, 5))


def test_loads_format_version_1(tmp_path):
    from pyrag.index import storage

    x = torch.randn(40, 6)
    path = tmp_path / "v1.safetensors"
    storage.save_tensors(
        path,
        {"vectors": x, "ids": torch.arange(40) + 100},
        {"format": "pyrag.DenseIndex", "format_version": "1", "dim": "6", "dtype": "float32"},
    )
    index = pyrag.DenseIndex.load(path)
    assert torch.equal(index.vectors(), x) and index.ids.tolist()[:2] == [100, 101]


def test_stored_offsets_point_at_the_tensor_bytes(tmp_path):
    from pyrag.index import storage

    tensors = {"a": torch.arange(5, dtype=torch.int64), "b": torch.randn(3, 4)}
    path = tmp_path / "t.safetensors"
    storage.save_tensors(path, tensors, {"format": "test"})
    raw = path.read_bytes()
    with storage.open_regular_file(path) as f:
        stored = storage.open_tensors(f)
    for name, t in tensors.items():
        offset = stored.offsets[name]
        assert raw[offset : offset + t.numel() * t.element_size()] == t.numpy().tobytes()


@pytest.mark.parametrize("dtype", QDTYPES)
def test_corrupted_or_truncated_files_are_rejected(tmp_path, dtype):
    index = build(dtype, data("normal", 200, 16))
    path = tmp_path / "i.safetensors"
    index.save(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(pyrag.IndexFormatError, match="checksum"):
        pyrag.DenseIndex.load(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(path.read_bytes()[:-500])
    with pytest.raises(pyrag.IndexFormatError, match="truncated"):
        pyrag.DenseIndex.load(tmp_path / "short.safetensors", mmap=True)


# ------------------------------------------------------------------ bad input
def state(index):
    return len(index), index.ids.tolist(), index.vectors().clone()


@pytest.mark.parametrize("dtype", QDTYPES)
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ix: ix.add(torch.randn(3, 5)), ValueError, "dim 8"),
        (lambda ix: ix.add(torch.randn(3, 8).double()), TypeError, "float32"),
        (lambda ix: ix.add(torch.randn(3, 8).to(torch.bfloat16)), TypeError, "float32"),
        (lambda ix: ix.add(torch.full((2, 8), float("nan"))), ValueError, "NaN or Inf"),
        (lambda ix: ix.add(torch.full((2, 8), 1e35)), ValueError, "1e30"),
        (lambda ix: ix.add(torch.randn(2, 8), ids=[0, 1]), ValueError, "already in the index"),
        (lambda ix: ix.remove([12345]), KeyError, "not in the index"),
        (lambda ix: ix.search(torch.randn(2, 9), 3), ValueError, "dim 8"),
        (lambda ix: ix.search(torch.randn(2, 8), 0), ValueError, "k must be"),
        (lambda ix: ix.search(torch.randn(2, 8).double(), 3), TypeError, "float32"),
        (lambda ix: ix.search(torch.full((1, 8), float("inf")), 3, exact=True), ValueError, "NaN or Inf"),
    ],
)
def test_bad_input_is_rejected_and_leaves_the_index_unchanged(dtype, call, error, match):
    index = build(dtype, data("normal", 50, 8))
    before = state(index)
    with pytest.raises(error, match=match):
        call(index)
    after = state(index)
    assert before[:2] == after[:2] and torch.equal(before[2], after[2])


def test_unsupported_dtypes_are_rejected():
    with pytest.raises(TypeError, match="unsupported index dtype"):
        pyrag.DenseIndex(8, "float16")
    with pytest.raises(ValueError, match="int8 indexes support dim"):
        pyrag.DenseIndex(70000, "int8")


def test_originals_live_in_a_file_not_in_ram():
    index = build("int8", data("normal", 2000, 32))
    originals = index._snap.originals.view(len(index))
    with open("/proc/self/maps") as f:
        maps = f.read()
    start = originals.data_ptr()
    backing = [
        line
        for line in maps.splitlines()
        if int(line.split()[0].split("-")[0], 16) <= start < int(line.split()[0].split("-")[1], 16)
    ]
    assert len(backing) == 1 and len(backing[0].split()) >= 6, backing  # a file mapping, not anonymous
    assert os.environ.get("TMPDIR", "/tmp") in backing[0] or "(deleted)" in backing[0]


@pytest.mark.parametrize("dtype", ["float32"] + QDTYPES)
def test_an_empty_index_returns_padding(tmp_path, dtype):
    index = pyrag.DenseIndex(8, dtype)
    exact = dtype != "float32"
    for ix in (index, _emptied(dtype)):
        scores, ids = ix.search(torch.randn(2, 8), 3, exact=exact)
        assert ids.tolist() == [[-1] * 3] * 2 and bool(torch.isinf(scores).all())
    index.save(tmp_path / "empty.safetensors")
    loaded = pyrag.DenseIndex.load(tmp_path / "empty.safetensors", mmap=True)
    assert len(loaded) == 0 and loaded.search(torch.randn(8), 1)[1].tolist() == [-1]


def _emptied(dtype):
    index = pyrag.DenseIndex(8, dtype)
    index.add(torch.randn(5, 8))
    index.remove(index.ids)
    return index
