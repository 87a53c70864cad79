// AVX-512 (F/BW/VL/DQ) scan kernels: fp32 by FMA, bf16 widened to fp32, int8 by
// vpmaddwd (for CPUs without VNNI), and the on-the-fly packer.
#include "cpu/simd_avx512.h"

namespace pyrag {
namespace {

using avx512::Base;

// Each 32-bit lane holds (even, odd) bf16 of one row: masking or shifting one of them
// into the high half makes an exact fp32 value. In two phases per group (scan_kernel.h):
// the odd dimension, then the even one, against queries widened by the driver: the
// order vdpbf16ps adds them in.
struct Bf16Widen : Base {
  // Two registers fewer than the file holds: GCC spilled accumulators of the 5 x 5 tile
  // (the second phase's loads are scheduled early); 6 x 4 keeps 24 in registers.
  static constexpr int kRegs = 30, kXRegs = 1, kQRegs = 1, kPhases = 2;
  using Acc = __m512;
  using X = __m512;
  using Q = __m512;
  static __m512 zero() { return _mm512_setzero_ps(); }
  static __m512 load(const uint8_t* p, int phase) {
    const __m512i w = _mm512_loadu_si512(p);
    // Shifts, not a mask: a mask constant would take the register the 5 x 5 tile needs.
    return _mm512_castsi512_ps(_mm512_slli_epi32(phase == 0 ? _mm512_srli_epi32(w, 16) : w, 16));
  }
  static __m512 bcast(const uint32_t* w, int phase) {
    return _mm512_set1_ps(*reinterpret_cast<const float*>(w + phase));
  }
  static __m512 madd(__m512 acc, __m512 x, __m512 q) { return _mm512_fmadd_ps(x, q, acc); }
  static __m512 finish(__m512 acc, float, int32_t, const float*) { return acc; }
};

// Unsigned corpus bytes split into even/odd 16-bit halves, the signed query bytes
// sign-extended the same way; two vpmaddwd give the same integer dot as vpdpbusd.
struct I8Madd : Base {
  static constexpr int kXRegs = 2, kQRegs = 2;
  using Acc = __m512i;
  struct X {
    __m512i even, odd;
  };
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
    return _mm512_add_epi32(
        acc, _mm512_add_epi32(_mm512_madd_epi16(x.even, q.even), _mm512_madd_epi16(x.odd, q.odd)));
  }
  static __m512 finish(__m512i acc, float qscale, int32_t qbias, const float* row_scales) {
    return avx512::int8_scores(acc, qscale, qbias, row_scales);
  }
};

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k{&scan::scan<avx512::F32>, &scan::scan<Bf16Widen>, &scan::scan<I8Madd>,
                         &avx512::pack};
  return k;
}

}  // namespace pyrag
