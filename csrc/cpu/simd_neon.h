// NEON (AArch64 Advanced SIMD) building blocks shared by the NEON translation units:
// the score-vector half of a scan Op and the on-the-fly packer. A 16-row block is four
// 128-bit vectors of 4 rows; the register file has 32 of them.
#pragma once
#include <arm_neon.h>

#include "cpu/scan_kernel.h"

namespace pyrag::neon {
namespace {  // internal linkage: see scan_kernel.h

struct Base {
  static constexpr int kLanes = 4;
  static constexpr int kRegs = 32;
  static constexpr int kMaxMQ = 8;
  using F = float32x4_t;
  static uint32_t lane_bits(uint32x4_t m) {
    const uint32x4_t bit = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, bit));
  }
  // Ordered compare: NaN never passes, as _CMP_GE_OQ on x86.
  static uint32_t ge_mask(float32x4_t s, float thr) {
    return lane_bits(vcgeq_f32(s, vdupq_n_f32(thr)));
  }
  // s - s is NaN exactly when s is NaN or +-Inf; NaN is the one value unequal to itself.
  static uint32_t nonfinite_mask(float32x4_t s) {
    const float32x4_t z = vsubq_f32(s, s);
    return lane_bits(vmvnq_u32(vceqq_f32(z, z)));
  }
  static void store(float* p, float32x4_t s) { vst1q_f32(p, s); }
};

// int8 epilogue for kernels that multiply the signed corpus values (bias removed when
// loading): float(dot) * (query scale * row scale), each product rounded once, as the
// x86 kernels' float(dot - 128 * sum(q)) * (...). qbias is not needed.
inline float32x4_t int8_scores(int32x4_t dot, float qscale, const float* row_scales) {
  return vmulq_f32(vcvtq_f32_s32(dot), vmulq_f32(vdupq_n_f32(qscale), vld1q_f32(row_scales)));
}

// The stored int8 bytes are value + 128; flipping bit 7 gives the signed values back.
inline int8x16_t load_signed(const uint8_t* p) {
  return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
}

// Packs rows with 4 x 4 word transposes (4 rows x 4 groups in, 4 groups x 4 rows out);
// the words past the last multiple of 4 per row go through the generic packer.
inline void pack(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t row_bytes,
                 int64_t groups, uint32_t xor_word, uint8_t* dst, const uint8_t* prefetch,
                 int64_t prefetch_bytes) {
  const uint8_t* prefetch_end = prefetch + prefetch_bytes;
  const int64_t full = row_bytes / kGroupBytes / 4 * 4;  // whole 4-word runs per row
  const uint32x4_t flip = vdupq_n_u32(xor_word);
  const int64_t nb = num_blocks(rows);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t r0 = 0; r0 < kBlockRows; r0 += 4) {
      const int64_t row0 = b * kBlockRows + r0;
      const int64_t nr = std::clamp<int64_t>(rows - row0, 0, 4);
      const uint8_t* s = src + row0 * src_stride;
      uint8_t* out = dst + b * groups * kGroupStride + r0 * kGroupBytes;
      for (int64_t g0 = 0; g0 < full; g0 += 4) {
        if (prefetch < prefetch_end) {  // 64 bytes read here, 64 of the next tile asked for
          __builtin_prefetch(prefetch, 0, 2);
          prefetch += 64;
        }
        uint32x4_t v[4];
        for (int r = 0; r < 4; ++r) {
          v[r] = r < nr ? vld1q_u32(reinterpret_cast<const uint32_t*>(s + r * src_stride +
                                                                      g0 * kGroupBytes))
                        : vdupq_n_u32(0);
        }
        // 4 x 4 transpose of 32-bit words: pairs, then 64-bit halves.
        const uint32x4_t t0 = vtrn1q_u32(v[0], v[1]), t1 = vtrn2q_u32(v[0], v[1]);
        const uint32x4_t t2 = vtrn1q_u32(v[2], v[3]), t3 = vtrn2q_u32(v[2], v[3]);
        const uint32x4_t c[4] = {
            vreinterpretq_u32_u64(vtrn1q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2))),
            vreinterpretq_u32_u64(vtrn1q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3))),
            vreinterpretq_u32_u64(vtrn2q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2))),
            vreinterpretq_u32_u64(
                vtrn2q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3)))};
        for (int g = 0; g < 4; ++g) {
          vst1q_u32(reinterpret_cast<uint32_t*>(out + (g0 + g) * kGroupStride),
                    veorq_u32(c[g], flip));
        }
      }
    }
  }
  if (full < groups) {
    scan::pack_words_generic(src, src_stride, rows, row_bytes, groups, xor_word, dst, full);
  }
}

}  // namespace
}  // namespace pyrag::neon
