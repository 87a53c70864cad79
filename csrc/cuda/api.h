// Host API of the CUDA kernels in csrc/cuda: plain C++ over device pointers and a stream,
// with no CUDA or pybind11 header, so that csrc/cuda/bindings.cpp compiles the same for
// pyrag._cuda (real GPU) and pyrag._cuda_emu (host emulation, where "device" pointers
// are host pointers and the stream is ignored).
//
// Every launch is checked; errors are thrown as std::invalid_argument (bad arguments),
// pyrag::cuda::CudaError (the CUDA runtime) or pyrag::emu::EmulationError (the emulation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace pyrag::cuda {

// A CUDA runtime error (to Python as pyrag._cuda.CudaError, a RuntimeError).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- topk_scores: fused inner-product top-k -------------------------------------------
enum class CorpusType : int { f32 = 0, f16 = 1, bf16 = 2 };

constexpr int kMaxTopk = 1024;

struct TopkArgs {
  const float* queries = nullptr;  // [B, d] float32
  std::int64_t num_queries = 0;    // B
  const void* corpus = nullptr;    // [N, d] of `corpus_type`
  CorpusType corpus_type = CorpusType::f32;
  std::int64_t num_rows = 0;  // N
  std::int64_t dim = 0;       // d
  std::int64_t k = 0;
  const float* scales = nullptr;  // [N] per-row score multipliers, or null
  // f16/bf16 corpora: also multiply the residual queries - rn(queries) (two tensor-core
  // passes), so that float32 queries keep float32 accuracy. Ignored otherwise.
  bool split_queries = false;
  float* out_scores = nullptr;        // [B, k]
  std::int64_t* out_ids = nullptr;    // [B, k]
  int* nonfinite = nullptr;           // set to nonzero if a score is NaN or +-Inf
  int num_warps = 8;                  // warps per block: 1, 2, 4 or 8
  int splits = 1;                     // corpus parts per query tile (from topk_plan)
  float* workspace_scores = nullptr;  // [B, splits, k] when splits > 1
  int* workspace_ids = nullptr;       // [B, splits, k] when splits > 1
  void* stream = nullptr;
};

// The number of corpus splits to use: `requested` (> 0) rounded to what the tiling allows,
// or (requested = 0) enough blocks to fill `num_sms` multiprocessors.
int topk_plan(std::int64_t num_queries, std::int64_t num_rows, std::int64_t k, int num_warps,
              int num_sms, int requested);
void topk_scores(const TopkArgs& args);
// Dynamic shared memory of the scan and merge kernels (for the ptxas report).
std::size_t topk_scan_smem_bytes(CorpusType type, std::int64_t k, int num_warps);
std::size_t topk_merge_smem_bytes(std::int64_t k, int num_warps);

// ---- LSR losses: one warp per row, T = float or double --------------------------------
// mask: [B, K] bool (1 byte each), or null for all valid. direction_reverse selects
// KL(p_LSR || p_R) instead of KL(p_R || p_LSR).
template <class T>
void lsr_weights(const T* lm_scores, const bool* mask, std::int64_t rows, std::int64_t cols,
                 double tau, T* out, int num_warps, void* stream);
template <class T>
void lsr_kl(const T* retriever_scores, const T* lm_scores, const bool* mask, std::int64_t rows,
            std::int64_t cols, double tau_retriever, double tau_lm, bool direction_reverse, T* out,
            int num_warps, void* stream);
template <class T>
void lsr_kl_backward(const T* grad, const T* retriever_scores, const T* lm_scores, const bool* mask,
                     std::int64_t rows, std::int64_t cols, double tau_retriever, double tau_lm,
                     bool direction_reverse, T* grad_retriever_scores, int num_warps, void* stream);

}  // namespace pyrag::cuda
