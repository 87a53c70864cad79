// Run-time choice of the CPU instruction set. One wheel runs on any x86-64 CPU: each
// kernel is compiled once per ISA (files named *_avx512.cpp, *_avx2.cpp, ...) and the
// best path this CPU supports is picked once, at first use.
#pragma once
#include <string>
#include <vector>

namespace pyrag {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

const char* isa_name(Isa isa);
// Every path this CPU can run, lowest first.
std::vector<Isa> supported_isas();
// The path in use: the best supported one, or PYRAG_CPU_ISA if set (an unknown or
// unsupported value throws std::invalid_argument naming it).
Isa active_isa();
// Used by tests to run every supported path in one process.
void set_active_isa(const std::string& name);

}  // namespace pyrag
