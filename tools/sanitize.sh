#!/usr/bin/env bash
# pyrag._C under AddressSanitizer + UndefinedBehaviorSanitizer, as CI runs it: builds the
# extension out of tree with the CMake option PYRAG_SANITIZE=ON (no LTO, -O1 -g1),
# proves on a planted bug that a report fails this job, then runs the CPU kernel and index
# tests against that build, on every ISA path the machine has. Exits non-zero on any
# sanitizer report (from pytest or any process it starts) or failed test; prints its wall
# time either way.
#
#   tools/sanitize.sh                 # build (incremental) and test
#   tools/sanitize.sh -k int8         # extra arguments go to pytest
#
# Run it in the environment the tests run in (CI's venv: torch and pyrag's [test] extras).
# It finds or installs the rest: cmake, ninja and pybind11 from PyPI when missing; the
# C++ compiler's libasan / libubsan must be there (GCC or Clang with their runtimes).
# Python itself is not instrumented, so libasan is preloaded into it; leak checking is off
# (CPython and torch keep allocations alive until exit by design).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
trap 'echo "== tools/sanitize.sh: exit $?, $((SECONDS - start)) s wall"' EXIT

build=${PYRAG_SANITIZE_BUILD:-build/sanitize}
python -c "import torch, pytest, hypothesis" 2>/dev/null || {
  echo "tools/sanitize.sh: run it where pyrag's tests run (pip install -e '.[test]'): torch, pytest or hypothesis is missing" >&2
  exit 2
}
need=()
python -c "import pybind11" 2>/dev/null || need+=(pybind11)
command -v cmake >/dev/null || need+=("cmake>=3.18")
command -v ninja >/dev/null || need+=(ninja)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  python -m pip install -q "${need[@]}"
fi

# -O1 and line tables only (-g1): reports still name file and line, and the AVX-512
# translation units compile about 4x faster than at -O2 -g (56 s against 211 s).
cmake -S . -B "$build" -G Ninja -DSKBUILD_PROJECT_NAME=pyrag -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DPYRAG_SANITIZE=ON -DPYRAG_CUDA=OFF -DPYRAG_CUDA_EMU=OFF \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build" --target _C -j "$(nproc)"
so=$(ls "$build"/_C.*.so)
for lib in libasan libubsan; do
  ldd "$so" | grep -q "$lib" || { echo "$so is not linked with $lib: not a sanitizer build" >&2; exit 1; }
done
echo "== sanitizer build of pyrag._C: $so ($((SECONDS - start)) s)"

compiler=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
asan=$("$compiler" -print-file-name=libasan.so)
[ -e "$asan" ] || { echo "$compiler has no libasan.so: install its sanitizer runtime" >&2; exit 1; }
# libstdc++ too: ASan resolves the real __cxa_throw when it starts, and python does not
# link libstdc++, so without it the first C++ exception (torch's, pybind11's) aborts.
export LD_PRELOAD
LD_PRELOAD="$asan $("$compiler" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Every report goes to stderr, which is kept in $out and searched: a report in a child
# process whose exit status nobody checks still fails the job. (UBSan ignores log_path
# when it shares the process with ASan, so report files would miss its reports.)
out="$(cd "$build" && pwd)/sanitize.out"
REPORT='ERROR: AddressSanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'

# The canary: a planted heap overflow and a planted signed overflow, built and run as
# the tests will run. If either goes unreported, this job could not fail: stop here.
canary="$build/canary"
mkdir -p "$canary"
cat >"$canary/canary.cpp" <<'EOF'
#include <cstdlib>
extern "C" int heap_overflow(int i) { int* p = static_cast<int*>(std::malloc(4 * sizeof(int))); int v = p[i]; std::free(p); return v; }
extern "C" int signed_overflow(int a) { return a + 1; }
EOF
# One library per sanitizer, so that each planted bug meets the one it is planted for
# (UBSan's object-size check would otherwise report the heap overflow first).
for check in "address;heap_overflow(4);AddressSanitizer: heap-buffer-overflow" \
  "undefined;signed_overflow(2**31 - 1);runtime error: signed integer overflow"; do
  IFS=";" read -r kind call report <<<"$check"
  "$compiler" -shared -fPIC -O1 -g1 "-fsanitize=$kind" -fno-sanitize-recover=all "$canary/canary.cpp" -o "$canary/$kind.so"
  if (python -c "import ctypes; ctypes.CDLL('$canary/$kind.so').$call" 2>"$out") 2>/dev/null; then
    echo "the planted bug $call ran to the end: sanitizer reports would not fail this job" >&2
    exit 1
  fi
  grep -q "$report" "$out" || { echo "the planted bug $call gave no '$report' report:" >&2; cat "$out" >&2; exit 1; }
done
echo "== canary: planted heap and signed overflows reported and fatal"

export PYRAG_SANITIZED_C="$so"
# tools/sanitized_extension.py puts that build in place of pyrag._C and checks it is the one loaded.
# --capture=sys: pytest captures Python's sys.stdout / sys.stderr only, so a report the C++
# code writes to fd 2 reaches $out even when it aborts the process in the middle of a test.
set +o pipefail
PYTHONPATH="tools${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -p sanitized_extension -q -p no:cacheprovider \
  --capture=sys \
  tests/test_topk_scores.py tests/test_topk_scores_isa.py tests/test_dense_index.py tests/test_quantized_index.py \
  tests/test_index_contract.py tests/test_lsr.py tests/test_marginal_nll.py tests/test_reliability_errors.py "$@" \
  2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -o pipefail
if grep -Eq "$REPORT" "$out"; then
  echo "== sanitizers: REPORTS (pytest exit $status):" >&2
  grep -En -A3 "$REPORT" "$out" | head -100 >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "== sanitizers: no report, but pytest failed (exit $status)" >&2
  exit "$status"
fi
echo "== sanitizers: no report, every test passed"
