// Standalone tests of the CPU top-k kernels, without Python, so that they also run where
// pyrag cannot be imported (an AArch64 build under qemu-aarch64; tools/test_cpu_kernels.sh).
//
// On every path this CPU supports, for every corpus dtype, row-major and pre-packed, on
// 1 and 3 threads, each result must equal bit for bit (scores and ids) both a naive
// implementation of the score definitions (csrc/cpu/topk_scores.h) and the scalar path.
// Shapes cover partial blocks, partial tiles, dimensions that are no multiple of a group
// or a vector, k > N, ties, int8 values that would saturate vpmaddubsw, and random data,
// where the fixed summation order is what makes the paths agree.
//
//   test_cpu_kernels [--expect-isas scalar,neon,neon_dotprod] [--quick]
//
// --expect-isas fails the run unless this CPU's supported paths are exactly those (so a
// detection bug cannot silently skip a path). Exit status 0 when everything matched.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/encode.h"
#include "cpu/isa.h"
#include "cpu/packed_layout.h"
#include "cpu/topk_scores.h"

namespace {

using pyrag::Dtype;

// splitmix64: small, deterministic, the same on every platform.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t integer(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(next() % uint64_t(hi - lo + 1));
  }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f; }
  float normal() {  // sum of 4 uniforms: enough for test data
    return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7f;
  }
};

enum class Data { small_ints, random, ties, extreme };
const char* data_name(Data k) {
  switch (k) {
    case Data::small_ints: return "small ints";
    case Data::random: return "random";
    case Data::ties: return "ties";
    case Data::extreme: return "extreme";
  }
  return "?";
}

float bf16_value(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One problem: float32 queries and a corpus in its storage dtype.
struct Problem {
  Dtype dtype;
  int64_t B, N, d, k;
  std::vector<float> queries;  // [B, d]
  std::vector<float> f32;      // [N, d]
  std::vector<uint16_t> bf16;  // [N, d]
  std::vector<int8_t> i8;      // [N, d]
  std::vector<float> scales;   // int8: [N]
};

Problem make_problem(Dtype dtype, int64_t B, int64_t N, int64_t d, int64_t k, Data data,
                     uint64_t seed) {
  Problem p{dtype, B, N, d, k, {}, {}, {}, {}, {}};
  Rng rng{seed};
  p.queries.resize(B * d);
  for (auto& v : p.queries) v = data == Data::random ? rng.normal() : float(rng.integer(-4, 4));
  if (data == Data::extreme) {  // every query quantises to +-127 in every dimension
    for (auto& v : p.queries) v = rng.integer(0, 3) == 0 ? -1.0f : 1.0f;
  }
  // Row r's values; with ties, rows repeat with period 7 (the same scores, distinct ids).
  auto value = [&](int64_t r, int64_t j) -> float {
    const int64_t src = data == Data::ties ? r % 7 : r;
    Rng row{seed * 1000003 + uint64_t(src) * 7919 + uint64_t(j)};
    if (data == Data::random) return row.normal();
    if (data == Data::extreme)
      return float(row.integer(0, 5) == 0 ? -128 : row.integer(0, 1) ? 127 : -127);
    return float(row.integer(-4, 4));
  };
  if (dtype == Dtype::f32) {
    p.f32.resize(N * d);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < d; ++j) p.f32[r * d + j] = value(r, j);
  } else if (dtype == Dtype::bf16) {
    p.bf16.resize(N * d);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < d; ++j) p.bf16[r * d + j] = pyrag::bf16_bits(value(r, j));
  } else {
    p.i8.resize(N * d);
    p.scales.resize(N);
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t j = 0; j < d; ++j) {
        const float v = data == Data::random ? std::round(value(r, j) * 40.0f) : value(r, j);
        p.i8[r * d + j] = static_cast<int8_t>(std::clamp(v, -128.0f, 127.0f));
      }
      const int64_t src = data == Data::ties ? r % 7 : r;
      p.scales[r] = 0.5f + 0.25f * float(src % 5);  // exact in fp32, several distinct
    }
  }
  return p;
}

