// Marginal NLL kernels. Per row: p_R by masked_softmax_row, then for every token the
// log-sum-exp over contexts of log p_R(c) + lm[c, t]. In the token form the contexts are
// the outer loop and the tokens the inner, vectorised one, so lm is read along its
// contiguous axis and the running max and sum are per-token scratch rows (O(K + T) per
// thread); the sequence form (T = 1) vectorises over contexts instead. The backward
// recomputes the forward's row state rather than saving it.
#include "cpu/marginal_nll.h"

#include <vector>

#include "cpu/loss_rows.h"

namespace pyrag {

namespace {

template <typename T>
struct MarginalRow {
  std::vector<T> log_r, r;  // [K] p_R and its log; -inf / 0 where masked
  std::vector<T> joint;     // [K] sequence form: log p_R(c) + lm[c]; token form: scratch
  std::vector<T> lm_row;    // [T] one context's log-probs, 0 at masked tokens
  std::vector<T> col_max;   // [T] max over valid c of log p_R(c) + lm[c, t]
  std::vector<T> total;     // [T] sum over valid c of exp(log p_R(c) + lm[c, t] - col_max[t])
  std::vector<uint8_t> token_valid;
  int64_t valid_tokens = 0;

  MarginalRow(int64_t k, int64_t tokens)
      : log_r(k),
        r(k),
        joint(k),
        lm_row(tokens),
        col_max(tokens),
        total(tokens),
        token_valid(tokens) {}

  // Fills the state of row b (lm is its [K, T] block); false if no context is valid.
  // A NaN/Inf log-prob at a valid (context, token) throws.
  bool compute(const T* scores, const T* lm, const uint8_t* mask, const uint8_t* token_mask,
               int64_t b, int64_t k, int64_t tokens, T tau) {
    if (!masked_softmax_row(scores, mask, k, tau, log_r.data(), r.data(), "retriever_scores", b)) {
      return false;
    }
    valid_tokens = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      token_valid[t] = is_valid(token_mask, t);
      valid_tokens += token_valid[t];
    }
    std::fill(col_max.begin(), col_max.end(), kNegInf<T>);
    for (int64_t c = 0; c < k; ++c) {
      if (!is_valid(mask, c)) continue;
      if (load_context(lm, c, tokens)) {
        int64_t t = 0;
        while (!non_finite(lm_row[t])) ++t;
        throw_non_finite("lm_logprobs", b, c, t);
      }
      for (int64_t t = 0; t < tokens; ++t) col_max[t] = std::max(col_max[t], log_r[c] + lm_row[t]);
    }
    std::fill(total.begin(), total.end(), T(0));
    for (int64_t c = 0; c < k; ++c) {
      if (!is_valid(mask, c)) continue;
      load_context(lm, c, tokens);
      for (int64_t t = 0; t < tokens; ++t) total[t] += exp_of(log_r[c] + lm_row[t] - col_max[t]);
    }
    return true;
  }

  // lm_row = context c's log-probs, with masked tokens (which may hold NaN/Inf) as 0.
  // Returns whether a valid token's log-prob is NaN or +-Inf.
  bool load_context(const T* lm, int64_t c, int64_t tokens) {
    const T* src = lm + c * tokens;
    int bad = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      lm_row[t] = select(token_valid[t] != 0, src[t], T(0));
      bad |= non_finite(lm_row[t]);
    }
    return bad != 0;
  }

  // Sequence form, row b: joint[c] = log p_R(c) + lm[c] (-inf where masked); returns
  // its max. A NaN/Inf log-prob of a valid context throws.
  T sequence_joint(const T* lm, int64_t b, int64_t k) {
    int bad = 0;
    for (int64_t c = 0; c < k; ++c) {
      const bool valid = log_r[c] > kNegInf<T>;
      bad |= non_finite(select(valid, lm[c], T(0)));
      joint[c] = select(valid, log_r[c] + lm[c], kNegInf<T>);
    }
    if (bad) {
      int64_t c = 0;
      while (!(log_r[c] > kNegInf<T> && non_finite(lm[c]))) ++c;
      throw_non_finite("lm_logprobs", b, c);
    }
    return max_of(joint.data(), k);
  }
};

// The sequence form [B, K] (T = 1, no token mask) vectorises over contexts.
bool is_sequence_form(int64_t tokens, const uint8_t* token_mask) {
  return tokens == 1 && token_mask == nullptr;
}

}  // namespace

