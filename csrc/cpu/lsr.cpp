// LSR kernels: each row computes p_R and p_LSR (and their logs) with masked_softmax_row,
// one exp per entry each, into per-thread scratch rows (O(K)), and reduces them; the
// backward recomputes the same instead of saving [B, K] softmaxes from the forward.
#include "cpu/lsr.h"

#include <vector>

#include "cpu/loss_rows.h"

namespace pyrag {

template <typename T>
void lsr_weights(const T* lm_scores, const uint8_t* mask, int64_t rows, int64_t k, T tau,
                 int num_threads, T* weights) {
  check_loss_sizes("lsr_weights", rows, k, 1, tau);
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<T> log_p(k);
    for (int64_t b = begin; b < end; ++b) {
      masked_softmax_row(lm_scores + b * k, mask ? mask + b * k : nullptr, k, tau, log_p.data(),
                         weights + b * k, "lm_scores", b);
    }
  });
}

namespace {

// p_R and p_LSR of one row, with their logs.
template <typename T>
struct LsrRow {
  std::vector<T> log_r, r, log_l, l, term;

  explicit LsrRow(int64_t k) : log_r(k), r(k), log_l(k), l(k), term(k) {}

  // False if row b has no valid context.
  bool compute(const T* retriever_scores, const T* lm_scores, const uint8_t* mask, int64_t b,
               int64_t k, T tau_retriever, T tau_lm) {
    const uint8_t* m = mask ? mask + b * k : nullptr;
    if (!masked_softmax_row(retriever_scores + b * k, m, k, tau_retriever, log_r.data(), r.data(),
                            "retriever_scores", b)) {
      return false;
    }
    masked_softmax_row(lm_scores + b * k, m, k, tau_lm, log_l.data(), l.data(), "lm_scores", b);
    return true;
  }

  // KL(p || q) = sum_c p_c (log p_c - log q_c); terms with p_c = 0 (masked, or underflowed)
  // are 0, which also keeps -inf - -inf = NaN out of masked entries.
  T kl(bool reverse, int64_t k) {
    const T* p = reverse ? l.data() : r.data();
    const T* log_p = reverse ? log_l.data() : log_r.data();
    const T* log_q = reverse ? log_r.data() : log_l.data();
    for (int64_t c = 0; c < k; ++c)
      term[c] = select(p[c] > T(0), p[c] * (log_p[c] - log_q[c]), T(0));
    return sum_of(term.data(), k);
  }
};

}  // namespace

template <typename T>
void lsr_kl(const T* retriever_scores, const T* lm_scores, const uint8_t* mask, int64_t rows,
            int64_t k, T tau_retriever, T tau_lm, bool reverse, int num_threads, T* kl) {
  check_loss_sizes("lsr_kl", rows, k, 1, tau_retriever);
  check_loss_sizes("lsr_kl", rows, k, 1, tau_lm);
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    LsrRow<T> row(k);
    for (int64_t b = begin; b < end; ++b) {
      const bool any = row.compute(retriever_scores, lm_scores, mask, b, k, tau_retriever, tau_lm);
      kl[b] = any ? row.kl(reverse, k) : T(0);
    }
  });
}

template <typename T>
void lsr_kl_backward(const T* grad, const T* retriever_scores, const T* lm_scores,
                     const uint8_t* mask, int64_t rows, int64_t k, T tau_retriever, T tau_lm,
                     bool reverse, int num_threads, T* grad_scores) {
  check_loss_sizes("lsr_kl_backward", rows, k, 1, tau_retriever);
  check_loss_sizes("lsr_kl_backward", rows, k, 1, tau_lm);
  parallel_rows(rows, k, num_threads, [&](int64_t begin, int64_t end) {
    LsrRow<T> row(k);
    for (int64_t b = begin; b < end; ++b) {
      T* out = grad_scores + b * k;
      if (!row.compute(retriever_scores, lm_scores, mask, b, k, tau_retriever, tau_lm)) {
        std::fill(out, out + k, T(0));
        continue;
      }
      const T g = grad[b] / tau_retriever;
      const T* r = row.r.data();
      const T* l = row.l.data();
      if (reverse) {  // d KL(l || r) / d s_c = (r_c - l_c) / tau; both are 0 where masked
        for (int64_t c = 0; c < k; ++c) out[c] = g * (r[c] - l[c]);
      } else {  // d KL(r || l) / d s_c = r_c (log r_c - log l_c - KL) / tau
        const T kl = row.kl(false, k);
        const T* log_r = row.log_r.data();
        const T* log_l = row.log_l.data();
        for (int64_t c = 0; c < k; ++c) {
          out[c] = select(r[c] > T(0), g * r[c] * ((log_r[c] - log_l[c]) - kl), T(0));
        }
      }
    }
  });
}

#define PYRAG_INSTANTIATE_LSR(T)                                                                   \
  template void lsr_weights<T>(const T*, const uint8_t*, int64_t, int64_t, T, int, T*);            \
  template void lsr_kl<T>(const T*, const T*, const uint8_t*, int64_t, int64_t, T, T, bool, int,   \
                          T*);                                                                     \
  template void lsr_kl_backward<T>(const T*, const T*, const T*, const uint8_t*, int64_t, int64_t, \
                                   T, T, bool, int, T*);
PYRAG_INSTANTIATE_LSR(float)
PYRAG_INSTANTIATE_LSR(double)
#undef PYRAG_INSTANTIATE_LSR

}  // namespace pyrag
