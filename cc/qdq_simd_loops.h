// The inner loops of the CPU kernels, one table per element type and
// instruction set. The driver (qdq_cpu.cc) splits a tensor into pieces and
// calls these; each ISA's table lives in its own translation unit so only that
// unit is compiled with the ISA's flags (qdq_cpu_avx2.cc: -mavx2 -mf16c).
//
// Two shapes of piece:
//  - run: contiguous elements of one slice, one SliceParams for all of them;
//  - row: element i uses entry i of per-position arrays (the driver lays the
//    channel parameters out along one period of the flat buffer).
#pragma once

#include <cstdint>

#include "qdq_float16.h"
#include "qdq_math.h"

namespace qdq {

// Run pieces: flat element i belongs to channel (i / inner) % depth, so a
// piece [f, f + n) is a sequence of runs of consecutive channels.
struct Runs {
  int64_t inner;
  int64_t depth;
};

// Calls fn(channel, first, count) for each run of [f, f + n).
template <typename Fn>
inline void for_each_run(int64_t f, int64_t n, const Runs& r, Fn&& fn) {
  const int64_t e = f + n;
  int64_t block = f / r.inner;
  int64_t c = block % r.depth;
  while (f < e) {
    const int64_t end = (block + 1) * r.inner;
    const int64_t len = (end < e ? end : e) - f;
    fn(c, f, len);
    f += len;
    ++block;
    if (++c == r.depth) c = 0;
  }
}

// Per-position parameters of a row, structure-of-arrays so vector loops load
// them directly. `degenerate` holds 1 where the slice's range is degenerate,
// or is null when no slice's is.
template <typename C>
struct RowParams {
  const C* lo;
  const C* hi;
  const C* scale;
  const C* inv_scale;
  const C* degenerate;
};

template <typename T>
struct CpuLoops {
  using C = compute_t<T>;
  // Runs take the buffers' bases and the piece [f, f + n); params, lo and hi
  // are per channel. Rows take pointers already at the piece and per-position
  // arrays. `stream`: the output is too big for the caches; vector loops may
  // write it with non-temporal stores (the results are the same).
  using RunFn = void (*)(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params,
                         bool stream);
  using RowFn = void (*)(const T* x, T* y, int64_t n, const RowParams<C>& p, bool stream);
  using MeasureFn = void (*)(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params,
                             bool stream, C* lo, C* hi, char* nan);
  // The loops that round, one instance per round mode.
  struct Rounding {
    // Indexed [clamp]: clamp is set for given ranges.
    RunFn quantize_runs[2];
    RowFn quantize_row[2];
    // A delayed tracked step's one pass: quantize_runs with clamp (the slice's old range),
    // and, from the same loads, reduce_runs into lo[c]/hi[c] and nan[c] = 1 where the run
    // holds a NaN (infinities show in lo/hi).
    MeasureFn quantize_measure_runs;
  };

  const char* isa;
  Rounding by_mode[contract::kNumRoundModes];  // indexed by RoundMode
  // NaN-ignoring min/max folded into lo[c]/hi[c] (runs), or into lo[i]/hi[i]
  // from x[r * stride + i] for each of `rows` rows of n elements (rows).
  void (*reduce_runs)(const T* x, int64_t f, int64_t n, const Runs& r, C* lo, C* hi);
  void (*reduce_rows)(const T* x, int64_t rows, int64_t stride, int64_t n, C* lo, C* hi);
  // Whether x[0, n) holds no NaN and no infinity (tracked ranges skip such batches).
  bool (*all_finite)(const T* x, int64_t n);
  // V4Grad: out = g * (lo <= x <= hi).
  void (*gradient_runs)(const T* g, const T* x, T* out, int64_t f, int64_t n, const Runs& r, const C* lo, const C* hi,
                        bool stream);
  void (*gradient_row)(const T* g, const T* x, T* out, int64_t n, const C* lo, const C* hi, bool stream);

  QDQ_INLINE const Rounding& rounding(RoundMode mode) const { return by_mode[static_cast<int>(mode)]; }
};

// The table of one instruction set's loops, the static members of `Loops` (those that
// round are templates over <RoundMode[, clamp]>): every round mode is instantiated here,
// so the tables name no mode.
template <typename T, typename Loops>
CpuLoops<T> make_loops(const char* isa) {
  CpuLoops<T> t{
      isa, {}, Loops::reduce_runs, Loops::reduce_rows, Loops::all_finite, Loops::gradient_runs, Loops::gradient_row};
  for_each_round_mode([&](auto mode) {
    constexpr RoundMode k = decltype(mode)::value;
    t.by_mode[static_cast<int>(k)] = {{Loops::template quantize_runs<k, false>, Loops::template quantize_runs<k, true>},
                                      {Loops::template quantize_row<k, false>, Loops::template quantize_row<k, true>},
                                      Loops::template quantize_measure_runs<k>};
  });
  return t;
}

// Portable loops (plain C++; also the tails of the vector loops).
template <typename T>
const CpuLoops<T>& baseline_loops();

// AVX2 + F16C loops, or nullptr when the build has none (non-x86 targets).
// The caller checks the CPU before using them.
template <typename T>
const CpuLoops<T>* avx2_loops();

}  // namespace qdq
