/* The machine's streaming read rate, for the benchmarks' floor (benchmarks/floor.py).
 *
 * read_probe reads every byte of [data, data + nbytes) once, split into one contiguous
 * slice per thread, and returns an XOR of the 64-bit words (and of the tail bytes), so
 * that the reads cannot be optimised away. Almost no arithmetic per byte: its rate is
 * the memory's, not a kernel's. Compiled at first use by read_probe.py (it is not part
 * of pyrag's wheel) and called through ctypes, which releases the GIL.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

struct slice {
  const unsigned char* bytes;
  int64_t begin, end; /* in 64-bit words */
  uint64_t out;
};

static void* read_slice(void* arg) {
  struct slice* s = (struct slice*)arg;
  /* Eight independent chains: one 64-byte line per iteration, no loop-carried stall. */
  uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = s->begin;
  for (; i + 8 <= s->end; i += 8) {
    uint64_t line[8];
    memcpy(line, s->bytes + 8 * i, sizeof line);
    for (int j = 0; j < 8; ++j) acc[j] ^= line[j];
  }
  for (; i < s->end; ++i) {
    uint64_t w;
    memcpy(&w, s->bytes + 8 * i, 8);
    acc[0] ^= w;
  }
  s->out = 0;
  for (int j = 0; j < 8; ++j) s->out ^= acc[j];
  return NULL;
}

uint64_t read_probe(const void* data, int64_t nbytes, int num_threads) {
  enum { kMaxThreads = 256 };
  struct slice slices[kMaxThreads];
  pthread_t threads[kMaxThreads];
  const int nt = num_threads < 1 ? 1 : num_threads > kMaxThreads ? kMaxThreads : num_threads;
  const int64_t words = nbytes / 8;
  for (int t = 0; t < nt; ++t) {
    slices[t].bytes = (const unsigned char*)data;
    slices[t].begin = words * t / nt;
    slices[t].end = words * (t + 1) / nt;
  }
  int started = 1; /* slice 0 runs on the calling thread */
  for (int t = 1; t < nt; ++t, ++started) {
    if (pthread_create(&threads[t], NULL, read_slice, &slices[t]) != 0) break;
  }
  for (int t = started; t < nt; ++t) read_slice(&slices[t]); /* threads that did not start */
  read_slice(&slices[0]);
  uint64_t out = slices[0].out;
  for (int t = 1; t < nt; ++t) {
    if (t < started) pthread_join(threads[t], NULL);
    out ^= slices[t].out;
  }
  const unsigned char* bytes = (const unsigned char*)data;
  for (int64_t b = words * 8; b < nbytes; ++b) out ^= bytes[b];
  return out;
}
