// The kernels and launch templates of pyrag::topk_scores on the GPU (see topk_scores.cu
// for the design), shared by the translation units that instantiate them: one per corpus
// type, so that the heavy kernels compile in parallel.
#pragma once

#include <algorithm>
#include <string>

#include "cuda/api.h"
#include "cuda/portability.h"
#include "cuda/topk_select.cuh"

namespace pyrag::cuda::topk {

constexpr int kMaxWarps = 8;
constexpr int kQueryTile = 8;     // query columns scored per block: the n of mma.m16n8k16
constexpr int kRowsPerWarp = 32;  // corpus rows per warp and tile (two m16 tiles)
// The score tile is [kQueryTile][rows + kTilePad] floats: the pad puts the MMA's four
// query columns of one row (lanes t = 0..3) in different banks.
constexpr int kTilePad = 4;
// Blocks per multiprocessor the planner aims for when it splits the corpus.
constexpr int kBlocksPerSm = 4;

struct ScanParams {
  const float* queries;
  std::int64_t num_queries;
  const void* corpus;
  std::int64_t num_rows;
  std::int64_t dim;
  int k;
  const float* scales;
  bool split_queries;
  bool vector_loads;            // 16-bit corpus rows start 16-byte aligned (d % 8 == 0)
  int query_tile;               // queries per block: a power of two <= min(8, warps)
  std::int64_t rows_per_split;  // a multiple of the tile's rows
  float* out_scores;            // [B, k] when gridDim.y == 1
  std::int64_t* out_ids;
  float* ws_scores;  // [B, splits, k] when gridDim.y > 1
  int* ws_ids;
  int* nonfinite;
};

struct MergeParams {
  const float* ws_scores;
  const int* ws_ids;
  int splits;
  int k;
  float* out_scores;
  std::int64_t* out_ids;
};

constexpr std::size_t tile_bytes(int warps) {
  return sizeof(float) * kQueryTile * (warps * kRowsPerWarp + kTilePad);
}

// SIMT scoring for float32 corpora: thread r computes row r against the eight queries,
// reading the row's chunk from an odd-strided buffer (conflict-free across lanes) and
// the queries as two broadcast float4 loads per column.
struct SimtScorer {
  static constexpr int kChunk = 32;            // dimensions per shared-memory chunk
  static constexpr int kXStride = kChunk + 1;  // floats per buffered row

  static constexpr std::size_t smem_bytes(int warps) {
    return sizeof(float) * (std::size_t(warps) * kRowsPerWarp * kXStride + kChunk * kQueryTile);
  }

  __device__ static void score(const ScanParams& p, unsigned char* smem, std::int64_t row0,
                               std::int64_t row_end, std::int64_t q0, float* tile,
                               int tile_stride) {
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int rows = nthreads;
    float* xs = reinterpret_cast<float*>(smem);  // [rows][kXStride]
    float* qs = xs + rows * kXStride;            // [kChunk][kQueryTile], 16-byte aligned
    const float* corpus = static_cast<const float*>(p.corpus);
    float acc[kQueryTile];
#pragma unroll
    for (int j = 0; j < kQueryTile; ++j) acc[j] = 0.f;

    for (std::int64_t d0 = 0; d0 < p.dim; d0 += kChunk) {
      __syncthreads();  // the previous chunk's readers are done
      for (int e = tid; e < rows * kChunk; e += nthreads) {
        const int r = e / kChunk, c = e % kChunk;
        const std::int64_t row = row0 + r, col = d0 + c;
        xs[r * kXStride + c] = row < row_end && col < p.dim ? corpus[row * p.dim + col] : 0.f;
      }
      for (int e = tid; e < kQueryTile * kChunk; e += nthreads) {
        const int j = e / kChunk, c = e % kChunk;
        const std::int64_t q = q0 + j, col = d0 + c;
        const bool valid = j < p.query_tile && q < p.num_queries && col < p.dim;
        qs[c * kQueryTile + j] = valid ? p.queries[q * p.dim + col] : 0.f;
      }
      __syncthreads();
      const float* x = xs + tid * kXStride;
#pragma unroll 8
      for (int c = 0; c < kChunk; ++c) {
        const float xv = x[c];
        const float4 qa = *reinterpret_cast<const float4*>(qs + c * kQueryTile);
        const float4 qb = *reinterpret_cast<const float4*>(qs + c * kQueryTile + 4);
        acc[0] += qa.x * xv;
        acc[1] += qa.y * xv;
        acc[2] += qa.z * xv;
        acc[3] += qa.w * xv;
        acc[4] += qb.x * xv;
        acc[5] += qb.y * xv;
        acc[6] += qb.z * xv;
        acc[7] += qb.w * xv;
      }
    }
    const std::int64_t row = row0 + tid;
    const float scale = p.scales != nullptr && row < row_end ? p.scales[row] : 1.f;
#pragma unroll
    for (int j = 0; j < kQueryTile; ++j) tile[j * tile_stride + tid] = acc[j] * scale;
  }
};

__device__ __forceinline__ std::uint32_t load_u32(const std::uint16_t* p) {
  return *reinterpret_cast<const std::uint32_t*>(p);
}

// Tensor-core scoring for float16 / bfloat16 corpora: warp w computes rows
// [32w, 32w + 32) x the eight queries as two m16n8 tiles per 16-wide step of d.
template <class E>
struct MmaScorer {
  static constexpr int kChunk = 64;  // dimensions per shared-memory chunk (four k16 steps)
  static constexpr int kStride =
      kChunk + 8;  // 16-bit elements per buffered row: the +16 bytes put the
                   // fragment loads of lanes (g, t) in 32 distinct banks