// The score definitions, written out plainly.
std::vector<float> reference_scores(const Problem& p) {
  const int64_t B = p.B, N = p.N, d = p.d;
  std::vector<float> s(B * N);
  std::vector<int8_t> qi(d);
  for (int64_t b = 0; b < B; ++b) {
    const float* q = p.queries.data() + b * d;
    float qscale = 0.0f;
    if (p.dtype == Dtype::i8) qscale = pyrag::quantize_int8(q, d, qi.data());
    for (int64_t r = 0; r < N; ++r) {
      float acc = 0.0f;
      if (p.dtype == Dtype::f32) {  // fma(q[d-1], x[d-1], ... fma(q[0], x[0], 0))
        for (int64_t j = 0; j < d; ++j) acc = std::fma(q[j], p.f32[r * d + j], acc);
      } else if (p.dtype == Dtype::bf16) {  // query rounded to bf16; odd, then even, per pair
        auto term = [&](int64_t j, float a) {
          if (j >= d) return a;
          return std::fma(bf16_value(pyrag::bf16_bits(q[j])), bf16_value(p.bf16[r * d + j]), a);
        };
        for (int64_t j = 0; j < d; j += 2) acc = term(j, term(j + 1, acc));
      } else {  // exact integer dot, then two fp32 products
        int64_t dot = 0;
        for (int64_t j = 0; j < d; ++j) dot += int64_t(qi[j]) * p.i8[r * d + j];
        acc = static_cast<float>(dot) * (qscale * p.scales[r]);
      }
      s[b * N + r] = acc;
    }
  }
  return s;
}

struct TopK {
  std::vector<float> scores;
  std::vector<int64_t> ids;
};

// Sorted by score, ties to the smaller row, padded with (-inf, -1).
TopK reference_topk(const Problem& p) {
  const std::vector<float> s = reference_scores(p);
  TopK out{std::vector<float>(p.B * p.k, -std::numeric_limits<float>::infinity()),
           std::vector<int64_t>(p.B * p.k, -1)};
  std::vector<int64_t> order(p.N);
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t r = 0; r < p.N; ++r) order[r] = r;
    const float* row = s.data() + b * p.N;
    std::sort(order.begin(), order.end(), [row](int64_t x, int64_t y) {
      return row[x] > row[y] || (row[x] == row[y] && x < y);
    });
    for (int64_t j = 0; j < std::min(p.k, p.N); ++j) {
      out.scores[b * p.k + j] = row[order[j]];
      out.ids[b * p.k + j] = order[j];
    }
  }
  return out;
}

TopK run_kernels(const Problem& p, bool packed, int threads) {
  const int64_t d = p.d;
  const void* rows = p.dtype == Dtype::f32    ? static_cast<const void*>(p.f32.data())
                     : p.dtype == Dtype::bf16 ? static_cast<const void*>(p.bf16.data())
                                              : static_cast<const void*>(p.i8.data());
  std::vector<uint8_t> blocks;
  std::vector<float> scales = p.scales;
  pyrag::Corpus corpus{p.dtype, packed, rows, p.N, d, scales.empty() ? nullptr : scales.data()};
  if (packed) {
    const int64_t nb = pyrag::num_blocks(p.N);
    blocks.assign(static_cast<size_t>(nb * pyrag::block_bytes(p.dtype, d)),
                  0xA5);  // padding gets written
    pyrag::pack_rows(p.dtype, rows, p.N, d, blocks.data(), 0);
    corpus.data = blocks.data();
    if (!scales.empty()) scales.resize(nb * pyrag::kBlockRows, 0.0f);
    corpus.scales = scales.empty() ? nullptr : scales.data();
  }
  TopK out{std::vector<float>(p.B * p.k), std::vector<int64_t>(p.B * p.k)};
  pyrag::topk_scores(p.queries.data(), p.B, corpus, p.k, threads, out.scores.data(),
                     out.ids.data());
  return out;
}

bool same_bits(const TopK& a, const TopK& b) {
  return a.ids == b.ids &&
         std::memcmp(a.scores.data(), b.scores.data(), a.scores.size() * sizeof(float)) == 0;
}

std::string describe_first_difference(const TopK& got, const TopK& want) {
  for (size_t i = 0; i < got.ids.size(); ++i) {
    uint32_t gb, wb;
    std::memcpy(&gb, &got.scores[i], 4);
    std::memcpy(&wb, &want.scores[i], 4);
    if (got.ids[i] != want.ids[i] || gb != wb) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "entry %zu: got (%.9g, %lld) want (%.9g, %lld)", i,
                    got.scores[i], static_cast<long long>(got.ids[i]), want.scores[i],
                    static_cast<long long>(want.ids[i]));
      return buf;
    }
  }
  return "no difference";
}

struct Shape {
  int64_t B, N, d, k;
};

