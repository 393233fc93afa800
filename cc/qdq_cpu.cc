// CPU driver of the core: picks the loops for this CPU, splits the flat buffer
// into pieces for the thread pool, and finds each piece's channel from the
// [outer, depth, inner] layout, so per-channel work on any axis runs through
// the same loops as per-tensor work (no per-channel launches or copies).
//
// Bytes move the fewest times: given ranges and V4Grad are one pass, auto
// ranges one reduction pass plus one quantize pass.
#include "qdq_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "qdq_simd_loops.h"

namespace qdq {
namespace {

// Channels whose runs are shorter than this go through row loops.
constexpr int64_t kMinRun = 64;
// A row period is repeated until it holds at least this many elements.
constexpr int64_t kMinPeriod = 512;
// Row periods with channel inner > 1 longer than this use runs instead.
constexpr int64_t kMaxExpandedPeriod = int64_t{1} << 16;
// Reductions keep one partial range per shard up to this many positions.
constexpr int64_t kMaxPartialPositions = int64_t{1} << 14;
// Work is handed to the pool in units of this many elements (cache-line aligned pieces).
constexpr int64_t kUnit = 256;
// Below this many elements a reduction shard is not worth a thread.
constexpr int64_t kMinShardElements = int64_t{1} << 15;
// Cycles per element for the pool's cost model. Memory bound: about one cycle
// per element moved plus thread start-up; with Eigen's model (100k cycles per
// extra thread) tensors under ~50k elements stay on the calling thread.
constexpr int64_t kCyclesPerElement = 2;
// Outputs at least this big are written with non-temporal stores (they
// would not stay in the last-level cache anyway).
constexpr int64_t kStreamBytes = int64_t{16} << 20;

// ---- instruction-set choice ------------------------------------------------

enum class Isa : int { kBaseline = 0, kAvx2 = 1 };

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa best_isa() { return cpu_has_avx2() && avx2_loops<float>() != nullptr ? Isa::kAvx2 : Isa::kBaseline; }

// "baseline" forces the portable loops, "avx2" asks for AVX2 (granted only
// when the CPU has it); anything else means the best available.
Isa isa_from_name(const char* name) {
  if (name != nullptr && std::strcmp(name, "baseline") == 0) return Isa::kBaseline;
  return best_isa();
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(isa_from_name(std::getenv("QDQ_CPU_ISA")))};
  return isa;
}

template <typename T>
const CpuLoops<T>& loops() {
  if (active_isa().load(std::memory_order_relaxed) == static_cast<int>(Isa::kAvx2)) return *avx2_loops<T>();
  return baseline_loops<T>();
}

// ---- layout plan -----------------------------------------------------------

// How a tensor is walked. Run mode: pieces inside one channel (inner >= kMinRun
// or per-tensor). Row mode: the flat buffer repeats a period of `period`
// positions; position j belongs to channel (j / inner) % depth and the loops
// read per-position parameter arrays.
struct Plan {
  Layout l;
  bool row;
  int64_t period;
  Runs runs() const { return Runs{l.inner, l.depth}; }
  // Calls fn(position, channel) for each position of the period, in order.
  template <typename Fn>
  void for_each_position(Fn&& fn) const {
    for (int64_t j = 0; j < period;) {
      for (int64_t c = 0; c < l.depth; ++c) {
        for (int64_t i = 0; i < l.inner; ++i, ++j) fn(j, c);
      }
    }
  }
};

Plan make_plan(Layout l) {
  if (l.depth == 1) return Plan{Layout{1, 1, l.size()}, false, 0};
  const int64_t p = l.depth * l.inner;
  if (l.inner >= kMinRun || (l.inner > 1 && p > kMaxExpandedPeriod)) return Plan{l, false, 0};
  // Repeat short periods so row pieces are long, but never past the tensor's end.
  const int64_t repeats = std::min((kMinPeriod + p - 1) / p, l.outer);
  return Plan{l, true, p * repeats};
}

// Row mode: calls row(position, f, len) for the pieces of [b, e) that stay
// inside one period.
template <typename Row>
void for_each_row(const Plan& plan, int64_t b, int64_t e, Row&& row) {
  for (int64_t f = b; f < e;) {
    const int64_t position = f % plan.period;
    const int64_t len = std::min(e - f, plan.period - position);
    row(position, f, len);
    f += len;
  }
}

// Runs piece(b, e) over [0, n) in kUnit-aligned pieces on the pool. The fence
// makes non-temporal stores visible before the pool reports the piece done.
template <typename Piece>
void parallel_elements(const ThreadPool& pool, int64_t n, Piece&& piece) {
  const int64_t units = (n + kUnit - 1) / kUnit;
  pool.parallel_for(units, kUnit * kCyclesPerElement, [&](int64_t u0, int64_t u1) {
    piece(u0 * kUnit, std::min(n, u1 * kUnit));
    std::atomic_thread_fence(std::memory_order_seq_cst);
  });
}

// Copies per-channel values to per-position arrays of one period.
template <typename C, typename Get>
std::vector<C> by_position(const Plan& plan, Get&& get) {
  std::vector<C> out(static_cast<size_t>(plan.period));
  plan.for_each_position([&](int64_t j, int64_t c) { out[j] = get(c); });
  return out;
}

// ---- range measurement -----------------------------------------------------

template <typename C>
void merge_range(C l, C h, C& lo, C& hi) {
  // Bound with bound: an empty shard's +inf/-inf must not leak into the other side.
  lo = (l < lo) ? l : lo;
  hi = (h > hi) ? h : hi;
}

// Shards of a reduction over n elements: enough to keep the pool busy, none too small.
int64_t reduction_shards(const ThreadPool& pool, int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(n / kMinShardElements, 4 * static_cast<int64_t>(pool.num_threads())));
}

