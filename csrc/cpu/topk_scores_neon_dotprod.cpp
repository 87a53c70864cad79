// NEON int8 scan with the dot-product extension (Armv8.2 DotProd, run-time detected):
// one sdot per 4 rows x 4 dimensions. Compiled with +dotprod only.
#include "cpu/simd_neon.h"

namespace pyrag {
namespace {

// sdot multiplies signed bytes, so the corpus bias is removed at load (one eor per
// vector, shared by the tile's queries); the int32 dot is exact.
struct I8Sdot : neon::Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = int32x4_t;
  using X = int8x16_t;
  using Q = int8x16_t;
  static int32x4_t zero() { return vdupq_n_s32(0); }
  static int8x16_t load(const uint8_t* p) { return neon::load_signed(p); }
  static int8x16_t bcast(const uint32_t* w) { return vreinterpretq_s8_u32(vld1q_dup_u32(w)); }
  static int32x4_t madd(int32x4_t acc, int8x16_t x, int8x16_t q) { return vdotq_s32(acc, x, q); }
  static float32x4_t finish(int32x4_t acc, float qscale, int32_t, const float* row_scales) {
    return neon::int8_scores(acc, qscale, row_scales);
  }
};

}  // namespace

const Kernels& kernels_neon_dotprod() {
  static const Kernels k{nullptr, nullptr, &scan::scan<I8Sdot>, nullptr};
  return k;
}

}  // namespace pyrag
