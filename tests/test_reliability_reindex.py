"""The reindexer under faults (issue 18, C and D): whatever the encoder returns or raises,
nothing wrong is ever published, the failure surfaces on the trainer's thread as a
ReindexError naming it, and the worker neither dies silently nor wedges wait()."""

from __future__ import annotations

import pytest
import torch

from pyrag.reindex import AsyncReindexer, ReindexError
from pyrag.reindex import reindexer as reindexer_module

N, F, D = 40, 6, 8
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features():
    return torch.randn(N, F, generator=torch.Generator().manual_seed(0))


def encoder():
    enc = torch.nn.Linear(F, D, bias=False)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(D, F, generator=torch.Generator().manual_seed(1)))
    return enc


BAD_OUTPUTS = {
    "int64 vectors": (lambda e, c: e(c).long(), TypeError, "encode returned torch.int64 vectors"),
    "bool vectors": (lambda e, c: e(c) > 0, TypeError, "encode returned torch.bool vectors"),
    "complex vectors": (lambda e, c: e(c).to(torch.complex64), TypeError, "complex64"),
    "a meta tensor": (lambda e, c: torch.empty(len(c), D, device="meta"), TypeError, "meta tensor"),
    "a numpy array": (lambda e, c: e(c).numpy(), TypeError, "returned a ndarray"),
    "None": (lambda e, c: None, TypeError, "returned a NoneType"),
    "one row too few": (lambda e, c: e(c)[:-1], ValueError, r"for \d+ passages; expected"),
    "3-D": (lambda e, c: e(c)[:, None], ValueError, r"expected \[\d+, dim\]"),
    "1-D": (lambda e, c: e(c)[:, 0], ValueError, r"expected \[\d+, dim\]"),
    "another dim": (lambda e, c: e(c)[:, :5], ValueError, "dim 5 but the index in service has dim 8"),
    "NaN": (lambda e, c: e(c) * float("nan"), ValueError, "NaN or Inf"),
    "Inf": (lambda e, c: e(c) / 0.0 + 1, ValueError, "NaN or Inf"),
    "only the last chunk bad": (
        lambda e, c: e(c) if len(c) == 16 else e(c)[:, :3],
        ValueError,
        "dim 3 but the index in service has dim 8",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_bad_chunk_is_reported_and_never_published(case, dtype):
    bad, error, match = BAD_OUTPUTS[case]
    state = {"bad": False}

    def encode(enc, chunk):
        return bad(enc, chunk) if state["bad"] else enc(chunk)

    with AsyncReindexer(encoder(), features(), encode=encode, dtype=dtype, chunk_size=16, progress=False) as r:
        before = r.index.snapshot()
        state["bad"] = True
        r.refresh(1)
        with pytest.raises(ReindexError, match=match) as info:
            r.wait(30)
        assert isinstance(info.value.__cause__, error)
        assert r.index.snapshot() is before and not r.busy
        state["bad"] = False
        r.refresh(2)  # the worker goes on
        assert r.wait(30) and r.version == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_float_dtypes_are_converted(dtype):
    def encode(enc, chunk):
        return enc(chunk).to(dtype)

    with AsyncReindexer(encoder(), features(), encode=encode, progress=False) as r:
        r.refresh(1)
        assert r.wait(30) and r.version == 1 and r.index.snapshot().index.dtype == "float32"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError])
def test_any_exception_in_the_encoder_is_reported_and_never_wedges(exc):
    state = {"raise": False}

    def encode(enc, chunk):
        if state["raise"]:
            raise exc("stop")
        return enc(chunk)

    with AsyncReindexer(encoder(), features(), encode=encode, progress=False) as r:
        state["raise"] = True
        r.refresh(1)
        with pytest.raises(ReindexError, match=exc.__name__):
            r.wait(30)
        assert not r.busy and r._worker.is_alive()


def test_a_worker_that_cannot_start_raises_in_the_constructor(monkeypatch):
    def broken(num_threads, nice):
        raise RuntimeError("no threads for you")

    monkeypatch.setattr(reindexer_module, "_pin_worker_threads", broken)
    with pytest.raises(ReindexError, match="re-index worker failed.*no threads for you"):
        AsyncReindexer(encoder(), features(), progress=False)


def test_a_failure_of_the_worker_loop_is_reported_and_refreshes_are_refused():
    with AsyncReindexer(encoder(), features(), progress=False) as r:
        # The loop's own bookkeeping fails (no refresh can cause this): simulate it on
        # the next job by breaking the stats object the loop writes to.
        class Exploding:
            def __getattr__(self, name):
                raise RuntimeError("loop broke")

            def __setattr__(self, name, value):
                raise RuntimeError("loop broke")

        r.stats = Exploding()
        r.refresh(1)
        with pytest.raises(ReindexError, match="loop broke"):
            r.wait(30)
        assert r.wait(1)  # returns: nothing is left running
        with pytest.raises(RuntimeError, match="worker has stopped"):
            r.refresh(2)
