// Per-query running top-k: a min-heap whose root is the worst kept candidate, so the
// kernels can reject most rows with one compare against `threshold`.
//
// Order: higher score first; on equal scores the smaller tie key wins. The kernels push
// row numbers as ids; the tie key of a row is the row itself, or tie_keys[row] when the
// caller gives them (a DenseIndex whose user ids do not increase with the row: ties then
// go to the smaller user id). Kernels call `push` only for scores >= threshold(q); `push`
// does the exact (score, key) compare.
//
// Candidate mode (certified-exact search over a quantised corpus): with per-query
// margins set, threshold(q) is (k-th best score - margin[q]) and every pushed score at
// or above it is also kept in a candidate list, pruned as the threshold rises. A list
// that outgrows its cap is dropped and the query marked `overflowed` (the caller then
// rescans that query exactly), so memory stays bounded whatever the data.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace pyrag {

struct Candidate {
  float score;
  int64_t id;
};

class TopkHeaps {
 public:
  // tie_keys: nullptr (ties to the smaller id) or one key per id pushed; must outlive
  // the heaps.
  TopkHeaps(int64_t num_queries, int64_t k, const int64_t* tie_keys = nullptr)
      : k_(k),
        tie_keys_(tie_keys),
        scores_(static_cast<size_t>(num_queries * k)),
        ids_(static_cast<size_t>(num_queries * k)),
        sizes_(static_cast<size_t>(num_queries), 0),
        thresholds_(static_cast<size_t>(num_queries), -std::numeric_limits<float>::infinity()) {}

  // Switches on candidate mode; margins[q] >= 0 and must outlive the heaps.
  void collect_candidates(const float* margins, int64_t cap_per_query) {
    margins_ = margins;
    cap_ = cap_per_query;
    candidates_.assign(sizes_.size(), {});
    next_prune_.assign(sizes_.size(), kFirstPrune);
    overflowed_.assign(sizes_.size(), 0);
  }

  int64_t k() const { return k_; }
  const int64_t* tie_keys() const { return tie_keys_; }
  // True when (sa, ia) ranks strictly before (sb, ib).
  bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) const {
    return sa > sb || (sa == sb && key(ia) < key(ib));
  }
  int64_t size(int64_t q) const { return sizes_[q]; }
  // Candidates scoring below this can never enter query q's top-k (or, in candidate
  // mode, the candidate set).
  float threshold(int64_t q) const { return thresholds_[q]; }
  const float* scores(int64_t q) const { return scores_.data() + q * k_; }
  const int64_t* ids(int64_t q) const { return ids_.data() + q * k_; }
  const std::vector<Candidate>& candidates(int64_t q) const { return candidates_[q]; }
  bool overflowed(int64_t q) const { return overflowed_[q] != 0; }

  // Not inline: the per-ISA kernels call it, and an inline copy compiled with their
  // -m flags could be the one the linker keeps for every caller.
  void push(int64_t q, float score, int64_t id);
  const float* thresholds() const { return thresholds_.data(); }

 private:
  static constexpr int64_t kFirstPrune = 64;

  void update_threshold(int64_t q);
  // Drops candidates that fell below the threshold; past the cap, gives up on the list.
  void prune(int64_t q);

  int64_t key(int64_t id) const { return tie_keys_ != nullptr ? tie_keys_[id] : id; }

  int64_t k_;
  const int64_t* tie_keys_;
  std::vector<float> scores_;
  std::vector<int64_t> ids_;
  std::vector<int64_t> sizes_;
  std::vector<float> thresholds_;
  // Candidate mode only.
  const float* margins_ = nullptr;
  int64_t cap_ = 0;
  std::vector<std::vector<Candidate>> candidates_;
  std::vector<int64_t> next_prune_;
  std::vector<char> overflowed_;
};

// Merges the heaps of several threads (all with the same tie keys) into sorted [B, k]
// outputs, padding with (-inf, -1) when fewer than k candidates exist.
inline void merge_topk(const std::vector<TopkHeaps>& parts, int64_t num_queries, int64_t k,
                       float* out_scores, int64_t* out_ids) {
  std::vector<std::pair<float, int64_t>> all;
  for (int64_t q = 0; q < num_queries; ++q) {
    all.clear();
    for (const auto& h : parts) {
      for (int64_t j = 0; j < h.size(q); ++j) all.emplace_back(h.scores(q)[j], h.ids(q)[j]);
    }
    const TopkHeaps& order = parts.front();
    auto better = [&order](const auto& a, const auto& b) {
      return order.ranks_before(a.first, a.second, b.first, b.second);
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
