// Per-row building blocks of the CPU loss kernels (lsr.cpp, marginal_nll.cpp): the
// masked, max-shifted log-softmax of one row, and the split of rows over threads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/parallel.h"

namespace pyrag {

// A context is valid when there is no mask or its mask byte is non-zero (torch bools).
inline bool is_valid(const uint8_t* mask, int64_t c) { return mask == nullptr || mask[c] != 0; }

// out[c] = log softmax over the valid c of x[c] / tau, written as (x[c] - max) / tau - lse
// so that x = 1e4, tau = 1e-3 keeps the differences exact (x / tau = 1e7 would round to
// a float32 ulp of 1.0 before the max is taken out). Masked entries get -inf and are
// never read, so they may hold NaN/Inf. Sums accumulate in double. Returns false, with
// out all -inf, when the row has no valid entry.
template <typename T>
bool masked_log_softmax_row(const T* x, const uint8_t* mask, int64_t k, T tau, T* out) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  T row_max = kNegInf;
  bool any = false;
  for (int64_t c = 0; c < k; ++c) {
    if (is_valid(mask, c)) {
      row_max = any ? std::max(row_max, x[c]) : x[c];
      any = true;
    }
  }
  if (!any) {
    std::fill(out, out + k, kNegInf);
    return false;
  }
  double total = 0.0;
  for (int64_t c = 0; c < k; ++c) {
    if (is_valid(mask, c)) {
      const T z = (x[c] - row_max) / tau;
      out[c] = z;
      total += std::exp(static_cast<double>(z));
    } else {
      out[c] = kNegInf;
    }
  }
  const T lse = static_cast<T>(std::log(total));  // total >= 1: the max contributes exp(0)
  for (int64_t c = 0; c < k; ++c) {
    if (is_valid(mask, c)) out[c] -= lse;
  }
  return true;
}

// Below this many row elements a second thread costs more than it saves (a thread
// start is ~20 us, an element ~10 ns with its exp).
constexpr int64_t kMinLossElementsPerThread = 1 << 15;

// Runs fn(row_begin, row_end) over [0, rows) in contiguous chunks on up to num_threads
// threads, fewer when rows * row_elements is small.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t row_elements, int num_threads, Fn&& fn) {
  if (rows <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, rows * std::max<int64_t>(row_elements, 1) /
                                                   kMinLossElementsPerThread);
  const int nt = static_cast<int>(std::min({int64_t(std::max(1, num_threads)), by_work, rows}));
  const int64_t chunk = (rows + nt - 1) / nt;
  parallel_tasks(nt, [&](int t) {
    const int64_t begin = std::min(rows, t * chunk);
    const int64_t end = std::min(rows, begin + chunk);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace pyrag
