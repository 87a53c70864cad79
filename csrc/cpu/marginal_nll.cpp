// Marginal NLL kernels. Per row: log p_R by masked_log_softmax_row, then for every token
// the log-sum-exp over contexts of log p_R(c) + lm[c, t]. Contexts are the outer loop and
// tokens the inner one, so lm is read along its contiguous axis; the running max and sum
// are per-token scratch rows (O(K + T) per thread). The backward recomputes them.
#include "cpu/marginal_nll.h"

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/loss_rows.h"

namespace pyrag {

namespace {

// Scratch and per-row state shared by the forward and the backward.
template <typename T>
struct MarginalRow {
  std::vector<T> log_r;       // [K] log p_R, -inf where masked
  std::vector<T> col_max;     // [T] max over valid c of log p_R(c) + lm[c, t]
  std::vector<double> total;  // [T] sum over valid c of exp(log p_R(c) + lm[c, t] - col_max[t])

  MarginalRow(int64_t k, int64_t tokens) : log_r(k), col_max(tokens), total(tokens) {}

  // Fills the scratch for row b; false if the row has no valid context. Columns of
  // masked tokens are computed too (from whatever they hold) but never used.
  bool compute(const T* scores, const T* lm, const uint8_t* mask, int64_t k, int64_t tokens,
               T tau) {
    if (!masked_log_softmax_row(scores, mask, k, tau, log_r.data())) return false;
    std::fill(col_max.begin(), col_max.end(), -std::numeric_limits<T>::infinity());
    for (int64_t c = 0; c < k; ++c) {
      if (!is_valid(mask, c)) continue;
      const T* row = lm + c * tokens;
      for (int64_t t = 0; t < tokens; ++t) col_max[t] = std::max(col_max[t], log_r[c] + row[t]);
    }
    std::fill(total.begin(), total.end(), 0.0);
    for (int64_t c = 0; c < k; ++c) {
      if (!is_valid(mask, c)) continue;
      const T* row = lm + c * tokens;
      for (int64_t t = 0; t < tokens; ++t) {
        total[t] += std::exp(static_cast<double>(log_r[c] + row[t] - col_max[t]));
      }
    }
    return true;
  }
};

}  // namespace

template <typename T>
void marginal_nll(const T* retriever_scores, const T* lm_logprobs, const uint8_t* mask,
                  const uint8_t* token_mask, int64_t rows, int64_t k, int64_t tokens, T tau,
                  int num_threads, T* nll) {
  parallel_rows(rows, k * std::max<int64_t>(tokens, 1), num_threads,
                [&](int64_t begin, int64_t end) {
    MarginalRow<T> row(k, tokens);
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* m = mask ? mask + b * k : nullptr;
      const uint8_t* tm = token_mask ? token_mask + b * tokens : nullptr;
      double out = 0.0;
      if (row.compute(retriever_scores + b * k, lm_logprobs + b * k * tokens, m, k, tokens, tau)) {
        for (int64_t t = 0; t < tokens; ++t) {
          if (is_valid(tm, t)) out -= double(row.col_max[t]) + std::log(row.total[t]);
        }
      }
      nll[b] = static_cast<T>(out);
    }
  });
}

template <typename T>
void marginal_nll_backward(const T* grad, const T* retriever_scores, const T* lm_logprobs,
                           const uint8_t* mask, const uint8_t* token_mask, int64_t rows,
                           int64_t k, int64_t tokens, T tau, int num_threads, T* grad_scores,
                           T* grad_lm) {
  parallel_rows(rows, k * std::max<int64_t>(tokens, 1), num_threads,
                [&](int64_t begin, int64_t end) {
    MarginalRow<T> row(k, tokens);
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* m = mask ? mask + b * k : nullptr;
      const uint8_t* tm = token_mask ? token_mask + b * tokens : nullptr;
      const T* lm = lm_logprobs + b * k * tokens;
      T* gs = grad_scores + b * k;
      T* gl = grad_lm + b * k * tokens;
      if (!row.compute(retriever_scores + b * k, lm, m, k, tokens, tau)) {
        std::fill(gs, gs + k, T(0));
        std::fill(gl, gl + k * tokens, T(0));
        continue;
      }
      int64_t valid_tokens = 0;
      for (int64_t t = 0; t < tokens; ++t) valid_tokens += is_valid(tm, t);
      const double g = grad[b];
      for (int64_t c = 0; c < k; ++c) {
        T* glc = gl + c * tokens;
        if (!is_valid(m, c)) {
          gs[c] = T(0);
          std::fill(glc, glc + tokens, T(0));
          continue;
        }
        const T* lmc = lm + c * tokens;
        double posterior_sum = 0.0;  // sum over valid t of w[c, t]
        for (int64_t t = 0; t < tokens; ++t) {
          if (!is_valid(tm, t)) {
            glc[t] = T(0);
            continue;
          }
          const double w = std::exp(double(row.log_r[c] + lmc[t] - row.col_max[t])) / row.total[t];
          glc[t] = static_cast<T>(-g * w);
          posterior_sum += w;
        }
        const double r = std::exp(double(row.log_r[c]));
        gs[c] = static_cast<T>(g / tau * (double(valid_tokens) * r - posterior_sum));
      }
    }
  });
}

#define PYRAG_INSTANTIATE_MARGINAL(T)                                                           \
  template void marginal_nll<T>(const T*, const T*, const uint8_t*, const uint8_t*, int64_t,   \
                                int64_t, int64_t, T, int, T*);                                  \
  template void marginal_nll_backward<T>(const T*, const T*, const T*, const uint8_t*,          \
                                         const uint8_t*, int64_t, int64_t, int64_t, T, int, T*, \
                                         T*);
PYRAG_INSTANTIATE_MARGINAL(float)
PYRAG_INSTANTIATE_MARGINAL(double)
#undef PYRAG_INSTANTIATE_MARGINAL

}  // namespace pyrag
