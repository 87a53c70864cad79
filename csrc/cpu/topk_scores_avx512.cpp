// AVX-512 (F/BW/VL/DQ) scan kernels: fp32 by FMA, bf16 by conversion to fp32, int8 by
// vpmaddwd (for CPUs without VNNI), and the on-the-fly packer.
#include "cpu/simd_avx512.h"

namespace pyrag {
namespace {

using avx512::Base;

// Each 32-bit lane holds (even, odd) bf16 of one row; shifting them into the high half
// makes exact fp32 values. Odd first, then even: the order vdpbf16ps adds them in.
struct Bf16Convert : Base {
  static constexpr int kXRegs = 2, kQRegs = 2;
  using Acc = __m512;
  struct X { __m512 odd, even; };
  using Q = X;
  static __m512 zero() { return _mm512_setzero_ps(); }
  static X split(__m512i w) {
    return {_mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)))),
            _mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  static X load(const uint8_t* p) { return split(_mm512_loadu_si512(p)); }
  static X bcast(const uint32_t* w) { return split(_mm512_set1_epi32(static_cast<int>(*w))); }
  static __m512 madd(__m512 acc, const X& x, const X& q) {
    acc = _mm512_fmadd_ps(x.odd, q.odd, acc);
    return _mm512_fmadd_ps(x.even, q.even, acc);
  }
  static __m512 finish(__m512 acc, float, int32_t, const float*) { return acc; }
};

// Unsigned corpus bytes split into even/odd 16-bit halves, the signed query bytes
// sign-extended the same way; two vpmaddwd give the same integer dot as vpdpbusd.
struct I8Madd : Base {
  static constexpr int kXRegs = 2, kQRegs = 2;
  using Acc = __m512i;
  struct X { __m512i even, odd; };
  using Q = X;
  static __m512i zero() { return _mm512_setzero_si512(); }
  static X load(const uint8_t* p) {
    const __m512i w = _mm512_loadu_si512(p);
    return {_mm512_and_si512(w, _mm512_set1_epi32(0x00FF00FF)), _mm512_srli_epi16(w, 8)};
  }
  static X bcast(const uint32_t* w) {
    const __m512i q = _mm512_set1_epi32(static_cast<int>(*w));
    return {_mm512_srai_epi16(_mm512_slli_epi16(q, 8), 8), _mm512_srai_epi16(q, 8)};
  }
  static __m512i madd(__m512i acc, const X& x, const X& q) {
    return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(x.even, q.even),
                                                  _mm512_madd_epi16(x.odd, q.odd)));
  }
  static __m512 finish(__m512i acc, float qscale, int32_t qbias, const float* row_scales) {
    return avx512::int8_scores(acc, qscale, qbias, row_scales);
  }
};

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k{&scan::scan<avx512::F32>, &scan::scan<Bf16Convert>, &scan::scan<I8Madd>,
                         &avx512::pack};
  return k;
}

}  // namespace pyrag
