// AVX512_VNNI int8 scan: one vpdpbusd per 16 rows x 4 dimensions.
#include "cpu/simd_avx512.h"

namespace pyrag {
namespace {

struct I8Vnni : avx512::Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = __m512i;
  using X = __m512i;
  using Q = __m512i;
  static __m512i zero() { return _mm512_setzero_si512(); }
  static __m512i load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static __m512i bcast(const uint32_t* w) { return _mm512_set1_epi32(static_cast<int>(*w)); }
  // Unsigned corpus bytes times signed query bytes, 4 per lane, into int32.
  static __m512i madd(__m512i acc, __m512i x, __m512i q) { return _mm512_dpbusd_epi32(acc, x, q); }
  static __m512 finish(__m512i acc, float qscale, int32_t qbias, const float* row_scales) {
    return avx512::int8_scores(acc, qscale, qbias, row_scales);
  }
};

}  // namespace

const Kernels& kernels_avx512vnni() {
  static const Kernels k{nullptr, nullptr, &scan::scan<I8Vnni>, nullptr};
  return k;
}

}  // namespace pyrag
