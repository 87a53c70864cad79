import sys
from pathlib import Path

import pytest
import torch

# Code outside the package that tests exercise: the benchmarks' corpora, cloze tasks and
# toy LMs (benchmarks/), and the developer tools (tools/). pytest runs with
# --import-mode=importlib, which adds neither to sys.path.
ROOT = Path(__file__).resolve().parents[1]
for folder in ("benchmarks", "tools"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))


@pytest.fixture
def one_torch_thread():
    """For tests of tiny models: a second OpenMP thread buys nothing, and on a busy 2-core
    machine its barrier waits cost 10x (measured: a TinyClozeLM step took 0.24 s with 1
    thread, 2-4 s with 2, while other jobs loaded the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
