// Small kernels that check the host emulation itself (pyrag._cuda_emu.emulator_selftest):
// one computes a known result through every kind of collective, the others break a CUDA
// rule and must be reported as EmulationError rather than hang or pass silently.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/portability.h"

namespace py = pybind11;

namespace pyrag::emu {
namespace {

using cuda::dynamic_shared;
using cuda::kFullMask;

// sum(threadIdx.x over the block) through shuffles, shared memory, __syncthreads, a ballot,
// and an atomicAdd per block: out = gridDim.x * n(n-1)/2 with n = blockDim.x.
__global__ void block_sum_kernel(long long* out) {
  long long* partial = dynamic_shared<long long>();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  long long v = threadIdx.x;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  v = __shfl_sync(kFullMask, v, 0);
  if (__ballot_sync(kFullMask, lane == 0) != 1u) v = -1;  // exactly lane 0 is lane 0
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
    atomicAdd(out, total);
  }
}

// Half of the block exits, the other half waits at __syncthreads.
__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x < blockDim.x / 2) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Even and odd lanes shuffle from different call sites.
__global__ void divergent_shuffle_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 2 == 0) {
    v = __shfl_xor_sync(kFullMask, v, 1);
  } else {
    v = __shfl_xor_sync(kFullMask, v, 1);
  }
  out[threadIdx.x] = v;
}

// Warp 0's upper half waits at __syncwarp, everybody else at __syncthreads.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x >= 16 && threadIdx.x < 32) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __ballot_sync(0x0000ffffu, 1); }

// Writes one int past the shared memory it asked for.
__global__ void smem_overflow_kernel(int n) {
  int* s = dynamic_shared<int>();
  if (threadIdx.x == 0) s[n] = 1;
}

long long selftest(const std::string& name, int num_warps) {
  if (num_warps < 1 || num_warps > 32) throw std::invalid_argument("num_warps must be in [1, 32]");
  const dim3 block(num_warps * 32);
  std::vector<int> buf(block.x, 0);
  py::gil_scoped_release release;
  if (name == "block_sum") {
    long long out = 0;
    cuda::launch(block_sum_kernel, "block_sum", dim3(3), block, num_warps * sizeof(long long),
                 nullptr, &out);
    return out;
  }
  if (name == "early_exit")
    cuda::launch(early_exit_kernel, "early_exit", dim3(1), block, 0, nullptr, buf.data());
  else if (name == "divergent_shuffle")
    cuda::launch(divergent_shuffle_kernel, "divergent_shuffle", dim3(1), block, 0, nullptr,
                 buf.data());
  else if (name == "deadlock")
    cuda::launch(deadlock_kernel, "deadlock", dim3(1), block, 0, nullptr, buf.data());
  else if (name == "partial_mask")
    cuda::launch(partial_mask_kernel, "partial_mask", dim3(1), block, 0, nullptr, buf.data());
  else if (name == "smem_overflow")
    cuda::launch(smem_overflow_kernel, "smem_overflow", dim3(2), block, 64, nullptr, 16);
  else
    throw std::invalid_argument("unknown selftest " + name);
  return 0;
}

}  // namespace
}  // namespace pyrag::emu

void register_emulator_selftests(py::module_& m) {
  m.def("emulator_selftest", &pyrag::emu::selftest, py::arg("name"), py::arg("num_warps") = 2,
        "Runs one of the emulator's own test kernels: 'block_sum' returns 3 * n(n-1)/2 for n = 32 "
        "* num_warps; "
        "'early_exit', 'divergent_shuffle', 'deadlock', 'partial_mask' and 'smem_overflow' break a "
        "CUDA rule "
        "and raise EmulationError.");
}
