#!/bin/sh
# Compiler launcher of the pyrag._cuda build (CMake's CUDA_COMPILER_LAUNCHER): runs the
# nvcc command given after the first argument and keeps a copy of its diagnostics, which
# include the `ptxas -v` resource usage of every kernel and architecture (registers,
# spills, shared memory), in directory $1 as <object>.txt, for pyrag.gpu_report_cuda.
dir=$1
shift
obj=unknown
prev=
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then obj=$(basename "$arg"); fi
  prev=$arg
done
mkdir -p "$dir"
"$@" 2>"$dir/$obj.tmp"
rc=$?
cat "$dir/$obj.tmp" >&2
mv "$dir/$obj.tmp" "$dir/$obj.txt"
exit $rc
