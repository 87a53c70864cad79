// Per-query running top-k: a min-heap whose root is the worst kept candidate, so the
// kernels can reject most rows with one compare against `threshold`.
//
// Order: higher score first; on equal scores the smaller id wins. Kernels call
// `push` only for scores >= threshold(q); `push` does the exact (score, id) compare.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace pyrag {

// True when (sa, ia) ranks strictly before (sb, ib).
inline bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

class TopkHeaps {
 public:
  TopkHeaps(int64_t num_queries, int64_t k)
      : k_(k),
        scores_(static_cast<size_t>(num_queries * k)),
        ids_(static_cast<size_t>(num_queries * k)),
        sizes_(static_cast<size_t>(num_queries), 0),
        thresholds_(static_cast<size_t>(num_queries), -std::numeric_limits<float>::infinity()) {}

  int64_t k() const { return k_; }
  int64_t size(int64_t q) const { return sizes_[q]; }
  // Candidates scoring below this can never enter query q's top-k.
  float threshold(int64_t q) const { return thresholds_[q]; }
  const float* thresholds() const { return thresholds_.data(); }
  const float* scores(int64_t q) const { return scores_.data() + q * k_; }
  const int64_t* ids(int64_t q) const { return ids_.data() + q * k_; }

  // Out of line (topk_scores.cpp, built without -m flags): the per-ISA kernels call it,
  // and an inline copy compiled with their flags could be the one the linker keeps,
  // which would crash the scalar path on a CPU without that instruction set.
  void push(int64_t q, float score, int64_t id);

 private:
  int64_t k_;
  std::vector<float> scores_;
  std::vector<int64_t> ids_;
  std::vector<int64_t> sizes_;
  std::vector<float> thresholds_;
};

// Merges the heaps of several threads into sorted [B, k] outputs, padding with
// (-inf, -1) when fewer than k candidates exist.
inline void merge_topk(const std::vector<TopkHeaps>& parts, int64_t num_queries, int64_t k,
                       float* out_scores, int64_t* out_ids) {
  std::vector<std::pair<float, int64_t>> all;
  for (int64_t q = 0; q < num_queries; ++q) {
    all.clear();
    for (const auto& h : parts) {
      for (int64_t j = 0; j < h.size(q); ++j) all.emplace_back(h.scores(q)[j], h.ids(q)[j]);
    }
    auto better = [](const auto& a, const auto& b) {
      return ranks_before(a.first, a.second, b.first, b.second);
    };
    int64_t n = std::min<int64_t>(k, static_cast<int64_t>(all.size()));
    std::partial_sort(all.begin(), all.begin() + n, all.end(), better);
    for (int64_t j = 0; j < k; ++j) {
      if (j < n) {
        out_scores[q * k + j] = all[j].first;
        out_ids[q * k + j] = all[j].second;
      } else {
        out_scores[q * k + j] = -std::numeric_limits<float>::infinity();
        out_ids[q * k + j] = -1;
      }
    }
  }
}

}  // namespace pyrag