// Per-shard partial ranges, [shard][lo positions..., hi positions...], empty (+inf, -inf).
template <typename C>
std::vector<C> empty_partials(int64_t shards, int64_t positions) {
  const C inf = std::numeric_limits<C>::infinity();
  std::vector<C> part(static_cast<size_t>(2 * shards * positions));
  for (int64_t s = 0; s < shards; ++s) {
    std::fill_n(part.begin() + 2 * s * positions, positions, inf);
    std::fill_n(part.begin() + (2 * s + 1) * positions, positions, -inf);
  }
  return part;
}

// A channel with no non-NaN element gets NaN bounds (its range is degenerate and keeps its NaNs).
template <typename C>
void no_range_to_nan(C* lo, C* hi, int64_t depth) {
  const C nan = std::numeric_limits<C>::quiet_NaN();
  for (int64_t c = 0; c < depth; ++c) {
    if (lo[c] > hi[c]) lo[c] = hi[c] = nan;
  }
}

// Row mode: folds x[b, e) into per-position partial ranges; whole periods in
// the middle go to the loops in one call (their columns stay in registers).
template <typename T, typename C = compute_t<T>>
void reduce_rows_piece(const CpuLoops<T>& k, const Plan& plan, const T* x, int64_t b, int64_t e, C* lo, C* hi) {
  const int64_t p = plan.period;
  int64_t f = b;
  if (f % p != 0) {
    const int64_t len = std::min(e - f, p - f % p);
    k.reduce_rows(x + f, 1, 0, len, lo + f % p, hi + f % p);
    f += len;
  }
  const int64_t whole = (e - f) / p;
  if (whole > 0) k.reduce_rows(x + f, whole, p, p, lo, hi);
  f += whole * p;
  if (f < e) k.reduce_rows(x + f, 1, 0, e - f, lo, hi);
}

