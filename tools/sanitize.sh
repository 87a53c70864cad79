#!/usr/bin/env bash
# pyrag._C under AddressSanitizer + UndefinedBehaviorSanitizer: builds the extension out of
# tree with the CMake option PYRAG_SANITIZE=ON (no LTO, RelWithDebInfo), then runs the CPU
# kernel and index tests against that build, on every ISA path the machine has. Any report
# fails the run (-fno-sanitize-recover=all, halt_on_error). CI calls it after the tests.
#
#   tools/sanitize.sh                 # build (incremental) and test
#   tools/sanitize.sh -k int8         # extra arguments go to pytest
#
# Python itself is not instrumented, so libasan is preloaded into it; leak checking is off
# (CPython and torch keep allocations alive until exit by design).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
build=${PYRAG_SANITIZE_BUILD:-build/sanitize}
python -c "import pybind11" 2>/dev/null || pip install -q pybind11
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S . -B "$build" "${generator[@]}" -DSKBUILD_PROJECT_NAME=pyrag -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPYRAG_SANITIZE=ON -DPYRAG_CUDA=OFF -DPYRAG_CUDA_EMU=OFF \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build" --target _C -j "$(nproc)"
so=$(ls "$build"/_C.*.so)
for lib in libasan libubsan; do
  ldd "$so" | grep -q "$lib" || { echo "$so is not linked with $lib: not a sanitizer build" >&2; exit 1; }
done
echo "== sanitizer build of pyrag._C: $so ($((SECONDS - start)) s)"

compiler=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
# libstdc++ too: ASan resolves the real __cxa_throw when it starts, and python does not
# link libstdc++, so without it the first C++ exception (torch's, pybind11's) aborts.
export LD_PRELOAD
LD_PRELOAD="$("$compiler" -print-file-name=libasan.so) $("$compiler" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYRAG_SANITIZED_C="$so"
# tools/sanitized_extension.py puts that build in place of pyrag._C and checks it is the one loaded.
PYTHONPATH="tools${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -p sanitized_extension -q -p no:cacheprovider \
  tests/test_topk_scores.py tests/test_topk_scores_isa.py tests/test_dense_index.py tests/test_quantized_index.py \
  tests/test_index_contract.py tests/test_lsr.py tests/test_marginal_nll.py tests/test_reliability_errors.py "$@"
echo "== sanitizers: no report in $((SECONDS - start)) s"
