// AVX-512 fp32 scan over a row-major corpus.
//
// Register tile: 16 dot products at once, as 16 zmm accumulators over d (masked loads
// for the tail), then one transposing tree reduction (45 shuffles/adds for 16 dots)
// that leaves the 16 scores in one zmm. Two shapes of tile:
//   - 4 rows x 4 queries (B >= 4): 8 loads feed 16 FMAs, so the scan is FMA-bound;
//   - 16 rows x 1 query (B < 4): 16 independent chains hide FMA latency while rows stream.
// Rows are walked in tiles that stay in L2 while every query block visits them, so
// each corpus byte comes from DRAM once per call. Candidates are filtered against each
// query's running k-th score with one vector compare; only survivors reach the heap.
#include <immintrin.h>

#include <algorithm>

#include "cpu/topk_scores.h"

namespace pyrag {
namespace {

constexpr int64_t kTileRows = 256;  // 256 x 384 x 4 B = 384 KiB: fits L2 with queries

// Sums each of a[0..15] and returns them in one vector: lane 4t+u holds sum(a[4u+t]).
inline __m512 reduce16(const __m512* a) {
  __m512 v[8], w[4], z[2];
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  }
  for (int m = 0; m < 4; ++m) {
    w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x88),
                         _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xDD));
  }
  for (int n = 0; n < 2; ++n) {
    z[n] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * n], w[2 * n + 1], 0x44),
                         _mm512_shuffle_ps(w[2 * n], w[2 * n + 1], 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
}

// NaN or +-Inf lanes.
inline __mmask16 nonfinite_lanes(__m512 s) { return _mm512_fpclass_ps_mask(s, 0x01 | 0x08 | 0x10 | 0x80); }

struct Dims {
  int64_t d, full;  // full = d rounded down to 16
  __mmask16 tail;   // lanes of the last partial chunk
};

// 4 rows x 4 queries. Lane 4q+r of the result = score(row r, query q).
inline __m512 tile_4x4(const float* const* rows, const float* const* qs, const Dims& dm) {
  __m512 acc[16];
  for (auto& x : acc) x = _mm512_setzero_ps();
  // Accumulator 4u+t holds (row t, query u), so that reduce16 puts it in lane 4u+t.
  auto step = [&](int64_t j, __mmask16 m) {
    __m512 x[4], q[4];
    for (int r = 0; r < 4; ++r) x[r] = _mm512_maskz_loadu_ps(m, rows[r] + j);
    for (int u = 0; u < 4; ++u) q[u] = _mm512_maskz_loadu_ps(m, qs[u] + j);
    for (int u = 0; u < 4; ++u)
      for (int t = 0; t < 4; ++t) acc[4 * t + u] = _mm512_fmadd_ps(x[t], q[u], acc[4 * t + u]);
  };
  for (int64_t j = 0; j < dm.full; j += 16) step(j, 0xFFFF);
  if (dm.tail) step(dm.full, dm.tail);
  return reduce16(acc);
}

// 16 rows x 1 query. Lane p of the result = score(row p).
inline __m512 tile_16x1(const float* row0, int64_t stride, int64_t valid, const float* q,
                        const Dims& dm) {
  __m512 acc[16];
  const float* rows[16];
  for (int j = 0; j < 16; ++j) {
    // Accumulator j holds row 4*(j%4) + j/4, so that reduce16 puts row p in lane p.
    int64_t p = 4 * (j % 4) + j / 4;
    rows[j] = row0 + std::min<int64_t>(p, valid - 1) * stride;
    acc[j] = _mm512_setzero_ps();
  }
  auto step = [&](int64_t j, __mmask16 m) {
    __m512 qv = _mm512_maskz_loadu_ps(m, q + j);
    for (int a = 0; a < 16; ++a) acc[a] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, rows[a] + j), qv, acc[a]);
  };
  for (int64_t j = 0; j < dm.full; j += 16) step(j, 0xFFFF);
  if (dm.tail) step(dm.full, dm.tail);
  return reduce16(acc);
}

}  // namespace

bool scan_f32_avx512(const ScanArgsF32& a, TopkHeaps& heaps) {
  const int64_t d = a.dim, B = a.num_queries;
  const Dims dm{d, d / 16 * 16, static_cast<__mmask16>((1u << (d % 16)) - 1)};
  __mmask16 bad = 0;
  alignas(64) float sc[16];

  for (int64_t t0 = a.row_begin; t0 < a.row_end; t0 += kTileRows) {
    const int64_t t1 = std::min(a.row_end, t0 + kTileRows);
    if (B < 4) {
      for (int64_t q = 0; q < B; ++q) {
        const float* qp = a.queries + q * d;
        for (int64_t r0 = t0; r0 < t1; r0 += 16) {
          const int64_t valid = std::min<int64_t>(16, t1 - r0);
          const __mmask16 lanes = static_cast<__mmask16>(valid == 16 ? 0xFFFF : (1u << valid) - 1);
          __m512 s = tile_16x1(a.corpus + r0 * d, d, valid, qp, dm);
          bad |= nonfinite_lanes(s) & lanes;
          __mmask16 hit = _mm512_mask_cmp_ps_mask(lanes, s, _mm512_set1_ps(heaps.threshold(q)), _CMP_GE_OQ);
          if (hit) {
            _mm512_store_ps(sc, s);
            for (; hit; hit &= hit - 1) {
              int p = __builtin_ctz(hit);
              heaps.push(q, sc[p], r0 + p);
            }
          }
        }
      }
      continue;
    }
    for (int64_t q0 = 0; q0 < B; q0 += 4) {
      const int64_t nq = std::min<int64_t>(4, B - q0);
      const float* qs[4];
      for (int u = 0; u < 4; ++u) qs[u] = a.queries + (q0 + std::min<int64_t>(u, nq - 1)) * d;
      for (int64_t r0 = t0; r0 < t1; r0 += 4) {
        const int64_t nr = std::min<int64_t>(4, t1 - r0);
        const float* rows[4];
        for (int r = 0; r < 4; ++r) rows[r] = a.corpus + (r0 + std::min<int64_t>(r, nr - 1)) * d;
        // Valid lanes: 4q+r with q < nq and r < nr.
        const unsigned rowbits = (1u << nr) - 1;
        unsigned lanes_u = 0;
        for (int u = 0; u < nq; ++u) lanes_u |= rowbits << (4 * u);
        const __mmask16 lanes = static_cast<__mmask16>(lanes_u);
        __m512 s = tile_4x4(rows, qs, dm);
        bad |= nonfinite_lanes(s) & lanes;
        alignas(64) float thr_lanes[16];
        for (int p = 0; p < 16; ++p) thr_lanes[p] = heaps.threshold(q0 + std::min<int64_t>(p / 4, nq - 1));
        const __m512 thr = _mm512_load_ps(thr_lanes);
        __mmask16 hit = _mm512_mask_cmp_ps_mask(lanes, s, thr, _CMP_GE_OQ);
        if (hit) {
          _mm512_store_ps(sc, s);
          for (; hit; hit &= hit - 1) {
            int p = __builtin_ctz(hit);
            heaps.push(q0 + p / 4, sc[p], r0 + p % 4);
          }
        }
      }
    }
  }
  return bad != 0;
}

}  // namespace pyrag
