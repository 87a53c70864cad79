// Quantisation and packing of corpus rows (see encode.h).
#include "cpu/encode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "cpu/parallel.h"
#include "cpu/topk_scores.h"

namespace pyrag {
namespace {

// Round half to even for |v| < 2^22: adding 1.5 * 2^23 leaves no fraction bits, so the
// addition itself rounds (to nearest even) and the subtraction is exact.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

inline float round_up_to_float(double v) {
  const float f = static_cast<float>(v);
  return static_cast<double>(f) >= v ? f
                                     : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// Writes one row of `row_bytes` bytes as row r of a packed block.
void pack_one_row(const uint8_t* row, int64_t row_bytes, int64_t groups, uint32_t xor_word,
                  uint8_t* block, int64_t r) {
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* out = block + g * kGroupStride + r * kGroupBytes;
    for (int64_t e = 0; e < kGroupBytes; ++e) {
      const int64_t i = g * kGroupBytes + e;
      out[e] = (i < row_bytes ? row[i] : 0) ^ static_cast<uint8_t>(xor_word >> (8 * e));
    }
  }
}

}  // namespace

float quantize_int8(const float* x, int64_t d, int8_t* out) {
  float amax = 0.0f;
  for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    const float v = round_half_even(x[j] * inv);
    out[j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
  }
  return amax / 127.0f;
}

namespace {

void encode_range(Dtype dtype, const float* src, int64_t r0, int64_t r1, int64_t d, void* dst,
                  float* scales, float* norms, float* errors) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = src + r * d;
    double norm2 = 0.0, err2 = 0.0;
    if (dtype == Dtype::bf16) {
      uint16_t* out = static_cast<uint16_t*>(dst) + r * d;
      for (int64_t j = 0; j < d; ++j) {
        out[j] = bf16_bits(x[j]);
        const uint32_t bits = static_cast<uint32_t>(out[j]) << 16;
        float xh;
        std::memcpy(&xh, &bits, 4);
        const double e = static_cast<double>(x[j]) - xh;  // exact in double
        norm2 += static_cast<double>(x[j]) * x[j];
        err2 += e * e;
      }
    } else {
      int8_t* out = static_cast<int8_t*>(dst) + r * d;
      const float scale = quantize_int8(x, d, out);
      scales[r] = scale;
      for (int64_t j = 0; j < d; ++j) {
        const double e = static_cast<double>(x[j]) - static_cast<double>(scale) * out[j];  // exact
        norm2 += static_cast<double>(x[j]) * x[j];
        err2 += e * e;
      }
    }
    // Sums of d squares in double: relative error below d * 2^-53; 1e-9 covers d < 1e6.
    norms[r] = round_up_to_float(std::sqrt(norm2) * (1.0 + 1e-9));
    errors[r] = round_up_to_float(std::sqrt(err2) * (1.0 + 1e-9));
  }
}

}  // namespace

void encode_rows(Dtype dtype, const float* src, int64_t n, int64_t d, void* dst, float* scales,
                 float* norms, float* errors, int num_threads) {
  if (dtype == Dtype::f32)
    throw std::invalid_argument("encode_rows: float32 rows need no encoding");
  const int nt =
      static_cast<int>(std::clamp<int64_t>(n * d / (1 << 20), 1, std::max(1, num_threads)));
  parallel_tasks(nt, [&](int t) {
    const int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
    encode_range(dtype, src, r0, r1, d, dst, scales, norms, errors);
  });
}

void pack_rows(Dtype dtype, const void* src, int64_t n, int64_t d, void* packed,
               int64_t row_offset) {
  const int64_t row_bytes = d * elem_bytes(dtype);
  const int64_t groups = num_groups(dtype, d);
  const int64_t bbytes = block_bytes(dtype, d);
  const uint32_t xw = pack_xor(dtype);
  const uint8_t* s = static_cast<const uint8_t*>(src);
  uint8_t* p = static_cast<uint8_t*>(packed);
  int64_t i = 0;
  // Rows that complete a block begun by an earlier call go one by one.
  for (; i < n && (row_offset + i) % kBlockRows != 0; ++i) {
    const int64_t r = row_offset + i;
    pack_one_row(s + i * row_bytes, row_bytes, groups, xw, p + (r / kBlockRows) * bbytes,
                 r % kBlockRows);
  }
  if (i < n) {
    pack_for(active_isa())(s + i * row_bytes, row_bytes, n - i, row_bytes, groups, xw,
                           p + ((row_offset + i) / kBlockRows) * bbytes, nullptr, 0);
  }
}

void unpack_rows(Dtype dtype, const void* packed, int64_t row_begin, int64_t n, int64_t d,
                 void* dst) {
  const int64_t row_bytes = d * elem_bytes(dtype);
  const int64_t groups = num_groups(dtype, d);
  const int64_t bbytes = block_bytes(dtype, d);
  const uint32_t xw = pack_xor(dtype);
  const uint8_t* p = static_cast<const uint8_t*>(packed);
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = row_begin + i;
    const uint8_t* block = p + (r / kBlockRows) * bbytes;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* w = block + g * kGroupStride + (r % kBlockRows) * kGroupBytes;
      for (int64_t e = 0; e < kGroupBytes && g * kGroupBytes + e < row_bytes; ++e) {
        out[i * row_bytes + g * kGroupBytes + e] = w[e] ^ static_cast<uint8_t>(xw >> (8 * e));
      }
    }
  }
}

void gather_rows_f32(Dtype dtype, const void* packed, const int64_t* rows, int64_t n, int64_t d,
                     const float* scales, float* dst) {
  const int64_t bbytes = block_bytes(dtype, d);
  const auto* p = static_cast<const uint8_t*>(packed);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[i];
    const uint8_t* lane = p + (r / kBlockRows) * bbytes + (r % kBlockRows) * kGroupBytes;
    float* out = dst + i * d;
    for (int64_t j = 0; j < d; ++j) {
      // Element j lives in group j / group_elems, at byte (j % group_elems) * elem_bytes.
      const int64_t per = group_elems(dtype);
      const uint8_t* w = lane + (j / per) * kGroupStride + (j % per) * elem_bytes(dtype);
      if (dtype == Dtype::f32) {
        std::memcpy(&out[j], w, 4);
      } else if (dtype == Dtype::bf16) {
        uint16_t h;
        std::memcpy(&h, w, 2);
        const uint32_t bits = uint32_t(h) << 16;
        std::memcpy(&out[j], &bits, 4);
      } else {
        out[j] = float(static_cast<int8_t>(*w ^ 0x80u)) * scales[r];
      }
    }
  }
}

}  // namespace pyrag
