// The host emulation's runtime: the launcher, barriers, warp exchange, emulated mma and
// half-precision conversions. See runtime.h for the model.
//
// Synchronisation: each block has one mutex guarding every barrier, counter and state of
// that block; a barrier completes when its last expected thread arrives. Because all
// state sits under one lock, the runtime knows at every arrival how many threads wait
// and how many exited, which makes deadlocks (all live threads waiting) and divergent
// barriers exact, immediate errors rather than hangs.
#include "cuda/emu/runtime.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

thread_local uint3 threadIdx{0, 0, 0};
thread_local uint3 blockIdx{0, 0, 0};
thread_local dim3 blockDim{1, 1, 1};
thread_local dim3 gridDim{1, 1, 1};

namespace pyrag::emu {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
// Guard bytes after the requested shared memory; a kernel that writes them overflowed.
constexpr std::size_t kCanaryBytes = 256;
constexpr unsigned char kCanary = 0xA5;
constexpr unsigned char kPoison = 0xFF;

// Unwinds an emulated thread's kernel once its launch has failed.
struct Abort {};

struct Site {
  const char* op = "";
  const char* file = "";
  unsigned line = 0;
  unsigned column = 0;

  Site() = default;
  Site(const char* op_, const std::source_location& loc)
      : op(op_), file(loc.file_name()), line(loc.line()), column(loc.column()) {}

  bool operator==(const Site& o) const {
    return line == o.line && column == o.column && std::strcmp(op, o.op) == 0 &&
           std::strcmp(file, o.file) == 0;
  }

