// Host check of the warp-level merge (cc/qdq_cuda_warp.cuh), the one part of the CUDA
// kernels the sequential emulation (cuda_emu.h) replaces: 32 threads play the 32 lanes of a
// warp in lock step, the warp intrinsics are exchanges through shared slots between two
// barriers, and the accumulators must equal a per-channel min over the lanes that hold keys.
// Cases: one channel (the tree), several channels (peer groups), lanes without keys, all
// distinct, all empty; 32- and 64-bit keys. Prints "warp_check: N cases" and returns 0.
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace {

// A reusable barrier for the 32 lanes (generation counter).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t gen = generation_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int waiting_ = 0;
  int64_t generation_ = 0;
};

Barrier warp_barrier(32);
uint64_t slots[32];
std::mutex atomic_mu;

struct Lane {
  unsigned x;
};
thread_local Lane threadIdx;

// An exchange: every lane publishes `mine`, then reads what `pick(lane)` published.
template <typename T, typename Pick>
T exchange(T mine, Pick pick) {
  uint64_t bits = 0;
  std::memcpy(&bits, &mine, sizeof(T));
  slots[threadIdx.x & 31u] = bits;
  warp_barrier.wait();
  const uint64_t got = slots[pick(static_cast<int>(threadIdx.x & 31u))];
  warp_barrier.wait();
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  return exchange(v, [&](int) { return src; });
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  return exchange(v, [&](int lane) { return lane ^ offset; });
}
int __all_sync(unsigned, int predicate) {
  slots[threadIdx.x & 31u] = predicate != 0;
  warp_barrier.wait();
  int all = 1;
  for (int i = 0; i < 32; ++i) all &= static_cast<int>(slots[i]);
  warp_barrier.wait();
  return all;
}
unsigned __match_any_sync(unsigned, unsigned long long value) {
  slots[threadIdx.x & 31u] = value;
  warp_barrier.wait();
  unsigned peers = 0;
  for (int i = 0; i < 32; ++i) peers |= (slots[i] == value ? 1u : 0u) << i;
  warp_barrier.wait();
  return peers;
}
int __ffs(int x) { return __builtin_ffs(x); }

}  // namespace

#define QDQ_DEV inline
namespace qdq {
namespace port {
template <typename Key>
void atomic_min(Key* p, Key v) {
  std::lock_guard<std::mutex> lock(atomic_mu);
  if (v < *p) *p = v;
}
#include "cc/qdq_cuda_warp.cuh"
}  // namespace port
}  // namespace qdq

namespace {

constexpr int kChannels = 8;

template <typename Key>
int check(std::mt19937_64& rng, int pattern) {
  const Key none = ~Key{0};
  std::vector<int64_t> c(32);
  std::vector<Key> lo(32), hi(32);
  std::uniform_int_distribution<int> channel(0, kChannels - 1), coin(0, 3);
  std::uniform_int_distribution<uint64_t> key(0, (uint64_t{1} << (8 * sizeof(Key) - 1)) - 2);
  const int one = channel(rng);
  for (int lane = 0; lane < 32; ++lane) {
    c[lane] = pattern == 0   ? one
              : pattern == 1 ? (lane % 3 == 0 ? one : channel(rng))
              : pattern == 2 ? lane % kChannels
                             : channel(rng);
    const bool empty = pattern == 3 || coin(rng) == 0;
    lo[lane] = empty ? none : static_cast<Key>(key(rng));
    hi[lane] = empty ? none : static_cast<Key>(key(rng));
  }
  std::vector<Key> lo_acc(kChannels, none), hi_acc(kChannels, none), want_lo(kChannels, none), want_hi(kChannels, none);
  for (int lane = 0; lane < 32; ++lane) {
    if (lo[lane] == none) continue;
    want_lo[c[lane]] = std::min(want_lo[c[lane]], lo[lane]);
    want_hi[c[lane]] = std::min(want_hi[c[lane]], hi[lane]);
  }
  std::vector<std::thread> lanes;
  for (int lane = 0; lane < 32; ++lane) {
    lanes.emplace_back([&, lane] {
      threadIdx.x = static_cast<unsigned>(lane);
      qdq::port::merge_keys(lo_acc.data(), hi_acc.data(), c[lane], lo[lane], hi[lane], none);
    });
  }
  for (auto& t : lanes) t.join();
  if (lo_acc != want_lo || hi_acc != want_hi) {
    std::printf("warp_check: mismatch (pattern %d, %zu-byte keys)\n", pattern, sizeof(Key));
    return 1;
  }
  return 0;
}

}  // namespace

int main() {
  std::mt19937_64 rng(2026);
  int cases = 0, failures = 0;
  for (int trial = 0; trial < 15; ++trial) {
    for (int pattern = 0; pattern < 4; ++pattern) {
      failures += check<uint32_t>(rng, pattern) + check<uint64_t>(rng, pattern);
      cases += 2;
    }
  }
  std::printf("warp_check: %d cases, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
