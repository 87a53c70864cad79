// CPU feature detection and the PYRAG_CPU_ISA override.
#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace pyrag {
namespace {

constexpr Isa kAll[] = {Isa::scalar, Isa::avx2, Isa::avx2vnni, Isa::avx512, Isa::avx512vnni,
                        Isa::avx512bf16};

bool cpu_has(Isa isa) {
#if defined(PYRAG_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx2vnni:
      return cpu_has(Isa::avx2) && __builtin_cpu_supports("avxvnni");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             cpu_has(Isa::avx2);
    case Isa::avx512vnni:
      return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512vnni");
    case Isa::avx512bf16:
      return cpu_has(Isa::avx512vnni) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
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
        throw std::invalid_argument("CPU path '" + name + "' is not supported by this CPU (it supports " +
                                    ok + ")");
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
