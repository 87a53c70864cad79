// LSR losses on the CPU (pyrag::lsr_weights, pyrag::lsr_kl and its backward). One row
// per task, numerically stable log-sum-exp, float and double. Inputs are contiguous
// [B, K]; `mask` is [B, K] bytes (torch bool) or null for "all valid". The semantics are
// pyrag/reference.py's: a row with no valid context gives 0 and zero gradients.
#pragma once
#include <cstdint>

namespace pyrag {

// weights[b, c] = softmax over the valid c of lm_scores[b, c] / tau; 0 where masked.
template <typename T>
void lsr_weights(const T* lm_scores, const uint8_t* mask, int64_t rows, int64_t k, T tau,
                 int num_threads, T* weights);

// kl[b] = KL(p_R || p_LSR) (reverse = false) or KL(p_LSR || p_R) (reverse = true), with
// p_R = softmax(retriever_scores / tau_retriever), p_LSR = softmax(lm_scores / tau_lm).
template <typename T>
void lsr_kl(const T* retriever_scores, const T* lm_scores, const uint8_t* mask, int64_t rows,
            int64_t k, T tau_retriever, T tau_lm, bool reverse, int num_threads, T* kl);

// grad_scores[b, c] = grad[b] * d kl[b] / d retriever_scores[b, c].
template <typename T>
void lsr_kl_backward(const T* grad, const T* retriever_scores, const T* lm_scores,
                     const uint8_t* mask, int64_t rows, int64_t k, T tau_retriever, T tau_lm,
                     bool reverse, int num_threads, T* grad_scores);

}  // namespace pyrag
