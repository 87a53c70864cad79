// Driver of the fused CPU top-k: prepares the queries in the corpus dtype's format,
// hands tiles of rows to the ISA's scan kernel on several threads (each with its own
// heaps: O(threads * B * k) memory, never B x N), and merges. Also certified-exact
// search: a quantised scan with a per-query error bound, then an fp32 rescoring of the
// rows that could still make the top-k.
#include "cpu/topk_scores.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "cpu/encode.h"
#include "cpu/parallel.h"

namespace pyrag {

namespace {

const Kernels& kernels_at(Isa isa) {
  switch (isa) {
#if defined(PYRAG_X86)
    case Isa::avx2: return kernels_avx2();
    case Isa::avx2vnni: return kernels_avx2vnni();
    case Isa::avx512: return kernels_avx512();
    case Isa::avx512vnni: return kernels_avx512vnni();
    case Isa::avx512bf16: return kernels_avx512bf16();
#endif
#if defined(PYRAG_ARM)
    case Isa::neon: return kernels_neon();
    case Isa::neon_dotprod: return kernels_neon_dotprod();
    case Isa::neon_bf16: return kernels_neon_bf16();
#endif
    default: return kernels_scalar();
  }
}

// The highest supported level <= isa whose entry is set.
template <class Get>
Isa resolve(Isa isa, Get get) {
  const auto levels = supported_isas();
  for (auto it = levels.rbegin(); it != levels.rend(); ++it) {
    if (*it <= isa && get(kernels_at(*it)) != nullptr) return *it;
  }
  return Isa::scalar;
}

ScanFn scan_of(const Kernels& k, Dtype dtype) {
  return dtype == Dtype::f32 ? k.scan_f32 : dtype == Dtype::bf16 ? k.scan_bf16 : k.scan_i8;
}

}  // namespace

Isa kernel_level(Isa isa, Dtype dtype) {
  return resolve(isa, [dtype](const Kernels& k) { return scan_of(k, dtype); });
}

ScanFn scan_for(Isa isa, Dtype dtype) {
  return scan_of(kernels_at(kernel_level(isa, dtype)), dtype);
}

PackFn pack_for(Isa isa) {
  return kernels_at(resolve(isa, [](const Kernels& k) { return k.pack; })).pack;
}

namespace {

// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 20;
// Packed bytes per tile, from the size of a core's L2: a tile stays in L2 while every
// query block reads it, next to the next tile being prefetched and a chunk of queries,
// so tile, next tile and queries together take 3/4 of it: 192 KiB tiles and 384 KiB of
// queries on the 1 MiB L2 of Zen 4, where they were measured (192 KiB against 384 made
// B=1 over a 1M x 384 index 9% faster, B=256 and int8 unchanged; 48 and 96 KiB were the
// same within +-10% on its AVX2 path), half that on the 512 KiB of Zen 2/3, where a 192 KiB
// tile and its prefetched successor alone would fill 3/4 of L2, a quarter on 256 KiB
// cores; never more than on Zen 4. Small query batches on row-major input pack small
// tiles instead, scanned while still in L1/L2.
struct TileSizes {
  int64_t tile_bytes;
  int64_t query_chunk_bytes;
};

// Bytes of L2 per core (sysfs, then sysconf), or 1 MiB if neither says.
int64_t l2_cache_bytes() {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    FILE* f = std::fopen((dir + "level").c_str(), "r");
    if (f == nullptr) break;
    int level = 0;
    const bool ok = std::fscanf(f, "%d", &level) == 1;
    std::fclose(f);
    if (!ok || level != 2) continue;
    f = std::fopen((dir + "size").c_str(), "r");
    if (f == nullptr) break;
    long long size = 0;
    char unit = 0;
    const int got = std::fscanf(f, "%lld%c", &size, &unit);
    std::fclose(f);
    if (got >= 1 && size > 0) return size << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
  }
#if defined(_SC_LEVEL2_CACHE_SIZE)
  if (const long s = sysconf(_SC_LEVEL2_CACHE_SIZE); s > 0) return s;
#endif
  return 1 << 20;
}

const TileSizes& tile_sizes() {
  static const TileSizes sizes = [] {
    const int64_t l2 = l2_cache_bytes();
    return TileSizes{std::clamp<int64_t>(l2 * 3 / 16, 32 << 10, 192 << 10),
                     std::clamp<int64_t>(l2 * 3 / 8, 64 << 10, 384 << 10)};
  }();
  return sizes;
}

constexpr int64_t kSmallTileBytes = 48 << 10;
constexpr int64_t kSmallBatch = 4;
// Threads take chunks of tiles from a shared counter, so a core that another process
// slows down does less of the work instead of holding everyone up; small chunks keep
// the last one short (at B=1 a 1M x 384 chunk of 1/32 of the corpus took ~1 ms).
constexpr int64_t kChunksPerThread = 64;

int threads_for(int64_t rows, int64_t work, int requested) {
  int64_t by_work = std::max<int64_t>(1, work / kMinWorkPerThread);
  int64_t by_rows = std::max<int64_t>(1, rows / (4 * kBlockRows));
  return static_cast<int>(std::max<int64_t>(1, std::min({int64_t(requested), by_work, by_rows})));
}

// Queries in the corpus dtype's group format (see packed_layout.h), plus what the
// error bound of exact search needs.
struct PreparedQueries {
  std::vector<uint32_t> words;  // [B][groups]
  std::vector<uint32_t> split;  // bf16, int8: [B][groups][2] (ScanTile::qsplit)
  std::vector<float> scales;    // int8
  std::vector<int32_t> bias;    // int8: 128 * sum of the quantised query
  std::vector<double> norm;     // ||q||
  std::vector<double> qnorm;    // ||q^||, the query as the kernel sees it
  std::vector<double> qerror;   // ||q - q^||
};

// Each query word split in two (see ScanTile::qsplit), so that kernels without a
// bf16 or int8 dot instruction broadcast ready operands instead of splitting a word on
// every broadcast.
void split_query_words(Dtype dtype, const std::vector<uint32_t>& words,
                       std::vector<uint32_t>& out) {
  out.resize(2 * words.size());
  for (size_t i = 0; i < words.size(); ++i) {
    const uint32_t w = words[i];
    if (dtype == Dtype::bf16) {
      out[2 * i] = w & 0xFFFF0000u;  // odd dimension, as float32 bits
      out[2 * i + 1] = w << 16;      // even dimension
    } else {                         // int8: bytes 0, 2 and 1, 3 sign-extended to int16 pairs
      auto ext = [w](int byte) {
        return static_cast<uint32_t>(
            static_cast<uint16_t>(static_cast<int16_t>(static_cast<int8_t>(w >> (8 * byte)))));
      };
      out[2 * i] = ext(0) | ext(2) << 16;
      out[2 * i + 1] = ext(1) | ext(3) << 16;
    }
  }
}

PreparedQueries prepare_queries(const float* q, int64_t B, int64_t d, Dtype dtype) {
  const int64_t groups = num_groups(dtype, d);
  PreparedQueries p;
  p.words.assign(static_cast<size_t>(B * groups), 0);
  p.norm.resize(B);
  p.qnorm.resize(B);
  p.qerror.resize(B);
  if (dtype == Dtype::i8) {
    p.scales.resize(B);
    p.bias.resize(B);
  }
  std::vector<int8_t> qi(d);
  for (int64_t b = 0; b < B; ++b) {
    const float* x = q + b * d;
    uint8_t* w = reinterpret_cast<uint8_t*>(p.words.data() + b * groups);
    double n2 = 0, qn2 = 0, e2 = 0;
    if (dtype == Dtype::f32) {
      std::memcpy(w, x, d * 4);
      for (int64_t j = 0; j < d; ++j) n2 += double(x[j]) * x[j];
      qn2 = n2;
    } else if (dtype == Dtype::bf16) {
      for (int64_t j = 0; j < d; ++j) {
        const uint16_t h = bf16_bits(x[j]);
        std::memcpy(w + 2 * j, &h, 2);
        const uint32_t bits = uint32_t(h) << 16;
        float xh;
        std::memcpy(&xh, &bits, 4);
        n2 += double(x[j]) * x[j];
        qn2 += double(xh) * xh;
        e2 += (double(x[j]) - xh) * (double(x[j]) - xh);
      }
    } else {
      const float s = quantize_int8(x, d, qi.data());
      int32_t sum = 0;
      for (int64_t j = 0; j < d; ++j) {
        w[j] = static_cast<uint8_t>(qi[j]);
        sum += qi[j];
        const double xh = double(s) * qi[j];
        n2 += double(x[j]) * x[j];
        qn2 += xh * xh;
        e2 += (double(x[j]) - xh) * (double(x[j]) - xh);
      }
      p.scales[b] = s;
      p.bias[b] = 128 * sum;
    }
    // Sums of d squares in double: relative error below d * 2^-53; 1e-9 covers d < 1e6.
    p.norm[b] = std::sqrt(n2) * (1 + 1e-9);
    p.qnorm[b] = std::sqrt(qn2) * (1 + 1e-9);
    p.qerror[b] = std::sqrt(e2) * (1 + 1e-9);
  }
  if (dtype != Dtype::f32) split_query_words(dtype, p.words, p.split);
  return p;
}

void check_sizes(int64_t num_queries, const Corpus& c, int64_t k) {
  if (num_queries < 0 || c.num_rows < 0 || c.dim < 1) {
    throw std::invalid_argument("topk_scores: bad sizes B=" + std::to_string(num_queries) +
                                " N=" + std::to_string(c.num_rows) + " d=" + std::to_string(c.dim));
  }
  if (k < 1) throw std::invalid_argument("topk_scores: k must be >= 1, got " + std::to_string(k));
  if (c.dtype == Dtype::i8 && c.dim > kMaxInt8Dim) {
    throw std::invalid_argument("topk_scores: int8 corpora support dim <= " +
                                std::to_string(kMaxInt8Dim) + ", got " + std::to_string(c.dim));
  }
  if (c.dtype == Dtype::i8 && c.scales == nullptr && c.num_rows > 0) {
    throw std::invalid_argument("topk_scores: an int8 corpus needs per-row scales");
  }
}

}  // namespace

