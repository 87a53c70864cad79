"""DenseIndex: the FAISS/usearch-like API, bad input leaving the index unchanged, and
atomic, verified persistence."""

import os

import numpy as np
import pytest
import torch

import pyrag
from pyrag import reference


def make_index(n=100, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = pyrag.DenseIndex(dim)
    x = torch.randint(-3, 4, (n, dim), generator=g).float()
    index.add(x)
    return index, x


def state(index):
    return index.vectors().clone(), index.ids, len(index)


def assert_same_state(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_add_search_matches_reference():
    index, x = make_index()
    q = x[:5] + 0.5
    s, i = index.search(q, 10)
    rs, ri = reference.topk_scores(q, x, 10)
    assert torch.equal(i, ri) and torch.equal(s, rs)
    assert len(index) == 100 and index.dim == 16 and index.dtype == "float32"


def test_auto_ids_continue_from_largest():
    index = pyrag.DenseIndex(4)
    assert index.add(torch.ones(2, 4)).tolist() == [0, 1]
    assert index.add(torch.ones(1, 4), ids=[10]).tolist() == [10]
    assert index.add(torch.ones(2, 4)).tolist() == [11, 12]
    assert 10 in index and 5 not in index


def test_explicit_ids_are_returned_by_search():
    index = pyrag.DenseIndex(3)
    index.add(torch.eye(3), ids=[100, 200, 300])
    _, ids = index.search(torch.tensor([0.0, 1.0, 0.0]), 1)
    assert ids.tolist() == [200]


def test_remove_then_search():
    index, x = make_index()
    assert index.remove([0, 5, 99]) == 3
    assert len(index) == 97 and 5 not in index
    keep = torch.tensor([i for i in range(100) if i not in (0, 5, 99)])
    q = x[:4]
    s, i = index.search(q, 7)
    rs, rrow = reference.topk_scores(q, x[keep], 7)
    assert torch.equal(i, keep[rrow]) and torch.equal(s, rs)


def test_k_greater_than_size_pads_with_minus_one():
    index, _ = make_index(n=3)
    s, i = index.search(torch.ones(16), 5)
    assert i.tolist()[3:] == [-1, -1] and torch.isinf(s[3:]).all()


def test_search_empty_index():
    s, i = pyrag.DenseIndex(4).search(torch.ones(2, 4), 2)
    assert torch.equal(i, torch.full((2, 2), -1))


def test_numpy_roundtrip():
    index = pyrag.DenseIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    s, i = index.search(np.eye(4, dtype=np.float32)[1], 1)
    assert isinstance(i, np.ndarray) and i.tolist() == [1]


def test_many_small_adds_grow_storage():
    index = pyrag.DenseIndex(8)
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randint(-2, 3, (37, 8), generator=g).float() for _ in range(60)]
    for c in chunks:
        index.add(c)
    x = torch.cat(chunks)
    s, i = index.search(x[:3], 4)
    rs, ri = reference.topk_scores(x[:3], x, 4)
    assert torch.equal(i, ri)


# ------------------------------------------------------------------ bad input
BAD_ADDS = [
    (lambda: torch.ones(3, 5), {}, ValueError, "dim 16"),
    (lambda: torch.ones(2, 2, 16), {}, ValueError, "shape"),
    (lambda: torch.full((2, 16), float("nan")), {}, ValueError, "NaN or Inf"),
    (lambda: torch.full((2, 16), float("inf")), {}, ValueError, "NaN or Inf"),
    (lambda: torch.ones(2, 16, dtype=torch.float64), {}, TypeError, "float64"),
    (lambda: torch.ones(2, 16), {"ids": [7, 7]}, ValueError, "duplicates"),
    (lambda: torch.ones(2, 16), {"ids": [3, 500]}, ValueError, "already in the index"),
    (lambda: torch.ones(2, 16), {"ids": [1000]}, ValueError, "got 1 ids for 2 vectors"),
    (lambda: torch.ones(2, 16), {"ids": [1000.0, 1001.0]}, TypeError, "integers"),
    (lambda: torch.ones(1, 16), {"ids": [-4]}, ValueError, "non-negative"),
]


@pytest.mark.parametrize("make,kwargs,exc,msg", BAD_ADDS)
def test_bad_add_leaves_index_unchanged(make, kwargs, exc, msg):
    index, _ = make_index()
    before = state(index)
    with pytest.raises(exc, match=msg):
        index.add(make(), **kwargs)
    assert_same_state(before, state(index))


def test_bad_remove_leaves_index_unchanged():
    index, _ = make_index()
    before = state(index)
    with pytest.raises(KeyError, match="12345"):
        index.remove([1, 12345])
    assert_same_state(before, state(index))


@pytest.mark.parametrize(
    "q,k,exc,msg",
    [
        (torch.ones(2, 15), 3, ValueError, "dim 16"),
        (torch.ones(16), 0, ValueError, "k must be"),
        (torch.full((16,), float("nan")), 3, ValueError, "NaN or Inf"),
        (torch.ones(2, 16, dtype=torch.float64), 3, TypeError, "float64"),
    ],
)
def test_bad_search(q, k, exc, msg):
    index, _ = make_index()
    with pytest.raises(exc, match=msg):
        index.search(q, k)


def test_bad_constructor():
    with pytest.raises(ValueError):
        pyrag.DenseIndex(0)
    with pytest.raises(TypeError, match="unsupported index dtype"):
        pyrag.DenseIndex(8, dtype="float128")


# ------------------------------------------------------------------ persistence
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_roundtrip(tmp_path, mmap):
    index, x = make_index(n=500)
    index.remove([3, 4])
    path = tmp_path / "a.pyrag"
    index.save(path)
    loaded = pyrag.DenseIndex.load(path, mmap=mmap)
    assert len(loaded) == 498 and loaded.dim == 16 and loaded.dtype == "float32"
    assert torch.equal(loaded.ids, index.ids)
    q = x[:6]
    for a, b in zip(loaded.search(q, 9), index.search(q, 9)):
        assert torch.equal(a, b)
    # A loaded (even memory-mapped) index accepts new vectors without touching the file.
    before = path.read_bytes()
    loaded.add(torch.ones(1, 16))
    assert len(loaded) == 499 and path.read_bytes() == before


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status")


def test_mmap_load_does_not_read_vectors_into_ram(tmp_path):
    index = pyrag.DenseIndex(256)
    for _ in range(4):  # 100k x 256 fp32 = 100 MB
        index.add(torch.randn(25000, 256))
    path = tmp_path / "big.pyrag"
    index.save(path)
    del index
    before = rss_bytes()
    loaded = pyrag.DenseIndex.load(path, mmap=True, verify=False)
    assert len(loaded) == 100000
    assert rss_bytes() - before < 20 << 20
    _, ids = loaded.search(loaded.vectors()[:2].clone(), 1)
    assert ids.tolist() == [[0], [1]]  # a Gaussian vector is its own best match


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    index, x = make_index()
    path = tmp_path / "a.pyrag"
    index.save(path)
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", crash)
    index.add(torch.ones(1, 16))
    with pytest.raises(OSError, match="simulated"):
        index.save(path)
    assert path.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(pyrag.DenseIndex.load(path)) == 100


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_file_is_rejected(tmp_path, mmap):
    index, _ = make_index(n=300)
    path = tmp_path / "a.pyrag"
    index.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(pyrag.IndexFormatError, match="truncated"):
        pyrag.DenseIndex.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_corrupted_file_is_rejected(tmp_path, mmap):
    index, _ = make_index(n=300)
    path = tmp_path / "a.pyrag"
    index.save(path)
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pyrag.IndexFormatError, match="checksum"):
        pyrag.DenseIndex.load(path, mmap=mmap)


def test_not_an_index_is_rejected(tmp_path):
    p = tmp_path / "junk.bin"
    p.write_bytes(b"hello world, this is not an index at all" * 10)
    with pytest.raises(pyrag.IndexFormatError):
        pyrag.DenseIndex.load(p)
    from safetensors.torch import save_file

    q = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(3)}, str(q))
    with pytest.raises(pyrag.IndexFormatError):
        pyrag.DenseIndex.load(q)
    with pytest.raises(FileNotFoundError):
        pyrag.DenseIndex.load(tmp_path / "missing")
    assert issubclass(pyrag.IndexFormatError, ValueError)