  static constexpr std::size_t smem_bytes(int warps) {
    return sizeof(std::uint16_t) * kStride * (std::size_t(warps) * kRowsPerWarp + 2 * kQueryTile);
  }

  __device__ static void score(const ScanParams& p, unsigned char* smem, std::int64_t row0,
                               std::int64_t row_end, std::int64_t q0, float* tile,
                               int tile_stride) {
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int rows = nthreads;
    const int warp = tid / kWarpSize, lane = tid % kWarpSize;
    const int g = lane >> 2, t = lane & 3;
    std::uint16_t* xs = reinterpret_cast<std::uint16_t*>(smem);  // [rows][kStride]
    std::uint16_t* q_hi = xs + rows * kStride;                   // [kQueryTile][kStride]
    std::uint16_t* q_lo = q_hi + kQueryTile * kStride;
    const std::uint16_t* corpus = static_cast<const std::uint16_t*>(p.corpus);
    float acc[2][4];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][i] = 0.f;
    }

    for (std::int64_t d0 = 0; d0 < p.dim; d0 += kChunk) {
      __syncthreads();  // the previous chunk's readers are done
      if (p.vector_loads) {
        constexpr int kVecs = kChunk / 8;  // 16-byte vectors per row chunk
        for (int e = tid; e < rows * kVecs; e += nthreads) {
          const int r = e / kVecs, v = e % kVecs;
          const std::int64_t row = row0 + r, col = d0 + v * 8;
          uint4 val{0u, 0u, 0u, 0u};
          if (row < row_end && col < p.dim)
            val = *reinterpret_cast<const uint4*>(corpus + row * p.dim + col);
          *reinterpret_cast<uint4*>(xs + r * kStride + v * 8) = val;
        }
      } else {
        for (int e = tid; e < rows * kChunk; e += nthreads) {
          const int r = e / kChunk, c = e % kChunk;
          const std::int64_t row = row0 + r, col = d0 + c;
          xs[r * kStride + c] =
              row < row_end && col < p.dim ? corpus[row * p.dim + col] : std::uint16_t(0);
        }
      }
      for (int e = tid; e < kQueryTile * kChunk; e += nthreads) {
        const int j = e / kChunk, c = e % kChunk;
        const std::int64_t q = q0 + j, col = d0 + c;
        const bool valid = j < p.query_tile && q < p.num_queries && col < p.dim;
        const float v = valid ? p.queries[q * p.dim + col] : 0.f;
        const std::uint16_t hi = E::from_float(v);
        q_hi[j * kStride + c] = hi;
        q_lo[j * kStride + c] = E::from_float(v - E::to_float(hi));
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += 16) {
        // B fragment: rows (dims) kk + 2t, +1 and kk + 8 + 2t, +1 of query column g.
        const std::uint32_t b_hi[2] = {load_u32(q_hi + g * kStride + kk + 2 * t),
                                       load_u32(q_hi + g * kStride + kk + 8 + 2 * t)};
        const std::uint32_t b_lo[2] = {load_u32(q_lo + g * kStride + kk + 2 * t),
                                       load_u32(q_lo + g * kStride + kk + 8 + 2 * t)};
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          // A fragment: corpus rows g and g + 8 of this m16 tile, dims kk + 2t, +1 and + 8.
          const std::uint16_t* a_row =
              xs + (warp * kRowsPerWarp + m * 16 + g) * kStride + kk + 2 * t;
          const std::uint32_t a[4] = {load_u32(a_row), load_u32(a_row + 8 * kStride),
                                      load_u32(a_row + 8), load_u32(a_row + 8 * kStride + 8)};
          mma_m16n8k16<E>(acc[m], a, b_hi);
          if (p.split_queries) mma_m16n8k16<E>(acc[m], a, b_lo);
        }
      }
    }
    // C fragment: c0, c1 = row g, query columns 2t, 2t + 1; c2, c3 = row g + 8.
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = warp * kRowsPerWarp + m * 16 + g + 8 * half;
        const std::int64_t row = row0 + r;
        const float scale = p.scales != nullptr && row < row_end ? p.scales[row] : 1.f;
        tile[(2 * t) * tile_stride + r] = acc[m][2 * half] * scale;
        tile[(2 * t + 1) * tile_stride + r] = acc[m][2 * half + 1] * scale;
      }
    }
  }
};

