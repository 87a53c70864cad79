// Fused inner-product top-k on the CPU: entry points and the scan kernels' interface.
//
// Scores, per corpus dtype (pyrag/reference.py holds the same definitions in torch):
//   float32   the sequential fp32 FMA chain s = fma(q[d-1], x[d-1], ... fma(q[0], x[0], 0)).
//   bfloat16  the query is rounded to bf16 (nearest-even); the products are exact in fp32
//             and are added to an fp32 sum pair by pair, odd dimension first, then even:
//             exactly what vdpbf16ps does, so every path agrees bit for bit (apart from
//             vdpbf16ps flushing subnormals to zero).
//   int8      the query is quantised per query (symmetric, scale max|q|/127, round half
//             to even); score = float(integer dot) * (query scale * row scale), each
//             product rounded once in fp32.
// Every path (scalar, AVX2, AVX-512, NEON; pre-packed or packed on the fly) computes exactly
// these, lane = row, whatever the tile shape. That is what lets exact search rescore a
// few rows and still return bit for bit the scores and ties the float32 scan returns.
//
// A scan kernel scores one packed tile of rows against a range of queries and pushes
// every candidate that can enter a query's top-k into that query's heap. It never holds
// more than a register tile of scores.
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/packed_layout.h"
#include "cpu/topk_heap.h"

namespace pyrag {

// One tile of packed rows against queries [q_begin, q_end).
struct ScanTile {
  const uint32_t* qwords;  // [B][groups] query words in the corpus dtype's group format
  const float* qscales;    // int8: [B] query scales
  const int32_t* qbias;    // int8: [B] 128 * sum of the quantised query
  int64_t q_begin, q_end;
  const uint8_t* blocks;    // the tile's packed blocks
  const float* row_scales;  // int8: scales of the tile's rows, 16 per block (padded)
  int64_t groups;           // 4-byte groups per row
  int64_t num_blocks;
  int64_t valid_rows;       // rows of the tile that exist (<= 16 * num_blocks)
  int64_t first_id;         // id reported for the tile's first row
  const float* thresholds;  // [B] the heaps' current thresholds (TopkHeaps::thresholds)
  // Memory the next tile will read ([prefetch, prefetch_end), may be empty): the kernel
  // prefetches it into L2 while it computes this tile.
  const uint8_t* prefetch;
  const uint8_t* prefetch_end;
  // The query words split in two per group, for kernels that would otherwise split them
  // on every broadcast ([B][groups][2]; see split_query_words): bfloat16 the odd and the
  // even value as float32 bits, int8 the even bytes (dimensions 0 and 2 of the group) and
  // the odd bytes (1 and 3), each as a pair of int16.
  const uint32_t* qsplit = nullptr;
};

// Returns true if a score it computed was NaN or +-Inf.
using ScanFn = bool (*)(const ScanTile& tile, TopkHeaps& heaps);
// Packs `rows` row-major rows (row_bytes each, src_stride apart) into num_blocks(rows)
// packed blocks of `groups` groups: see packed_layout.h. While it works it prefetches
// [prefetch, prefetch + prefetch_bytes) into L2, one line per line it packs (may be
// empty): the next tile's rows, fetched during this tile's packing.
using PackFn = void (*)(const uint8_t* src, int64_t src_stride, int64_t rows, int64_t row_bytes,
                        int64_t groups, uint32_t xor_word, uint8_t* dst, const uint8_t* prefetch,
                        int64_t prefetch_bytes);

// What one ISA level provides; nullptr entries fall back to the next lower level.
struct Kernels {
  ScanFn scan_f32 = nullptr;
  ScanFn scan_bf16 = nullptr;
  ScanFn scan_i8 = nullptr;
  PackFn pack = nullptr;
};

const Kernels& kernels_scalar();
#if defined(PYRAG_X86)
const Kernels& kernels_avx2();
const Kernels& kernels_avx2vnni();
const Kernels& kernels_avx512();
const Kernels& kernels_avx512vnni();
const Kernels& kernels_avx512bf16();
#endif
#if defined(PYRAG_ARM)
const Kernels& kernels_neon();
const Kernels& kernels_neon_dotprod();
const Kernels& kernels_neon_bf16();
#endif

ScanFn scan_for(Isa isa, Dtype dtype);
PackFn pack_for(Isa isa);
// The level whose scan kernel scan_for(isa, dtype) runs (int8 on avx512bf16: avx512vnni).
Isa kernel_level(Isa isa, Dtype dtype);

// A corpus as the driver sees it: row-major rows in their storage dtype (packed tile by
// tile on the fly), or already packed (DenseIndex).
struct Corpus {
  Dtype dtype;
  bool packed;
  const void* data;  // row-major [N, d] (int8: signed values) or packed blocks
  int64_t num_rows;
  int64_t dim;
  const float* scales;  // int8: [N] row scales (packed: padded to whole blocks)
  // Row-major rows read from a file instead of `data`: descriptor (-1: none) and the
  // byte offset of row 0.
  int fd = -1;
  int64_t file_offset = 0;
  // [N] keys that break ties between equal scores (smaller first), or nullptr for the
  // row number: a DenseIndex passes its user ids when they do not increase with the row.
  const int64_t* tie_keys = nullptr;
};

// Writes sorted [B, k] scores and row ids (ties to the smaller tie key, padded with
// -inf / -1 past N) for float32 queries [B, d]. Runs on `num_threads` threads. Throws
// std::invalid_argument on bad sizes and std::domain_error when a score is not finite.
void topk_scores(const float* queries, int64_t num_queries, const Corpus& corpus, int64_t k,
                 int num_threads, float* out_scores, int64_t* out_ids);

// The float32 originals of a quantised corpus: row-major [N, d] float32 at `offset` in
// the file `fd`. They are read with pread, never mapped: with the page cache's large
// folios one touched row of a mapping brings up to 2 MiB into the process's resident
// memory, so rescoring through a mapping would pull the whole file in.
struct Originals {
  int fd;
  int64_t offset;
  // max over rows of ||x|| and of ||x - dequantised x||, each rounded up.
  double max_norm;
  double max_error;
};

struct ExactStats {
  int64_t candidates = 0;        // rows rescored, summed over queries
  int64_t fallback_queries = 0;  // queries whose candidate set overflowed: full rescan
};

// Certified-exact search over a quantised (bf16 / int8) packed corpus: scans it with
// a per-query bound on |float32 score - quantised score|, keeps every row that could
// reach the top-k, and rescores those rows from the originals. The result equals, bit
// for bit, topk_scores over the originals as a float32 corpus.
ExactStats topk_scores_exact(const float* queries, int64_t num_queries, const Corpus& corpus,
                             const Originals& originals, int64_t k, int num_threads,
                             float* out_scores, int64_t* out_ids);

// Gives the whole pages inside [begin, begin + bytes) back to the kernel (madvise
// DONTNEED): they leave this process's resident memory and are read again from the
// file on next use. Only for read-only file mappings: on anonymous memory it would zero
// the data.
void release_file_pages(const void* begin, int64_t bytes);

}  // namespace pyrag