  std::string str() const {
    const char* base = std::strrchr(file, '/');
    return std::string(op) + " at " + (base ? base + 1 : file) + ":" + std::to_string(line);
  }
};

struct Barrier {
  int expected = 0;
  int arrived = 0;
  Site site;  // the call site of this phase's first arrival
  // Bumped when a phase completes (or the launch fails); waiters sleep on it with
  // std::atomic::wait (a futex), so that waking does not funnel through the block's mutex.
  std::atomic<std::uint32_t> released{0};
};

struct Warp {
  Barrier barrier;
  int lanes = 0;
  int exited = 0;
  // Collectives alternate between two buffers so that one barrier per collective is
  // enough: a lane writes buffer p again only at collective n+2, after passing the
  // barrier of collective n+1, which every lane reaches after reading p for collective n.
  std::vector<unsigned char> slots[2];
};

enum class State : unsigned char { running, waiting, exited };

struct Block {
  std::mutex mu;
  int nthreads = 0;
  int exited = 0;
  int waiting = 0;
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<State> state;
  std::vector<Site> waiting_at;
  std::atomic<bool> failed{false};
  std::string error;
  unsigned char* smem = nullptr;
};

struct Launch {
  dim3 grid, block;
  const std::function<void()>* body = nullptr;
  Block blk;
  std::condition_variable start_cv;  // workers wait for the next block (guarded by blk.mu)
  std::condition_variable done_cv;   // the launcher waits for the block's end
  std::uint64_t generation = 0;
  bool stop = false;
  uint3 current{0, 0, 0};
};

struct Context {
  Launch* launch;
  unsigned tid;
  unsigned lane;
  unsigned warp;
  unsigned collectives;  // collectives issued by this lane in the current block
};

thread_local Context* tls = nullptr;

Context& context(const char* op) {
  if (tls == nullptr) throw EmulationError(std::string(op) + " called outside an emulated kernel");
  return *tls;
}

std::string lanes_str(const std::vector<int>& lanes) {
  std::string out;
  for (std::size_t i = 0; i < lanes.size();) {
    std::size_t j = i;
    while (j + 1 < lanes.size() && lanes[j + 1] == lanes[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(lanes[i]);
    if (j > i) out += "-" + std::to_string(lanes[j]);
    i = j + 1;
  }
  return out;
}

// Where each warp's threads are, grouped by call site (for the deadlock message).
std::string where_threads_are(const Block& b) {
  std::ostringstream out;
  for (std::size_t w = 0; w < b.warps.size(); ++w) {
    std::vector<std::pair<std::string, std::vector<int>>> groups;
    for (int lane = 0; lane < b.warps[w]->lanes; ++lane) {
      const int t = static_cast<int>(w) * warpSize + lane;
      std::string where = b.state[t] == State::exited    ? std::string("exited")
                          : b.state[t] == State::waiting ? b.waiting_at[t].str()
                                                         : std::string("running");
      auto it = std::find_if(groups.begin(), groups.end(),
                             [&](const auto& g) { return g.first == where; });
      if (it == groups.end())
        groups.push_back({where, {lane}});
      else
        it->second.push_back(lane);
    }
    out << (w ? "; " : "") << "warp " << w << ":";
    for (std::size_t i = 0; i < groups.size(); ++i) {
      out << (i ? "," : "") << " lanes " << lanes_str(groups[i].second) << " " << groups[i].first;
    }
  }
  return out.str();
}

// Records the launch's first error and wakes every waiting thread (b.mu held).
void fail(Block& b, const std::string& message) {
  if (b.failed) return;
  b.error = message + " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) +
            "," + std::to_string(blockIdx.z) + ")";
  b.failed = true;
  auto wake = [](Barrier& bar) {
    bar.released.fetch_add(1, std::memory_order_release);
    bar.released.notify_all();
  };
  wake(b.barrier);
  for (auto& w : b.warps) wake(w->barrier);
}

void check_deadlock(Block& b) {
  if (!b.failed && b.waiting > 0 && b.waiting + b.exited == b.nthreads) {
    fail(b, "deadlock: every live thread of the block waits at a barrier that cannot complete: " +
                where_threads_are(b));
  }
}

// Arrives at `bar` and waits for its phase to complete. `scope_exited` counts the exited
// threads of the barrier's scope (the warp or the block); `scope` names it.
void arrive(Block& b, Barrier& bar, const int& scope_exited, const char* scope, const Site& site) {
  Context& me = *tls;
  std::unique_lock<std::mutex> lk(b.mu);
  if (b.failed) throw Abort{};
  if (scope_exited > 0) {
    fail(b, site.str() + " reached by thread " + std::to_string(me.tid) + " after " +
                std::to_string(scope_exited) + " thread(s) of its " + scope +
                " exited: every thread of the " + scope + " must reach it");
    throw Abort{};
  }
  if (bar.arrived == 0) {
    bar.site = site;
  } else if (!(bar.site == site)) {
    fail(b, std::string("divergent ") + scope + " barrier: thread " + std::to_string(me.tid) +
                " reached " + site.str() + " while others wait at " + bar.site.str());
    throw Abort{};
  }
  if (++bar.arrived == bar.expected) {
    bar.arrived = 0;
    b.waiting -= bar.expected - 1;
    bar.released.fetch_add(1, std::memory_order_release);
    lk.unlock();
    bar.released.notify_all();
    return;
  }
  ++b.waiting;
  b.state[me.tid] = State::waiting;
  b.waiting_at[me.tid] = site;
  check_deadlock(b);
  if (b.failed) throw Abort{};
  const std::uint32_t seen = bar.released.load(std::memory_order_relaxed);
  lk.unlock();
  // A released thread's state stays `waiting` until it waits again: the deadlock check
  // never counts it (the completer took it out of b.waiting), so the message stays exact.
  while (bar.released.load(std::memory_order_acquire) == seen)
    bar.released.wait(seen, std::memory_order_acquire);
  if (b.failed) throw Abort{};
}

Warp& warp_for_collective(Context& me, unsigned mask, const Site& site) {
  Block& b = me.launch->blk;
  Warp& w = *b.warps[me.warp];
  if (mask != kFullMask || w.lanes != warpSize) {
    std::lock_guard<std::mutex> lk(b.mu);
    std::ostringstream msg;
    msg << site.str() << " with mask 0x" << std::hex << mask << std::dec << " in a warp of "
        << w.lanes << " lanes: the emulation supports full-warp collectives only";
    fail(b, msg.str());
    throw Abort{};
  }
  return w;
}

void thread_exit(Context& me) {
  Launch& l = *me.launch;
  Block& b = l.blk;
  std::lock_guard<std::mutex> lk(b.mu);
  Warp& w = *b.warps[me.warp];
  b.state[me.tid] = State::exited;
  ++b.exited;
  ++w.exited;
  if (!b.failed) {
    if (w.barrier.arrived > 0) {
      fail(b, "thread " + std::to_string(me.tid) + " exited while lanes of its warp wait at " +
                  w.barrier.site.str());
    } else if (b.barrier.arrived > 0) {
      fail(b, "thread " + std::to_string(me.tid) + " exited while threads of its block wait at " +
                  b.barrier.site.str());
    } else {
      check_deadlock(b);
    }
  }
  if (b.exited == b.nthreads) l.done_cv.notify_one();
}

void worker(Launch& l, unsigned tid) {
  Context me{&l, tid, tid % warpSize, tid / warpSize, 0};
  tls = &me;
  blockDim = l.block;
  gridDim = l.grid;
  threadIdx = {tid % l.block.x, tid / l.block.x % l.block.y, tid / (l.block.x * l.block.y)};
  std::uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(l.blk.mu);
      l.start_cv.wait(lk, [&] { return l.stop || l.generation != seen; });
      if (l.stop) break;
      seen = l.generation;
      blockIdx = l.current;
    }
    me.collectives = 0;
    try {
      (*l.body)();
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(l.blk.mu);
      fail(l.blk, std::string("exception in thread ") + std::to_string(tid) + ": " + e.what());
    } catch (...) {
      std::lock_guard<std::mutex> lk(l.blk.mu);
      fail(l.blk, "unknown exception in thread " + std::to_string(tid));
    }
    thread_exit(me);
  }
  tls = nullptr;
}

void reset_block(Block& b, std::size_t smem_bytes) {
  b.exited = 0;
  b.waiting = 0;
  b.barrier.arrived = 0;
  for (auto& w : b.warps) {
    w->barrier.arrived = 0;
    w->exited = 0;
  }
  std::fill(b.state.begin(), b.state.end(), State::running);
  std::memset(b.smem, kPoison, smem_bytes);
  std::memset(b.smem + smem_bytes, kCanary, kCanaryBytes);
}

bool canary_intact(const Block& b, std::size_t smem_bytes) {
  for (std::size_t i = 0; i < kCanaryBytes; ++i) {
    if (b.smem[smem_bytes + i] != kCanary) return false;
  }
  return true;
}

std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

}  // namespace

