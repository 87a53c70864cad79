// Top-k selection with per-warp register queues, in the spirit of FAISS's
// WarpSelect / BlockSelect (written from the idea, not the code).
//
// A warp owns one query's running top-k as a *warp queue* of 32*KR (score, id) pairs
// (KR registers per lane, element e = r*32 + lane, sorted best first) and a *thread
// queue* of T unsorted candidates per lane. Each step the warp offers 32 candidates, one
// per lane; a candidate enters its lane's thread queue only if it ranks before the
// current k-th best. When any lane's thread queue is full the warp sorts all thread
// queues (a bitonic sort across registers and lanes), folds them into the warp queue
// (the "reversed tail" trick below keeps exactly the best 32*KR), and re-sorts the warp
// queue with a bitonic merge. Warps that scanned different parts of the same query then
// merge their queues through shared memory (block_merge), and the result goes out.
//
// Order: a higher score first; equal scores go to the smaller id. Empty slots hold the
// sentinel (-inf, kSentinelId), which ranks after every real candidate (scores are
// finite; a kernel flags non-finite scores separately).
#pragma once

#include "cuda/portability.h"

namespace pyrag::cuda {

constexpr int kSentinelId = 0x7fffffff;

__device__ __forceinline__ bool ranks_before(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

constexpr int log2_of(int x) { return x <= 1 ? 0 : 1 + log2_of(x / 2); }

// A (score, id) pair travels between lanes as one 64-bit shuffle (two SHFLs on the
// device, one exchange under the emulation).
__device__ __forceinline__ unsigned long long pack(float s, int id) {
  return (static_cast<unsigned long long>(float_as_bits(s)) << 32) | static_cast<std::uint32_t>(id);
}

__device__ __forceinline__ void unpack(unsigned long long v, float& s, int& id) {
  s = bits_as_float(static_cast<std::uint32_t>(v >> 32));
  id = static_cast<int>(static_cast<std::uint32_t>(v));
}

// Compare-exchange of this lane's element with lane ^ stride's, in one register: the lane
// keeps the better of the pair if keep_better, else the worse.
__device__ __forceinline__ void exchange_across_lanes(float& s, int& id, int stride,
                                                      bool keep_better) {
  float other_s;
  int other_id;
  unpack(__shfl_xor_sync(kFullMask, pack(s, id), stride), other_s, other_id);
  if (ranks_before(other_s, other_id, s, id) == keep_better) {
    s = other_s;
    id = other_id;
  }
}

// Compare-exchange of two registers of this lane: the better goes to (s0, i0) if
// better_first, else to (s1, i1).
__device__ __forceinline__ void exchange_registers(float& s0, int& i0, float& s1, int& i1,
                                                   bool better_first) {
  if (ranks_before(s1, i1, s0, i0) == better_first) {
    const float ts = s0;
    const int ti = i0;
    s0 = s1;
    i0 = i1;
    s1 = ts;
    i1 = ti;
  }
}

// One bitonic stage over the warp-striped array of R registers (32*R elements): pairs
// (e, e ^ stride) are ordered best-first when block `e & size` is 0, worst-first
// otherwise (size = 32*R, the last merge, orders everything best-first). Every index is
// a compile-time constant after unrolling, so the arrays stay in registers.
template <int R, int kLogSize, int kLogStride>
__device__ __forceinline__ void bitonic_stage(float (&s)[R], int (&id)[R], int lane) {
  constexpr int size = 1 << kLogSize;
  constexpr int stride = 1 << kLogStride;
  if constexpr (stride >= kWarpSize) {
    constexpr int rs = stride / kWarpSize;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if ((r & rs) == 0) {
        const bool best_first = ((r * kWarpSize) & size) == 0;
        exchange_registers(s[r], id[r], s[r | rs], id[r | rs], best_first);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool best_first = (size >= kWarpSize ? ((r * kWarpSize) & size) : (lane & size)) == 0;
      const bool lower = (lane & stride) == 0;
      exchange_across_lanes(s[r], id[r], stride, lower == best_first);
    }
  }
}

template <int R, int kLogSize, int kLogStride>
__device__ __forceinline__ void bitonic_stages_down(float (&s)[R], int (&id)[R], int lane) {
  bitonic_stage<R, kLogSize, kLogStride>(s, id, lane);
  if constexpr (kLogStride > 0) bitonic_stages_down<R, kLogSize, kLogStride - 1>(s, id, lane);
}

template <int R, int kLogSize>
__device__ __forceinline__ void bitonic_sort_from(float (&s)[R], int (&id)[R], int lane) {
  bitonic_stages_down<R, kLogSize, kLogSize - 1>(s, id, lane);
  if constexpr ((1 << kLogSize) < kWarpSize * R) bitonic_sort_from<R, kLogSize + 1>(s, id, lane);
}

// Sorts 32*R elements best-first.
template <int R>
__device__ __forceinline__ void bitonic_sort(float (&s)[R], int (&id)[R], int lane) {
  bitonic_sort_from<R, 1>(s, id, lane);
}

// Sorts a bitonic sequence of 32*R elements best-first.
template <int R>
__device__ __forceinline__ void bitonic_merge(float (&s)[R], int (&id)[R], int lane) {
  constexpr int kLog = log2_of(kWarpSize * R);
  bitonic_stages_down<R, kLog, kLog - 1>(s, id, lane);
}

// One warp's running top-k of one query. KR: warp-queue registers per lane (32*KR >= k,
// a power of two); T: thread-queue slots per lane (a power of two). Every member is
// warp-collective: call it from all 32 lanes with the same arguments' shape.
template <int KR, int T>
struct WarpQueue {
  static_assert((KR & (KR - 1)) == 0 && KR >= 1 && KR <= 32, "KR must be a power of two <= 32");
  static_assert((T & (T - 1)) == 0 && T >= 1, "T must be a power of two");

  float wq_s[KR];
  int wq_id[KR];
  float tq_s[T];
  int tq_id[T];
  int tq_count;
  float kth_s;  // the k-th best so far: a candidate must rank before it to enter
  int kth_id;
  int k;
  int lane;

  __device__ __forceinline__ void init(int k_, int lane_) {
    k = k_;
    lane = lane_;
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      wq_s[r] = kNegInf;
      wq_id[r] = kSentinelId;
    }
    clear_thread_queue();
    kth_s = kNegInf;
    kth_id = kSentinelId;
  }

  // Offers one candidate per lane (valid = false offers none).
  __device__ __forceinline__ void add(float s, int id, bool valid) {
    if (valid && ranks_before(s, id, kth_s, kth_id)) {
#pragma unroll
      for (int t = T - 1; t > 0; --t) {
        tq_s[t] = tq_s[t - 1];
        tq_id[t] = tq_id[t - 1];
      }
      tq_s[0] = s;
      tq_id[0] = id;
      ++tq_count;
    }
    if (__any_sync(kFullMask, tq_count == T)) merge_thread_queues();
  }

  // Folds what is left in the thread queues into the warp queue.
  __device__ __forceinline__ void flush() {
    if (__any_sync(kFullMask, tq_count > 0)) merge_thread_queues();
  }

  // Folds another sorted list of 32*KR candidates (in shared memory) into the warp queue.
  __device__ __forceinline__ void merge_sorted(const float* s, const int* id) {
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      const int other = kWarpSize * KR - 1 - (r * kWarpSize + lane);
      take_if_better(r, s[other], id[other]);
    }
    bitonic_merge<KR>(wq_s, wq_id, lane);
    update_kth();
  }

