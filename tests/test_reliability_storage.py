"""The index file writer (issue 18, A and G): a save writes one immutable snapshot whatever
is added meanwhile, files are safetensors files others can read, a failed write leaves the
target as it was, and temp files of dead writers are removed by the next writer in the
directory, never a live writer's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from safetensors import safe_open

import pyrag
from pyrag.index import storage

DTYPES = ["float32", "bfloat16", "int8"]


def rows(n: int, start: int = 0, dim: int = 5) -> torch.Tensor:
    return (torch.arange(start * dim, (start + n) * dim, dtype=torch.float32).reshape(n, dim) % 13) - 6


# ----------------------------------------------------------------------------- A: one snapshot
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 16, 37])
def test_a_snapshot_saves_the_same_bytes_whatever_is_added_after_it(tmp_path, dtype, n):
    """The snapshot shares its buffers with the index; the index's later adds write the
    rows after it into the same last block and scales. Its file must not change."""
    alone = pyrag.DenseIndex(5, dtype)
    alone.add(rows(n))
    alone.save(tmp_path / "alone")

    index = pyrag.DenseIndex(5, dtype)
    index.reserve(64)  # room: later adds write in place, into the snapshot's buffers
    index.add(rows(n))
    snap = index.snapshot()
    index.add(rows(9, start=n))
    snap.save(tmp_path / "snap")
    assert (tmp_path / "snap").read_bytes() == (tmp_path / "alone").read_bytes()
    loaded = pyrag.DenseIndex.load(tmp_path / "snap")
    assert len(loaded) == n and torch.equal(loaded.get(loaded.ids), alone.get(alone.ids))


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_add_between_the_checksum_and_the_write_leaves_the_file_loadable(tmp_path, dtype, monkeypatch):
    """The add of issue 18's A, made deterministic: it runs after the save checksummed the
    packed rows and before it writes them."""
    index = pyrag.DenseIndex(5, dtype)
    index.reserve(64)
    index.add(rows(21))
    expected = index.get(index.ids)
    crc = storage._crc_tensor
    added = []

    def crc_then_add(t, c):
        c = crc(t, c)
        if not added and t.dtype == torch.uint8 and t.dim() == 2:  # the packed rows are checksummed
            added.append(index.add(rows(6, start=21)))
        return c

    monkeypatch.setattr(storage, "_crc_tensor", crc_then_add)
    index.save(tmp_path / "i")
    assert added
    loaded = pyrag.DenseIndex.load(tmp_path / "i")
    assert len(loaded) == 21 and torch.equal(loaded.get(loaded.ids), expected)


# ----------------------------------------------------------------------------- the format
@pytest.mark.parametrize("dtype", DTYPES)
def test_index_files_are_safetensors_files_the_library_reads(tmp_path, dtype):
    index = pyrag.DenseIndex(5, dtype)
    index.add(rows(37))
    index.save(tmp_path / "i", metadata={"note": "x"})
    ours, meta = storage.load_tensors(tmp_path / "i")
    with safe_open(str(tmp_path / "i"), framework="pt") as f:
        assert f.metadata() == meta and meta["user.note"] == "x"
        assert sorted(f.keys()) == sorted(ours)
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), ours[name])


def test_parts_are_written_as_one_tensor(tmp_path):
    a, b = torch.arange(6).reshape(3, 2), torch.arange(6, 10).reshape(2, 2)
    storage.save_tensors(tmp_path / "f", {"t": [a, b], "s": torch.tensor(3.5)}, {"k": "v"})
    tensors, meta = storage.load_tensors(tmp_path / "f")
    assert torch.equal(tensors["t"], torch.cat([a, b])) and float(tensors["s"]) == 3.5 and meta["k"] == "v"
    assert meta["checksum"] == storage.checksum({"t": torch.cat([a, b]), "s": torch.tensor(3.5)}, {"k": "v"})


@pytest.mark.parametrize(
    "tensors, metadata, error, match",
    [
        ({"t": [torch.zeros(2, 2), torch.zeros(2, 3)]}, {}, ValueError, "differ in dtype or trailing shape"),
        ({"t": [torch.zeros(2), torch.zeros(2, dtype=torch.int64)]}, {}, ValueError, "differ in dtype"),
        ({"t": []}, {}, TypeError, "non-empty sequence"),
        ({"t": torch.zeros(2, dtype=torch.complex64)}, {}, TypeError, "does not store"),
        ({"t": torch.zeros(2)}, {"k": 1}, TypeError, "metadata must map str to str"),
    ],
)
def test_bad_arguments_to_the_writer_leave_no_file(tmp_path, tensors, metadata, error, match):
    with pytest.raises(error, match=match):
        storage.save_tensors(tmp_path / "f", tensors, metadata)
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path):
    storage.save_tensors(tmp_path / "f", {"t": torch.ones(3)}, {})
    before = (tmp_path / "f").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"), storage.atomic_file(tmp_path / "f") as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert (tmp_path / "f").read_bytes() == before and os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize(
    "old, new",
    [(b'"version":"1"', b'"version":"7"'), (b'"user.note":"abc"', b'"user.note":"abd"'), (b'"dim":"5"', b'"dim":"6"')],
)
def test_damaged_header_values_are_caught_by_the_checksum(tmp_path, old, new):
    index = pyrag.DenseIndex(5)
    index.add(rows(4))
    index.save(tmp_path / "i", metadata={"note": "abc"})
    blob = (tmp_path / "i").read_bytes()
    assert blob.count(old) == 1
    (tmp_path / "i").write_bytes(blob.replace(old, new))
    with pytest.raises(pyrag.IndexFormatError, match="checksum mismatch"):
        pyrag.DenseIndex.load(tmp_path / "i")


def test_files_with_the_older_checksum_still_load(tmp_path):
    """Files written before the checksum covered the header: safetensors' own writer,
    and a CRC over the tensors' names and bytes."""
    from safetensors.torch import save_file

    index = pyrag.DenseIndex(5, "int8")
    index.add(rows(21))
    index.save(tmp_path / "new")
    tensors, meta = storage.load_tensors(tmp_path / "new")
    tensors = {k: v.clone() for k, v in tensors.items()}
    meta["checksum"] = storage._checksum_v1(tensors)
    save_file(tensors, str(tmp_path / "old"), metadata=meta)
    old = pyrag.DenseIndex.load(tmp_path / "old")
    assert torch.equal(old.get(old.ids), index.get(index.ids))
    meta["checksum"] = "crc32:00000000"
    save_file(tensors, str(tmp_path / "bad"), metadata=meta)
    with pytest.raises(pyrag.IndexFormatError, match="checksum mismatch"):
        pyrag.DenseIndex.load(tmp_path / "bad")


