// AVX2 building blocks shared by the AVX2 translation units (included only from files
// compiled with AVX2 flags). A 16-row block is two ymm vectors of 8 rows.
#pragma once
#include <immintrin.h>

#include "cpu/scan_kernel.h"

namespace pyrag::avx2 {
namespace {  // internal linkage: see scan_kernel.h

struct Base {
  static constexpr int kLanes = 8;
  static constexpr int kRegs = 16;
  static constexpr int kMaxMQ = 8;
  using F = __m256;
  static uint32_t ge_mask(__m256 s, float thr) {
    return static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_set1_ps(thr), _CMP_GE_OQ)));
  }
  // s - s is NaN exactly when s is NaN or +-Inf.
  static uint32_t nonfinite_mask(__m256 s) {
    return static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(s, s), _mm256_setzero_ps(), _CMP_UNORD_Q)));
  }
  static void store(float* p, __m256 s) { _mm256_store_ps(p, s); }
};

// int8 epilogue: float(dot - 128 * sum(q)) * (query scale * row scale).
inline __m256 int8_scores(__m256i acc, float qscale, int32_t qbias, const float* row_scales) {
  const __m256 dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(qbias)));
  return _mm256_mul_ps(dot, _mm256_mul_ps(_mm256_set1_ps(qscale), _mm256_loadu_ps(row_scales)));
}

// Transposes 8 vectors of 8 words in place: v[r][c] -> v[c][r].
inline void transpose8(__m256 v[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  // Per 128-bit lane, s[4a + m] holds word m of that lane for rows 4a..4a+3.
  for (int a = 0; a < 8; a += 4) {
    s[a] = _mm256_shuffle_ps(t[a], t[a + 2], 0x44);
    s[a + 1] = _mm256_shuffle_ps(t[a], t[a + 2], 0xEE);
    s[a + 2] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0x44);
    s[a + 3] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    v[m] = _mm256_permute2f128_ps(s[m], s[4 + m], 0x20);
    v[4 + m] = _mm256_permute2f128_ps(s[m], s[4 + m], 0x31);
  }
}

inline void pack(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t row_bytes,
                 int64_t groups, uint32_t xor_word, uint8_t* dst, const uint8_t* prefetch,
                 int64_t prefetch_bytes) {
  const uint8_t* prefetch_end = prefetch + prefetch_bytes;
  const int64_t full = row_bytes / kGroupBytes;  // whole words per row
  const __m256 flip = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(xor_word)));
  const int64_t nb = num_blocks(rows);
  for (int64_t b = 0; b < nb; ++b) {
    for (int half = 0; half < 2; ++half) {
      const int64_t row0 = b * kBlockRows + half * 8;
      const int64_t nr = std::min<int64_t>(8, rows - row0);
      const uint8_t* s = src + row0 * src_stride;
      uint8_t* out = dst + b * groups * kGroupStride + half * 32;
      for (int64_t g0 = 0; g0 + 8 <= full; g0 += 8) {
        if (prefetch < prefetch_end) {  // 256 bytes read here, 256 of the next tile asked for
#pragma GCC unroll 4
          for (int p = 0; p < 4; ++p) __builtin_prefetch(prefetch + 64 * p, 0, 2);
          prefetch += 256;
        }
        __m256 v[8];
        for (int r = 0; r < 8; ++r) {
          v[r] = r < nr ? _mm256_loadu_ps(
                              reinterpret_cast<const float*>(s + r * src_stride + g0 * kGroupBytes))
                        : _mm256_setzero_ps();
        }
        transpose8(v);
        for (int g = 0; g < 8; ++g)
          _mm256_storeu_ps(reinterpret_cast<float*>(out + (g0 + g) * kGroupStride),
                           _mm256_xor_ps(v[g], flip));
      }
    }
  }
  if (full % 8 != 0 || full < groups) {  // words past the last multiple of 8
    scan::pack_words_generic(src, src_stride, rows, row_bytes, groups, xor_word, dst, full / 8 * 8);
  }
}

// The int8 Ops' common half: int32 accumulators and the scaled epilogue.
struct I8Base : Base {
  using Acc = __m256i;
  static __m256i zero() { return _mm256_setzero_si256(); }
  static __m256 finish(__m256i acc, float qscale, int32_t qbias, const float* row_scales) {
    return int8_scores(acc, qscale, qbias, row_scales);
  }
};

}  // namespace
}  // namespace pyrag::avx2
