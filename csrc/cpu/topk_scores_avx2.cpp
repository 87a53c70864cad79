// AVX2 + FMA scan kernels: fp32 by FMA, bf16 by conversion to fp32, int8 by vpmaddwd,
// and the on-the-fly packer. Same Ops as the AVX-512 ones, on 8-row ymm vectors.
#include "cpu/simd_avx2.h"

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

// Odd dimension first, then even: the order vdpbf16ps adds them in.
struct Bf16Convert : Base {
  static constexpr int kXRegs = 2, kQRegs = 2;
  using Acc = __m256;
  struct X { __m256 odd, even; };
  using Q = X;
  static __m256 zero() { return _mm256_setzero_ps(); }
  static X split(__m256i w) {
    return {_mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))),
            _mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static X load(const uint8_t* p) { return split(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static X bcast(const uint32_t* w) { return split(_mm256_set1_epi32(static_cast<int>(*w))); }
  static __m256 madd(__m256 acc, const X& x, const X& q) {
    acc = _mm256_fmadd_ps(x.odd, q.odd, acc);
    return _mm256_fmadd_ps(x.even, q.even, acc);
  }
  static __m256 finish(__m256 acc, float, int32_t, const float*) { return acc; }
};

// Unsigned corpus bytes split into even/odd 16-bit halves, the signed query bytes
// sign-extended the same way; two vpmaddwd give the same integer dot as vpdpbusd.
struct I8Madd : avx2::I8Base {
  static constexpr int kXRegs = 2, kQRegs = 2;
  struct X { __m256i even, odd; };
  using Q = X;
  static X load(const uint8_t* p) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm256_and_si256(w, _mm256_set1_epi32(0x00FF00FF)), _mm256_srli_epi16(w, 8)};
  }
  static X bcast(const uint32_t* w) {
    const __m256i q = _mm256_set1_epi32(static_cast<int>(*w));
    return {_mm256_srai_epi16(_mm256_slli_epi16(q, 8), 8), _mm256_srai_epi16(q, 8)};
  }
  static __m256i madd(__m256i acc, const X& x, const X& q) {
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(x.even, q.even),
                                                  _mm256_madd_epi16(x.odd, q.odd)));
  }
};

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{&scan::scan<F32>, &scan::scan<Bf16Convert>, &scan::scan<I8Madd>, &avx2::pack};
  return k;
}

}  // namespace pyrag