void launch(dim3 grid, dim3 block, std::size_t smem_bytes, const char* kernel_name,
            const std::function<void()>& body) {
  const std::string name(kernel_name);
  const std::uint64_t nthreads = std::uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64) {
    throw EmulationError(name + ": invalid block " + dims(block));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    throw EmulationError(name + ": invalid grid " + dims(grid));
  }
  if (smem_bytes > kMaxSharedBytes) {
    throw EmulationError(name + ": " + std::to_string(smem_bytes) +
                         " bytes of shared memory requested, more than " +
                         std::to_string(kMaxSharedBytes) + " per block");
  }

  Launch l;
  l.grid = grid;
  l.block = block;
  l.body = &body;
  Block& b = l.blk;
  b.nthreads = static_cast<int>(nthreads);
  b.barrier.expected = b.nthreads;
  for (int first = 0; first < b.nthreads; first += warpSize) {
    auto w = std::make_unique<Warp>();
    w->lanes = std::min(warpSize, b.nthreads - first);
    w->barrier.expected = w->lanes;
    for (auto& s : w->slots) s.assign(warpSize * kSlotBytes, 0);
    b.warps.push_back(std::move(w));
  }
  b.state.assign(b.nthreads, State::running);
  b.waiting_at.assign(b.nthreads, Site{});
  const std::size_t alloc = (smem_bytes + kCanaryBytes + 127) / 128 * 128;
  std::unique_ptr<unsigned char, decltype(&std::free)> smem(
      static_cast<unsigned char*>(std::aligned_alloc(128, alloc)), &std::free);
  if (!smem) throw std::bad_alloc();
  b.smem = smem.get();

  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  auto stop_all = [&] {
    {
      std::lock_guard<std::mutex> lk(b.mu);
      l.stop = true;
    }
    l.start_cv.notify_all();
    for (auto& t : threads) t.join();
  };
  try {
    for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(worker, std::ref(l), t);
  } catch (...) {
    stop_all();
    throw;
  }

  // Blocks run one after another, x fastest, as a grid's linear block index counts.
  std::string overflow;
  const std::uint64_t nblocks = std::uint64_t(grid.x) * grid.y * grid.z;
  for (std::uint64_t i = 0; i < nblocks; ++i) {
    const uint3 id{unsigned(i % grid.x), unsigned(i / grid.x % grid.y),
                   unsigned(i / (std::uint64_t(grid.x) * grid.y))};
    {
      std::unique_lock<std::mutex> lk(b.mu);
      reset_block(b, smem_bytes);
      l.current = id;
      ++l.generation;
      l.start_cv.notify_all();
      l.done_cv.wait(lk, [&] { return b.exited == b.nthreads; });
      if (b.failed) break;
    }
    if (!canary_intact(b, smem_bytes)) {
      overflow = "wrote past its " + std::to_string(smem_bytes) +
                 " bytes of dynamic shared memory (block " + std::to_string(id.x) + "," +
                 std::to_string(id.y) + "," + std::to_string(id.z) + ")";
      break;
    }
  }
  stop_all();
  if (b.failed) throw EmulationError(name + ": " + b.error);
  if (!overflow.empty()) throw EmulationError(name + ": " + overflow);
}

