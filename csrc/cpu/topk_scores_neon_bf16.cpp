// NEON bf16 scan with the BF16 extension (Armv8.6 / FEAT_BF16, run-time detected),
// compiled with +bf16 only.
//
// bfmlalt / bfmlalb multiply the odd / even bf16 of each 32-bit lane, widened to fp32,
// and add the product to an fp32 accumulator as one fused multiply-add rounded by FPCR
// (round to nearest even, subnormals kept): odd first, then even, that is the bf16 score
// definition bit for bit, without the two widening ops per loaded vector. bfdot is not
// used: it adds the two products to each other before the accumulator, with round-to-odd
// and subnormals flushed (FPCR.EBF = 0), which is neither vdpbf16ps's order nor its
// rounding.
#include "cpu/simd_neon.h"

namespace pyrag {
namespace {

struct Bf16Mlal : neon::Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = float32x4_t;
  using X = bfloat16x8_t;
  using Q = bfloat16x8_t;
  static float32x4_t zero() { return vdupq_n_f32(0.0f); }
  static bfloat16x8_t load(const uint8_t* p) { return vreinterpretq_bf16_u8(vld1q_u8(p)); }
  static bfloat16x8_t bcast(const uint32_t* w) { return vreinterpretq_bf16_u32(vld1q_dup_u32(w)); }
  static float32x4_t madd(float32x4_t acc, bfloat16x8_t x, bfloat16x8_t q) {
    return vbfmlalbq_f32(vbfmlaltq_f32(acc, x, q), x, q);
  }
  static float32x4_t finish(float32x4_t acc, float, int32_t, const float*) { return acc; }
};

}  // namespace

const Kernels& kernels_neon_bf16() {
  static const Kernels k{nullptr, &scan::scan<Bf16Mlal>, nullptr, nullptr};
  return k;
}

}  // namespace pyrag
