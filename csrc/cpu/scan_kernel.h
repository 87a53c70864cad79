// The scan micro-kernel, written once as a template over an `Op`: one corpus dtype on
// one ISA. Included only by the per-ISA translation units (topk_scores_<isa>.cpp),
// which define their Ops and instantiate `scan<Op>` with their own -m flags.
//
// Register tile: MQ queries x MB blocks of 16 rows. For every 4-byte group j of the
// dimension it loads MB corpus vectors (one 64-byte packed group per block) and
// broadcasts one query word per query, then does MQ*MB multiply-adds into per-lane
// accumulators: no shuffles, no horizontal sums. MB is the largest tile that fits the
// register file next to the loaded vectors (AVX-512 fp32: MQ=5 x MB=5 = 25 zmm
// accumulators, 10 loads per 25 FMAs, so the loop is FMA-bound, not load-bound).
//
// Tile loop: queries outer (in balanced blocks of at most the main MQ), 16-row blocks
// inner, so one tile of corpus rows (sized by the driver to stay in L2) is read from
// DRAM once and from L2 once per query block.
//
// Selection: after a register tile, each score vector is compared with its query's
// running threshold (the k-th best so far); only the lanes that pass reach the heap,
// so for N >> k the top-k costs one vector compare per 16 scores.
//
// An Op provides:
//   kLanes                      rows per vector (16 / kLanes vectors per block)
//   kRegs, kXRegs, kQRegs       register file size, registers per loaded corpus vector
//                               and per broadcast query word (sizes the tile)
//   kMaxMQ                      largest query block to consider
//   Acc, X, Q, F                accumulator, loaded corpus vector, broadcast query,
//                               float score vector
//   zero(), load(p), bcast(w), madd(acc, x, q)
//                               bcast reads the query's word of one group (qwords)
//   finish(acc, qscale, qbias, row_scales) -> F   (row_scales: kLanes rows, int8 only)
//   ge_mask(F, thr), nonfinite_mask(F) -> lane bitmask, store(float*, F)
// and may provide
//   kAccRegs                    registers per accumulator (default 1)
//   kPhases = 2                 each group in two phases (bf16: odd, then even dimension;
//                               int8 by vpmaddwd: even, then odd bytes): phase p loads
//                               the corpus operand with load(p, phase) and broadcasts the
//                               query's p-th split word (ScanTile::qsplit) with
//                               bcast(w, phase). Only one phase's operands are live at a
//                               time, which leaves registers for more accumulators.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "cpu/topk_scores.h"

