"""The docs say what the code does: the op x backend table of docs/architecture.md is the
registry's."""

from __future__ import annotations

import re
from pathlib import Path

import pyrag
from pyrag.ops import OPS, implemented_backends

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("reference", "cpu", "triton", "cuda", "cuda_emu")


def test_the_op_backend_table_matches_the_registry():
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = re.search(r"<!-- op-backend-table -->\n(.*?)<!-- /op-backend-table -->", text, re.S)
    assert table, "docs/architecture.md lost its op x backend table"
    rows = {}
    for line in table.group(1).strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = {b for b, c in zip(COLUMNS, cells[1:]) if c == "yes"}
    assert set(rows) == set(OPS)
    for op in OPS:
        assert rows[op] == set(implemented_backends(op)), op


def test_every_public_name_is_documented():
    api = (ROOT / "docs" / "api.md").read_text()
    for name in pyrag.__all__:
        obj = getattr(pyrag, name)
        if callable(obj):
            assert f"pyrag.{name}" in api, f"{name} is missing from docs/api.md"


def test_a_first_eager_call_imports_no_dynamo():
    """torch.library.custom_op imports torch._dynamo on an op's first eager call (seconds);
    pyrag's ops are registered so that they do not."""
    import subprocess
    import sys

    code = (
        "import sys, torch, pyrag\n"
        "pyrag.topk_scores(torch.randn(2, 8), torch.randn(50, 8), 3)\n"
        "s = torch.randn(2, 4, requires_grad=True)\n"
        "pyrag.lsr_loss(s, torch.randn(2, 4)).backward()\n"
        "pyrag.marginal_nll(s, torch.randn(2, 4)).backward()\n"
        "index = pyrag.DenseIndex(8, 'int8'); index.add(torch.randn(20, 8)); index.search(torch.randn(1, 8), 2)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
