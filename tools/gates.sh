#!/usr/bin/env bash
# The gates every change passes before the tests (CI runs them from .ci/run):
# lint, format, types, C++ format, and the docs built with warnings as errors.
# Needs `pip install -e ".[dev]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
echo "== ruff check";        ruff check .
echo "== ruff format";       ruff format --check .
echo "== mypy (pyrag/)";     mypy
if [ -f .clang-format ]; then
  echo "== clang-format (csrc/)"
  find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | sort | xargs clang-format --dry-run --Werror
fi
echo "== mkdocs build --strict"
site=$(mktemp -d)
mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
echo "gates passed in $((SECONDS - start)) s"
