// Turning float32 vectors into a corpus dtype, and rows into (and out of) the packed
// layout. The quantisation rules are the spec (pyrag/reference.py has the same in torch):
//   bfloat16  round to nearest even.
//   int8      per vector: scale = max|x| / 127; value = round_half_even(x * (127 / max|x|))
//             clamped to [-127, 127] (all zero when max|x| = 0), each op one fp32 rounding.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/packed_layout.h"

namespace pyrag {

inline uint16_t bf16_bits(float f) {  // round to nearest even; f finite
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}

// Quantises one vector of d floats; returns its scale.
float quantize_int8(const float* x, int64_t d, int8_t* out);

// Encodes n float32 rows into `dtype` (row-major: bf16 bits or int8 values) and, for
// certified-exact search, writes per row norms[r] >= ||x|| and errors[r] >= ||x - x^||
// (x^ the dequantised row), both rounded up. scales: int8 only. Rows are split over
// up to num_threads threads.
void encode_rows(Dtype dtype, const float* src, int64_t n, int64_t d, void* dst, float* scales,
                 float* norms, float* errors, int num_threads);

// Packs n row-major rows (in the corpus dtype; int8 as signed values) into a packed
// buffer, as its rows [row_offset, row_offset + n).
void pack_rows(Dtype dtype, const void* src, int64_t n, int64_t d, void* packed,
               int64_t row_offset);

// The inverse: rows [row_begin, row_begin + n) of a packed buffer, row-major.
void unpack_rows(Dtype dtype, const void* packed, int64_t row_begin, int64_t n, int64_t d,
                 void* dst);

// Rows rows[0..n) (any order, repeats allowed, each in [0, packed rows)) of a packed
// buffer as float32 [n, d], as the index scores them: bf16 widened exactly, int8 values
// times their row scale (scales: int8 only, indexed by row).
void gather_rows_f32(Dtype dtype, const void* packed, const int64_t* rows, int64_t n, int64_t d,
                     const float* scales, float* dst);

}  // namespace pyrag
