"""The concurrency contract for TextIndex stores (docs/reliability.md): searches on other
threads during add_texts, and loads and a long-lived reader in this process while another
process adds, each see the store after a whole number of add_texts calls, with every
passage's text, metadata and vector (integer-valued: exact scores)."""

from __future__ import annotations

import threading

import pytest
import torch
from kill_writers import TEXT_BATCH, _text_batch, _text_commit, _text_read, text_encoder
from stress_save_load import process_context

from pyrag.text import TextIndex

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expected_hits(k: int, q: torch.Tensor, n: int) -> list[tuple[str, float]]:
    """The n best (id, score) over batches 0..k: score descending, ties to the earlier added."""
    ids = [x for j in range(k + 1) for x in _text_batch(j)[1]]
    texts = [t for j in range(k + 1) for t in _text_batch(j)[0]]
    scores = text_encoder(texts) @ q
    order = torch.argsort(-scores, stable=True)[:n]
    return [(ids[i], float(scores[i])) for i in order]


def test_searches_during_add_texts_see_whole_batches(tmp_path):
    _text_commit(0, str(tmp_path))
    index = TextIndex.load(tmp_path / "store", encoder=text_encoder)
    q = text_encoder(["a query"])[0]
    stop = threading.Event()
    errors: list[BaseException] = []
    checked = [0]

    def write():
        try:
            for k in range(1, 12):
                texts, ids, metas = _text_batch(k)
                index.add_texts(texts, metas, ids)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    def search():
        try:
            while not stop.is_set():
                k0 = len(index) // TEXT_BATCH - 1
                hits = [(h.id, h.score) for h in index.search(q, 5)]
                k1 = len(index) // TEXT_BATCH - 1
                assert any(hits == expected_hits(k, q, 5) for k in range(k0, k1 + 1)), (k0, k1)
                checked[0] += 1
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=write)] + [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    index.close()
    if errors:
        raise errors[0]
    assert checked[0] > 0 and _text_read(str(tmp_path)) == 11


def _add_batches(directory: str, first: int, last: int) -> None:
    for k in range(first, last + 1):
        _text_commit(k, directory)


def test_loads_and_a_reader_during_another_process_adding(tmp_path):
    directory = str(tmp_path)
    _text_commit(0, directory)
    reader = TextIndex.load(tmp_path / "store", encoder=text_encoder)
    q = text_encoder(["another query"])[0]
    writer = process_context().Process(target=_add_batches, args=(directory, 1, 15))
    writer.start()
    loads = searches = 0
    try:
        while writer.is_alive():
            _text_read(directory)  # loads the store and checks it whole
            loads += 1
            k0 = len(reader) // TEXT_BATCH - 1
            hits = [(h.id, h.score) for h in reader.search(q, 4)]  # reloads a newer generation
            k1 = len(reader) // TEXT_BATCH - 1
            assert any(hits == expected_hits(k, q, 4) for k in range(k0, k1 + 1)), (k0, k1)
            searches += 1
    finally:
        writer.join(120)
        reader.close()
    assert writer.exitcode == 0 and loads > 0 and searches > 0
    assert _text_read(directory) == 15
