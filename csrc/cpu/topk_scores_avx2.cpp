// AVX2 + FMA scan kernels: fp32 by FMA, bf16 by widening to fp32 in registers, int8 by
// vpmaddwd, and the on-the-fly packer. Same Ops as the AVX-512 ones, on 8-row ymm
// vectors, with register tiles for 16 registers: 6 queries x 1 block of 16 rows for
// every dtype (12 accumulators, 2 corpus vectors, 1 broadcast query, 1 spare).
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
  static __m256 load(const uint8_t* p) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static __m256 bcast(const uint32_t* w) {
    return _mm256_broadcast_ss(reinterpret_cast<const float*>(w));
  }
  static __m256 madd(__m256 acc, __m256 x, __m256 q) { return _mm256_fmadd_ps(x, q, acc); }
  static __m256 finish(__m256 acc, float, int32_t, const float*) { return acc; }
};

// Each 32-bit lane holds (even, odd) bf16 of one row: shifting one of them into the high
// half makes an exact fp32 value. In two phases per group (scan_kernel.h): the odd
// dimension of every row and query of the tile, then the even one, so only one phase's
// operands take registers and 6 queries x 1 block fit (12 accumulators). With both
// halves live the tile was 4 x 1: 8 accumulators, each with two dependent FMAs per step,
// latency-bound; a 0xFFFF0000 mask instead of two shifts took the register the 6 x 1
// tile needs and GCC spilled accumulators. The queries come widened from the driver.
// Products of two bf16 are exact in fp32, so fma adds them exactly like vdpbf16ps: odd
// dimension first, then even.
struct Bf16Widen : Base {
  static constexpr int kXRegs = 1, kQRegs = 1, kPhases = 2;
  using Acc = __m256;
  using X = __m256;
  using Q = __m256;
  static __m256 zero() { return _mm256_setzero_ps(); }
  static __m256 load(const uint8_t* p, int phase) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(phase == 0 ? _mm256_srli_epi32(w, 16) : w, 16));
  }
  static __m256 bcast(const uint32_t* w, int phase) {
    return _mm256_broadcast_ss(reinterpret_cast<const float*>(w + phase));
  }
  static __m256 madd(__m256 acc, __m256 x, __m256 q) { return _mm256_fmadd_ps(x, q, acc); }
  static __m256 finish(__m256 acc, float, int32_t, const float*) { return acc; }
};

// The unsigned corpus bytes as 16-bit values, the even bytes in one phase and the odd
// ones in the other (shifts, no mask constant: 6 x 1 fits as for bf16), against the
// query bytes sign-extended the same way by the driver: two vpmaddwd per group give
// exactly the integer dot of vpdpbusd (products <= 255 * 127, pair sums in int32: nothing
// saturates). The empty asm keeps each phase's sum in its accumulator: GCC otherwise
// reassociates the integer adds across the phases, keeps both phases' operands live and
// spills. vpmaddubsw would need one multiply-port op fewer per group, but its int16 pair
// sums saturate (2 * 255 * 127 > 32767), and the exact repairs (moving the sign with
// vpsignb, splitting an operand) cost as much as they save (docs/cpu_kernel.md).
struct I8Madd : avx2::I8Base {
  static constexpr int kXRegs = 1, kQRegs = 1, kPhases = 2;
  using X = __m256i;
  using Q = __m256i;
  static __m256i load(const uint8_t* p, int phase) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm256_srli_epi16(phase == 0 ? _mm256_slli_epi16(w, 8) : w, 8);
  }
  static __m256i bcast(const uint32_t* w, int phase) {
    return _mm256_set1_epi32(static_cast<int>(w[phase]));
  }
  static __m256i madd(__m256i acc, __m256i x, __m256i q) {
    __m256i sum = _mm256_add_epi32(acc, _mm256_madd_epi16(x, q));
    __asm__("" : "+x"(sum));
    return sum;
  }
};

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{&scan::scan<F32>, &scan::scan<Bf16Widen>, &scan::scan<I8Madd>,
                         &avx2::pack};
  return k;
}

}  // namespace pyrag
