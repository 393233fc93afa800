// Plain descriptions of a call, shared by the CPU loops, the CUDA launchers and
// every binding. No framework types.
#pragma once

#include <cstdint>
#include <functional>

#include "qdq_math.h"

namespace qdq {

// A tensor seen as [outer, depth, inner]; channel c is the slice [:, c, :].
// Per-tensor is {1, 1, n}.
struct Layout {
  int64_t outer;
  int64_t depth;
  int64_t inner;
  int64_t size() const { return outer * depth * inner; }
};

// Layout of `dims` for channel axis `axis` (-1 = per-tensor). The caller has
// validated 0 <= axis < rank.
inline Layout make_layout(const int64_t* dims, int rank, int axis) {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[i];
  if (axis < 0) return Layout{1, 1, n};
  Layout l{1, dims[axis], 1};
  for (int i = 0; i < axis; ++i) l.outer *= dims[i];
  for (int i = axis + 1; i < rank; ++i) l.inner *= dims[i];
  return l;
}

struct QuantizeAttrs {
  IntRange range;
  bool range_given;
  RoundMode round_mode;
};

// The host's thread pool, as the CPU loops see it. fn(first, last) is called on
// disjoint sub-ranges covering [0, n); cost_per_unit is in cycles and lets the
// pool keep cheap work on one thread.
struct ThreadPool {
  virtual ~ThreadPool() = default;
  virtual int num_threads() const = 0;
  virtual void parallel_for(int64_t n, int64_t cost_per_unit,
                            const std::function<void(int64_t, int64_t)>& fn) const = 0;
};

// Runs everything inline on the calling thread.
struct SerialPool final : ThreadPool {
  int num_threads() const override { return 1; }
  void parallel_for(int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) const override {
    if (n > 0) fn(0, n);
  }
};

}  // namespace qdq