// Per-channel NaN-free min/max of x. A channel with no non-NaN element gets NaN
// bounds, which makes its range degenerate and keeps its NaNs.
template <typename T, typename C = compute_t<T>>
void measure_ranges(const ThreadPool& pool, const CpuLoops<T>& k, const T* x, const Plan& plan, C* lo, C* hi) {
  const Layout& l = plan.l;
  const C inf = std::numeric_limits<C>::infinity();
  std::fill(lo, lo + l.depth, inf);
  std::fill(hi, hi + l.depth, -inf);
  const int64_t n = l.size();
  const int64_t positions = plan.row ? plan.period : l.depth;  // partial slots per shard
  if (positions <= kMaxPartialPositions) {
    // Flat shards, each with its own partial ranges, merged afterwards.
    const int64_t shards = reduction_shards(pool, n);
    std::vector<C> part = empty_partials<C>(shards, positions);
    pool.parallel_for(shards, (n / shards + 1) * kCyclesPerElement, [&](int64_t first, int64_t last) {
      for (int64_t s = first; s < last; ++s) {
        C* plo = part.data() + 2 * s * positions;
        C* phi = plo + positions;
        const int64_t b = n * s / shards, e = n * (s + 1) / shards;
        if (plan.row) {
          reduce_rows_piece(k, plan, x, b, e, plo, phi);
        } else {
          k.reduce_runs(x, b, e - b, plan.runs(), plo, phi);
        }
      }
    });
    for (int64_t s = 0; s < shards; ++s) {
      const C* plo = part.data() + 2 * s * positions;
      const C* phi = plo + positions;
      if (plan.row) {
        plan.for_each_position([&](int64_t j, int64_t c) { merge_range(plo[j], phi[j], lo[c], hi[c]); });
      } else {
        for (int64_t c = 0; c < positions; ++c) merge_range(plo[c], phi[c], lo[c], hi[c]);
      }
    }
  } else if (plan.row) {
    // Long period (many channels, inner < kMinRun): shards own positions of
    // the period across every repetition of it (here period == depth * inner).
    std::vector<C> plo(static_cast<size_t>(plan.period), inf), phi(static_cast<size_t>(plan.period), -inf);
    const int64_t reps = n / plan.period;
    pool.parallel_for(plan.period, reps * kCyclesPerElement, [&](int64_t j0, int64_t j1) {
      k.reduce_rows(x + j0, reps, plan.period, j1 - j0, &plo[j0], &phi[j0]);
    });
    plan.for_each_position([&](int64_t j, int64_t c) { merge_range(plo[j], phi[j], lo[c], hi[c]); });
  } else {
    // Many long channels: shards own channels across every outer row.
    pool.parallel_for(l.depth, l.outer * l.inner * kCyclesPerElement, [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < l.outer; ++o) {
        k.reduce_runs(x, (o * l.depth + c0) * l.inner, (c1 - c0) * l.inner, plan.runs(), lo, hi);
      }
    });
  }
  no_range_to_nan(lo, hi, l.depth);
}

template <typename T>
bool streams(int64_t n) {
  return n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
}

// Given per-channel bounds in the compute type.
template <typename T>
void load_bounds(const T* lo, const T* hi, int64_t depth, compute_t<T>* clo, compute_t<T>* chi) {
  for (int64_t c = 0; c < depth; ++c) {
    clo[c] = Compute<T>::load(lo[c]);
    chi[c] = Compute<T>::load(hi[c]);
  }
}

// Whether each channel's elements hold a NaN or an infinity (the range reductions ignore NaNs).
template <typename T>
std::vector<char> channels_not_finite(const ThreadPool& pool, const CpuLoops<T>& k, const T* x, const Layout& l) {
  const int64_t n = l.size();
  const int64_t shards = reduction_shards(pool, n);
  std::vector<char> flags(static_cast<size_t>(shards * l.depth), 0);
  pool.parallel_for(shards, (n / shards + 1) * kCyclesPerElement, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      const int64_t b = n * s / shards, e = n * (s + 1) / shards;
      if (b == e) continue;
      char* mine = flags.data() + s * l.depth;
      for_each_run(b, e - b, Runs{l.inner, l.depth}, [&](int64_t c, int64_t f, int64_t len) {
        if (!mine[c] && !k.all_finite(x + f, len)) mine[c] = 1;
      });
    }
  });
  std::vector<char> any(static_cast<size_t>(l.depth), 0);
  for (int64_t s = 0; s < shards; ++s) {
    for (int64_t c = 0; c < l.depth; ++c) any[c] |= flags[s * l.depth + c];
  }
  return any;
}

}  // namespace

const char* cpu_isa() { return active_isa().load() == static_cast<int>(Isa::kAvx2) ? "avx2" : "baseline"; }

const char* set_cpu_isa(const char* name) {
  active_isa().store(static_cast<int>(isa_from_name(name)));
  return cpu_isa();
}