# ----------------------------------------------------------------------------- G: stale temp files
def test_the_next_save_removes_temp_files_of_dead_writers(tmp_path):
    for name in (".pyrag-tmp-a1b2.safetensors", ".pyrag-tmp-zz"):
        (tmp_path / name).write_bytes(b"x" * 100)
    keep = [".tmp-users-own", "notes.safetensors", "pyrag-tmp-no-dot"]
    for name in keep:
        (tmp_path / name).write_bytes(b"y")
    index = pyrag.DenseIndex(5)
    index.add(rows(3))
    index.save(tmp_path / "i")
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["i"])


def test_a_live_writers_temp_file_is_never_removed(tmp_path):
    """A writer on another thread holds its temp file open (and the directory's shared
    lock) while this thread saves twice into the same directory."""
    inside, release = threading.Event(), threading.Event()

    def slow_writer():
        with storage.atomic_file(tmp_path / "slow") as f:
            f.write(b"first half ")
            inside.set()
            assert release.wait(30)
            f.write(b"second half")

    t = threading.Thread(target=slow_writer)
    t.start()
    assert inside.wait(30)
    temp = [e for e in os.listdir(tmp_path) if e.startswith(storage.TEMP_PREFIX)]
    assert len(temp) == 1
    (tmp_path / ".pyrag-tmp-dead").write_bytes(b"x")  # stale, but a writer is live: kept for now
    for _ in range(2):
        storage.save_tensors(tmp_path / "other", {"t": torch.ones(2)}, {})
    assert (tmp_path / temp[0]).exists()
    release.set()
    t.join()
    assert (tmp_path / "slow").read_bytes() == b"first half second half"
    storage.save_tensors(tmp_path / "other", {"t": torch.ones(2)}, {})  # no writer live now
    assert sorted(os.listdir(tmp_path)) == ["other", "slow"]


def test_a_live_writer_in_another_process_keeps_its_temp_file(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from pyrag.index import storage
        with storage.atomic_file({str(tmp_path / "slow")!r}) as f:
            f.write(b"data")
            print("inside", flush=True)
            sys.stdin.readline()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "inside"
            temp = [e for e in os.listdir(tmp_path) if e.startswith(storage.TEMP_PREFIX)]
            storage.save_tensors(tmp_path / "other", {"t": torch.ones(2)}, {})
            assert (tmp_path / temp[0]).exists()
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0
        finally:
            proc.kill()
    assert (tmp_path / "slow").read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == ["other", "slow"]


def test_without_flock_a_save_still_works_and_removes_nothing(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / ".pyrag-tmp-unknown").write_bytes(b"x")
    storage.save_tensors(tmp_path / "f", {"t": torch.ones(2)}, {})
    assert sorted(os.listdir(tmp_path)) == [".pyrag-tmp-unknown", "f"]
