// AVX512_BF16 bf16 scan: one vdpbf16ps per 16 rows x 2 dimensions.
#include "cpu/simd_avx512.h"

namespace pyrag {
namespace {

struct Bf16Dot : avx512::Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = __m512;
  using X = __m512bh;
  using Q = __m512bh;
  static __m512 zero() { return _mm512_setzero_ps(); }
  static __m512bh load(const uint8_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static __m512bh bcast(const uint32_t* w) {
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(*w));
  }
  static __m512 madd(__m512 acc, __m512bh x, __m512bh q) { return _mm512_dpbf16_ps(acc, x, q); }
  static __m512 finish(__m512 acc, float, int32_t, const float*) { return acc; }
};

}  // namespace

const Kernels& kernels_avx512bf16() {
  static const Kernels k{nullptr, &scan::scan<Bf16Dot>, nullptr, nullptr};
  return k;
}

}  // namespace pyrag