// Register budget: the k <= 512 and k <= 1024 queues (32 and 64 registers of (score, id)
// per lane) need up to ~210 registers, so those kernels ask for one block per SM; the
// smaller ones fit in 128 and keep two.
template <int KR>
constexpr int kMinBlocksPerSm = KR >= 16 ? 1 : 2;

template <class Scorer, int KR, int T>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize, kMinBlocksPerSm<KR>)
    topk_scan_kernel(const ScanParams p) {
  unsigned char* smem = dynamic_shared<unsigned char>();
  const int nwarps = blockDim.x / kWarpSize;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int rows = nwarps * kRowsPerWarp;
  const int tile_stride = rows + kTilePad;
  float* tile = reinterpret_cast<float*>(smem);
  unsigned char* work = smem + tile_bytes(nwarps);  // the scorer's buffers, then the block merge

  const int queries = p.query_tile;
  const int parts = nwarps / queries;
  const int slot = warp % queries, part = warp / queries;
  const std::int64_t q0 = std::int64_t(blockIdx.x) * queries;
  const std::int64_t query = q0 + slot;
  const bool active = query < p.num_queries;  // warp-uniform
  const std::int64_t row_begin = std::int64_t(blockIdx.y) * p.rows_per_split;
  const std::int64_t row_end =
      row_begin + p.rows_per_split < p.num_rows ? row_begin + p.rows_per_split : p.num_rows;

  WarpQueue<KR, T> queue;
  queue.init(p.k, lane);
  for (std::int64_t row0 = row_begin; row0 < row_end; row0 += rows) {
    Scorer::score(p, work, row0, row_end, q0, tile, tile_stride);
    __syncthreads();
    if (active) {
      for (int c = part * kWarpSize; c < rows; c += parts * kWarpSize) {
        const std::int64_t row = row0 + c + lane;
        const bool valid = row < row_end;
        const float s = tile[slot * tile_stride + c + lane];
        if (valid && !is_finite(s)) atomicOr(p.nonfinite, 1);
        queue.add(s, static_cast<int>(row), valid);
      }
    }
    __syncthreads();  // the next tile overwrites the scores
  }
  if (active) queue.flush();
  block_merge(queue, active, part, parts, slot, queries, work);
  if (active && part == 0) {
    if (gridDim.y == 1) {
      queue.write_result(p.out_scores + query * p.k, p.out_ids + query * p.k);
    } else {
      const std::int64_t offset = (query * gridDim.y + blockIdx.y) * p.k;
      queue.write_partial(p.ws_scores + offset, p.ws_ids + offset);
    }
  }
}

