// One kernel source, two compilers. csrc/cuda/*.cu are compiled by nvcc into pyrag._cuda
// and, with PYRAG_CUDA_EMU defined, by g++ into pyrag._cuda_emu against the host
// emulation in cuda/emu/runtime.h. Kernel bodies use CUDA's own names (threadIdx,
// __syncthreads, __shfl_xor_sync, atomicOr, ...), which the emulation provides; the few
// things that need a different spelling on each side live here and only here:
//   launch()              <<<...>>> plus the error check (one place for every launch);
//   dynamic_shared<T>()   `extern __shared__` (the only kind of shared memory kernels use);
//   mma_m16n8k16<E>()     the tensor-core instruction (inline PTX / fragment arithmetic);
//   f16/bf16 conversions, is_finite, exp_of, log_of.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/api.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error \
    "pyrag's CUDA kernels need sm_80 or newer (mma.m16n8k16 with bf16); set CMAKE_CUDA_ARCHITECTURES to 80 or above"
#endif
#elif defined(PYRAG_CUDA_EMU)
#include <cmath>

#include "cuda/emu/runtime.h"
#else
#error \
    "csrc/cuda/*.cu compile with nvcc, or with g++ and PYRAG_CUDA_EMU defined (the host emulation)"
#endif

namespace pyrag::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;
constexpr float kNegInf = -__builtin_huge_valf();

#if defined(__CUDACC__)
using Stream = cudaStream_t;
#else
using Stream = void*;
#endif

// Launches kernel<<<grid, block, smem_bytes, stream>>>(args...) and checks the launch.
// In the emulation the launch runs to completion before returning.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block,
            std::size_t smem_bytes, Stream stream, Args&&... args) {
#if defined(__CUDACC__)
  auto check = [name](cudaError_t err) {
    if (err != cudaSuccess)
      throw CudaError(std::string("pyrag CUDA kernel ") + name + ": " + cudaGetErrorString(err));
  };
  // Above 48 KiB of dynamic shared memory a kernel must opt in.
  if (smem_bytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem_bytes)));
  }
  kernel<<<grid, block, smem_bytes, stream>>>(Params(std::forward<Args>(args))...);
  check(cudaGetLastError());
#else
  (void)stream;
  emu::launch(grid, block, smem_bytes, name, [&] { kernel(Params(args)...); });
#endif
}

// The block's dynamic shared memory (the launch's smem_bytes), 16-byte aligned.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
#if defined(__CUDACC__)
  extern __shared__ __align__(16) unsigned char pyrag_dynamic_smem[];
  return reinterpret_cast<T*>(pyrag_dynamic_smem);
#else
  return reinterpret_cast<T*>(emu::dynamic_shared_memory());
#endif
}

// Element types of the tensor-core path: 16-bit storage as raw bits, converted with round
// to nearest even.
struct F16 {
  static __device__ __forceinline__ std::uint16_t from_float(float x) {
#if defined(__CUDACC__)
    return __half_as_ushort(__float2half_rn(x));
#else
    return emu::float_to_f16_bits(x);
#endif
  }
  static __device__ __forceinline__ float to_float(std::uint16_t bits) {
#if defined(__CUDACC__)
    return __half2float(__ushort_as_half(bits));
#else
    return emu::f16_bits_to_float(bits);
#endif
  }
};

struct Bf16 {
  static __device__ __forceinline__ std::uint16_t from_float(float x) {
#if defined(__CUDACC__)
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#else
    return emu::float_to_bf16_bits(x);
#endif
  }
  static __device__ __forceinline__ float to_float(std::uint16_t bits) {
#if defined(__CUDACC__)
    return __bfloat162float(__ushort_as_bfloat16(bits));
#else
    return emu::bf16_bits_to_float(bits);
#endif
  }
};

// D = A * B + D for one warp with mma.m16n8k16.row.col, fp32 accumulators. Fragments in
// the PTX layout (see the emulation in emu/runtime.cpp): a = 16x16 A (row-major) as 4
// registers of two elements, b = 16x8 B (column-major) as 2 registers, c = 16x8 C/D.
template <class E>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const std::uint32_t (&a)[4],
                                             const std::uint32_t (&b)[2]) {
  static_assert(std::is_same_v<E, F16> || std::is_same_v<E, Bf16>);
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<E, F16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  emu::mma_m16n8k16(c, a, b, std::is_same_v<E, Bf16>, std::source_location::current());
#endif
}

__device__ __forceinline__ std::uint32_t float_as_bits(float x) {
#if defined(__CUDACC__)
  return __float_as_uint(x);
#else
  return std::bit_cast<std::uint32_t>(x);
#endif
}

__device__ __forceinline__ float bits_as_float(std::uint32_t x) {
#if defined(__CUDACC__)
  return __uint_as_float(x);
#else
  return std::bit_cast<float>(x);
#endif
}

template <class T>
__device__ __forceinline__ bool is_finite(T x) {
#if defined(__CUDACC__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

__device__ __forceinline__ float exp_of(float x) {
#if defined(__CUDACC__)
  return expf(x);
#else
  return std::exp(x);
#endif
}
__device__ __forceinline__ double exp_of(double x) {
#if defined(__CUDACC__)
  return exp(x);
#else
  return std::exp(x);
#endif
}
__device__ __forceinline__ float log_of(float x) {
#if defined(__CUDACC__)
  return logf(x);
#else
  return std::log(x);
#endif
}
__device__ __forceinline__ double log_of(double x) {
#if defined(__CUDACC__)
  return log(x);
#else
  return std::log(x);
#endif
}

}  // namespace pyrag::cuda