void release_file_pages(const void* begin, int64_t bytes) {
  static const int64_t page = sysconf(_SC_PAGESIZE);
  const auto b = reinterpret_cast<uintptr_t>(begin);
  const uintptr_t first = (b + page - 1) / page * page;
  const uintptr_t last = (b + bytes) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

namespace {

// Reads `bytes` bytes at `offset` of file `fd` (all of them, or throws).
void read_exactly(int fd, int64_t offset, int64_t bytes, void* dst) {
  auto* out = static_cast<char*>(dst);
  while (bytes > 0) {
    const ssize_t got = pread(fd, out, static_cast<size_t>(bytes), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0)
      throw std::system_error(errno, std::generic_category(), "reading the float32 originals");
    if (got == 0)
      throw std::runtime_error("reading the float32 originals: the file is shorter than the index");
    out += got;
    offset += got;
    bytes -= got;
  }
}

// Copies rows ids[0..n) (ascending) of a row-major float32 file into dst [n, d], one
// read per run of consecutive rows.
void read_rows(int fd, int64_t offset, int64_t d, const int64_t* ids, int64_t n, float* dst) {
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && ids[j] == ids[j - 1] + 1) ++j;
    read_exactly(fd, offset + ids[i] * d * 4, (j - i) * d * 4, dst + i * d);
    i = j;
  }
}