// One block per query: the warps stream the query's splits * k partial candidates
// through their queues, then merge.
template <int KR, int T>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize, kMinBlocksPerSm<KR>)
    topk_merge_kernel(const MergeParams p) {
  const int nwarps = blockDim.x / kWarpSize;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const std::int64_t query = blockIdx.x;
  const std::int64_t n = std::int64_t(p.splits) * p.k;
  const float* scores = p.ws_scores + query * n;
  const int* ids = p.ws_ids + query * n;

  WarpQueue<KR, T> queue;
  queue.init(p.k, lane);
  for (std::int64_t j0 = std::int64_t(warp) * kWarpSize; j0 < n;
       j0 += std::int64_t(nwarps) * kWarpSize) {
    const std::int64_t j = j0 + lane;
    const bool valid = j < n;
    queue.add(valid ? scores[j] : kNegInf, valid ? ids[j] : kSentinelId, valid);
  }
  queue.flush();
  block_merge(queue, true, warp, nwarps, 0, 1, dynamic_shared<unsigned char>());
  if (warp == 0) queue.write_result(p.out_scores + query * p.k, p.out_ids + query * p.k);
}

// Thread-queue slots per lane for a warp queue of 32*KR: longer queues for larger k make
// the (more expensive) merges rarer.
template <int KR>
constexpr int kThreadQueue = KR <= 2   ? 2
                             : KR <= 8 ? 4
                                       : 8;

int warp_queue_registers(std::int64_t k);
int query_tile_for(std::int64_t num_queries, int num_warps);

template <int KR>
std::size_t merge_area_bytes(int parts, int queries) {
  return parts > 1 ? block_merge_bytes<KR>(parts, queries) : 0;
}

template <class Scorer, int KR>
std::size_t scan_smem(int warps, int queries) {
  return tile_bytes(warps) +
         std::max(Scorer::smem_bytes(warps), merge_area_bytes<KR>(warps / queries, queries));
}

// Merges the [B, splits, k] partial results into the output (instantiated in topk_scores.cu).
template <int KR>
void launch_merge(const TopkArgs& a, int splits);

template <class Scorer, int KR>
void launch_scan(const TopkArgs& a, const ScanParams& p, int splits) {
  constexpr int T = kThreadQueue<KR>;
  const std::int64_t query_tiles = (a.num_queries + p.query_tile - 1) / p.query_tile;
  launch(topk_scan_kernel<Scorer, KR, T>, "topk_scan",
         dim3(static_cast<unsigned>(query_tiles), splits), dim3(a.num_warps * kWarpSize),
         scan_smem<Scorer, KR>(a.num_warps, p.query_tile), static_cast<Stream>(a.stream), p);
}

// Scores, selects and (splits > 1) merges with the kernels for Scorer and a's k.
template <class Scorer>
void run_topk(const TopkArgs& a, const ScanParams& p, int splits) {
  const int kr = warp_queue_registers(a.k);
  switch (kr) {
    case 1: launch_scan<Scorer, 1>(a, p, splits); break;
    case 2: launch_scan<Scorer, 2>(a, p, splits); break;
    case 4: launch_scan<Scorer, 4>(a, p, splits); break;
    case 8: launch_scan<Scorer, 8>(a, p, splits); break;
    case 16: launch_scan<Scorer, 16>(a, p, splits); break;
    default: launch_scan<Scorer, 32>(a, p, splits); break;
  }
  if (splits == 1) return;
  switch (kr) {
    case 1: return launch_merge<1>(a, splits);
    case 2: return launch_merge<2>(a, splits);
    case 4: return launch_merge<4>(a, splits);
    case 8: return launch_merge<8>(a, splits);
    case 16: return launch_merge<16>(a, splits);
    default: return launch_merge<32>(a, splits);
  }
}

template <class Scorer>
std::size_t scan_smem_for_k(std::int64_t k, int warps, int queries) {
  switch (warp_queue_registers(k)) {
    case 1: return scan_smem<Scorer, 1>(warps, queries);
    case 2: return scan_smem<Scorer, 2>(warps, queries);
    case 4: return scan_smem<Scorer, 4>(warps, queries);
    case 8: return scan_smem<Scorer, 8>(warps, queries);
    case 16: return scan_smem<Scorer, 16>(warps, queries);
    default: return scan_smem<Scorer, 32>(warps, queries);
  }
}

// Each corpus type's kernels are instantiated in their own translation unit.
extern template void run_topk<SimtScorer>(const TopkArgs&, const ScanParams&, int);
extern template void run_topk<MmaScorer<F16>>(const TopkArgs&, const ScanParams&, int);
extern template void run_topk<MmaScorer<Bf16>>(const TopkArgs&, const ScanParams&, int);

}  // namespace pyrag::cuda::topk
