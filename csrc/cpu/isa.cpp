// CPU feature detection and the PYRAG_CPU_ISA override.
#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace pyrag {
namespace {

bool cpu_has(Isa isa) {
#if defined(PYRAG_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Isa::avx512bf16:
      return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::scalar;
#endif
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16}) {
    if (name == isa_name(isa)) {
      if (!cpu_has(isa)) {
        throw std::invalid_argument("PYRAG_CPU_ISA=" + name + " is not supported by this CPU");
      }
      return isa;
    }
  }
  throw std::invalid_argument("unknown PYRAG_CPU_ISA '" + name +
                              "': expected one of scalar, avx2, avx512, avx512bf16");
}

Isa best_isa() {
  if (const char* env = std::getenv("PYRAG_CPU_ISA"); env != nullptr && *env != '\0') {
    return parse_isa(env);
  }
  auto all = supported_isas();
  return all.back();
}

std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
  }
  return "?";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16}) {
    if (cpu_has(isa)) out.push_back(isa);
  }
  return out;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_active_isa(const std::string& name) {
  g_active.store(static_cast<int>(parse_isa(name)), std::memory_order_relaxed);
}

}  // namespace pyrag
