// Run-time choice of the CPU instruction set. One wheel runs on any x86-64 (or AArch64)
// CPU: each kernel is compiled once per ISA (files named *_avx512.cpp, *_avx2.cpp,
// *_neon_dotprod.cpp, ...; CMake gives each only its own flags) and the best path this
// CPU supports is picked once, at first use.
//
// Paths, lowest first (each includes what the corpus dtypes need on that level):
//   scalar        portable C++
//   x86-64:
//   avx2          AVX2 + FMA + F16C: fp32 FMA, bf16 widened to fp32, int8 by vpmaddwd
//   avx2vnni      avx2 + AVX-VNNI (VEX vpdpbusd) for int8
//   avx512        AVX-512 F/BW/VL/DQ: fp32 FMA, bf16 widened to fp32, int8 by vpmaddwd
//   avx512vnni    avx512 + AVX512_VNNI (vpdpbusd) for int8
//   avx512bf16    avx512vnni + AVX512_BF16 (vdpbf16ps) for bf16
//   AArch64 (Linux: getauxval):
//   neon          Advanced SIMD: fp32 fmla, bf16 widened to fp32, int8 by smull + sadalp
//   neon_dotprod  neon + DotProd (sdot) for int8
//   neon_bf16     neon + BF16 (bfmlalb / bfmlalt) for bf16
// A CPU may support a level without a lower one (AVX-VNNI without AVX-512 on Alder
// Lake, AVX-512 without AVX-VNNI on Zen 4, in principle BF16 without DotProd):
// supported_isas() lists each exactly.
#pragma once
#include <string>
#include <vector>

namespace pyrag {

enum class Isa : int {
  scalar = 0,
  avx2 = 1,
  avx2vnni = 2,
  avx512 = 3,
  avx512vnni = 4,
  avx512bf16 = 5,
  neon = 6,
  neon_dotprod = 7,
  neon_bf16 = 8,
};

const char* isa_name(Isa isa);
// Every path this CPU can run, lowest first.
std::vector<Isa> supported_isas();
// The path in use: the best supported one, or PYRAG_CPU_ISA if set (an unknown or
// unsupported value throws std::invalid_argument naming it).
Isa active_isa();
// Used by tests to run every supported path in one process; "" restores the default.
void set_active_isa(const std::string& name);

}  // namespace pyrag