// Scans the whole corpus for queries `p` into one TopkHeaps per thread (prepared by
// the caller). Returns true if a score was not finite.
bool scan_corpus(const Corpus& c, const PreparedQueries& p, int64_t B,
                 std::vector<TopkHeaps>& heaps) {
  const Isa isa = active_isa();
  const ScanFn scan = scan_for(isa, c.dtype);
  const PackFn pack = pack_for(isa);
  const int nt = static_cast<int>(heaps.size());
  const int64_t groups = num_groups(c.dtype, c.dim);
  const int64_t bbytes = groups * kGroupStride;
  const int64_t row_bytes = c.dim * elem_bytes(c.dtype);
  const bool small_row_major = !c.packed && B <= kSmallBatch;
  const int64_t tile_target = small_row_major ? kSmallTileBytes : tile_sizes().tile_bytes;
  const int64_t tile_rows =
      std::clamp<int64_t>(tile_target / (bbytes / kBlockRows) / kBlockRows, 1, 256) * kBlockRows;
  const int64_t num_tiles = (c.num_rows + tile_rows - 1) / tile_rows;
  const int64_t chunk_tiles = std::max<int64_t>(1, num_tiles / (int64_t(nt) * kChunksPerThread));
  const auto* data = static_cast<const uint8_t*>(c.data);
  // Work items: (query chunk, chunk of tiles). Queries go in chunks that fit L2 beside a
  // tile; with more, the queries streaming through L2 would evict the tile they are
  // meant to reuse (B=512 at d=384 ran 40% slower per query than B=256 before this).
  const int64_t query_chunk =
      std::max<int64_t>(1, tile_sizes().query_chunk_bytes / (groups * kGroupBytes));
  const int64_t tile_chunks = (num_tiles + chunk_tiles - 1) / chunk_tiles;
  const int64_t num_items = (B + query_chunk - 1) / query_chunk * tile_chunks;
  std::atomic<int64_t> next{0};
  std::vector<char> bad(nt, 0);

  parallel_tasks(nt, [&](int t) {
    std::vector<uint8_t> buf, file_rows;
    std::vector<float> tile_scales;
    if (c.fd >= 0) file_rows.resize(static_cast<size_t>(tile_rows * row_bytes));
    if (!c.packed) buf.resize(static_cast<size_t>(tile_rows / kBlockRows * bbytes));
    if (!c.packed && c.dtype == Dtype::i8) tile_scales.resize(tile_rows);
    ScanTile tile{p.words.data(),
                  c.dtype == Dtype::i8 ? p.scales.data() : nullptr,
                  c.dtype == Dtype::i8 ? p.bias.data() : nullptr,
                  0,
                  B,
                  nullptr,
                  nullptr,
                  groups,
                  0,
                  0,
                  0,
                  heaps[t].thresholds(),
                  nullptr,
                  nullptr};
    tile.qsplit = p.split.empty() ? nullptr : p.split.data();
    for (;;) {
      const int64_t item = next.fetch_add(1);
      if (item >= num_items) break;
      tile.q_begin = item / tile_chunks * query_chunk;
      tile.q_end = std::min(B, tile.q_begin + query_chunk);
      const int64_t t0 = item % tile_chunks * chunk_tiles;
      const int64_t t1 = std::min(num_tiles, t0 + chunk_tiles);
      for (int64_t ti = t0; ti < t1; ++ti) {
        const int64_t row0 = ti * tile_rows;
        const int64_t rows = std::min(tile_rows, c.num_rows - row0);
        tile.num_blocks = num_blocks(rows);
        tile.valid_rows = rows;
        tile.first_id = row0;
        // The next tile's bytes, packed or row-major (the chunk's last tile: none).
        const int64_t next_rows = ti + 1 < t1 ? std::min(tile_rows, c.num_rows - row0 - rows) : 0;
        const uint8_t* next = c.packed    ? data + (row0 + rows) / kBlockRows * bbytes
                              : c.fd >= 0 ? nullptr
                                          : data + (row0 + rows) * row_bytes;
        const int64_t next_bytes = next == nullptr ? 0
                                   : c.packed      ? num_blocks(next_rows) * bbytes
                                                   : next_rows * row_bytes;
        // Small batches on row-major rows: packing is most of the work, so the next
        // tile is fetched while this one is packed (asked for during the short scan
        // alone, its DRAM time would not overlap the packing: ~11 GB/s per core).
        const bool prefetch_in_pack = small_row_major && next != nullptr;
        if (c.packed) {
          tile.blocks = data + row0 / kBlockRows * bbytes;
          tile.row_scales = c.scales != nullptr ? c.scales + row0 : nullptr;
        } else {
          const uint8_t* src = data + row0 * row_bytes;
          if (c.fd >= 0) {
            read_exactly(c.fd, c.file_offset + row0 * row_bytes, rows * row_bytes,
                         file_rows.data());
            src = file_rows.data();
          }
          pack(src, row_bytes, rows, row_bytes, groups, pack_xor(c.dtype), buf.data(),
               prefetch_in_pack ? next : nullptr, prefetch_in_pack ? next_bytes : 0);
          tile.blocks = buf.data();
          if (c.dtype == Dtype::i8) {
            std::fill(tile_scales.begin(), tile_scales.end(), 0.0f);
            std::copy(c.scales + row0, c.scales + row0 + rows, tile_scales.begin());
            tile.row_scales = tile_scales.data();
          }
        }
        tile.prefetch = prefetch_in_pack ? nullptr : next;
        tile.prefetch_end = prefetch_in_pack || next == nullptr ? nullptr : next + next_bytes;
        bad[t] |= scan(tile, heaps[t]);
      }
    }
  });
  return std::any_of(bad.begin(), bad.end(), [](char x) { return x != 0; });
}