  __device__ __forceinline__ void store(float* s, int* id) const {
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      s[r * kWarpSize + lane] = wq_s[r];
      id[r * kWarpSize + lane] = wq_id[r];
    }
  }

  // Writes the best k as float scores and int64 ids, -1 for empty slots.
  __device__ __forceinline__ void write_result(float* s, std::int64_t* id) const {
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      const int e = r * kWarpSize + lane;
      if (e < k) {
        s[e] = wq_s[r];
        id[e] = wq_id[r] == kSentinelId ? -1 : wq_id[r];
      }
    }
  }

  // Writes the best k as they are (a partial result for a later merge).
  __device__ __forceinline__ void write_partial(float* s, int* id) const {
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      const int e = r * kWarpSize + lane;
      if (e < k) {
        s[e] = wq_s[r];
        id[e] = wq_id[r];
      }
    }
  }

 private:
  __device__ __forceinline__ void clear_thread_queue() {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      tq_s[t] = kNegInf;
      tq_id[t] = kSentinelId;
    }
    tq_count = 0;
  }

  __device__ __forceinline__ void take_if_better(int r, float s, int id) {
    if (ranks_before(s, id, wq_s[r], wq_id[r])) {
      wq_s[r] = s;
      wq_id[r] = id;
    }
  }

  // The k-th element (index k-1) of the sorted warp queue, broadcast to every lane.
  __device__ __forceinline__ void update_kth() {
    const int reg = (k - 1) / kWarpSize;
    float s = kNegInf;
    int id = kSentinelId;
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      if (r == reg) {
        s = wq_s[r];
        id = wq_id[r];
      }
    }
    unpack(__shfl_sync(kFullMask, pack(s, id), (k - 1) % kWarpSize), kth_s, kth_id);
  }

  // With A the sorted warp queue and B the sorted thread queues, the best 32*KR of A u B
  // are max(A[e], B[32*KR-1-e]) element-wise over the tail of A that B can reach; that
  // sequence is bitonic (A descends, reversed B ascends), so one bitonic merge sorts it.
  __device__ __forceinline__ void merge_thread_queues() {
    bitonic_sort<T>(tq_s, tq_id, lane);
    constexpr int kReach = T < KR ? T : KR;  // registers of sorted B that can enter A
#pragma unroll
    for (int j = 0; j < kReach; ++j) {
      // B[32*KR-1-e] for e = (KR-1-j)*32 + lane is register j of lane 31 - lane.
      float s;
      int id;
      unpack(__shfl_sync(kFullMask, pack(tq_s[j], tq_id[j]), kWarpSize - 1 - lane), s, id);
      take_if_better(KR - 1 - j, s, id);
    }
    bitonic_merge<KR>(wq_s, wq_id, lane);
    clear_thread_queue();
    update_kth();
  }
};

