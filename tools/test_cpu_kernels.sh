#!/usr/bin/env bash
# Builds the CPU kernels' standalone C++ tests (csrc/tests) and runs them: natively, on
# every x86-64 path this CPU has, and cross-compiled for AArch64 under qemu-aarch64 on
# three emulated CPUs, so that every NEON path and every fallback runs:
#   max          neon, neon_dotprod (sdot) and neon_bf16 (bfmlalb/t)   full test
#   neoverse-n1  neon and neon_dotprod, no BF16: bf16 falls back        --quick
#   cortex-a53   neon only: int8 and bf16 fall back                     --quick
# Every result must equal the score definitions bit for bit (see the test's header).
#
#   tools/test_cpu_kernels.sh [--native-only | --arm-only] [--build-dir DIR]
#
# On Debian (CI runs as root on a fresh machine) a missing cross compiler or qemu-user is
# installed with apt-get. Exits non-zero on any failure; prints how long it took.
set -euo pipefail

cd "$(dirname "$0")/.."
native=1
arm=1
build=build/cpu-kernel-tests
while [ $# -gt 0 ]; do
  case "$1" in
    --native-only) arm=0 ;;
    --arm-only) native=0 ;;
    --build-dir) build=$2; shift ;;
    *) echo "usage: $0 [--native-only | --arm-only] [--build-dir DIR]" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
jobs=$(nproc 2>/dev/null || echo 2)

need() {  # need <command> <debian package>...: install the packages if the command is missing
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $cmd not found; install: $*" >&2
    exit 1
  fi
  echo "installing $* (for $cmd)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

need cmake cmake
need ninja ninja-build
generator=(-G Ninja -DCMAKE_BUILD_TYPE=Release)

if [ "$native" -eq 1 ]; then
  need g++ g++
  echo "== native build ($(uname -m))"
  cmake -S csrc/tests -B "$build/native" "${generator[@]}" >/dev/null
  cmake --build "$build/native" -j "$jobs"
  "$build/native/test_cpu_kernels"
fi

if [ "$arm" -eq 1 ]; then
  need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
  need qemu-aarch64 qemu-user
  echo "== AArch64 cross build"
  # Static: qemu-user then needs no AArch64 sysroot to load it.
  cmake -S csrc/tests -B "$build/aarch64" "${generator[@]}" -DCMAKE_SYSTEM_NAME=Linux \
    -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DPYRAG_STATIC=ON >/dev/null
  cmake --build "$build/aarch64" -j "$jobs"
  test=$build/aarch64/test_cpu_kernels
  echo "== qemu-aarch64 -cpu max"
  qemu-aarch64 -cpu max "$test" --expect-isas scalar,neon,neon_dotprod,neon_bf16
  echo "== qemu-aarch64 -cpu neoverse-n1"
  qemu-aarch64 -cpu neoverse-n1 "$test" --quick --expect-isas scalar,neon,neon_dotprod
  echo "== qemu-aarch64 -cpu cortex-a53"
  qemu-aarch64 -cpu cortex-a53 "$test" --quick --expect-isas scalar,neon
fi

echo "CPU kernel tests passed in $(( $(date +%s) - start )) s"
