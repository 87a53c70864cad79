// pyrag::lsr_weights, pyrag::lsr_kl and its backward on the GPU: one warp per row, each
// lane striding over the row's K contexts, reductions by butterfly shuffles.
//
// Semantics (pyrag.reference): over the valid contexts of a row (mask true),
//   log p(j) = (s_j - max s) / tau - log sum_i exp((s_i - max s) / tau),
// subtracting the max *before* dividing by tau, so that s = 1e4 with tau = 1e-3 keeps
// its differences exact (s / tau = 1e7 is where a float32 ulp is 1). Masked entries are
// never read as numbers (they may hold -inf padding or NaN); a row with no valid context
// gives weights 0, KL 0 and gradient 0. T is float (float32/16 inputs) or double.
#include <string>

#include "cuda/api.h"
#include "cuda/portability.h"

namespace pyrag::cuda {
namespace {

constexpr int kMaxWarps = 8;
// Four blocks of 8 warps per SM (64 registers per thread): without a minimum ptxas aims
// at full occupancy, 32 registers, and spills the float32 KL kernel.
constexpr int kMinBlocksPerSm = 4;

template <class T>
constexpr T neg_inf() {
  return -static_cast<T>(__builtin_huge_val());
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const T o = __shfl_xor_sync(kFullMask, v, offset);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ bool is_valid(const bool* mask, std::int64_t i) {
  return mask == nullptr || reinterpret_cast<const unsigned char*>(mask)[i] != 0;
}

// The log-softmax normaliser of one row: log p(j) = (s_j - max) / tau - log_sum.
// `empty` when no context is valid.
template <class T>
struct RowNorm {
  T max;
  T log_sum;
  bool empty;

  __device__ __forceinline__ T log_p(T s, T tau) const { return (s - max) / tau - log_sum; }
};

template <class T>
__device__ __forceinline__ RowNorm<T> row_norm(const T* s, const bool* mask, std::int64_t cols,
                                               T tau, int lane) {
  T m = neg_inf<T>();
  for (std::int64_t j = lane; j < cols; j += kWarpSize) {
    if (is_valid(mask, j) && s[j] > m) m = s[j];
  }
  m = warp_max(m);
  if (!(m > neg_inf<T>())) return {T(0), T(0), true};
  T sum = 0;
  for (std::int64_t j = lane; j < cols; j += kWarpSize) {
    if (is_valid(mask, j)) sum += exp_of((s[j] - m) / tau);
  }
  sum = warp_sum(sum);  // >= 1: the max term is exp(0)
  return {m, log_of(sum), false};
}

// sum_j p(j) (log p(j) - log q(j)) over the valid contexts, for p = first, q = second.
template <class T>
__device__ __forceinline__ T row_kl(const T* ps, const RowNorm<T>& pn, T p_tau, const T* qs,
                                    const RowNorm<T>& qn, T q_tau, const bool* mask,
                                    std::int64_t cols, int lane) {
  T kl = 0;
  for (std::int64_t j = lane; j < cols; j += kWarpSize) {
    if (is_valid(mask, j)) {
      const T log_p = pn.log_p(ps[j], p_tau);
      kl += exp_of(log_p) * (log_p - qn.log_p(qs[j], q_tau));
    }
  }
  return warp_sum(kl);
}

template <class T>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize, kMinBlocksPerSm)
    lsr_weights_kernel(const T* lm_scores, const bool* mask, std::int64_t rows, std::int64_t cols,
                       T tau, T* out) {
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row =
      std::int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // the whole warp leaves together
  const T* s = lm_scores + row * cols;
  const bool* m = mask != nullptr ? mask + row * cols : nullptr;
  T* o = out + row * cols;
  const RowNorm<T> norm = row_norm(s, m, cols, tau, lane);
  for (std::int64_t j = lane; j < cols; j += kWarpSize) {
    o[j] = !norm.empty && is_valid(m, j) ? exp_of(norm.log_p(s[j], tau)) : T(0);
  }
}

template <class T>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize, kMinBlocksPerSm)
    lsr_kl_kernel(const T* retriever_scores, const T* lm_scores, const bool* mask,
                  std::int64_t rows, std::int64_t cols, T tau_r, T tau_l, bool reverse, T* out) {
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row =
      std::int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const T* r = retriever_scores + row * cols;
  const T* l = lm_scores + row * cols;
  const bool* m = mask != nullptr ? mask + row * cols : nullptr;
  const RowNorm<T> rn = row_norm(r, m, cols, tau_r, lane);
  const RowNorm<T> ln = row_norm(l, m, cols, tau_l, lane);
  T kl = 0;
  if (!rn.empty)
    kl = reverse ? row_kl(l, ln, tau_l, r, rn, tau_r, m, cols, lane)
                 : row_kl(r, rn, tau_r, l, ln, tau_l, m, cols, lane);
  if (lane == 0) out[row] = kl;
}

// d(grad * KL) / d retriever_scores[j] on valid contexts:
//   forward KL(p_R || p_LSR): grad / tau_R * p_R(j) * (log p_R(j) - log p_LSR(j) - KL)
//   reverse KL(p_LSR || p_R): grad / tau_R * (p_R(j) - p_LSR(j))
template <class T>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize, kMinBlocksPerSm)
    lsr_kl_backward_kernel(const T* grad, const T* retriever_scores, const T* lm_scores,
                           const bool* mask, std::int64_t rows, std::int64_t cols, T tau_r, T tau_l,
                           bool reverse, T* out) {
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row =
      std::int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  const T* r = retriever_scores + row * cols;
  const T* l = lm_scores + row * cols;
  const bool* m = mask != nullptr ? mask + row * cols : nullptr;
  T* o = out + row * cols;
  const RowNorm<T> rn = row_norm(r, m, cols, tau_r, lane);
  const RowNorm<T> ln = row_norm(l, m, cols, tau_l, lane);
  const T kl = !rn.empty && !reverse ? row_kl(r, rn, tau_r, l, ln, tau_l, m, cols, lane) : T(0);
  const T g = grad[row] / tau_r;
  for (std::int64_t j = lane; j < cols; j += kWarpSize) {
    T v = 0;
    if (!rn.empty && is_valid(m, j)) {
      const T log_r = rn.log_p(r[j], tau_r);
      const T log_l = ln.log_p(l[j], tau_l);
      v = reverse ? g * (exp_of(log_r) - exp_of(log_l)) : g * exp_of(log_r) * (log_r - log_l - kl);
    }
    o[j] = v;
  }
}