// Merges the queues of the `parts` warps that share a query through shared memory, in
// log2(parts) rounds; afterwards part 0 holds the query's result. Warps are laid out as
// warp = part * queries + query_slot. `area` must hold (parts/2 * queries) lists of
// 32*KR (float, int) pairs. Block-collective: every thread of the block must call it.
template <int KR, int T>
__device__ __forceinline__ void block_merge(WarpQueue<KR, T>& queue, bool active, int part,
                                            int parts, int query_slot, int queries,
                                            unsigned char* area) {
  constexpr int kLen = kWarpSize * KR;
  float* area_s = reinterpret_cast<float*>(area);
  int* area_id = reinterpret_cast<int*>(area + sizeof(float) * kLen *
                                                   (parts / 2 > 0 ? parts / 2 : 1) * queries);
  for (int step = 1; step < parts; step *= 2) {
    const int slot = query_slot * (parts / 2) + part / (2 * step);
    __syncthreads();  // the area's previous readers (or the scan's tiles) are done
    if (active && part % (2 * step) == step)
      queue.store(area_s + slot * kLen, area_id + slot * kLen);
    __syncthreads();
    if (active && part % (2 * step) == 0)
      queue.merge_sorted(area_s + slot * kLen, area_id + slot * kLen);
  }
}

template <int KR>
constexpr std::size_t block_merge_bytes(int parts, int queries) {
  return std::size_t(kWarpSize) * KR * (sizeof(float) + sizeof(int)) *
         (parts / 2 > 0 ? parts / 2 : 1) * queries;
}

}  // namespace pyrag::cuda
