// Host emulation of the CUDA execution model, for the PYRAG_CUDA_EMU build (pyrag._cuda_emu).
//
// The kernels in csrc/cuda/*.cu compile unchanged under g++ against this header (reached
// through cuda/portability.h only). The model:
//   - a launch runs the grid's blocks one after another;
//   - a block's threads are OS threads; __syncthreads is a block-wide barrier;
//   - warp collectives (__shfl*_sync, __ballot_sync, __any/__all_sync, __syncwarp, mma)
//     go through a per-warp exchange buffer and a warp barrier;
//   - dynamic shared memory is one buffer per block, filled with 0xFF bytes (NaN floats,
//     -1 integers) before each block so that reading it before writing shows;
//   - atomics are std::atomic_ref.
// Where the hardware leaves behaviour undefined the emulation stops the launch with
// EmulationError instead of guessing: a barrier reached from two call sites or after some
// of its threads exited, a partial-warp mask, a deadlock (every live thread of a block
// waiting), a write past the requested shared memory. Static `__shared__` arrays are not
// emulated (a kernel would silently share them between launches): kernels use
// pyrag::cuda::dynamic_shared<T>() instead.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <stdexcept>
#include <type_traits>

// ---- CUDA's built-in types and variables --------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// Set by the emulator on each of its threads before a block runs.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace pyrag::emu {

// Raised (to Python as pyrag._cuda_emu.EmulationError) when a launch is invalid or a
// kernel does something the hardware leaves undefined.
class EmulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bytes of one lane's slot in the warp exchange buffer.
constexpr std::size_t kSlotBytes = 64;
// Per-block limits of the hardware the kernels target (sm_90: 227 KiB of shared memory).
constexpr std::size_t kMaxSharedBytes = 227 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;

// Runs body() as every thread of every block of the grid; returns when all finished.
// Throws EmulationError with `kernel_name` and the block on failure.
void launch(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, const char* kernel_name,
            const std::function<void()>& body);

// Warp collective: publishes this lane's `bytes` (<= kSlotBytes) and, once all 32 lanes
// of the warp published from the same call site, returns the warp's 32 slots
// (slot of lane L at L * kSlotBytes).
const unsigned char* warp_exchange(const void* mine, std::size_t bytes, unsigned mask,
                                   const char* op, const std::source_location& site);
void sync_block(const std::source_location& site);
void sync_warp(unsigned mask, const std::source_location& site);
unsigned char* dynamic_shared_memory();

// D = A * B + C for mma.m16n8k16.row.col with f16 (bf16 = false) or bf16 operands and fp32
// accumulators, in the PTX fragment layout; products and sums in plain fp32 arithmetic.
void mma_m16n8k16(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                  bool bf16, const std::source_location& site);

// IEEE binary16 / bfloat16 <-> float, round to nearest even (what __float2half_rn and
// __float2bfloat16_rn do on the device).
std::uint16_t float_to_f16_bits(float x);
float f16_bits_to_float(std::uint16_t h);
std::uint16_t float_to_bf16_bits(float x);
float bf16_bits_to_float(std::uint16_t h);

template <class T>
T lane_value(const unsigned char* slots, int lane) {
  T v;
  std::memcpy(&v, slots + static_cast<std::size_t>(lane) * kSlotBytes, sizeof(T));
  return v;
}

}  // namespace pyrag::emu

// ---- CUDA's intrinsics ----------------------------------------------------------------
inline void __syncthreads(std::source_location site = std::source_location::current()) {
  pyrag::emu::sync_block(site);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location site = std::source_location::current()) {
  pyrag::emu::sync_warp(mask, site);
}

// Lane `src` of the calling lane's width-segment (CUDA semantics for width < 32).
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize,
              std::source_location site = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= pyrag::emu::kSlotBytes);
  const unsigned char* slots = pyrag::emu::warp_exchange(&v, sizeof(T), mask, "__shfl_sync", site);
  const int lane = static_cast<int>(threadIdx.x % warpSize);
  const int base = lane / width * width;
  return pyrag::emu::lane_value<T>(slots, base + ((src % width) + width) % width);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize,
                  std::source_location site = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= pyrag::emu::kSlotBytes);
  const unsigned char* slots =
      pyrag::emu::warp_exchange(&v, sizeof(T), mask, "__shfl_xor_sync", site);
  const int lane = static_cast<int>(threadIdx.x % warpSize);
  const int src = lane ^ lane_mask;
  // A source outside the caller's width-segment returns the caller's own value.
  return pyrag::emu::lane_value<T>(slots, src / width == lane / width ? src : lane);
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize,
                   std::source_location site = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= pyrag::emu::kSlotBytes);
  const unsigned char* slots =
      pyrag::emu::warp_exchange(&v, sizeof(T), mask, "__shfl_down_sync", site);
  const int lane = static_cast<int>(threadIdx.x % warpSize);
  const int src = lane + static_cast<int>(delta);
  return pyrag::emu::lane_value<T>(slots,
                                   src / width == lane / width && src < warpSize ? src : lane);
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location site = std::source_location::current()) {
  const int bit = predicate != 0;
  const unsigned char* slots =
      pyrag::emu::warp_exchange(&bit, sizeof bit, mask, "__ballot_sync", site);
  unsigned out = 0;
  for (int lane = 0; lane < warpSize; ++lane)
    out |= unsigned(pyrag::emu::lane_value<int>(slots, lane)) << lane;
  return out;
}

inline int __any_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, predicate, site) != 0;
}

inline int __all_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return __ballot_sync(mask, predicate, site) == mask;
}

inline int __popc(unsigned x) { return std::popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

template <class T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <class T>
T atomicOr(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}

template <class T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