const char* dtype_name(Dtype t) {
  return t == Dtype::f32 ? "float32" : t == Dtype::bf16 ? "bfloat16" : "int8";
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string expect;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--expect-isas" && i + 1 < argc) {
      expect = argv[++i];
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--expect-isas a,b,c] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  int failures = 0;
  auto fail = [&failures](const std::string& what) {
    if (++failures <= 30) std::printf("FAIL %s\n", what.c_str());
  };

  std::vector<std::string> isas;
  for (pyrag::Isa isa : pyrag::supported_isas()) isas.emplace_back(pyrag::isa_name(isa));
  std::string listed;
  for (const auto& n : isas) listed += (listed.empty() ? "" : ",") + n;
  std::printf("supported CPU paths: %s (default %s)\n", listed.c_str(),
              pyrag::isa_name(pyrag::active_isa()));
  if (!expect.empty() && split(expect) != isas)
    fail("expected the CPU paths " + expect + ", found " + listed);
  if (isas.empty() || isas.front() != "scalar" ||
      pyrag::active_isa() != pyrag::supported_isas().back()) {
    fail("the default path must be the best supported one, and scalar always supported");
  }
  // Paths this CPU lacks and unknown names are refused.
  for (const char* name : {"avx2", "avx512bf16", "neon", "neon_dotprod", "neon_bf16", "sse9"}) {
    if (std::find(isas.begin(), isas.end(), name) != isas.end()) continue;
    try {
      pyrag::set_active_isa(name);
      fail(std::string("set_active_isa accepted the unsupported path ") + name);
    } catch (const std::invalid_argument&) {
    }
  }

  const std::vector<Shape> shapes = {
      {1, 1, 1, 1},       {1, 17, 3, 5},    {3, 100, 16, 7},    {5, 257, 37, 10},
      {7, 50, 5, 60},     {6, 64, 2, 64},   {11, 129, 33, 129}, {2, 600, 130, 3},
      {4, 1500, 64, 10},  {9, 333, 7, 400}, {16, 700, 384, 10}, {17, 77, 100, 20},
      {1, 3001, 384, 10},
  };
  const std::vector<Shape> threaded = {{8, 12000, 48, 10}, {3, 40000, 32, 5}};  // 3 threads each
  const Dtype dtypes[] = {Dtype::f32, Dtype::bf16, Dtype::i8};
  const Data kinds[] = {Data::small_ints, Data::random, Data::ties, Data::extreme};

  int64_t cases = 0;
  uint64_t seed = 1;
  for (Dtype dtype : dtypes) {
    for (Data kind : kinds) {
      if (kind == Data::extreme && dtype != Dtype::i8) continue;
      std::vector<Shape> list = shapes;
      if (!quick && kind != Data::extreme)
        list.insert(list.end(), threaded.begin(), threaded.end());
      for (const Shape& sh : list) {
        if (quick && sh.B * sh.N * sh.d > 2'000'000) continue;
        const Problem p = make_problem(dtype, sh.B, sh.N, sh.d, sh.k, kind, seed++);
        const TopK want = reference_topk(p);
        const int threads = sh.N >= 12000 ? 3 : 1;
        TopK scalar;
        for (const auto& isa : isas) {
          pyrag::set_active_isa(isa);
          for (bool packed : {false, true}) {
            const TopK got = run_kernels(p, packed, threads);
            ++cases;
            char what[200];
            std::snprintf(what, sizeof what, "%s %s %s B=%lld N=%lld d=%lld k=%lld %s, %d threads",
                          isa.c_str(), dtype_name(dtype), data_name(kind),
                          static_cast<long long>(sh.B), static_cast<long long>(sh.N),
                          static_cast<long long>(sh.d), static_cast<long long>(sh.k),
                          packed ? "packed" : "row-major", threads);
            if (!same_bits(got, want))
              fail(std::string(what) + " vs reference: " + describe_first_difference(got, want));
            if (isa == "scalar" && !packed) scalar = got;
            if (!same_bits(got, scalar))
              fail(std::string(what) + " vs scalar: " + describe_first_difference(got, scalar));
          }
        }
        pyrag::set_active_isa("");
      }
    }
  }
  for (const auto& isa : isas) {
    pyrag::set_active_isa(isa);
    std::printf("  %-13s runs float32 on %s, bfloat16 on %s, int8 on %s\n", isa.c_str(),
                pyrag::isa_name(pyrag::kernel_level(pyrag::active_isa(), Dtype::f32)),
                pyrag::isa_name(pyrag::kernel_level(pyrag::active_isa(), Dtype::bf16)),
                pyrag::isa_name(pyrag::kernel_level(pyrag::active_isa(), Dtype::i8)));
  }
  pyrag::set_active_isa("");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%lld kernel runs on %zu paths, %d failures, %.1f s\n", static_cast<long long>(cases),
              isas.size(), failures, seconds);
  return failures == 0 ? 0 : 1;
}
