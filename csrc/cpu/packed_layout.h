// The corpus layout the scan kernels own, for every corpus dtype.
//
// Rows are grouped in blocks of 16. Inside a block, the dimension is cut into groups of
// 4 bytes (1 float32, 2 bfloat16 or 4 int8 values), and each group is stored for the 16
// rows side by side: 64 bytes, one zmm register, two ymm. So
//
//     packed[block][group][row % 16][element of the group]       (64 bytes per group)
//
// and the micro-kernels read one vector per (block, group) and broadcast one 4-byte
// query word against it: every lane accumulates one row, so a score needs no horizontal
// reduction, and each row's score is one sequential chain over the dimension whatever
// the ISA or tile shape (see topk_scores.h for why that matters).
//
// - float32: the float bits.
// - bfloat16: the bf16 bits, even dimension in the low half of the word (the order
//   vdpbf16ps pairs them in).
// - int8: the value + 128 as uint8 (bit 7 flipped), the unsigned operand vpdpbusd wants;
//   the kernels subtract 128 * sum(query) to undo the bias.
// Padding (rows past N in the last block, dimensions past d in the last group) holds the
// value 0; padded rows are never reported.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyrag {

enum class Dtype : int { f32 = 0, bf16 = 1, i8 = 2 };

constexpr int64_t kBlockRows = 16;
constexpr int64_t kGroupBytes = 4;
constexpr int64_t kGroupStride = kBlockRows * kGroupBytes;  // 64 bytes per (block, group)

inline int64_t elem_bytes(Dtype t) { return t == Dtype::f32 ? 4 : t == Dtype::bf16 ? 2 : 1; }
inline int64_t group_elems(Dtype t) { return kGroupBytes / elem_bytes(t); }
inline int64_t num_groups(Dtype t, int64_t dim) {
  return (dim + group_elems(t) - 1) / group_elems(t);
}
inline int64_t num_blocks(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }
inline int64_t block_bytes(Dtype t, int64_t dim) { return num_groups(t, dim) * kGroupStride; }
// XORed into every packed word: flips int8 to the biased unsigned form (and back).
inline uint32_t pack_xor(Dtype t) { return t == Dtype::i8 ? 0x80808080u : 0u; }

inline Dtype parse_dtype(const std::string& name) {
  if (name == "float32") return Dtype::f32;
  if (name == "bfloat16") return Dtype::bf16;
  if (name == "int8") return Dtype::i8;
  throw std::invalid_argument("unsupported corpus dtype '" + name +
                              "': expected float32, bfloat16 or int8");
}

// Largest |int32 accumulator| of an int8 dot: d * 255 * 127 must stay below 2^31.
constexpr int64_t kMaxInt8Dim = 65536;

}  // namespace pyrag
