// Portable scan kernels: plain C++, compiled without -m flags. The path for CPUs without
// AVX2 and for other architectures, and the easiest one to read: each Op below is the
// definition of its dtype's score (see topk_scores.h), one row per "lane".
#include <cmath>
#include <cstring>

#include "cpu/scan_kernel.h"

namespace pyrag {
namespace {

inline float word_as_float(uint32_t w) {
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

inline uint32_t load_word(const uint8_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

struct ScalarBase {
  static constexpr int kLanes = 1;
  static constexpr int kRegs = 64;
  static constexpr int kMaxMQ = 1;
  using F = float;
  static uint32_t ge_mask(float s, float thr) { return s >= thr ? 1u : 0u; }
  static uint32_t nonfinite_mask(float s) { return std::isfinite(s) ? 0u : 1u; }
  static void store(float* p, float s) { *p = s; }
};

struct F32Scalar : ScalarBase {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = float;
  using X = float;
  using Q = float;
  static float zero() { return 0.0f; }
  static float load(const uint8_t* p) { return word_as_float(load_word(p)); }
  static float bcast(const uint32_t* w) { return word_as_float(*w); }
  static float madd(float acc, float x, float q) { return std::fma(x, q, acc); }
  static float finish(float acc, float, int32_t, const float*) { return acc; }
};

// bf16 as the high half of a float: odd dimension (high half of the word) first.
struct Bf16Scalar : ScalarBase {
  static constexpr int kXRegs = 2, kQRegs = 2;
  using Acc = float;
  struct X {
    float odd, even;
  };
  using Q = X;
  static float zero() { return 0.0f; }
  static X split(uint32_t w) { return {word_as_float(w & 0xFFFF0000u), word_as_float(w << 16)}; }
  static X load(const uint8_t* p) { return split(load_word(p)); }
  static X bcast(const uint32_t* w) { return split(*w); }
  static float madd(float acc, const X& x, const X& q) {
    // Products of two bf16 are exact in fp32, so fma rounds exactly like vdpbf16ps.
    acc = std::fma(x.odd, q.odd, acc);
    return std::fma(x.even, q.even, acc);
  }
  static float finish(float acc, float, int32_t, const float*) { return acc; }
};

// Corpus bytes are int8 + 128 (unsigned), query bytes int8: the integer dot of vpdpbusd.
struct I8Scalar : ScalarBase {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = int32_t;
  using X = uint32_t;
  using Q = uint32_t;
  static int32_t zero() { return 0; }
  static uint32_t load(const uint8_t* p) { return load_word(p); }
  static uint32_t bcast(const uint32_t* w) { return *w; }
  static int32_t madd(int32_t acc, uint32_t x, uint32_t q) {
    for (int e = 0; e < 4; ++e) {
      acc +=
          static_cast<int32_t>((x >> (8 * e)) & 0xFF) * static_cast<int8_t>((q >> (8 * e)) & 0xFF);
    }
    return acc;
  }
  static float finish(int32_t acc, float qscale, int32_t qbias, const float* row_scale) {
    return static_cast<float>(acc - qbias) * (qscale * *row_scale);
  }
};

// The portable path leaves prefetching to the hardware.
void pack_scalar(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t row_bytes,
                 int64_t groups, uint32_t xor_word, uint8_t* dst, const uint8_t*, int64_t) {
  scan::pack_words_generic(src, src_stride, rows, row_bytes, groups, xor_word, dst);
}

}  // namespace

const Kernels& kernels_scalar() {
  static const Kernels k{&scan::scan<F32Scalar>, &scan::scan<Bf16Scalar>, &scan::scan<I8Scalar>,
                         &pack_scalar};
  return k;
}

}  // namespace pyrag