const unsigned char* warp_exchange(const void* mine, std::size_t bytes, unsigned mask,
                                   const char* op, const std::source_location& loc) {
  Context& me = context(op);
  const Site site(op, loc);
  Warp& w = warp_for_collective(me, mask, site);
  if (bytes > kSlotBytes)
    throw EmulationError(std::string(op) + ": operand too large for the exchange slot");
  unsigned char* buf = w.slots[me.collectives++ & 1].data();
  std::memcpy(buf + me.lane * kSlotBytes, mine, bytes);
  arrive(me.launch->blk, w.barrier, w.exited, "warp", site);
  return buf;
}

void sync_block(const std::source_location& loc) {
  Context& me = context("__syncthreads");
  Block& b = me.launch->blk;
  arrive(b, b.barrier, b.exited, "block", Site("__syncthreads", loc));
}

void sync_warp(unsigned mask, const std::source_location& loc) {
  Context& me = context("__syncwarp");
  const Site site("__syncwarp", loc);
  Warp& w = warp_for_collective(me, mask, site);
  arrive(me.launch->blk, w.barrier, w.exited, "warp", site);
}

unsigned char* dynamic_shared_memory() { return context("dynamic shared memory").launch->blk.smem; }

void mma_m16n8k16(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                  bool bf16, const std::source_location& loc) {
  struct Fragments {
    std::uint32_t a[4];
    std::uint32_t b[2];
  };
  static_assert(sizeof(Fragments) <= kSlotBytes);
  const Fragments mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const unsigned char* slots = warp_exchange(&mine, sizeof mine, kFullMask, "mma.m16n8k16", loc);

  auto element = [&](std::uint32_t word, int high) {
    const auto bits = static_cast<std::uint16_t>(high ? word >> 16 : word & 0xffffu);
    return bf16 ? bf16_bits_to_float(bits) : f16_bits_to_float(bits);
  };
  // PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type":
  // groupID = lane >> 2, threadID_in_group = lane % 4.
  // A (16x16, row): a0,a1 (row g, cols 2t, 2t+1), a2,a3 (row g+8), a4..a7 the same at cols + 8;
  //   two elements per 32-bit register, the lower column in the low half.
  // B (16x8, col): b0,b1 (rows 2t, 2t+1, col g), b2,b3 (rows + 8).
  // C/D (16x8): c0,c1 (row g, cols 2t, 2t+1), c2,c3 (row g+8).
  auto A = [&](int row, int col) {
    const Fragments f = lane_value<Fragments>(slots, (row % 8) * 4 + (col % 8) / 2);
    return element(f.a[(row >= 8) + 2 * (col >= 8)], col & 1);
  };
  auto B = [&](int k, int n) {
    const Fragments f = lane_value<Fragments>(slots, n * 4 + (k % 8) / 2);
    return element(f.b[k >= 8], k & 1);
  };
  const int lane = static_cast<int>(tls->lane);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    c[i] = acc;
  }
}

std::uint16_t float_to_f16_bits(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN, Inf
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): a subnormal in units of 2^-24. Scaling by
    // 2^24 is exact, and nearbyint rounds to nearest even (the default mode).
    const float scaled = std::bit_cast<float>(a) * 16777216.0f;
    return sign | static_cast<std::uint16_t>(std::nearbyint(scaled));
  }
  std::uint32_t h = ((((a >> 23) - 127 + 15) << 10) | ((a & 0x7fffffu) >> 13));
  const std::uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    ++h;  // a carry moves into the exponent, as it should
  return sign | static_cast<std::uint16_t>(h);
}

float f16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e - 15 + 127) << 23) | (m << 13));
}

std::uint16_t float_to_bf16_bits(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float bf16_bits_to_float(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t(h) << 16); }

}  // namespace pyrag::emu