[[noreturn]] void throw_nonfinite() {
  throw std::domain_error(
      "topk_scores: a score is NaN or Inf; the corpus holds NaN/Inf or values whose dot "
      "products overflow float32");
}

}  // namespace

void topk_scores(const float* queries, int64_t num_queries, const Corpus& corpus, int64_t k,
                 int num_threads, float* out_scores, int64_t* out_ids) {
  check_sizes(num_queries, corpus, k);
  if (num_queries == 0) return;
  const PreparedQueries p = prepare_queries(queries, num_queries, corpus.dim, corpus.dtype);
  const int nt = threads_for(corpus.num_rows, num_queries * corpus.num_rows * corpus.dim,
                             std::max(1, num_threads));
  std::vector<TopkHeaps> heaps;
  heaps.reserve(nt);
  const int64_t kk = std::min(k, std::max<int64_t>(corpus.num_rows, 1));
  for (int t = 0; t < nt; ++t) heaps.emplace_back(num_queries, kk, corpus.tie_keys);
  if (corpus.num_rows > 0 && scan_corpus(corpus, p, num_queries, heaps)) throw_nonfinite();
  merge_topk(heaps, num_queries, k, out_scores, out_ids);
}

// ------------------------------------------------------------------ exact search
namespace {

constexpr double kUnit = 0x1p-24;  // unit roundoff of float32

// Higham's gamma_n = n u / (1 - n u): bound on the relative error of n roundings.
double gamma_n(int64_t n) { return n * kUnit / (1 - n * kUnit); }

// Per query, a bound M with |fp32 score - quantised score| <= M / 2 for every row, plus
// the rounding of the fp32 threshold arithmetic. With x^ and q^ the dequantised row and
// query (as the kernel sees them) and S = q.x exactly:
//   |fp32 chain - S|       <= gamma_d ||q|| ||x||                 (d roundings)
//   |S - q^.x^|            <= ||q - q^|| ||x|| + ||q^|| ||x - x^||
//   |q^.x^ - quantised|    <= g ||q^|| ||x^||,  ||x^|| <= ||x|| + ||x - x^||
// where g = 3.0001u for int8 (three fp32 roundings of exact integer products) and
// gamma_{2 groups} for bf16 (a chain of exact products). Rows enter through max ||x||
// and max ||x - x^|| over the corpus. Subnormal flushing (vdpbf16ps) adds at most
// 2^-126 per step.
float margin_for(const PreparedQueries& p, int64_t b, const Corpus& c, const Originals& o) {
  const double nx = o.max_norm, ex = o.max_error;
  const int64_t steps = c.dtype == Dtype::bf16 ? 2 * num_groups(c.dtype, c.dim) : c.dim;
  const double g = c.dtype == Dtype::i8 ? 3.0001 * kUnit : gamma_n(steps);
  const double xhat = nx + ex;
  const double bound = (gamma_n(c.dim) * p.norm[b] + p.qerror[b]) * nx + p.qnorm[b] * ex +
                       g * p.qnorm[b] * xhat + (steps + 2) * 0x1p-126;
  // Threshold and compare arithmetic in fp32: (k-th best - margin) rounds once, with
  // |k-th best| <= ||q^|| ||x^|| (1 + g).
  double margin = 2 * bound;
  margin += 4 * kUnit * (p.qnorm[b] * xhat * (1 + g) + margin);
  margin *= 1 + 1e-6;
  const float f = static_cast<float>(margin);
  return static_cast<double>(f) >= margin
             ? f
             : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// Candidates per query a thread keeps before that query falls back to a full rescan:
// 2^19 / B, at least 512 (real MiniLM data needs 12-24 on average). A list is checked
// against the cap after pruning, so it never holds more than twice the cap: at most
// 16 MiB per thread (16-byte entries) whatever B and the data, for k <= 128.
constexpr int64_t kCandidatesPerThread = 1 << 19;
constexpr int64_t kMinCandidateCap = 512;
// Candidate rows rescored per parallel stretch of queries.
constexpr int64_t kRowsPerStretch = 1 << 14;

}  // namespace

ExactStats topk_scores_exact(const float* queries, int64_t num_queries, const Corpus& corpus,
                             const Originals& originals, int64_t k, int num_threads,
                             float* out_scores, int64_t* out_ids) {
  check_sizes(num_queries, corpus, k);
  if (!corpus.packed || corpus.dtype == Dtype::f32) {
    throw std::invalid_argument("topk_scores_exact: needs a packed bfloat16 or int8 corpus");
  }
  ExactStats stats;
  if (num_queries == 0) return stats;
  const int64_t B = num_queries, N = corpus.num_rows, d = corpus.dim;
  const PreparedQueries p = prepare_queries(queries, B, d, corpus.dtype);
  std::vector<float> margins(B);
  for (int64_t b = 0; b < B; ++b) margins[b] = margin_for(p, b, corpus, originals);

  // 1. Quantised scan collecting every row within the margin of the running k-th best.
  const int nt = threads_for(N, B * N * d, std::max(1, num_threads));
  const int64_t kk = std::min(k, std::max<int64_t>(N, 1));
  const int64_t cap = std::max({kMinCandidateCap, 4 * kk, kCandidatesPerThread / B});
  std::vector<TopkHeaps> heaps;
  heaps.reserve(nt);
  for (int t = 0; t < nt; ++t) {
    heaps.emplace_back(B, kk, corpus.tie_keys);
    heaps.back().collect_candidates(margins.data(), cap);
  }
  if (N > 0 && scan_corpus(corpus, p, B, heaps)) throw_nonfinite();
  std::vector<float> qscores(B * k);
  std::vector<int64_t> qids(B * k);
  merge_topk(heaps, B, k, qscores.data(), qids.data());

  // 2. Candidate rows per query: quantised score >= (k-th best - margin), in row order.
  std::vector<std::vector<int64_t>> rows(B);
  std::vector<int64_t> fallback;
  for (int64_t b = 0; b < B; ++b) {
    const float kth = qscores[b * k + kk - 1];
    const float thr = kth - margins[b];  // the same fp32 expression as the heaps use
    bool over = false;
    for (const auto& h : heaps) over |= h.overflowed(b);
    if (over) {
      fallback.push_back(b);
      continue;
    }
    for (const auto& h : heaps) {
      for (const Candidate& c : h.candidates(b)) {
        if (c.score >= thr) rows[b].push_back(c.id);
      }
    }
    std::sort(rows[b].begin(), rows[b].end());
    stats.candidates += static_cast<int64_t>(rows[b].size());
  }
  heaps.clear();

  // 3. Rescore the candidates from the originals with the fp32 kernel: gathered rows are
  // packed and scanned like any corpus, so scores and ties match the fp32 scan exactly.
  const Isa isa = active_isa();
  const ScanFn scan_f32 = scan_for(isa, Dtype::f32);
  const PackFn pack = pack_for(isa);
  const int64_t bbytes = block_bytes(Dtype::f32, d);
  const int64_t panel_rows =
      std::clamp<int64_t>(tile_sizes().tile_bytes / (d * 4) / kBlockRows, 1, 64) * kBlockRows;
  for (int64_t b0 = 0; b0 < B;) {
    // A stretch of queries with about kRowsPerStretch candidate rows in all.
    int64_t b1 = b0, stretch_rows = 0;
    while (b1 < B && (b1 == b0 || stretch_rows + int64_t(rows[b1].size()) <= kRowsPerStretch)) {
      stretch_rows += int64_t(rows[b1].size());
      ++b1;
    }
    const int ntr =
        static_cast<int>(std::clamp<int64_t>(stretch_rows * d / kMinWorkPerThread, 1,
                                             std::min<int64_t>(b1 - b0, std::max(1, num_threads))));
    std::atomic<int64_t> next{b0};
    parallel_tasks(ntr, [&](int) {
      std::vector<float> gathered(panel_rows * d);
      std::vector<uint8_t> packed(panel_rows / kBlockRows * bbytes);
      std::vector<int64_t> keys;
      for (int64_t b = next.fetch_add(1); b < b1; b = next.fetch_add(1)) {
        const auto& cand = rows[b];
        if (cand.empty()) continue;  // fallback query, or N == 0
        // The heap sees candidate positions; ties between them go by the rows' keys.
        const int64_t* tie_keys = cand.data();
        if (corpus.tie_keys != nullptr) {
          keys.resize(cand.size());
          for (size_t i = 0; i < cand.size(); ++i) keys[i] = corpus.tie_keys[cand[i]];
          tie_keys = keys.data();
        }
        TopkHeaps h(1, std::min<int64_t>(k, int64_t(cand.size())), tie_keys);
        ScanTile tile{reinterpret_cast<const uint32_t*>(queries + b * d),
                      nullptr,
                      nullptr,
                      0,
                      1,
                      packed.data(),
                      nullptr,
                      d,
                      0,
                      0,
                      0,
                      h.thresholds(),
                      nullptr,
                      nullptr};
        for (int64_t c0 = 0; c0 < int64_t(cand.size()); c0 += panel_rows) {
          const int64_t n = std::min<int64_t>(panel_rows, int64_t(cand.size()) - c0);
          read_rows(originals.fd, originals.offset, d, cand.data() + c0, n, gathered.data());
          pack(reinterpret_cast<const uint8_t*>(gathered.data()), d * 4, n, d * 4, d, 0,
               packed.data(), nullptr, 0);
          tile.num_blocks = num_blocks(n);
          tile.valid_rows = n;
          tile.first_id = c0;  // local ids: candidate order is row order
          if (scan_f32(tile, h)) throw_nonfinite();
        }
        std::vector<TopkHeaps> one;
        one.push_back(std::move(h));
        merge_topk(one, 1, k, out_scores + b * k, out_ids + b * k);
        for (int64_t j = 0; j < k; ++j) {
          if (out_ids[b * k + j] >= 0) out_ids[b * k + j] = cand[out_ids[b * k + j]];
        }
      }
    });
    b0 = b1;
  }

  // 4. Queries whose candidate set overflowed: a full fp32 scan of the originals.
  if (!fallback.empty()) {
    stats.fallback_queries = static_cast<int64_t>(fallback.size());
    const int64_t m = stats.fallback_queries;
    std::vector<float> fq(m * d);
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(fq.data() + i * d, queries + fallback[i] * d, d * 4);
    const Corpus orig{Dtype::f32,       false,          nullptr, N, d, nullptr, originals.fd,
                      originals.offset, corpus.tie_keys};
    const PreparedQueries fp = prepare_queries(fq.data(), m, d, Dtype::f32);
    const int ntf = threads_for(N, m * N * d, std::max(1, num_threads));
    std::vector<TopkHeaps> fh;
    for (int t = 0; t < ntf; ++t) fh.emplace_back(m, kk, corpus.tie_keys);
    if (scan_corpus(orig, fp, m, fh)) throw_nonfinite();
    std::vector<float> s(m * k);
    std::vector<int64_t> ix(m * k);
    merge_topk(fh, m, k, s.data(), ix.data());
    for (int64_t i = 0; i < m; ++i) {
      std::copy(s.begin() + i * k, s.begin() + (i + 1) * k, out_scores + fallback[i] * k);
      std::copy(ix.begin() + i * k, ix.begin() + (i + 1) * k, out_ids + fallback[i] * k);
    }
  }
  // Queries with no candidates at all (N == 0): padding.
  if (N == 0) {
    std::fill(out_scores, out_scores + B * k, -std::numeric_limits<float>::infinity());
    std::fill(out_ids, out_ids + B * k, int64_t(-1));
  }
  return stats;
}

}  // namespace pyrag
