// pyrag::topk_scores on the GPU: fused inner-product scoring and top-k selection; the
// B x N score matrix never exists, only one [8 queries x 32*warps rows] tile per block.
//
// Grid (ceil(B / query_tile), splits): a block scores its query tile against a contiguous
// part of the corpus, tile by tile, and selects with per-warp register queues
// (topk_select.cuh). Each query is owned by `parts` = warps / query_tile warps that scan
// interleaved 32-row chunks of every tile and merge at the end; with few queries
// (query_tile < 8) more warps share a query, and the corpus is split over blocks
// (gridDim.y > 1), whose partial top-k lists a second kernel merges.
//
// Scoring: float32 corpora with SIMT FMAs (one row per thread, eight queries broadcast
// from shared memory); float16 and bfloat16 corpora with mma.m16n8k16 (corpus rows as A,
// 16 per instruction, the eight queries as B). float32 queries against a 16-bit
// corpus are split as q = rn(q) + rn(q - rn(q)) and multiplied in two passes, which keeps
// float32 accuracy (a single rounding of q would cost ~1e-3 relative error, enough to
// reorder near ties).
//
// This file holds the host side and the float32 kernels; topk_scores_f16.cu and
// topk_scores_bf16.cu instantiate the tensor-core ones (topk_scores.cuh).
#include "cuda/topk_scores.cuh"