template <typename T>
void quantize_cpu(const ThreadPool& pool, const T* in, T* out, Layout layout, const T* given_lo, const T* given_hi,
                  const QuantizeAttrs& attrs) {
  using C = compute_t<T>;
  const Plan plan = make_plan(layout);
  const Layout& l = plan.l;
  const int64_t n = l.size();
  if (n == 0) return;
  const CpuLoops<T>& k = loops<T>();
  std::vector<C> lo(static_cast<size_t>(l.depth)), hi(static_cast<size_t>(l.depth));
  if (attrs.range_given) {
    load_bounds(given_lo, given_hi, l.depth, lo.data(), hi.data());
  } else {
    measure_ranges(pool, k, in, plan, lo.data(), hi.data());
  }
  std::vector<SliceParams<C>> params(static_cast<size_t>(l.depth));
  // Zero bounds already carry the sign of the slice's first zero in memory order
  // (what a sequential min/max, TensorFlow's, keeps): the loops preserve it.
  for (int64_t c = 0; c < l.depth; ++c) params[c] = compute_params(lo[c], hi[c], attrs.range);

  const auto& rounding = k.rounding(attrs.round_mode);
  const bool clamp = attrs.range_given;
  const bool stream = streams<T>(n);
  if (plan.row) {
    const auto pick = [&](auto field) { return by_position<C>(plan, [&](int64_t c) { return field(params[c]); }); };
    const std::vector<C> plo = pick([](const SliceParams<C>& p) { return p.lo; });
    const std::vector<C> phi = pick([](const SliceParams<C>& p) { return p.hi; });
    const std::vector<C> pscale = pick([](const SliceParams<C>& p) { return p.scale; });
    const std::vector<C> pinv = pick([](const SliceParams<C>& p) { return p.inv_scale; });
    const std::vector<C> pdeg = pick([](const SliceParams<C>& p) { return p.degenerate ? C(1) : C(0); });
    const bool any_degenerate =
        std::any_of(params.begin(), params.end(), [](const SliceParams<C>& p) { return p.degenerate; });
    const auto row = rounding.quantize_row[clamp];
    parallel_elements(pool, n, [&](int64_t b, int64_t e) {
      for_each_row(plan, b, e, [&](int64_t j, int64_t f, int64_t len) {
        const RowParams<C> p{&plo[j], &phi[j], &pscale[j], &pinv[j], any_degenerate ? &pdeg[j] : nullptr};
        row(in + f, out + f, len, p, stream);
      });
    });
  } else {
    const auto runs = rounding.quantize_runs[clamp];
    parallel_elements(pool, n,
                      [&](int64_t b, int64_t e) { runs(in, out, b, e - b, plan.runs(), params.data(), stream); });
  }
}

template <typename T>
void masked_gradient_cpu(const ThreadPool& pool, const T* grad, const T* x, T* out, Layout layout, const T* lo,
                         const T* hi) {
  using C = compute_t<T>;
  const Plan plan = make_plan(layout);
  const Layout& l = plan.l;
  const int64_t n = l.size();
  if (n == 0) return;
  const CpuLoops<T>& k = loops<T>();
  std::vector<C> clo(static_cast<size_t>(l.depth)), chi(static_cast<size_t>(l.depth));
  load_bounds(lo, hi, l.depth, clo.data(), chi.data());
  const bool stream = streams<T>(n);
  if (plan.row) {
    const std::vector<C> plo = by_position<C>(plan, [&](int64_t c) { return clo[c]; });
    const std::vector<C> phi = by_position<C>(plan, [&](int64_t c) { return chi[c]; });
    parallel_elements(pool, n, [&](int64_t b, int64_t e) {
      for_each_row(plan, b, e, [&](int64_t j, int64_t f, int64_t len) {
        k.gradient_row(grad + f, x + f, out + f, len, &plo[j], &phi[j], stream);
      });
    });
  } else {
    parallel_elements(pool, n, [&](int64_t b, int64_t e) {
      k.gradient_runs(grad, x, out, b, e - b, plan.runs(), clo.data(), chi.data(), stream);
    });
  }
}

namespace {

// One shard-parallel pass for a delayed step whose slices all have a range: quantize with
// it, and measure the batch's NaN-free min/max and NaN flags from the same loads. Merged as
// measure_ranges merges (shard order keeps the zero signs of memory order).
template <typename T, typename C = compute_t<T>>
void quantize_and_measure(const ThreadPool& pool, const CpuLoops<T>& k, const T* in, T* out, const Plan& plan,
                          const std::vector<SliceParams<C>>& params, RoundMode mode, C* lo, C* hi, char* not_finite) {
  const Layout& l = plan.l;
  const int64_t n = l.size();
  const int64_t depth = l.depth;
  const C inf = std::numeric_limits<C>::infinity();
  const int64_t shards = reduction_shards(pool, n);
  std::vector<C> part = empty_partials<C>(shards, depth);
  std::vector<char> nan(static_cast<size_t>(shards * depth), 0);
  const auto pass = k.rounding(mode).quantize_measure_runs;
  const bool stream = streams<T>(n);
  pool.parallel_for(shards, (n / shards + 1) * 2 * kCyclesPerElement, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      C* plo = part.data() + 2 * s * depth;
      const int64_t b = n * s / shards, e = n * (s + 1) / shards;
      pass(in, out, b, e - b, plan.runs(), params.data(), stream, plo, plo + depth, nan.data() + s * depth);
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);  // non-temporal stores, as parallel_elements
  });
  std::fill(lo, lo + depth, inf);
  std::fill(hi, hi + depth, -inf);
  std::fill(not_finite, not_finite + depth, 0);
  for (int64_t s = 0; s < shards; ++s) {
    const C* plo = part.data() + 2 * s * depth;
    for (int64_t c = 0; c < depth; ++c) {
      merge_range(plo[c], plo[depth + c], lo[c], hi[c]);
      not_finite[c] |= nan[s * depth + c];
    }
  }
  no_range_to_nan(lo, hi, depth);
}

}  // namespace

