// TopkHeaps' out-of-line members (compiled without ISA flags; see topk_heap.h).
#include "cpu/topk_heap.h"

namespace pyrag {

void TopkHeaps::push(int64_t q, float score, int64_t id) {
  if (margins_ != nullptr && !overflowed_[q] && score >= thresholds_[q]) {
    auto& c = candidates_[q];
    c.push_back({score, id});
    if (static_cast<int64_t>(c.size()) >= next_prune_[q]) prune(q);
  }
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
    if (n == k_) update_threshold(q);
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
  update_threshold(q);
}

void TopkHeaps::update_threshold(int64_t q) {
  const float kth = scores_[q * k_];
  thresholds_[q] = (margins_ != nullptr && !overflowed_[q]) ? kth - margins_[q] : kth;
}

void TopkHeaps::prune(int64_t q) {
  auto& c = candidates_[q];
  const float thr = thresholds_[q];
  c.erase(std::remove_if(c.begin(), c.end(), [thr](const Candidate& x) { return x.score < thr; }),
          c.end());
  if (static_cast<int64_t>(c.size()) > cap_) {
    overflowed_[q] = 1;
    std::vector<Candidate>().swap(c);
    if (sizes_[q] == k_) update_threshold(q);
    return;
  }
  next_prune_[q] = std::max<int64_t>(kFirstPrune, 2 * static_cast<int64_t>(c.size()));
}

}  // namespace pyrag
