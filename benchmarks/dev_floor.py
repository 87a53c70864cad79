"""Ad-hoc (issue 3 tuning): read bandwidth and fp32 GEMM rate of this machine, measured
the way the floor is defined (torch.sum over a 1.5 GB tensor; torch.mm 256x384 @ 384xN)."""
import time, torch, sys

def best(fn, reps=5):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

if __name__ == "__main__":
    torch.set_num_threads(2)
    x = torch.randn(1_000_000, 384)
    bw = x.numel() * 4 / best(lambda: x.sum())
    q = torch.randn(256, 384)
    xs = x[:200_000]
    gf = 2 * 256 * xs.shape[0] * 384 / best(lambda: q @ xs.T)
    print(f"read bandwidth {bw/1e9:.1f} GB/s   fp32 GEMM {gf/1e9:.1f} GFLOP/s")