template <typename T>
void tracked_quantize_cpu(const ThreadPool& pool, const T* in, T* out, Layout layout, const float* old_lo,
                          const float* old_hi, const int64_t* old_updates, TrackedAttrs tracked,
                          const QuantizeAttrs& attrs, TrackedOutputs out_range) {
  using C = compute_t<T>;
  const Plan plan = make_plan(layout);
  const Layout& l = plan.l;
  const int64_t depth = layout.depth;  // the caller's slices (plan.l merges per-tensor layouts)
  // The layer casts a range to T before the op (a rounding for half/bfloat16, exact otherwise).
  const auto as_given = [](float v) { return Compute<T>::load(Compute<T>::store(static_cast<C>(v))); };
  std::vector<C> lo(static_cast<size_t>(l.depth)), hi(static_cast<size_t>(l.depth));
  std::vector<char> not_finite(static_cast<size_t>(l.depth), 1);  // an empty slice has no range
  const bool one_pass = tracked.delayed && l.size() > 0 && !plan.row && l.depth == depth &&
                        depth <= kMaxPartialPositions &&
                        std::all_of(old_updates, old_updates + depth, [](int64_t u) { return u > 0; });
  if (one_pass) {
    std::vector<SliceParams<C>> params(static_cast<size_t>(depth));
    for (int64_t c = 0; c < depth; ++c)
      params[c] = compute_params(as_given(old_lo[c]), as_given(old_hi[c]), attrs.range);
    quantize_and_measure(pool, loops<T>(), in, out, plan, params, attrs.round_mode, lo.data(), hi.data(),
                         not_finite.data());
  } else if (l.size() > 0) {
    measure_ranges(pool, loops<T>(), in, plan, lo.data(), hi.data());
    not_finite = channels_not_finite(pool, loops<T>(), in, l);
  }
  std::vector<T> given_lo(static_cast<size_t>(depth)), given_hi(static_cast<size_t>(depth));
  for (int64_t c = 0; c < depth; ++c) {
    // The layer casts the batch min/max (reduced in T) to float32.
    const TrackedRange used =
        tracked_step(TrackedRange{old_lo[c], old_hi[c], old_updates[c]}, static_cast<float>(lo[c]),
                     static_cast<float>(hi[c]), !not_finite[c], tracked, out_range, c);
    given_lo[c] = Compute<T>::store(static_cast<C>(used.lo));
    given_hi[c] = Compute<T>::store(static_cast<C>(used.hi));
  }
  if (one_pass) return;
  QuantizeAttrs given = attrs;
  given.range_given = true;
  quantize_cpu(pool, in, out, layout, given_lo.data(), given_hi.data(), given);
}

#define QDQ_INSTANTIATE(T)                                                                                          \
  template void tracked_quantize_cpu<T>(const ThreadPool&, const T*, T*, Layout, const float*, const float*,        \
                                        const int64_t*, TrackedAttrs, const QuantizeAttrs&, TrackedOutputs);        \
  template void quantize_cpu<T>(const ThreadPool&, const T*, T*, Layout, const T*, const T*, const QuantizeAttrs&); \
  template void masked_gradient_cpu<T>(const ThreadPool&, const T*, const T*, T*, Layout, const T*, const T*);
QDQ_FOR_EACH_TYPE(QDQ_INSTANTIATE)
#undef QDQ_INSTANTIATE

}  // namespace qdq

// Test and benchmark hooks, callable through ctypes on the loaded op library:
// the instruction set in use, and a way to force one ("baseline", "avx2",
// anything else = best). The environment variable QDQ_CPU_ISA sets the
// initial choice the same way.
extern "C" __attribute__((visibility("default"))) const char* qdq_cpu_isa() { return qdq::cpu_isa(); }
extern "C" __attribute__((visibility("default"))) const char* qdq_cpu_set_isa(const char* name) {
  return qdq::set_cpu_isa(name);
}
