"""Benchmark: LSR loss forward + backward (pyrag::lsr_kl) on the CPU.

Baseline: the plain-PyTorch composition users write today (pyrag.reference.lsr_kl, a
masked log_softmax pair and a weighted sum, differentiated by autograd). Contender: the
fused C++ kernel (backend="cpu"), whose backward recomputes the softmaxes from inputs.

    pytest benchmarks/bench_lsr.py --benchmark-enable     # pytest-benchmark table
    python benchmarks/bench_lsr.py                        # ratios side by side
"""

import pytest
import torch
import torch.utils.benchmark as tb

import pyrag
from pyrag import reference

SHAPES = [(64, 16), (256, 100), (1024, 1024)]  # (B, K)


def setup_lsr(b, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g, requires_grad=True)
    lm = torch.randn(b, k, generator=g)
    mask = torch.rand(b, k, generator=g) < 0.9
    return s, lm, mask


def step(provider, s, lm, mask):
    if provider == "torch":
        loss = reference.lsr_kl(s, lm, 0.5, 1.0, mask, "reverse").mean()
    else:
        loss = pyrag.lsr_loss(s, lm, tau_retriever=0.5, mask=mask, direction="reverse", backend="cpu")
    loss.backward()
    s.grad = None


@pytest.mark.parametrize("b,k", SHAPES)
@pytest.mark.parametrize("provider", ["torch", "pyrag"])
def test_lsr_kl_forward_backward(benchmark, provider, b, k):
    s, lm, mask = setup_lsr(b, k)
    benchmark(step, provider, s, lm, mask)


def main():
    print(f"lsr_kl forward+backward, {torch.get_num_threads()} threads: time (us) and torch / pyrag")
    for b, k in SHAPES:
        s, lm, mask = setup_lsr(b, k)
        times = {
            p: tb.Timer("step(p, s, lm, mask)", globals=dict(step=step, p=p, s=s, lm=lm, mask=mask))
            .blocked_autorange(min_run_time=1.0)
            .median
            * 1e6
            for p in ("torch", "pyrag")
        }
        print(
            f"  B={b:5d} K={k:5d}  torch {times['torch']:9.1f}  pyrag {times['pyrag']:9.1f}  "
            f"ratio {times['torch'] / times['pyrag']:5.2f}x"
        )


if __name__ == "__main__":
    main()
