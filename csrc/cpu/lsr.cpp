// LSR kernels: each row recomputes log p_R and log p_LSR with masked_log_softmax_row
// (O(K), two scratch rows per thread) and reduces them; the backward recomputes the
// same instead of saving [B, K] softmaxes from the forward.
#include "cpu/lsr.h"

#include <cmath>
#include <vector>

#include "cpu/loss_rows.h"

namespace pyrag {

template <typename T>
void lsr_weights(const T* lm_scores, const uint8_t* mask, int64_t rows, int64_t k, T tau,
                 int num_threads, T* weights) {
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* m = mask ? mask + b * k : nullptr;
      T* out = weights + b * k;
      masked_log_softmax_row(lm_scores + b * k, m, k, tau, out);
      for (int64_t c = 0; c < k; ++c) out[c] = std::exp(out[c]);  // exp(-inf) = 0 when masked
    }
  });
}

namespace {

// log p_R and log p_LSR of row b; false if the row has no valid context.
template <typename T>
bool row_log_probs(const T* retriever_scores, const T* lm_scores, const uint8_t* mask, int64_t b,
                   int64_t k, T tau_retriever, T tau_lm, T* log_r, T* log_l) {
  const uint8_t* m = mask ? mask + b * k : nullptr;
  if (!masked_log_softmax_row(retriever_scores + b * k, m, k, tau_retriever, log_r)) return false;
  masked_log_softmax_row(lm_scores + b * k, m, k, tau_lm, log_l);
  return true;
}

}  // namespace

template <typename T>
void lsr_kl(const T* retriever_scores, const T* lm_scores, const uint8_t* mask, int64_t rows,
            int64_t k, T tau_retriever, T tau_lm, bool reverse, int num_threads, T* kl) {
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<T> log_r(k), log_l(k);
    for (int64_t b = begin; b < end; ++b) {
      double total = 0.0;
      if (row_log_probs(retriever_scores, lm_scores, mask, b, k, tau_retriever, tau_lm,
                        log_r.data(), log_l.data())) {
        const T* log_p = reverse ? log_l.data() : log_r.data();
        const T* log_q = reverse ? log_r.data() : log_l.data();
        const uint8_t* m = mask ? mask + b * k : nullptr;
        for (int64_t c = 0; c < k; ++c) {
          if (is_valid(m, c)) total += std::exp(double(log_p[c])) * double(log_p[c] - log_q[c]);
        }
      }
      kl[b] = static_cast<T>(total);
    }
  });
}

template <typename T>
void lsr_kl_backward(const T* grad, const T* retriever_scores, const T* lm_scores,
                     const uint8_t* mask, int64_t rows, int64_t k, T tau_retriever, T tau_lm,
                     bool reverse, int num_threads, T* grad_scores) {
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<T> log_r(k), log_l(k);
    for (int64_t b = begin; b < end; ++b) {
      T* out = grad_scores + b * k;
      if (!row_log_probs(retriever_scores, lm_scores, mask, b, k, tau_retriever, tau_lm,
                         log_r.data(), log_l.data())) {
        std::fill(out, out + k, T(0));
        continue;
      }
      const uint8_t* m = mask ? mask + b * k : nullptr;
      const T g = grad[b] / tau_retriever;
      if (reverse) {  // d KL(l || r) / d s_c = (r_c - l_c) / tau
        for (int64_t c = 0; c < k; ++c) {
          out[c] = is_valid(m, c) ? g * (std::exp(log_r[c]) - std::exp(log_l[c])) : T(0);
        }
      } else {  // d KL(r || l) / d s_c = r_c (log r_c - log l_c - KL) / tau
        double kl = 0.0;
        for (int64_t c = 0; c < k; ++c) {
          if (is_valid(m, c)) kl += std::exp(double(log_r[c])) * double(log_r[c] - log_l[c]);
        }
        for (int64_t c = 0; c < k; ++c) {
          out[c] = is_valid(m, c)
                       ? g * std::exp(log_r[c]) * static_cast<T>(double(log_r[c] - log_l[c]) - kl)
                       : T(0);
        }
      }
    }
  });
}

#define PYRAG_INSTANTIATE_LSR(T)                                                                \
  template void lsr_weights<T>(const T*, const uint8_t*, int64_t, int64_t, T, int, T*);        \
  template void lsr_kl<T>(const T*, const T*, const uint8_t*, int64_t, int64_t, T, T, bool,    \
                          int, T*);                                                             \
  template void lsr_kl_backward<T>(const T*, const T*, const T*, const uint8_t*, int64_t,       \
                                   int64_t, T, T, bool, int, T*);
PYRAG_INSTANTIATE_LSR(float)
PYRAG_INSTANTIATE_LSR(double)
#undef PYRAG_INSTANTIATE_LSR

}  // namespace pyrag