void check_rows(const char* op, std::int64_t rows, std::int64_t cols, int num_warps) {
  if (rows < 0 || cols < 0) {
    throw std::invalid_argument(std::string(op) + ": bad shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "]");
  }
  if (num_warps < 1 || num_warps > kMaxWarps) {
    throw std::invalid_argument(std::string(op) + ": num_warps must be in [1, 8], got " +
                                std::to_string(num_warps));
  }
  if ((rows + num_warps - 1) / num_warps > 0x7fffffffLL)
    throw std::invalid_argument(std::string(op) + ": too many rows");
}

dim3 row_grid(std::int64_t rows, int num_warps) {
  return dim3(static_cast<unsigned>((rows + num_warps - 1) / num_warps));
}

}  // namespace

template <class T>
void lsr_weights(const T* lm_scores, const bool* mask, std::int64_t rows, std::int64_t cols,
                 double tau, T* out, int num_warps, void* stream) {
  check_rows("lsr_weights", rows, cols, num_warps);
  if (rows == 0 || cols == 0) return;
  launch(lsr_weights_kernel<T>, "lsr_weights", row_grid(rows, num_warps),
         dim3(num_warps * kWarpSize), 0, static_cast<Stream>(stream), lm_scores, mask, rows, cols,
         static_cast<T>(tau), out);
}

template <class T>
void lsr_kl(const T* retriever_scores, const T* lm_scores, const bool* mask, std::int64_t rows,
            std::int64_t cols, double tau_retriever, double tau_lm, bool direction_reverse, T* out,
            int num_warps, void* stream) {
  check_rows("lsr_kl", rows, cols, num_warps);
  if (rows == 0) return;
  launch(lsr_kl_kernel<T>, "lsr_kl", row_grid(rows, num_warps), dim3(num_warps * kWarpSize), 0,
         static_cast<Stream>(stream), retriever_scores, lm_scores, mask, rows, cols,
         static_cast<T>(tau_retriever), static_cast<T>(tau_lm), direction_reverse, out);
}

template <class T>
void lsr_kl_backward(const T* grad, const T* retriever_scores, const T* lm_scores, const bool* mask,
                     std::int64_t rows, std::int64_t cols, double tau_retriever, double tau_lm,
                     bool direction_reverse, T* grad_retriever_scores, int num_warps,
                     void* stream) {
  check_rows("lsr_kl_backward", rows, cols, num_warps);
  if (rows == 0 || cols == 0) return;
  launch(lsr_kl_backward_kernel<T>, "lsr_kl_backward", row_grid(rows, num_warps),
         dim3(num_warps * kWarpSize), 0, static_cast<Stream>(stream), grad, retriever_scores,
         lm_scores, mask, rows, cols, static_cast<T>(tau_retriever), static_cast<T>(tau_lm),
         direction_reverse, grad_retriever_scores);
}

template void lsr_weights<float>(const float*, const bool*, std::int64_t, std::int64_t, double,
                                 float*, int, void*);
template void lsr_weights<double>(const double*, const bool*, std::int64_t, std::int64_t, double,
                                  double*, int, void*);
template void lsr_kl<float>(const float*, const float*, const bool*, std::int64_t, std::int64_t,
                            double, double, bool, float*, int, void*);
template void lsr_kl<double>(const double*, const double*, const bool*, std::int64_t, std::int64_t,
                             double, double, bool, double*, int, void*);
template void lsr_kl_backward<float>(const float*, const float*, const float*, const bool*,
                                     std::int64_t, std::int64_t, double, double, bool, float*, int,
                                     void*);
template void lsr_kl_backward<double>(const double*, const double*, const double*, const bool*,
                                      std::int64_t, std::int64_t, double, double, bool, double*,
                                      int, void*);

}  // namespace pyrag::cuda
