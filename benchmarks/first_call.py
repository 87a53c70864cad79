"""The cost of the first pyrag call in a fresh process, against the second: what a
serving process pays on its first request.

    python benchmarks/first_call.py [--runs 5]

Each run is a new interpreter: `import pyrag`, then pyrag.topk_scores twice on the same
small inputs, then a loss with backward. Prints the import time, the first and second
call, their difference (the bar: <= 50 ms) and whether torch._dynamo was imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import pyrag
t2 = time.perf_counter()
q, x = torch.randn(4, 64), torch.randn(1000, 64)
def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t
first = timed(lambda: pyrag.topk_scores(q, x, 5))
second = timed(lambda: pyrag.topk_scores(q, x, 5))
s = torch.randn(4, 8, requires_grad=True)
loss_first = timed(lambda: pyrag.lsr_loss(s, torch.randn(4, 8)).backward())
loss_second = timed(lambda: pyrag.lsr_loss(s, torch.randn(4, 8)).backward())
print(json.dumps({"torch": t1 - t0, "pyrag": t2 - t1, "first": first, "second": second,
                  "loss_first": loss_first, "loss_second": loss_second,
                  "dynamo": "torch._dynamo" in sys.modules, "isa": pyrag.cpu_isa()}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    runs = [json.loads(subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(args.runs)]  # fmt: skip
    med = {k: statistics.median(r[k] for r in runs) for k in ("torch", "pyrag", "first", "second", "loss_first",
                                                               "loss_second")}  # fmt: skip
    print(f"{args.runs} fresh processes, CPU path {runs[0]['isa']} (medians):")
    print(f"  import torch {med['torch'] * 1e3:.0f} ms, import pyrag {med['pyrag'] * 1e3:.0f} ms")
    print(
        f"  topk_scores: first {med['first'] * 1e3:.2f} ms, second {med['second'] * 1e3:.2f} ms, "
        f"first - second {(med['first'] - med['second']) * 1e3:.2f} ms (the bar: <= 50 ms)"
    )
    print(f"  lsr_loss + backward: first {med['loss_first'] * 1e3:.2f} ms, second {med['loss_second'] * 1e3:.2f} ms")
    print(f"  torch._dynamo imported: {any(r['dynamo'] for r in runs)}")


if __name__ == "__main__":
    main()
