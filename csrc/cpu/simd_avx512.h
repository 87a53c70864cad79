// AVX-512 building blocks shared by the AVX-512 translation units (included only from
// files compiled with AVX-512 flags): the score-vector half of a scan Op, the fp32 Op,
// and the 16x16 word transpose that packs rows on the fly.
#pragma once
#include <immintrin.h>

#include "cpu/scan_kernel.h"

namespace pyrag::avx512 {
namespace {  // internal linkage: see scan_kernel.h

struct Base {
  static constexpr int kLanes = 16;
  static constexpr int kRegs = 32;
  static constexpr int kMaxMQ = 8;
  using F = __m512;
  static uint32_t ge_mask(__m512 s, float thr) {
    return _mm512_cmp_ps_mask(s, _mm512_set1_ps(thr), _CMP_GE_OQ);
  }
  // fpclass: QNaN | +Inf | -Inf | SNaN.
  static uint32_t nonfinite_mask(__m512 s) {
    return _mm512_fpclass_ps_mask(s, 0x01 | 0x08 | 0x10 | 0x80);
  }
  static void store(float* p, __m512 s) { _mm512_store_ps(p, s); }
};

struct F32 : Base {
  static constexpr int kXRegs = 1, kQRegs = 1;
  using Acc = __m512;
  using X = __m512;
  using Q = __m512;
  static __m512 zero() { return _mm512_setzero_ps(); }
  static __m512 load(const uint8_t* p) { return _mm512_loadu_ps(p); }
  static __m512 bcast(const uint32_t* w) {
    return _mm512_set1_ps(*reinterpret_cast<const float*>(w));
  }
  static __m512 madd(__m512 acc, __m512 x, __m512 q) { return _mm512_fmadd_ps(x, q, acc); }
  static __m512 finish(__m512 acc, float, int32_t, const float*) { return acc; }
};

// int8 epilogue: float(dot - 128 * sum(q)) * (query scale * row scale).
inline __m512 int8_scores(__m512i acc, float qscale, int32_t qbias, const float* row_scales) {
  const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(qbias)));
  return _mm512_mul_ps(dot, _mm512_mul_ps(_mm512_set1_ps(qscale), _mm512_loadu_ps(row_scales)));
}

// Transposes 16 vectors of 16 words in place: v[r][c] -> v[c][r].
inline void transpose16(__m512i v[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  // Per 128-bit lane, u[4a + m] holds word m of that lane for rows 4a..4a+3.
  for (int a = 0; a < 16; a += 4) {
    u[a] = _mm512_unpacklo_epi64(t[a], t[a + 2]);
    u[a + 1] = _mm512_unpackhi_epi64(t[a], t[a + 2]);
    u[a + 2] = _mm512_unpacklo_epi64(t[a + 1], t[a + 3]);
    u[a + 3] = _mm512_unpackhi_epi64(t[a + 1], t[a + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512i a88 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88);
    const __m512i add = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xDD);
    const __m512i b88 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88);
    const __m512i bdd = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xDD);
    v[m] = _mm512_shuffle_i32x4(a88, b88, 0x88);
    v[8 + m] = _mm512_shuffle_i32x4(a88, b88, 0xDD);
    v[4 + m] = _mm512_shuffle_i32x4(add, bdd, 0x88);
    v[12 + m] = _mm512_shuffle_i32x4(add, bdd, 0xDD);
  }
}

inline void pack(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t row_bytes,
                 int64_t groups, uint32_t xor_word, uint8_t* dst, const uint8_t* prefetch,
                 int64_t prefetch_bytes) {
  const uint8_t* prefetch_end = prefetch + prefetch_bytes;
  const int64_t full = row_bytes / kGroupBytes;  // whole words per row
  const __m512i flip = _mm512_set1_epi32(static_cast<int>(xor_word));
  const int64_t nb = num_blocks(rows);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t nr = std::min<int64_t>(kBlockRows, rows - b * kBlockRows);
    const uint8_t* s = src + b * kBlockRows * src_stride;
    uint8_t* block = dst + b * groups * kGroupStride;
    const int64_t full16 = nr == kBlockRows ? full / 16 * 16 : 0;
    for (int64_t g0 = 0; g0 < full16; g0 += 16) {  // whole 16 x 16 tiles: no masks, no branches
      if (prefetch < prefetch_end) {  // 1 KiB read here, 1 KiB of the next tile asked for
#pragma GCC unroll 16
        for (int p = 0; p < 16; ++p) __builtin_prefetch(prefetch + 64 * p, 0, 2);
        prefetch += 1024;
      }
      __m512i v[16];
#pragma GCC unroll 16
      for (int r = 0; r < 16; ++r) v[r] = _mm512_loadu_si512(s + r * src_stride + g0 * kGroupBytes);
      transpose16(v);
#pragma GCC unroll 16
      for (int g = 0; g < 16; ++g)
        _mm512_storeu_si512(block + (g0 + g) * kGroupStride, _mm512_xor_si512(v[g], flip));
    }
    for (int64_t g0 = full16; g0 < full; g0 += 16) {
      const int64_t ng = std::min<int64_t>(16, full - g0);
      const __mmask16 m = static_cast<__mmask16>(ng == 16 ? 0xFFFF : (1u << ng) - 1);
      __m512i v[16];
      for (int r = 0; r < 16; ++r) {
        v[r] = r < nr ? _mm512_maskz_loadu_epi32(m, s + r * src_stride + g0 * kGroupBytes)
                      : _mm512_setzero_si512();
      }
      transpose16(v);
      for (int g = 0; g < ng; ++g) {
        _mm512_storeu_si512(block + (g0 + g) * kGroupStride, _mm512_xor_si512(v[g], flip));
      }
    }
  }
  if (full < groups) {  // the last, partial word of each row
    scan::pack_words_generic(src, src_stride, rows, row_bytes, groups, xor_word, dst, full);
  }
}

}  // namespace
}  // namespace pyrag::avx512
