// CPU feature detection and the PYRAG_CPU_ISA override.
#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(PYRAG_ARM) && defined(__linux__)
#include <sys/auxv.h>
#endif
// The AArch64 Linux hwcap bits (asm/hwcap.h), for toolchains whose headers predate them.
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1 << 14)
#endif

namespace pyrag {
namespace {

constexpr Isa kAll[] = {Isa::scalar, Isa::avx2,         Isa::avx2vnni,
                        Isa::avx512, Isa::avx512vnni,   Isa::avx512bf16,
                        Isa::neon,   Isa::neon_dotprod, Isa::neon_bf16};

bool cpu_has(Isa isa) {
#if defined(PYRAG_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx2vnni: return cpu_has(Isa::avx2) && __builtin_cpu_supports("avxvnni");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             cpu_has(Isa::avx2);
    case Isa::avx512vnni: return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512vnni");
    case Isa::avx512bf16: return cpu_has(Isa::avx512vnni) && __builtin_cpu_supports("avx512bf16");
    default: return false;
  }
#elif defined(PYRAG_ARM)
  // Advanced SIMD is part of every AArch64 CPU; the extensions are asked of the kernel.
#if defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
#else
  const unsigned long hwcap = 0, hwcap2 = 0;
#endif
  switch (isa) {
    case Isa::scalar:
    case Isa::neon: return true;
    case Isa::neon_dotprod: return (hwcap & HWCAP_ASIMDDP) != 0;
    case Isa::neon_bf16: return (hwcap2 & HWCAP2_BF16) != 0;
    default: return false;
  }
#else
  return isa == Isa::scalar;
#endif
}

std::string all_names() {
  std::string s;
  for (Isa isa : kAll) s += std::string(s.empty() ? "" : ", ") + isa_name(isa);
  return s;
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : kAll) {
    if (name == isa_name(isa)) {
      if (!cpu_has(isa)) {
        std::string ok;
        for (Isa s : supported_isas()) ok += std::string(ok.empty() ? "" : ", ") + isa_name(s);
        throw std::invalid_argument("CPU path '" + name +
                                    "' is not supported by this CPU (it supports " + ok + ")");
      }
      return isa;
    }
  }
  throw std::invalid_argument("unknown CPU path '" + name + "': expected one of " + all_names());
}

Isa default_isa() {
  if (const char* env = std::getenv("PYRAG_CPU_ISA"); env != nullptr && *env != '\0') {
    try {
      return parse_isa(env);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("PYRAG_CPU_ISA: ") + e.what());
    }
  }
  return supported_isas().back();
}

std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx2vnni: return "avx2vnni";
    case Isa::avx512: return "avx512";
    case Isa::avx512vnni: return "avx512vnni";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::neon: return "neon";
    case Isa::neon_dotprod: return "neon_dotprod";
    case Isa::neon_bf16: return "neon_bf16";
  }
  return "?";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAll) {
    if (cpu_has(isa)) out.push_back(isa);
  }
  return out;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(default_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_active_isa(const std::string& name) {
  const Isa isa = name.empty() ? default_isa() : parse_isa(name);
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace pyrag
