// Portable fp32 scan: plain C++, compiled without -m flags. The reference path for
// CPUs without AVX2 and for other architectures.
#include <cmath>

#include "cpu/topk_scores.h"

namespace pyrag {

namespace {
inline float dot(const float* a, const float* b, int64_t d) {
  // Eight partial sums let the compiler vectorise without -ffast-math.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u] * b[j + u];
  }
  for (; j < d; ++j) acc[0] += a[j] * b[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
}  // namespace

bool scan_f32_scalar(const ScanArgsF32& a, TopkHeaps& heaps) {
  bool nonfinite = false;
  for (int64_t r = a.row_begin; r < a.row_end; ++r) {
    const float* x = a.corpus + r * a.dim;
    for (int64_t q = 0; q < a.num_queries; ++q) {
      float s = dot(a.queries + q * a.dim, x, a.dim);
      if (!std::isfinite(s)) {
        nonfinite = true;
        continue;
      }
      if (s >= heaps.threshold(q)) heaps.push(q, s, r);
    }
  }
  return nonfinite;
}

}  // namespace pyrag