template <typename T>
void marginal_nll(const T* retriever_scores, const T* lm_logprobs, const uint8_t* mask,
                  const uint8_t* token_mask, int64_t rows, int64_t k, int64_t tokens, T tau,
                  int num_threads, T* nll) {
  check_loss_sizes("marginal_nll", rows, k, tokens, tau);
  const bool sequence = is_sequence_form(tokens, token_mask);
  parallel_rows(rows, k * std::max<int64_t>(tokens, 1), num_threads,
                [&](int64_t begin, int64_t end) {
                  MarginalRow<T> row(k, sequence ? 0 : tokens);
                  for (int64_t b = begin; b < end; ++b) {
                    const uint8_t* m = mask ? mask + b * k : nullptr;
                    const T* lm = lm_logprobs + b * k * tokens;
                    const T* s = retriever_scores + b * k;
                    if (sequence) {
                      if (!masked_softmax_row(s, m, k, tau, row.log_r.data(), row.r.data(),
                                              "retriever_scores", b)) {
                        nll[b] = T(0);
                        continue;
                      }
                      const T top = row.sequence_joint(lm, b, k);
                      for (int64_t c = 0; c < k; ++c) row.joint[c] = exp_of(row.joint[c] - top);
                      nll[b] = -(top + std::log(sum_of(row.joint.data(), k)));
                      continue;
                    }
                    if (!row.compute(s, lm, m, token_mask ? token_mask + b * tokens : nullptr, b, k,
                                     tokens, tau)) {
                      nll[b] = T(0);
                      continue;
                    }
                    T out = 0;
                    for (int64_t t = 0; t < tokens; ++t) {
                      if (row.token_valid[t]) out -= row.col_max[t] + std::log(row.total[t]);
                    }
                    nll[b] = out;
                  }
                });
}

template <typename T>
void marginal_nll_backward(const T* grad, const T* retriever_scores, const T* lm_logprobs,
                           const uint8_t* mask, const uint8_t* token_mask, int64_t rows, int64_t k,
                           int64_t tokens, T tau, int num_threads, T* grad_scores, T* grad_lm) {
  check_loss_sizes("marginal_nll_backward", rows, k, tokens, tau);
  const bool sequence = is_sequence_form(tokens, token_mask);
  parallel_rows(
      rows, k * std::max<int64_t>(tokens, 1), num_threads, [&](int64_t begin, int64_t end) {
        MarginalRow<T> row(k, sequence ? 0 : tokens);
        std::vector<T> posterior(sequence ? 0 : tokens);
        for (int64_t b = begin; b < end; ++b) {
          const uint8_t* m = mask ? mask + b * k : nullptr;
          const T* lm = lm_logprobs + b * k * tokens;
          const T* s = retriever_scores + b * k;
          T* gs = grad_scores + b * k;
          T* gl = grad_lm + b * k * tokens;
          const T g = grad[b];
          if (sequence) {
            if (!masked_softmax_row(s, m, k, tau, row.log_r.data(), row.r.data(),
                                    "retriever_scores", b)) {
              std::fill(gs, gs + k, T(0));
              std::fill(gl, gl + k, T(0));
              continue;
            }
            const T top = row.sequence_joint(lm, b, k);
            for (int64_t c = 0; c < k; ++c) row.joint[c] = exp_of(row.joint[c] - top);
            const T inv_total = T(1) / sum_of(row.joint.data(), k);
            for (int64_t c = 0; c < k; ++c) {
              const T w = row.joint[c] * inv_total;  // posterior; 0 where masked
              gl[c] = -g * w;
              gs[c] = g / tau * (row.r[c] - w);
            }
            continue;
          }
          if (!row.compute(s, lm, m, token_mask ? token_mask + b * tokens : nullptr, b, k, tokens,
                           tau)) {
            std::fill(gs, gs + k, T(0));
            std::fill(gl, gl + k * tokens, T(0));
            continue;
          }
          for (int64_t t = 0; t < tokens; ++t) row.total[t] = T(1) / row.total[t];  // now 1 / total
          for (int64_t c = 0; c < k; ++c) {
            T* glc = gl + c * tokens;
            if (!is_valid(m, c)) {
              gs[c] = T(0);
              std::fill(glc, glc + tokens, T(0));
              continue;
            }
            row.load_context(lm, c, tokens);
            const T log_rc = row.log_r[c];
            for (int64_t t = 0; t < tokens; ++t) {
              const T w = exp_of(log_rc + row.lm_row[t] - row.col_max[t]) * row.total[t];
              posterior[t] = select(row.token_valid[t] != 0, w, T(0));
              glc[t] = -g * posterior[t];
            }
            gs[c] = g / tau * (T(row.valid_tokens) * row.r[c] - sum_of(posterior.data(), tokens));
          }
        }
      });
}

#define PYRAG_INSTANTIATE_MARGINAL(T)                                                           \
  template void marginal_nll<T>(const T*, const T*, const uint8_t*, const uint8_t*, int64_t,    \
                                int64_t, int64_t, T, int, T*);                                  \
  template void marginal_nll_backward<T>(const T*, const T*, const T*, const uint8_t*,          \
                                         const uint8_t*, int64_t, int64_t, int64_t, T, int, T*, \
                                         T*);
PYRAG_INSTANTIATE_MARGINAL(float)
PYRAG_INSTANTIATE_MARGINAL(double)
#undef PYRAG_INSTANTIATE_MARGINAL

}  // namespace pyrag
