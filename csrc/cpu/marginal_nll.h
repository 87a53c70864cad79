// Marginal likelihood over retrieved contexts on the CPU (pyrag::marginal_nll and its
// backward). One row per task, numerically stable log-sum-exp, float and double.
//
// lm_logprobs is contiguous [B, K, T]; the sequence form [B, K] is T = 1 with no token
// mask. mask is [B, K] bytes and token_mask [B, T] bytes (torch bools), either may be
// null for "all valid". Per row b:
//   nll[b] = -sum_{t valid} log sum_{c valid} p_R(c) exp(lm_logprobs[b, c, t]),
//   p_R = softmax(retriever_scores[b] / tau) over the valid contexts,
// and a row with no valid context gives 0 and zero gradients (pyrag/reference.py).
#pragma once
#include <cstdint>

namespace pyrag {

template <typename T>
void marginal_nll(const T* retriever_scores, const T* lm_logprobs, const uint8_t* mask,
                  const uint8_t* token_mask, int64_t rows, int64_t k, int64_t tokens, T tau,
                  int num_threads, T* nll);

// With the posterior w[c, t] = p_R(c) p(y_t | c) / sum_c' p_R(c') p(y_t | c'):
//   grad_lm[b, c, t] = -grad[b] w[c, t]  (0 for masked c or t),
//   grad_scores[b, c] = grad[b] / tau * sum_{t valid} (p_R(c) - w[c, t]).
template <typename T>
void marginal_nll_backward(const T* grad, const T* retriever_scores, const T* lm_logprobs,
                           const uint8_t* mask, const uint8_t* token_mask, int64_t rows, int64_t k,
                           int64_t tokens, T tau, int num_threads, T* grad_scores, T* grad_lm);

}  // namespace pyrag
