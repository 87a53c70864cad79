"""Every loader of a pyrag file format, fuzzed (issue 18): each generated file loads and
works, or raises pyrag.FormatError; any other exception fails. CI runs a few cases per
loader; tools/fuzz_loaders.py runs the same strategies for the measured run."""

from __future__ import annotations

import pytest
from fuzz_loaders import LOADERS, close, fuzz

CASES = 40  # per loader; the measured run: python tools/fuzz_loaders.py --cases 14000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _close_cached_trainer():
    yield
    close()


@pytest.mark.parametrize("loader", LOADERS, ids=[loader.name for loader in LOADERS])
def test_fuzzed_files_load_or_raise_a_format_error(loader):
    outcomes = fuzz(loader, CASES, seed=18)
    assert sum(outcomes.values()) >= CASES // 2
    # The strategies reach both sides: files that load, and files each loader rejects.
    assert outcomes["ok"] > 0 and sum(v for k, v in outcomes.items() if k != "ok") > 0, outcomes
