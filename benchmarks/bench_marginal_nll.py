"""Benchmark: marginal NLL forward + backward (pyrag::marginal_nll) on the CPU, in the
sequence form [B, K] and the token form [B, K, T].

Baseline: the plain-PyTorch composition (pyrag.reference.marginal_nll under autograd).
Contender: the fused C++ kernel (backend="cpu").

    pytest benchmarks/bench_marginal_nll.py --benchmark-enable
    python benchmarks/bench_marginal_nll.py
"""

import pytest
import torch
import torch.utils.benchmark as tb

import pyrag
from pyrag import reference

SHAPES = [(64, 16, None), (256, 100, None), (32, 16, 64), (64, 100, 32)]  # (B, K, T)


def setup_marginal(b, k, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g, requires_grad=True)
    lm = (-6 * torch.rand((b, k) if t is None else (b, k, t), generator=g)).requires_grad_()
    mask = torch.rand(b, k, generator=g) < 0.9
    return s, lm, mask


def step(provider, s, lm, mask):
    if provider == "torch":
        loss = reference.marginal_nll(s, lm, 0.5, mask).mean()
    else:
        loss = pyrag.marginal_nll(s, lm, tau_retriever=0.5, mask=mask, backend="cpu")
    loss.backward()
    s.grad = lm.grad = None


@pytest.mark.parametrize("b,k,t", SHAPES)
@pytest.mark.parametrize("provider", ["torch", "pyrag"])
def test_marginal_nll_forward_backward(benchmark, provider, b, k, t):
    s, lm, mask = setup_marginal(b, k, t)
    benchmark(step, provider, s, lm, mask)


def main():
    print(f"marginal_nll forward+backward, {torch.get_num_threads()} threads: time (us) and torch / pyrag")
    for b, k, t in SHAPES:
        s, lm, mask = setup_marginal(b, k, t)
        times = {
            p: tb.Timer("step(p, s, lm, mask)", globals=dict(step=step, p=p, s=s, lm=lm, mask=mask))
            .blocked_autorange(min_run_time=1.0)
            .median
            * 1e6
            for p in ("torch", "pyrag")
        }
        print(
            f"  B={b:5d} K={k:5d} T={t!s:>4}  torch {times['torch']:9.1f}  pyrag {times['pyrag']:9.1f}  "
            f"ratio {times['torch'] / times['pyrag']:5.2f}x"
        )


if __name__ == "__main__":
    main()
