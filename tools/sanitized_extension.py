"""pytest plugin for tools/sanitize.sh: loads the sanitizer build of pyrag._C named by
$PYRAG_SANITIZED_C as pyrag._C before pyrag is imported, and fails the session if pyrag
ends up using any other build (the tests would then prove nothing)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import pytest

_PATH = os.environ["PYRAG_SANITIZED_C"]
_loader = importlib.machinery.ExtensionFileLoader("pyrag._C", _PATH)
_spec = importlib.util.spec_from_file_location("pyrag._C", _PATH, loader=_loader)
assert _spec is not None
_module = importlib.util.module_from_spec(_spec)
_loader.exec_module(_module)
sys.modules["pyrag._C"] = _module


def pytest_sessionstart(session: pytest.Session) -> None:
    from pyrag.ops._registry import compiled_extension

    loaded = compiled_extension().__file__
    if os.path.realpath(loaded) != os.path.realpath(_PATH):
        raise pytest.UsageError(f"pyrag._C is {loaded}, not the sanitizer build {_PATH}")


def pytest_report_header() -> str:
    return f"pyrag._C: sanitizer build {_PATH}"
