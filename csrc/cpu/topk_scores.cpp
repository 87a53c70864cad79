// Driver of the fused CPU top-k: splits the corpus over threads, runs the ISA's scan
// kernel on each part with its own heaps (O(threads * B * k) memory, never B x N), and
// merges.
#include "cpu/topk_scores.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu/parallel.h"

namespace pyrag {

void TopkHeaps::push(int64_t q, float score, int64_t id) {
  float* s = scores_.data() + q * k_;
  int64_t* ix = ids_.data() + q * k_;
  int64_t n = sizes_[q];
  if (n < k_) {
    // Sift up from the new leaf.
    int64_t i = n;
    while (i > 0) {
      int64_t parent = (i - 1) / 2;
      if (!ranks_before(s[parent], ix[parent], score, id)) break;  // parent is worse
      s[i] = s[parent];
      ix[i] = ix[parent];
      i = parent;
    }
    s[i] = score;
    ix[i] = id;
    sizes_[q] = ++n;
    if (n == k_) thresholds_[q] = s[0];
    return;
  }
  if (!ranks_before(score, id, s[0], ix[0])) return;
  // Replace the root and sift down: the root must stay the worst.
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1;
    if (l >= n) break;
    int64_t worst = l;
    if (l + 1 < n && ranks_before(s[l], ix[l], s[l + 1], ix[l + 1])) worst = l + 1;
    if (!ranks_before(score, id, s[worst], ix[worst])) break;  // candidate is worst
    s[i] = s[worst];
    ix[i] = ix[worst];
    i = worst;
  }
  s[i] = score;
  ix[i] = id;
  thresholds_[q] = s[0];
}

ScanF32Fn scan_f32_for(Isa isa) {
#if defined(PYRAG_X86)
  if (isa >= Isa::avx512) return scan_f32_avx512;
#endif
  (void)isa;
  return scan_f32_scalar;
}

namespace {

// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 20;
// Threads get whole row tiles so that their scans stay aligned.
constexpr int64_t kRowAlign = 64;

int threads_for(int64_t rows, int64_t work, int requested) {
  int64_t by_work = std::max<int64_t>(1, work / kMinWorkPerThread);
  int64_t by_rows = std::max<int64_t>(1, (rows + kRowAlign - 1) / kRowAlign);
  return static_cast<int>(std::max<int64_t>(1, std::min({int64_t(requested), by_work, by_rows})));
}

}  // namespace

void topk_scores_f32(const float* queries, int64_t num_queries, const float* corpus,
                     int64_t num_rows, int64_t dim, int64_t k, int num_threads,
                     float* out_scores, int64_t* out_ids) {
  if (num_queries < 0 || num_rows < 0 || dim < 1) {
    throw std::invalid_argument("topk_scores: bad sizes B=" + std::to_string(num_queries) +
                                " N=" + std::to_string(num_rows) + " d=" + std::to_string(dim));
  }
  if (k < 1) throw std::invalid_argument("topk_scores: k must be >= 1, got " + std::to_string(k));
  if (num_queries == 0) return;
  const ScanF32Fn scan = scan_f32_for(active_isa());
  const int nt = threads_for(num_rows, num_queries * num_rows * dim, std::max(1, num_threads));
  const int64_t chunk = ((num_rows + nt - 1) / nt + kRowAlign - 1) / kRowAlign * kRowAlign;

  std::vector<TopkHeaps> heaps;
  heaps.reserve(nt);
  for (int t = 0; t < nt; ++t) heaps.emplace_back(num_queries, std::min(k, std::max<int64_t>(num_rows, 1)));
  std::vector<char> nonfinite(nt, 0);
  parallel_tasks(nt, [&](int t) {
    ScanArgsF32 args{queries, num_queries, corpus, dim, std::min(num_rows, t * chunk),
                     std::min(num_rows, (t + 1) * chunk)};
    if (args.row_begin < args.row_end) nonfinite[t] = scan(args, heaps[t]);
  });
  if (std::any_of(nonfinite.begin(), nonfinite.end(), [](char c) { return c != 0; })) {
    throw std::domain_error(
        "topk_scores: a score is NaN or Inf; the corpus holds NaN/Inf or values whose dot "
        "products overflow float32");
  }
  merge_topk(heaps, num_queries, k, out_scores, out_ids);
}

}  // namespace pyrag
