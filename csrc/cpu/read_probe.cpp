#include "read_probe.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.h"

namespace pyrag {

uint64_t read_probe(const void* data, int64_t nbytes, int num_threads) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const int64_t words = nbytes / 8;
  const int nt = std::max(1, num_threads);
  std::vector<uint64_t> partial(nt, 0);
  parallel_tasks(nt, [&](int t) {
    const int64_t begin = words * t / nt, end = words * (t + 1) / nt;
    // Eight independent chains: one 64-byte line per iteration, no loop-carried stall.
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      uint64_t line[8];
      std::memcpy(line, bytes + 8 * i, sizeof line);
      for (int j = 0; j < 8; ++j) acc[j] ^= line[j];
    }
    for (; i < end; ++i) {
      uint64_t w;
      std::memcpy(&w, bytes + 8 * i, 8);
      acc[0] ^= w;
    }
    for (int j = 0; j < 8; ++j) partial[t] ^= acc[j];
  });
  uint64_t out = 0;
  for (uint64_t p : partial) out ^= p;
  for (int64_t b = words * 8; b < nbytes; ++b) out ^= bytes[b];
  return out;
}

}  // namespace pyrag
