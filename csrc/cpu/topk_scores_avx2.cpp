// AVX2 + FMA scan kernels: fp32 by FMA, bf16 by widening to fp32 in registers, int8 by
// vpmaddwd, and the on-the-fly packer. Same Ops as the AVX-512 ones, on 8-row ymm
// vectors, with tiles sized for 16 registers (scan_kernel.h: fp32 6 queries x 1 block,
// 12 accumulators; bf16 and int8 5 x 1, 10 accumulators).
#include "cpu/simd_avx2.h"

#ifndef PYRAG_AVX2_QREGS
#define PYRAG_AVX2_QREGS 1
#endif

namespace pyrag {
namespace {

using avx2::Base;

struct F32 : Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = __m256;
  using X = __m256;
  using Q = __m256;
  static __m256 zero() { return _mm256_setzero_ps(); }
  static __m256 load(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
  static __m256 bcast(const uint32_t* w) { return _mm256_broadcast_ss(reinterpret_cast<const float*>(w)); }
  static __m256 madd(__m256 acc, __m256 x, __m256 q) { return _mm256_fmadd_ps(x, q, acc); }
  static __m256 finish(__m256 acc, float, int32_t, const float*) { return acc; }
};

// Each 32-bit lane holds (even, odd) bf16 of one row: masking and shifting them into the
// high half makes exact fp32 values (2 ops per loaded vector, shared by the tile's
// queries; the queries come widened from the driver). Products of two bf16 are exact in
// fp32, so fma adds them exactly like vdpbf16ps: odd dimension first, then even.
struct Bf16Widen : Base {
  static constexpr int kXRegs = 2, kQRegs = PYRAG_AVX2_QREGS;
  static constexpr bool kSplitQuery = true;
  using Acc = __m256;
  struct X { __m256 odd, even; };
  struct Q { const float* w; };  // the two widened query values, broadcast as used
  static __m256 zero() { return _mm256_setzero_ps(); }
  static X load(const uint8_t* p) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))),
            _mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static Q bcast(const uint32_t* w) { return {reinterpret_cast<const float*>(w)}; }
  static __m256 madd(__m256 acc, const X& x, Q q) {
    acc = _mm256_fmadd_ps(x.odd, _mm256_broadcast_ss(q.w), acc);
    return _mm256_fmadd_ps(x.even, _mm256_broadcast_ss(q.w + 1), acc);
  }
  static __m256 finish(__m256 acc, float, int32_t, const float*) { return acc; }
};

// Unsigned corpus bytes split into their even and odd 16-bit halves (2 ops per loaded
// vector), against the query bytes sign-extended the same way by the driver: two
// vpmaddwd give exactly the integer dot of vpdpbusd (products <= 255 * 127, pair sums
// in int32: nothing saturates). vpmaddubsw would need one multiply fewer, but its int16
// pair sums saturate (255 * 127 * 2 > 32767), and making them safe costs as much.
struct I8Madd : avx2::I8Base {
  static constexpr int kXRegs = 2, kQRegs = PYRAG_AVX2_QREGS;
  static constexpr bool kSplitQuery = true;
  struct X { __m256i even, odd; };
  struct Q { const uint32_t* w; };
  static X load(const uint8_t* p) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm256_and_si256(w, _mm256_set1_epi32(0x00FF00FF)), _mm256_srli_epi16(w, 8)};
  }
  static Q bcast(const uint32_t* w) { return {w}; }
  static __m256i madd(__m256i acc, const X& x, Q q) {
    const __m256i qe = _mm256_set1_epi32(static_cast<int>(q.w[0]));
    const __m256i qo = _mm256_set1_epi32(static_cast<int>(q.w[1]));
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(x.even, qe), _mm256_madd_epi16(x.odd, qo)));
  }
};

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{&scan::scan<F32>, &scan::scan<Bf16Widen>, &scan::scan<I8Madd>, &avx2::pack};
  return k;
}

}  // namespace pyrag
