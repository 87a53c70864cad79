// Fused inner-product top-k on the CPU: the scan kernels' common interface.
//
// A scan kernel scores rows [row_begin, row_end) of the corpus against all queries and
// pushes every candidate that can enter a query's top-k into that query's heap. It
// never holds more than a register tile of scores. One kernel exists per (corpus
// dtype, ISA); the driver in topk_scores.cpp picks it, splits the corpus over threads
// and merges the per-thread heaps.
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/topk_heap.h"

namespace pyrag {

struct ScanArgsF32 {
  const float* queries;  // [B, d], contiguous
  int64_t num_queries;
  const float* corpus;   // [N, d], contiguous
  int64_t dim;
  int64_t row_begin;
  int64_t row_end;
};

// Returns true if any score it computed was NaN or +-Inf.
using ScanF32Fn = bool (*)(const ScanArgsF32& args, TopkHeaps& heaps);

bool scan_f32_scalar(const ScanArgsF32& args, TopkHeaps& heaps);
#if defined(PYRAG_X86)
bool scan_f32_avx512(const ScanArgsF32& args, TopkHeaps& heaps);
#endif

// The fp32 scan for `isa` (falls back to the best lower path that has one).
ScanF32Fn scan_f32_for(Isa isa);

// Entry point. Writes sorted [B, k] scores and row ids (ties to the smaller row id,
// padded with -inf / -1 past N). Runs on `num_threads` threads. Throws
// std::invalid_argument on bad sizes and std::domain_error when a score is not finite.
void topk_scores_f32(const float* queries, int64_t num_queries, const float* corpus,
                     int64_t num_rows, int64_t dim, int64_t k, int num_threads,
                     float* out_scores, int64_t* out_ids);

}  // namespace pyrag