// Everything here has internal linkage: each ISA's translation unit must get its own
// copy, compiled with its own flags, never one the linker picked from another.
namespace pyrag::scan {
namespace {

template <class Op>
constexpr int vectors_per_block() {
  return static_cast<int>(kBlockRows) / Op::kLanes;
}

template <class Op>
constexpr int acc_regs() {
  if constexpr (requires { Op::kAccRegs; }) {
    return Op::kAccRegs;
  } else {
    return 1;
  }
}

// Phases per group (see kPhases above); with 2 the query words come from ScanTile::qsplit.
template <class Op>
constexpr int phases() {
  if constexpr (requires { Op::kPhases; }) {
    static_assert(Op::kPhases == 1 || Op::kPhases == 2);
    return Op::kPhases;
  } else {
    return 1;
  }
}

// Blocks per register tile for a query block of mq queries: the most (up to 8) whose
// accumulators, loaded corpus vectors and one broadcast query fit the register file
// with one register to spare; 0 if not even one block fits.
template <class Op>
constexpr int blocks_for(int mq) {
  constexpr int vpb = vectors_per_block<Op>();
  int best = 0;
  for (int mb = 1; mb <= 8; ++mb) {
    const int regs = mq * mb * vpb * acc_regs<Op>() + mb * vpb * Op::kXRegs + Op::kQRegs;
    if (regs <= Op::kRegs - 1) best = mb;
  }
  return best;
}

// The query block size that keeps the most accumulators busy (AVX-512 fp32: 5 x 5;
// with two registers per loaded vector, as AVX-512 int8 by vpmaddwd: 7 x 3; AVX2, every
// dtype: 6 x 1).
template <class Op>
constexpr int main_mq() {
  static_assert(blocks_for<Op>(1) >= 1, "one query x one block must fit the registers");
  int best = 1, most = 0;
  for (int mq = 1; mq <= Op::kMaxMQ && blocks_for<Op>(mq) >= 1; ++mq) {
    if (mq * blocks_for<Op>(mq) > most) {
      most = mq * blocks_for<Op>(mq);
      best = mq;
    }
  }
  return best;
}

inline uint32_t low_lanes(int64_t n, int lanes) {
  if (n <= 0) return 0;
  if (n >= lanes) return lanes >= 32 ? ~0u : (1u << lanes) - 1;
  return (1u << n) - 1;
}

// The next tile, prefetched into L2 a few lines per step of the dimension loop: spread
// over the compute of this tile, the DRAM traffic of the next one overlaps it (B=16
// reads the tile 4 times from L2 and would otherwise wait on DRAM during the first pass).
struct Prefetch {
  const uint8_t* next;
  const uint8_t* end;
  int lines;      // lines per prefetching step
  int every;      // a prefetching step every `every` steps (fewer lines than steps)
  int countdown;  // steps until the next prefetching step
};

// Offers one vector of scores (tile rows r0 .. r0 + kLanes - 1, query q) to the heap:
// one compare against the query's threshold, and a push per lane that passes.
template <class Op>
inline void select(const ScanTile& t, int64_t q, int64_t r0, typename Op::F s, TopkHeaps& heaps,
                   uint32_t& bad) {
  const uint32_t valid = low_lanes(t.valid_rows - r0, Op::kLanes);
  bad |= Op::nonfinite_mask(s) & valid;
  uint32_t hit = Op::ge_mask(s, t.thresholds[q]) & valid;
  if (hit) {
    alignas(64) float lane_scores[16];
    Op::store(lane_scores, s);
    for (; hit; hit &= hit - 1) {
      const int p = __builtin_ctz(hit);
      heaps.push(q, lane_scores[p], t.first_id + r0 + p);
    }
  }
}

template <class Op, int MQ, int MB>
inline void panel(const ScanTile& t, int64_t q0, int64_t b0, TopkHeaps& heaps, uint32_t& bad,
                  Prefetch& prefetch) {
  constexpr int kVpb = vectors_per_block<Op>();
  constexpr int kNv = MB * kVpb;
  constexpr int64_t kVecBytes = kGroupStride / kVpb;
  const int64_t block_stride = t.groups * kGroupStride;
  const uint8_t* base = t.blocks + b0 * block_stride;
  constexpr int kPh = phases<Op>();  // also the query words per group
  const uint32_t* qbase = kPh == 2 ? t.qsplit : t.qwords;
  const uint32_t* qw[MQ];
#pragma GCC unroll 16
  for (int i = 0; i < MQ; ++i) qw[i] = qbase + (q0 + i) * t.groups * kPh;

  typename Op::Acc acc[MQ][kNv];
#pragma GCC unroll 16
  for (int i = 0; i < MQ; ++i) {
#pragma GCC unroll 64
    for (int n = 0; n < kNv; ++n) acc[i][n] = Op::zero();
  }
  const int64_t groups = t.groups;
  auto step = [&](int64_t j) __attribute__((always_inline)) {
    const uint8_t* g = base + j * kGroupStride;
#pragma GCC unroll 2
    for (int ph = 0; ph < kPh; ++ph) {
      typename Op::X x[kNv];
#pragma GCC unroll 16
      for (int b = 0; b < MB; ++b) {
#pragma GCC unroll 16
        for (int v = 0; v < kVpb; ++v) {
          const uint8_t* p = g + b * block_stride + v * kVecBytes;
          if constexpr (kPh == 1) {
            x[b * kVpb + v] = Op::load(p);
          } else {
            x[b * kVpb + v] = Op::load(p, ph);
          }
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < MQ; ++i) {
        typename Op::Q q;
        if constexpr (kPh == 1) {
          q = Op::bcast(qw[i] + j);
        } else {
          q = Op::bcast(qw[i] + 2 * j, ph);
        }
#pragma GCC unroll 64
        for (int n = 0; n < kNv; ++n) acc[i][n] = Op::madd(acc[i][n], x[n], q);
      }
    }
  };
  // Steps that also prefetch, then (usually most of them) steps that only compute, so
  // that the hot loop carries no prefetch bookkeeping.
  int64_t j = 0;
  if (prefetch.next < prefetch.end) {
    const uint8_t* next = prefetch.next;
    const int64_t step_bytes = 64 * prefetch.lines;
    for (; j < groups && next < prefetch.end; ++j) {
      if (--prefetch.countdown == 0) {
        for (int p = 0; p < prefetch.lines; ++p) __builtin_prefetch(next + 64 * p, 0, 2);
        next += step_bytes;
        prefetch.countdown = prefetch.every;
      }
      step(j);
    }
    prefetch.next = next;
  }
  for (; j < groups; ++j) step(j);

#pragma GCC unroll 16
  for (int i = 0; i < MQ; ++i) {
    const int64_t q = q0 + i;
    const float qscale = t.qscales != nullptr ? t.qscales[q] : 1.0f;
    const int32_t qbias = t.qbias != nullptr ? t.qbias[q] : 0;
#pragma GCC unroll 64
    for (int n = 0; n < kNv; ++n) {
      const int64_t r0 = b0 * kBlockRows + n * Op::kLanes;  // tile row of lane 0
      select<Op>(t, q, r0,
                 Op::finish(acc[i][n], qscale, qbias,
                            t.row_scales != nullptr ? t.row_scales + r0 : nullptr),
                 heaps, bad);
    }
  }
}

using PanelFn = void (*)(const ScanTile&, int64_t, int64_t, TopkHeaps&, uint32_t&, Prefetch&);

template <class Op, int MQ, size_t... I>
constexpr std::array<PanelFn, sizeof...(I)> narrow_panels(std::index_sequence<I...>) {
  return {&panel<Op, MQ, static_cast<int>(I) + 1>...};
}

template <class Op, int MQ>
void panels(const ScanTile& t, int64_t q0, TopkHeaps& heaps, uint32_t& bad, Prefetch& prefetch) {
  constexpr int kMb = blocks_for<Op>(MQ);
  int64_t b = 0;
  for (; b + kMb <= t.num_blocks; b += kMb) panel<Op, MQ, kMb>(t, q0, b, heaps, bad, prefetch);
  if (b < t.num_blocks) {  // the tile's last blocks: one narrower register tile
    static constexpr auto narrow = narrow_panels<Op, MQ>(std::make_index_sequence<kMb>{});
    narrow[t.num_blocks - b - 1](t, q0, b, heaps, bad, prefetch);
  }
}

using PanelsFn = void (*)(const ScanTile&, int64_t, TopkHeaps&, uint32_t&, Prefetch&);

template <class Op, size_t... I>
constexpr std::array<PanelsFn, sizeof...(I)> panels_table(std::index_sequence<I...>) {
  return {&panels<Op, static_cast<int>(I) + 1>...};
}

template <class Op>
bool scan(const ScanTile& t, TopkHeaps& heaps) {
  constexpr int kMq = main_mq<Op>();
  static constexpr auto table = panels_table<Op>(std::make_index_sequence<kMq>{});
  uint32_t bad = 0;
  // Balanced query blocks: B=16 with kMq=5 runs 4+4+4+4, not 5+5+5+1.
  const int64_t nq = t.q_end - t.q_begin;
  const int64_t nblk = (nq + kMq - 1) / kMq;
  // The next tile's lines are spread over the steps of every query block of this tile,
  // so its DRAM read can overlap all of this tile's compute, not the first block's only:
  // native fp32 B = 16 (4 blocks) went from 1.25x to 1.18x the floor (docs/cpu_kernel.md).
  // At B = 1 (one block) the two are the same.
  const int first_mq = static_cast<int>((nq + nblk - 1) / std::max<int64_t>(nblk, 1));
  const int64_t first_mb = blocks_for<Op>(std::clamp(first_mq, 1, kMq));
  const int64_t steps =
      std::max<int64_t>(1, (t.num_blocks + first_mb - 1) / first_mb * t.groups * nblk);
  const int64_t next_lines = t.prefetch == nullptr ? 0 : (t.prefetch_end - t.prefetch + 63) / 64;
  // At least a line every step made AVX2 B = 16 (3 query blocks, 12 FMAs a step) fetch
  // the next tile within a sixth of this one's steps, and that burst cost more than it
  // hid: spread evenly, 1M rows went from 92 to 69 ms (docs/cpu_kernel.md).
  int lines = 1, every = 1;
  if (next_lines >= steps) {
    lines = static_cast<int>(std::min<int64_t>((next_lines + steps - 1) / steps, 8));
  } else if (next_lines > 0) {
    every = static_cast<int>(steps / next_lines);
  }
  Prefetch prefetch{t.prefetch, t.prefetch_end, lines, every, 1};
  int64_t q = t.q_begin;
  for (int64_t i = 0; i < nblk; ++i) {
    const int64_t left = nblk - i;
    const int mq = static_cast<int>((t.q_end - q + left - 1) / left);
    table[mq - 1](t, q, heaps, bad, prefetch);
    q += mq;
  }
  return bad != 0;
}

// Packs 4-byte words: generic version, any ISA. `rows` rows of `row_bytes` bytes go to
// num_blocks(rows) blocks of `groups` words per row; padding words read as 0.
inline void pack_words_generic(const uint8_t* src, int64_t src_stride, int64_t rows,
                               int64_t row_bytes, int64_t groups, uint32_t xor_word, uint8_t* dst,
                               int64_t group_begin = 0) {
  const int64_t nb = num_blocks(rows);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* block = dst + b * groups * kGroupStride;
    for (int64_t r = 0; r < kBlockRows; ++r) {
      const int64_t row = b * kBlockRows + r;
      const uint8_t* s = src + row * src_stride;
      for (int64_t g = group_begin; g < groups; ++g) {
        uint8_t w[4] = {0, 0, 0, 0};
        if (row < rows) {
          const int64_t n = std::min<int64_t>(4, row_bytes - g * 4);
          for (int64_t e = 0; e < n; ++e) w[e] = s[g * 4 + e];
        }
        uint8_t* out = block + g * kGroupStride + r * kGroupBytes;
        for (int e = 0; e < 4; ++e) out[e] = w[e] ^ static_cast<uint8_t>(xor_word >> (8 * e));
      }
    }
  }
}

}  // namespace
}  // namespace pyrag::scan
