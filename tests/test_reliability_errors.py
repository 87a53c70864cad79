"""Errors of the promised types (issue 18, E and F): every entry point that takes vectors,
ids or queries accepts what float32 accepts in every dtype (tensors that require grad,
non-contiguous ones, numpy views), and rejects bad input with ValueError / TypeError /
KeyError or a pyrag.FormatError whose message names the problem, leaving the index as
it was."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch

import pyrag
from pyrag.index import storage

DTYPES = ["float32", "bfloat16", "int8"]
INT64_MAX = 2**63 - 1


def small_index(dtype: str) -> pyrag.DenseIndex:
    index = pyrag.DenseIndex(4, dtype)
    index.add(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]), [3, 7, 11])
    return index


def state(index: pyrag.DenseIndex) -> tuple:
    return index.version, index.ids.tolist(), index.get(index.ids).tolist()


# ----------------------------------------------------------------------------- E: one boundary
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_takes_vectors_that_require_grad(dtype):
    index = pyrag.DenseIndex(4, dtype)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    ids = index.add(x * 1)  # a non-leaf too
    assert ids.tolist() == [0]
    index.add(x, [5])
    q = torch.tensor([[1.0, 0, 0, 0]], requires_grad=True)
    scores, found = index.search(q, 2)
    assert found.tolist() == [[0, 5]] and not scores.requires_grad
    if index.keep_originals:
        assert index.search(q, 2, exact=True)[1].tolist() == [[0, 5]]
    assert torch.equal(index.get(torch.tensor([0])), index.get([5]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_takes_non_contiguous_and_numpy_views(dtype):
    index = pyrag.DenseIndex(4, dtype)
    base = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    index.add(base[:, ::2])  # strided
    index.add(np.arange(16, dtype=np.float32).reshape(4, 4)[::-1])  # negative strides
    q = base[:2, 1::2]
    assert index.search(q, 1)[1].shape == (2, 1)
    assert index.get(np.array([[0, 1], [2, 3]], dtype=np.int32)[:, ::-1]).shape == (2, 2, 4)
    assert index.remove(np.array([7, 6], dtype=np.uint64)) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_retriever_passes_gradients_to_queries_in_every_dtype(dtype):
    index = small_index(dtype)
    retriever = pyrag.Retriever(None, index)
    q = torch.tensor([[1.0, 0.5, 0.0, 0.0]], requires_grad=True)
    result = retriever.retrieve(q, 2)
    assert result.ids.tolist() == [[3, 7]]
    result.scores.sum().backward()
    assert q.grad is not None and torch.equal(q.grad, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_topk_scores_takes_tensors_that_require_grad(dtype):
    corpus = torch.eye(4).to(dtype)
    scales = None
    if dtype == torch.int8:
        scales = torch.ones(4, requires_grad=True)
    else:
        corpus.requires_grad_()
    q = torch.tensor([[0.0, 2.0, 1.0, 0.0]], requires_grad=True)
    scores, ids = pyrag.topk_scores(q, corpus, 2, scales=scales)
    assert ids.tolist() == [[1, 2]] and scores[0, 0] == 2.0  # int8 rounds the query: 1.0 is 1.008


# ----------------------------------------------------------------------------- F: meta tensors
META = torch.empty(2, 4, device="meta")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.add(META),
        lambda ix: ix.add(torch.zeros(2, 4), torch.empty(2, dtype=torch.int64, device="meta")),
        lambda ix: ix.search(META, 1),
        lambda ix: ix.get(torch.empty(2, dtype=torch.int64, device="meta")),
        lambda ix: ix.remove(torch.empty(1, dtype=torch.int64, device="meta")),
        lambda ix: pyrag.Retriever(None, ix).retrieve(META, 1),
    ],
    ids=["add", "add ids", "search", "get", "remove", "Retriever"],
)
def test_meta_tensors_are_a_type_error(dtype, call):
    index = small_index(dtype)
    before = state(index)
    with pytest.raises(TypeError, match="meta tensor"):
        call(index)
    assert state(index) == before


def test_topk_scores_refuses_meta_tensors():
    with pytest.raises(TypeError, match="meta tensor"):
        pyrag.topk_scores(META, torch.zeros(3, 4), 1)


# ----------------------------------------------------------------------------- F: id arithmetic
@pytest.mark.parametrize("dtype", DTYPES)
def test_automatic_ids_past_int64_are_a_value_error(dtype):
    index = pyrag.DenseIndex(4, dtype)
    index.add(torch.ones(1, 4), [INT64_MAX - 1])
    index.add(torch.ones(1, 4))  # INT64_MAX itself is fine
    before = state(index)
    with pytest.raises(ValueError, match="automatic ids would pass the largest int64"):
        index.add(torch.ones(1, 4))
    assert state(index) == before
    assert index.ids.tolist() == [INT64_MAX - 1, INT64_MAX]


@pytest.mark.parametrize("value", [-(2**63) - 1, -(2**63), -1, 2**63, 2**64, 10**30])
def test_contains_is_false_outside_the_stored_range(value):
    assert (value in small_index("float32")) is False


@pytest.mark.parametrize("value", [1.0, "3", None, [3], np.float32(3.0)])
def test_contains_of_a_non_integer_is_a_type_error(value):
    with pytest.raises(TypeError, match="ids are integers"):
        value in small_index("float32")  # noqa: B015


@pytest.mark.parametrize(
    "ids, error, match",
    [
        ([2**63], ValueError, "outside the int64 range"),
        ([-(2**63) - 1], ValueError, "outside the int64 range"),
        (2**64, ValueError, "outside the int64 range"),
        (np.array([2**63], dtype=np.uint64), ValueError, "outside the int64 range"),
        (torch.tensor([2**63], dtype=torch.uint64), ValueError, "outside the int64 range"),
        ([1.5], TypeError, "must be integers, got float"),
        (["3"], TypeError, "must be integers, got str"),
        ([True], TypeError, "must be integers, got bool"),
        (torch.tensor([3.0]), TypeError, "must be integers, got torch.float32"),
        (np.array([3.0]), TypeError, "unsupported numpy dtype float64|must be integers"),
        ([3, 3], ValueError, "duplicates"),
        ([3, 4], KeyError, r"ids not in the index: \[4\]"),
        ([INT64_MAX], KeyError, "ids not in the index"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_rejects_bad_ids_and_removes_nothing(dtype, ids, error, match):
    index = small_index(dtype)
    before = state(index)
    with pytest.raises(error, match=match):
        index.remove(ids)
    assert state(index) == before


@pytest.mark.parametrize(
    "ids, error, match",
    [
        ([2**63, 1], ValueError, "outside the int64 range"),
        ([-2, 1], ValueError, "non-negative"),
        (["a", 1], TypeError, "must be integers"),
        ([1, 1], ValueError, "duplicates"),
        ([3, 4], ValueError, r"already in the index: \[3\]"),
        ([1, 2, 3, 4], ValueError, "got 4 ids for 2 vectors"),
    ],
)
def test_add_rejects_bad_ids_and_adds_nothing(ids, error, match):
    index = small_index("int8")
    before = state(index)
    with pytest.raises(error, match=match):
        index.add(torch.ones(2, 4), ids)
    assert state(index) == before


@pytest.mark.parametrize("ids", [[2**63], [-(2**63) - 1], 2**70])
def test_get_of_an_id_outside_int64_is_a_value_error(ids):
    with pytest.raises(ValueError, match="outside the int64 range"):
        small_index("bfloat16").get(ids)


@pytest.mark.parametrize(
    "dtype, dim", [("float32", 2**24 + 1), ("bfloat16", 10**30), ("float32", 2**62), ("int8", 65537)]
)
def test_a_dim_past_the_largest_is_a_value_error(dtype, dim):
    with pytest.raises(ValueError, match=f"{dtype} indexes support dim <= "):
        pyrag.DenseIndex(dim, dtype)


@pytest.mark.parametrize("dtype, dim", [("bfloat16", 10**30), ("float32", 2**24 + 1), ("int8", 65537), ("int8", 0)])
def test_a_manifest_dim_out_of_range_is_a_format_error(tmp_path, dtype, dim):
    # Found by tools/fuzz_loaders.py: ShardedIndex.load passed the manifest's dim to
    # DenseIndex unchecked (a pybind11 TypeError for 10**30).
    from pyrag.distributed import manifest

    shard = {"file": manifest.shard_file(0, 1, 5), "rows": 3, "bytes": 10, "checksum": "c"}
    body = {
        "format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "dim": dim, "dtype": dtype,
        "keep_originals": True, "world_size": 1, "count": 3, "version": 2, "step": 0, "token": 5,
        "metadata": {}, "shards": [shard],
    }  # fmt: skip
    manifest.write(str(tmp_path), body)
    with pytest.raises(pyrag.IndexFormatError, match="out of range"):
        manifest.read(str(tmp_path))


def test_a_damaged_shard_file_is_an_index_format_error(tmp_path):
    # Found by tools/fuzz_loaders.py: ShardedIndex.load raised the base FormatError for a
    # shard file that is not a safetensors file (from reading its checksum).
    from pyrag.distributed import manifest

    (tmp_path / "shard").write_bytes(b"\x10" + bytes(7) + b"{not json")
    with pytest.raises(pyrag.IndexFormatError, match="not a safetensors file"):
        manifest.describe(str(tmp_path / "shard"))


# ----------------------------------------------------------------------------- F: what load is given
def test_load_of_a_directory_is_a_format_error(tmp_path):
    with pytest.raises(pyrag.IndexFormatError, match="is a directory, not a file"):
        pyrag.DenseIndex.load(tmp_path)


def test_load_of_a_fifo_is_a_format_error_and_does_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(pyrag.IndexFormatError, match="is a FIFO, not a file"):
        pyrag.DenseIndex.load(fifo)  # opened without blocking: no writer needed


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyrag.DenseIndex.load(tmp_path / "missing")


def test_the_checkpoint_of_a_directory_without_state_is_file_not_found(tmp_path):
    from pyrag.train import checkpoint

    with pytest.raises(FileNotFoundError, match="no pyrag training checkpoint"):
        checkpoint.load(None, tmp_path)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- F: hand-built headers
def header_file(path, header_text: bytes, data: bytes = b"") -> None:
    raw = header_text + b" " * (-len(header_text) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def entry(dtype="U8", shape=(4,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


ODD_HEADERS = {
    "metadata is a list": ({"__metadata__": ["a"]}, "bad metadata"),
    "metadata is a string": ({"__metadata__": "x"}, "bad metadata"),
    "metadata value is an int": ({"__metadata__": {"format": 1}}, "bad metadata"),
    "metadata value is a dict": ({"__metadata__": {"format": {"a": "b"}}}, "bad metadata"),
    "metadata value is null": ({"__metadata__": {"format": None}}, "bad metadata"),
    "header is a list": ([1, 2], "header is a JSON list"),
    "header is a number": (7, "header is a JSON int"),
    "entry is a string": ({"t": "x"}, r"bad entry for tensor 't' \(not an object\)"),
    "entry is a list": ({"t": [1, 2]}, "not an object"),
    "no data_offsets": ({"t": {"dtype": "U8", "shape": [4]}}, "data_offsets must be two ints"),
    "data_offsets are floats": ({"t": entry(offsets=(0.0, 4.0))}, "data_offsets must be two ints"),
    "data_offsets are bools": ({"t": entry(offsets=(False, True))}, "data_offsets must be two ints"),
    "data_offsets are three": ({"t": {**entry(), "data_offsets": [0, 2, 4]}}, "data_offsets must be two ints"),
    "data_offsets a dict": ({"t": {**entry(), "data_offsets": {"a": 0, "b": 4}}}, "data_offsets must be two ints"),
    "negative offset": ({"t": entry(offsets=(-4, 0))}, "inconsistent size"),
    "offsets past the end": ({"t": entry(offsets=(8, 12))}, "truncated"),
    "size disagrees with shape": ({"t": entry(shape=(5,))}, "inconsistent size"),
    "dtype unknown": ({"t": entry(dtype="F8")}, "unsupported dtype 'F8'"),
    "dtype is a list": ({"t": entry(dtype=["U8"])}, "unsupported dtype"),
    "dtype is null": ({"t": entry(dtype=None)}, "unsupported dtype None"),
    "shape is a string": ({"t": {**entry(), "shape": "4"}}, "shape must be"),
    "shape has a float": ({"t": entry(shape=(4.0,))}, "shape must be"),
    "shape has a bool": ({"t": entry(shape=(True, 4))}, "shape must be"),
    "shape is negative": ({"t": entry(shape=(-4,))}, "shape must be"),
    "shape has 40 dims": ({"t": entry(shape=(1,) * 40, offsets=(0, 1))}, "shape must be up to 16"),
    "unaligned float": ({"t": entry(dtype="F32", shape=(1,), offsets=(1, 5))}, "not aligned"),
}


@pytest.mark.parametrize("case", sorted(ODD_HEADERS))
@pytest.mark.parametrize("loader", ["DenseIndex.load", "load_tensors"])
def test_odd_headers_are_format_errors_that_name_the_problem(tmp_path, case, loader):
    header, match = ODD_HEADERS[case]
    path = tmp_path / "f"
    header_file(path, json.dumps(header).encode(), bytes(8))
    with pytest.raises(pyrag.FormatError, match=match):
        if loader == "DenseIndex.load":
            pyrag.DenseIndex.load(path)
        else:
            storage.load_tensors(path)


@pytest.mark.parametrize(
    "text, match",
    [
        (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
        (b'{"a": 1' + b"9" * 5000 + b"}", "header is not JSON: ValueError"),
        (b"\xff\xfe{}", "header is not JSON"),
        (b'{"a": NaN}', "header is a JSON|bad entry"),
        (b"", "header is not JSON"),
    ],
    ids=["deep nesting", "a 5000-digit int", "not UTF-8", "NaN", "empty"],
)
def test_unparsable_headers_are_format_errors(tmp_path, text, match):
    path = tmp_path / "f"
    header_file(path, text)
    with pytest.raises(pyrag.IndexFormatError, match=match):
        pyrag.DenseIndex.load(path)


@pytest.mark.parametrize("size, match", [(0, "too short"), (7, "too short")])
def test_files_shorter_than_a_header_are_format_errors(tmp_path, size, match):
    path = tmp_path / "f"
    path.write_bytes(bytes(size))
    with pytest.raises(pyrag.IndexFormatError, match=match):
        pyrag.DenseIndex.load(path)


def test_a_header_length_past_the_file_is_a_format_error(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}")
    with pytest.raises(pyrag.IndexFormatError, match="bad header length|header length"):
        pyrag.DenseIndex.load(path)


# ----------------------------------------------------------------------------- F: index contents
def saved_tensors(tmp_path, dtype="int8", n=20):
    index = pyrag.DenseIndex(4, dtype)
    index.add(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)))
    index.save(tmp_path / "i")
    tensors, meta = storage.load_tensors(tmp_path / "i")
    meta.pop("checksum")
    return {k: v.clone() for k, v in tensors.items()}, meta


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t, m: t["scales"].__setitem__(0, float("nan")), "'scales' holds negative or non-finite"),
        (lambda t, m: t["scales"].__setitem__(0, -1.0), "'scales' holds negative or non-finite"),
        (lambda t, m: t["norms"].__setitem__(0, float("inf")), "'norms' holds negative or non-finite"),
        (lambda t, m: t["errors"].__setitem__(0, -1.0), "'errors' holds negative or non-finite"),
        (lambda t, m: t["originals"].__setitem__((0, 0), float("nan")), "'originals' holds NaN"),
        (lambda t, m: t["originals"].__setitem__((0, 0), 1e35), "'originals' holds NaN, Inf or values past"),
        (lambda t, m: t["ids"].__setitem__(1, 0), "duplicate ids"),
        (lambda t, m: t["ids"].__setitem__(1, -5), "negative ids"),
        (lambda t, m: t.pop("norms"), "do not match its metadata"),
        (lambda t, m: m.__setitem__("dim", "5"), "do not match its metadata"),
        (lambda t, m: m.__setitem__("dim", "x"), "metadata or tensors are missing"),
        (lambda t, m: m.__setitem__("dim", "0"), "out of range"),
        (lambda t, m: m.__setitem__("dtype", "float16"), "out of range"),
        (lambda t, m: m.__setitem__("version", "-3"), "out of range"),
        (lambda t, m: m.__setitem__("format_version", "9"), "unsupported index format version '9'"),
        (lambda t, m: m.__setitem__("format", "other"), "not a pyrag index"),
        (lambda t, m: m.__setitem__("layout", "other"), "do not match its metadata"),
    ],
)
def test_files_that_break_an_index_invariant_are_format_errors(tmp_path, change, match):
    tensors, meta = saved_tensors(tmp_path)
    change(tensors, meta)
    storage.save_tensors(tmp_path / "bad", tensors, meta)  # a valid checksum over bad contents
    with pytest.raises(pyrag.IndexFormatError, match=match):
        pyrag.DenseIndex.load(tmp_path / "bad")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_non_finite_stored_vectors_are_a_format_error(tmp_path, dtype):
    tensors, meta = saved_tensors(tmp_path, dtype)
    values = tensors["packed"].view(torch.float32 if dtype == "float32" else torch.bfloat16)
    values.view(-1)[3] = float("inf")
    storage.save_tensors(tmp_path / "bad", tensors, meta)
    with pytest.raises(pyrag.IndexFormatError, match="'packed' holds NaN, Inf"):
        pyrag.DenseIndex.load(tmp_path / "bad")
    pyrag.DenseIndex.load(tmp_path / "bad", verify=False)  # verify=False skips the data pass


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.__setitem__("ids", torch.tensor([0, 0])), "duplicate"),
        (lambda t: t.__setitem__("ids", torch.tensor([-1, 0])), "non-negative"),
        (lambda t: t["vectors"].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    ],
)
def test_bad_format_1_files_are_format_errors(tmp_path, change, match):
    tensors = {"ids": torch.tensor([0, 1]), "vectors": torch.ones(2, 4)}
    change(tensors)
    meta = {"format": "pyrag.DenseIndex", "format_version": "1", "dim": "4", "dtype": "float32"}
    storage.save_tensors(tmp_path / "v1", tensors, meta)
    with pytest.raises(pyrag.IndexFormatError, match=match):
        pyrag.DenseIndex.load(tmp_path / "v1")
