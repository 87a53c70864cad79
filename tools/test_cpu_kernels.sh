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
# On Debian / Ubuntu run as root (CI, on a fresh machine), whatever is missing (cmake,
# ninja, g++, the AArch64 cross compiler, qemu-user) is installed with apt-get, in one
# run. Exits non-zero on any failure; prints how long it took.
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
trap 'rc=$?; [ $rc -eq 0 ] || echo "CPU kernel tests FAILED (exit $rc) after $(( $(date +%s) - start )) s" >&2' EXIT

# What is missing, as Debian packages; installed in one apt-get run when we are root
# (CI on a fresh Debian / Ubuntu machine), else named in the error.
missing=()
want() {  # want <command> <package>: queue the package if the command is missing
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
want cmake cmake
want ninja ninja-build
if [ "$native" -eq 1 ]; then want g++ g++; fi
if [ "$arm" -eq 1 ]; then
  want aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
  # qemu-user (Debian, Ubuntu) or qemu-user-static (qemu-aarch64-static) both do.
  command -v qemu-aarch64 >/dev/null 2>&1 || command -v qemu-aarch64-static >/dev/null 2>&1 ||
    missing+=(qemu-user)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing tools; install the Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
generator=(-G Ninja -DCMAKE_BUILD_TYPE=Release)

if [ "$native" -eq 1 ]; then
  echo "== native build ($(uname -m))"
  cmake -S csrc/tests -B "$build/native" "${generator[@]}" >/dev/null
  cmake --build "$build/native" -j "$jobs"
  "$build/native/test_cpu_kernels"
fi

if [ "$arm" -eq 1 ]; then
  qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static)
  echo "== AArch64 cross build"
  # Static: qemu-user then needs no AArch64 sysroot to load it.
  cmake -S csrc/tests -B "$build/aarch64" "${generator[@]}" -DCMAKE_SYSTEM_NAME=Linux \
    -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DPYRAG_STATIC=ON >/dev/null
  cmake --build "$build/aarch64" -j "$jobs"
  test=$build/aarch64/test_cpu_kernels
  echo "== qemu-aarch64 -cpu max"
  "$qemu" -cpu max "$test" --expect-isas scalar,neon,neon_dotprod,neon_bf16
  echo "== qemu-aarch64 -cpu neoverse-n1"
  "$qemu" -cpu neoverse-n1 "$test" --quick --expect-isas scalar,neon,neon_dotprod
  echo "== qemu-aarch64 -cpu cortex-a53"
  "$qemu" -cpu cortex-a53 "$test" --quick --expect-isas scalar,neon
fi

echo "CPU kernel tests passed in $(( $(date +%s) - start )) s"
