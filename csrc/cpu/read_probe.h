// The machine's streaming read rate, for the benchmarks' floor (benchmarks/floor.py).
#pragma once
#include <cstdint>

namespace pyrag {

// Reads every byte of [data, data + nbytes) once, split into one contiguous slice per
// thread, and returns an XOR of the 64-bit words (so the reads cannot be optimised
// away). Almost no arithmetic per byte: its rate is the memory's, not a kernel's.
uint64_t read_probe(const void* data, int64_t nbytes, int num_threads);

}  // namespace pyrag
