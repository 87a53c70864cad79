// AVX-VNNI (VEX vpdpbusd) int8 scan, for CPUs with AVX-VNNI but no AVX-512 (Alder Lake
// and later client cores). Same Op as the AVX512_VNNI one, on 8-row ymm vectors.
#include "cpu/simd_avx2.h"

namespace pyrag {
namespace {

struct I8Vnni : avx2::I8Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using X = __m256i;
  using Q = __m256i;
  static __m256i load(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static __m256i bcast(const uint32_t* w) { return _mm256_set1_epi32(static_cast<int>(*w)); }
  static __m256i madd(__m256i acc, __m256i x, __m256i q) {
    return _mm256_dpbusd_avx_epi32(acc, x, q);
  }
};

}  // namespace

const Kernels& kernels_avx2vnni() {
  static const Kernels k{nullptr, nullptr, &scan::scan<I8Vnni>, nullptr};
  return k;
}

}  // namespace pyrag
