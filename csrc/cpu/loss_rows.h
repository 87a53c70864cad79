// Per-row building blocks of the CPU loss kernels (lsr.cpp, marginal_nll.cpp): an exp
// the compiler vectorises, lane-split sums and maxima, the masked softmax of one row,
// and the split of rows over threads.
//
// The loops are branchless so that GCC/Clang vectorise them at -O3 for the baseline ISA.
// Conditionals go through select(), a bitwise blend: GCC (12) will not if-convert a
// `c ? x : y` over float arithmetic under its default -ftrapping-math, and then leaves
// the whole loop scalar. Masked entries may hold NaN/Inf: they are computed with and
// then replaced by a select, never accumulated.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu/parallel.h"

namespace pyrag {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// A context is valid when there is no mask or its mask byte is non-zero (torch bools).
inline bool is_valid(const uint8_t* mask, int64_t c) { return mask == nullptr || mask[c] != 0; }

// keep ? a : b, without a branch (see the top of this file).
template <typename T>
inline T select(bool keep, T a, T b) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const Bits m = Bits(0) - static_cast<Bits>(keep);
  return std::bit_cast<T>((std::bit_cast<Bits>(a) & m) | (std::bit_cast<Bits>(b) & ~m));
}

// exp(x) for float in a form that vectorises: Cody-Waite reduction x = n ln2 + r with
// |r| <= ln2/2, a degree-7 polynomial for exp(r) (Cephes' expf coefficients, relative
// error < 2e-7 on the range), and 2^n built in the exponent bits. exp(x) for
// x < -87.3 (and -inf) is 0; x > 88.3 saturates at 2^128-ish (never used: the kernels
// only take exp of values <= 0). Double keeps std::exp: it serves gradcheck, not speed.
inline float exp_of(float x) {
  constexpr float kLo = -87.3f, kHi = 88.3f;
  const float above = select(x > kLo, x, kLo);
  const float xc = select(above < kHi, above, kHi);
  // Round xc / ln2 to the nearest integer with the 1.5 * 2^23 trick (no SSE4.1 needed).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return select(x >= kLo, p * scale, 0.0f);
}
inline double exp_of(double x) { return std::exp(x); }

// Sum and max of v[0, n) over 8 interleaved lanes: vectorisable without -ffast-math and
// the same result on any thread count.
template <typename T>
T sum_of(const T* v, int64_t n) {
  T lane[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lane[j] += v[i + j];
  }
  for (; i < n; ++i) lane[i % 8] += v[i];
  return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

template <typename T>
T max_of(const T* v, int64_t n) {
  T lane[8];
  std::fill(lane, lane + 8, kNegInf<T>);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lane[j] = std::max(lane[j], v[i + j]);
  }
  for (; i < n; ++i) lane[i % 8] = std::max(lane[i % 8], v[i]);
  return *std::max_element(lane, lane + 8);
}

// 1 if v is NaN or +-Inf (v - v is NaN exactly then; the comparison is a quiet one).
template <typename T>
inline int non_finite(T v) {
  return static_cast<int>(v - v != T(0));
}

// Thrown when a valid entry is NaN or +-Inf; pybind11 turns std::domain_error into
// pyrag._C.NonFiniteError, a ValueError. The message matches the Python-side check.
[[noreturn]] inline void throw_non_finite(const char* what, int64_t row, int64_t col,
                                          int64_t token = -1) {
  std::string where = "(" + std::to_string(row) + ", " + std::to_string(col);
  if (token >= 0) where += ", " + std::to_string(token);
  throw std::domain_error(std::string(what) + " hold NaN or Inf at the valid entry " + where +
                          "); mark padding invalid with mask= instead");
}

// Index of the first valid non-finite entry of a row (the row is known to have one).
template <typename T>
int64_t first_non_finite(const T* x, const uint8_t* mask, int64_t k) {
  int64_t c = 0;
  while (c < k && !(is_valid(mask, c) && non_finite(x[c]))) ++c;
  return c;
}

// The softmax of x / tau over the valid entries of one row: log_p[c] (-inf where masked)
// and p[c] (0 where masked). The max is taken out before dividing by tau, as
// (x - max) / tau, so x = 1e4, tau = 1e-3 keeps the differences exact (x / tau = 1e7
// would round to a float32 ulp of 1.0 first). Returns false, with log_p all -inf and p
// all 0, when the row has no valid entry. A valid entry that is NaN or +-Inf throws
// (naming `what` and row `row`).
template <typename T>
bool masked_softmax_row(const T* x, const uint8_t* mask, int64_t k, T tau, T* log_p, T* p,
                        const char* what, int64_t row) {
  // log_p serves as scratch: first the masked scores, -inf where masked.
  int bad = 0;
  if (mask != nullptr) {
    for (int64_t c = 0; c < k; ++c) {
      bad |= non_finite(select(mask[c] != 0, x[c], T(0)));
      log_p[c] = select(mask[c] != 0, x[c], kNegInf<T>);
    }
  } else {
    for (int64_t c = 0; c < k; ++c) {
      bad |= non_finite(x[c]);
      log_p[c] = x[c];
    }
  }
  if (bad) throw_non_finite(what, row, first_non_finite(x, mask, k));
  const T row_max = max_of(log_p, k);
  if (row_max == kNegInf<T>) {  // no valid entry
    std::fill(p, p + k, T(0));
    return false;
  }
  for (int64_t c = 0; c < k; ++c) log_p[c] = (log_p[c] - row_max) / tau;  // -inf stays -inf
  for (int64_t c = 0; c < k; ++c) p[c] = exp_of(log_p[c]);
  const T total = sum_of(p, k);  // >= 1: the max contributes exp(0)
  const T lse = std::log(total), inv_total = T(1) / total;
  for (int64_t c = 0; c < k; ++c) {
    log_p[c] -= lse;
    p[c] *= inv_total;
  }
  return true;
}

// The loss kernels' entry checks (Python checks first; this guards direct callers).
inline void check_loss_sizes(const char* op, int64_t rows, int64_t k, int64_t tokens, double tau) {
  if (rows < 0 || k < 0 || tokens < 0) {
    throw std::invalid_argument(std::string(op) + ": bad sizes B=" + std::to_string(rows) +
                                " K=" + std::to_string(k) + " T=" + std::to_string(tokens));
  }
  if (!(tau > 0.0) || !std::isfinite(tau)) {
    throw std::invalid_argument(std::string(op) + ": tau must be finite and > 0, got " +
                                std::to_string(tau));
  }
}

// Below this many row elements a second thread costs more than it saves (a thread
// start is ~20 us; an element costs a few ns).
constexpr int64_t kMinLossElementsPerThread = 1 << 16;

// Runs fn(row_begin, row_end) over [0, rows) in contiguous chunks on up to num_threads
// threads, fewer when rows * row_elements is small.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t row_elements, int num_threads, Fn&& fn) {
  if (rows <= 0) return;
  const int64_t by_work =
      std::max<int64_t>(1, rows * std::max<int64_t>(row_elements, 1) / kMinLossElementsPerThread);
  const int nt = static_cast<int>(std::min({int64_t(std::max(1, num_threads)), by_work, rows}));
  const int64_t chunk = (rows + nt - 1) / nt;
  parallel_tasks(nt, [&](int t) {
    const int64_t begin = std::min(rows, t * chunk);
    const int64_t end = std::min(rows, begin + chunk);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace pyrag
