"""pyrag.contrastive_loss (DPR in-batch negatives) against pyrag.reference, alone and
across torch.distributed ranks."""

import math
import subprocess
import sys

import pytest
import torch

import pyrag
from pyrag import reference


def make_batch(b, dim, negatives=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, dim, generator=g).to(dtype)
    d = (q.float() + 0.5 * torch.randn(b, dim, generator=g)).to(dtype)  # positives resemble their queries
    n = torch.randn(negatives, dim, generator=g).to(dtype) if negatives else None
    return q, d, n


@pytest.mark.parametrize("b,dim,negatives", [(1, 3, 0), (4, 8, 0), (5, 16, 7), (32, 64, 32)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_matches_reference(b, dim, negatives, dtype, atol, tau):
    q, d, n = make_batch(b, dim, negatives, dtype)
    out = pyrag.contrastive_loss(q, d, tau=tau, negatives=n)
    assert out.dtype == dtype and out.dim() == 0
    torch.testing.assert_close(out, reference.contrastive_loss(q, d, tau, n), atol=atol, rtol=atol)


def test_gradcheck_reaches_queries_passages_and_negatives():
    q, d, n = make_batch(4, 5, 3, torch.float64)
    args = tuple(t.requires_grad_() for t in (q, d, n))
    assert torch.autograd.gradcheck(lambda a, b, c: pyrag.contrastive_loss(a, b, tau=0.3, negatives=c), args)


def test_separable_batch_has_small_loss():
    q = torch.eye(4) * 10
    assert pyrag.contrastive_loss(q, q).item() < 1e-6
    assert pyrag.contrastive_loss(q, q.roll(1, dims=0)).item() > 10


def test_empty_batch_gives_zero():
    q = torch.empty(0, 3, requires_grad=True)
    loss = pyrag.contrastive_loss(q, torch.empty(0, 3))
    loss.backward()
    assert loss.item() == 0


@pytest.mark.parametrize("tau", [0.0, -1.0, math.inf, math.nan])
def test_bad_tau(tau):
    q, d, _ = make_batch(2, 3)
    with pytest.raises(ValueError, match="tau"):
        pyrag.contrastive_loss(q, d, tau=tau)


def test_bad_shapes():
    q, d, _ = make_batch(3, 4)
    with pytest.raises(ValueError, match="row i of d is the positive"):
        pyrag.contrastive_loss(q, d[:2])
    with pytest.raises(ValueError, match="negatives must be"):
        pyrag.contrastive_loss(q, d, negatives=torch.randn(2, 5))
    with pytest.raises(ValueError, match="2-D"):
        pyrag.contrastive_loss(q[0], d[0])


# A worker of the distributed test: loads the whole world's data, keeps its own shard
# as the differentiable inputs, and saves its loss and gradients.
_WORKER = r"""
import sys, torch, torch.distributed as dist, pyrag
rank, world, init_file, data_file, out_file = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
q, d, n = (t.clone().requires_grad_() for t in torch.load(data_file)[rank])
loss = pyrag.contrastive_loss(q, d, tau=0.5, negatives=n if n.shape[0] else None)
loss.backward()
torch.save({"loss": loss.detach(), "q": q.grad, "d": d.grad, "n": n.grad}, out_file)
dist.barrier()
dist.destroy_process_group()
"""


def test_distributed_gathers_negatives_and_keeps_local_gradients(tmp_path):
    # Ranks hold different numbers of queries and hard negatives.
    shards = []
    for rank, (b, negatives) in enumerate([(3, 2), (2, 0)]):
        q, d, n = make_batch(b, 4, negatives, torch.float64, seed=rank)
        shards.append((q, d, n if n is not None else torch.empty(0, 4, dtype=torch.float64)))
    torch.save(shards, tmp_path / "data.pt")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(rank),
                "2",
                str(tmp_path / "init"),
                str(tmp_path / "data.pt"),
                str(tmp_path / f"out{rank}.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    offsets = [0, shards[0][0].shape[0]]
    for rank in range(2):
        # Single-process truth: this rank's queries against every rank's passages, then
        # every rank's negatives; only this rank's rows carry gradient.
        q, d, n = (t.clone().requires_grad_() for t in shards[rank])
        docs = [d if r == rank else shards[r][1] for r in range(2)]
        negs = [n if r == rank else shards[r][2] for r in range(2)]
        logits = q @ torch.cat(docs + negs).T / 0.5
        labels = torch.arange(offsets[rank], offsets[rank] + q.shape[0])
        expected = torch.nn.functional.cross_entropy(logits, labels)
        expected.backward()
        got = torch.load(tmp_path / f"out{rank}.pt")
        torch.testing.assert_close(got["loss"], expected.detach())
        torch.testing.assert_close(got["q"], q.grad)
        torch.testing.assert_close(got["d"], d.grad)
        if n.shape[0]:
            torch.testing.assert_close(got["n"], n.grad)
