"""pytest setup for the benchmark suites: `pytest benchmarks/ --benchmark-only`.

pyproject's addopts holds --benchmark-disable, so that a plain `pytest benchmarks/`
runs each benchmark once as a quick functional check. pytest-benchmark refuses
--benchmark-only together with --benchmark-disable; asking for --benchmark-only
means "time them", so it re-enables timing here (as --benchmark-enable would).
"""

import sys
from pathlib import Path

import pytest

# The suites import their shared modules (floor, topk_cases, ...) from this folder;
# pytest runs with --import-mode=importlib, which does not add it to sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True


def pytest_collect_file(file_path, parent):
    """Collects the suites, named bench_<op>.py after their op (ARCHITECTURE.md).

    A file named on the command line is collected by pytest itself already.
    """
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter):
    """The side-by-side ratio table of every topk suite that was timed in this session."""
    import topk_cases
    from report_topk_scores import format_report

    for res in topk_cases.SESSION_RESULTS:
        if res.times:
            terminalreporter.write_sep("=", "pyrag top-k: ratios measured side by side")
            terminalreporter.write_line(format_report(res))