namespace pyrag::cuda {
namespace topk {

int warp_queue_registers(std::int64_t k) {
  int kr = 1;
  while (std::int64_t(kWarpSize) * kr < k) kr *= 2;
  return kr;
}

int query_tile_for(std::int64_t num_queries, int num_warps) {
  int qt = 1;
  while (qt < kQueryTile && qt < num_warps && qt < num_queries) qt *= 2;
  return qt;
}

void check_sizes(std::int64_t num_queries, std::int64_t num_rows, std::int64_t k, int num_warps) {
  if (num_queries < 0 || num_rows < 0) {
    throw std::invalid_argument("topk_scores: bad sizes B=" + std::to_string(num_queries) +
                                " N=" + std::to_string(num_rows));
  }
  if (num_rows >= kSentinelId) {
    throw std::invalid_argument(
        "topk_scores: the CUDA kernels index at most 2^31 - 2 corpus rows, got " +
        std::to_string(num_rows));
  }
  if (k < 1 || k > kMaxTopk) {
    throw std::invalid_argument("topk_scores: the CUDA kernels support 1 <= k <= " +
                                std::to_string(kMaxTopk) + ", got k=" + std::to_string(k));
  }
  if (num_warps != 1 && num_warps != 2 && num_warps != 4 && num_warps != 8) {
    throw std::invalid_argument("topk_scores: num_warps must be 1, 2, 4 or 8, got " +
                                std::to_string(num_warps));
  }
}

template <int KR>
void launch_merge(const TopkArgs& a, int splits) {
  const MergeParams m{a.workspace_scores,    a.workspace_ids, splits,
                      static_cast<int>(a.k), a.out_scores,    a.out_ids};
  launch(topk_merge_kernel<KR, kThreadQueue<KR>>, "topk_merge",
         dim3(static_cast<unsigned>(a.num_queries)), dim3(a.num_warps * kWarpSize),
         merge_area_bytes<KR>(a.num_warps, 1), static_cast<Stream>(a.stream), m);
}

template void launch_merge<1>(const TopkArgs&, int);
template void launch_merge<2>(const TopkArgs&, int);
template void launch_merge<4>(const TopkArgs&, int);
template void launch_merge<8>(const TopkArgs&, int);
template void launch_merge<16>(const TopkArgs&, int);
template void launch_merge<32>(const TopkArgs&, int);
template void run_topk<SimtScorer>(const TopkArgs&, const ScanParams&, int);

}  // namespace topk

using namespace topk;

int topk_plan(std::int64_t num_queries, std::int64_t num_rows, std::int64_t k, int num_warps,
              int num_sms, int requested) {
  check_sizes(num_queries, num_rows, k, num_warps);
  if (requested < 0)
    throw std::invalid_argument("topk_scores: splits must be >= 0 (0 = automatic)");
  const std::int64_t rows = std::int64_t(num_warps) * kRowsPerWarp;
  const std::int64_t tiles = std::max<std::int64_t>(1, (num_rows + rows - 1) / rows);
  std::int64_t splits = requested;
  if (splits == 0) {
    const int qt = query_tile_for(num_queries, num_warps);
    const std::int64_t query_tiles = std::max<std::int64_t>(1, (num_queries + qt - 1) / qt);
    const std::int64_t target = std::int64_t(std::max(num_sms, 1)) * kBlocksPerSm;
    splits = (target + query_tiles - 1) / query_tiles;
    // Each split hands k candidates per query to the merge: keep >= 4k rows per split so
    // that scanning, not merging, dominates.
    splits = std::min(splits, std::max<std::int64_t>(1, num_rows / (4 * k)));
  }
  splits = std::clamp<std::int64_t>(splits, 1, std::min<std::int64_t>(tiles, 65535));
  const std::int64_t tiles_per_split = (tiles + splits - 1) / splits;
  return static_cast<int>((tiles + tiles_per_split - 1) / tiles_per_split);
}

void topk_scores(const TopkArgs& a) {
  check_sizes(a.num_queries, a.num_rows, a.k, a.num_warps);
  if (a.dim < 1) throw std::invalid_argument("topk_scores: dim must be >= 1");
  if (a.num_queries == 0) return;
  if (a.splits != topk_plan(a.num_queries, a.num_rows, a.k, a.num_warps, 1, a.splits)) {
    throw std::invalid_argument("topk_scores: splits=" + std::to_string(a.splits) +
                                " is not a plan from topk_plan");
  }
  if (a.splits > 1 && (a.workspace_scores == nullptr || a.workspace_ids == nullptr)) {
    throw std::invalid_argument("topk_scores: splits > 1 needs a [B, splits, k] workspace");
  }
  if (a.num_queries > 0x7fffffffLL)
    throw std::invalid_argument("topk_scores: at most 2^31 - 1 queries");
  const std::int64_t rows = std::int64_t(a.num_warps) * kRowsPerWarp;
  const std::int64_t tiles = std::max<std::int64_t>(1, (a.num_rows + rows - 1) / rows);
  const std::int64_t tiles_per_split = (tiles + a.splits - 1) / a.splits;

  ScanParams p{};
  p.queries = a.queries;
  p.num_queries = a.num_queries;
  p.corpus = a.corpus;
  p.num_rows = a.num_rows;
  p.dim = a.dim;
  p.k = static_cast<int>(a.k);
  p.scales = a.scales;
  p.split_queries = a.split_queries;
  p.vector_loads = a.dim % 8 == 0 && reinterpret_cast<std::uintptr_t>(a.corpus) % 16 == 0;
  p.query_tile = query_tile_for(a.num_queries, a.num_warps);
  p.rows_per_split = tiles_per_split * rows;
  p.out_scores = a.out_scores;
  p.out_ids = a.out_ids;
  p.ws_scores = a.workspace_scores;
  p.ws_ids = a.workspace_ids;
  p.nonfinite = a.nonfinite;
  switch (a.corpus_type) {
    case CorpusType::f32: return run_topk<SimtScorer>(a, p, a.splits);
    case CorpusType::f16: return run_topk<MmaScorer<F16>>(a, p, a.splits);
    case CorpusType::bf16: return run_topk<MmaScorer<Bf16>>(a, p, a.splits);
  }
  throw std::invalid_argument("topk_scores: unknown corpus type");
}

std::size_t topk_scan_smem_bytes(CorpusType type, std::int64_t k, int num_warps) {
  check_sizes(1, 0, k, num_warps);
  // The largest case: one query per block, all warps share it and merge.
  switch (type) {
    case CorpusType::f32: return scan_smem_for_k<SimtScorer>(k, num_warps, 1);
    case CorpusType::f16: return scan_smem_for_k<MmaScorer<F16>>(k, num_warps, 1);
    case CorpusType::bf16: return scan_smem_for_k<MmaScorer<Bf16>>(k, num_warps, 1);
  }
  throw std::invalid_argument("topk_scores: unknown corpus type");
}

std::size_t topk_merge_smem_bytes(std::int64_t k, int num_warps) {
  check_sizes(1, 0, k, num_warps);
  switch (warp_queue_registers(k)) {
    case 1: return merge_area_bytes<1>(num_warps, 1);
    case 2: return merge_area_bytes<2>(num_warps, 1);
    case 4: return merge_area_bytes<4>(num_warps, 1);
    case 8: return merge_area_bytes<8>(num_warps, 1);
    case 16: return merge_area_bytes<16>(num_warps, 1);
    default: return merge_area_bytes<32>(num_warps, 1);
  }
}

}  // namespace pyrag::cuda
