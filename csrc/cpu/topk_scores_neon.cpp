// NEON scan kernels for every AArch64 CPU: fp32 by fmla, bf16 by widening to fp32 in
// registers, int8 by widening multiplies (smull + sadalp), and the on-the-fly packer.
// Each lane is one row, each row's score one chain in dimension order: the same bits as
// the scalar and x86 paths.
#include "cpu/simd_neon.h"

namespace pyrag {
namespace {

using neon::Base;

// fmla is a fused multiply-add, rounded once: exactly std::fma.
struct F32 : Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = float32x4_t;
  using X = float32x4_t;
  using Q = float32x4_t;
  static float32x4_t zero() { return vdupq_n_f32(0.0f); }
  static float32x4_t load(const uint8_t* p) { return vld1q_f32(reinterpret_cast<const float*>(p)); }
  static float32x4_t bcast(const uint32_t* w) {
    return vld1q_dup_f32(reinterpret_cast<const float*>(w));
  }
  static float32x4_t madd(float32x4_t acc, float32x4_t x, float32x4_t q) {
    return vfmaq_f32(acc, x, q);
  }
  static float32x4_t finish(float32x4_t acc, float, int32_t, const float*) { return acc; }
};

// Each 32-bit lane holds (even, odd) bf16 of one row; masking or shifting one of them
// into the high half gives an exact fp32 value. In two phases per group (scan_kernel.h):
// the odd dimension, then the even one, each by fmla: the bf16 score definition. The
// queries come widened from the driver.
struct Bf16Widen : Base {
  static constexpr int kXRegs = 1, kQRegs = 1, kPhases = 2;
  using Acc = float32x4_t;
  using X = float32x4_t;
  using Q = float32x4_t;
  static float32x4_t zero() { return vdupq_n_f32(0.0f); }
  static float32x4_t load(const uint8_t* p, int phase) {
    const uint32x4_t w = vld1q_u32(reinterpret_cast<const uint32_t*>(p));
    return vreinterpretq_f32_u32(phase == 0 ? vandq_u32(w, vdupq_n_u32(0xFFFF0000u))
                                            : vshlq_n_u32(w, 16));
  }
  static float32x4_t bcast(const uint32_t* w, int phase) {
    return vld1q_dup_f32(reinterpret_cast<const float*>(w + phase));
  }
  static float32x4_t madd(float32x4_t acc, float32x4_t x, float32x4_t q) {
    return vfmaq_f32(acc, x, q);
  }
  static float32x4_t finish(float32x4_t acc, float, int32_t, const float*) { return acc; }
};

// Signed corpus bytes times the broadcast query bytes: smull / smull2 make the 16
// products of 4 rows x 4 dimensions in int16 (|product| <= 128 * 127, exact), sadalp adds
// neighbouring pairs into int32. Two accumulators per 4 rows, (r0 d0+d1, r0 d2+d3, r1 ..)
// and the same for r2, r3; finish adds their pairs.
struct I8Widen : Base {
  static constexpr int kXRegs = 1, kQRegs = 1, kAccRegs = 2;
  struct Acc {
    int32x4_t lo, hi;
  };
  using X = int8x16_t;
  using Q = int8x16_t;
  static Acc zero() { return {vdupq_n_s32(0), vdupq_n_s32(0)}; }
  static int8x16_t load(const uint8_t* p) { return neon::load_signed(p); }
  static int8x16_t bcast(const uint32_t* w) { return vreinterpretq_s8_u32(vld1q_dup_u32(w)); }
  static Acc madd(Acc acc, int8x16_t x, int8x16_t q) {
    return {vpadalq_s16(acc.lo, vmull_s8(vget_low_s8(x), vget_low_s8(q))),
            vpadalq_s16(acc.hi, vmull_high_s8(x, q))};
  }
  static float32x4_t finish(Acc acc, float qscale, int32_t, const float* row_scales) {
    return neon::int8_scores(vpaddq_s32(acc.lo, acc.hi), qscale, row_scales);
  }
};

}  // namespace

const Kernels& kernels_neon() {
  static const Kernels k{&scan::scan<F32>, &scan::scan<Bf16Widen>, &scan::scan<I8Widen>,
                         &neon::pack};
  return k;
}

}  // namespace pyrag
