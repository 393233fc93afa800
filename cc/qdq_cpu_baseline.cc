// Portable inner loops: plain C++ over the shared element operations of
// qdq_math.h, written so the compiler can vectorise them for the build's base
// ISA. They define the results every faster table must reproduce bit for bit,
// and they finish the tails of the vector loops.
#include "qdq_simd_loops.h"

namespace qdq {
namespace {

// NaN fails both comparisons and changes nothing.
template <typename C>
void accumulate(C v, C& lo, C& hi) {
  lo = (v < lo) ? v : lo;
  hi = (v > hi) ? v : hi;
}

template <typename T>
struct Baseline {
  using C = compute_t<T>;
  static C load(T v) { return Compute<T>::load(v); }
  static T store(C v) { return Compute<T>::store(v); }

  template <RoundMode kMode, bool kClamp>
  static void quantize_run(const T* x, T* y, int64_t n, const SliceParams<C>& p) {
    if (p.degenerate) {
      for (int64_t i = 0; i < n; ++i) y[i] = store(quantize_value<kMode, kClamp>(load(x[i]), p));
      return;
    }
    // A constant `false` the compiler can see: the loop body has no branch.
    const SliceParams<C> q{p.lo, p.hi, p.scale, p.inv_scale, false};
    for (int64_t i = 0; i < n; ++i) y[i] = store(quantize_value<kMode, kClamp>(load(x[i]), q));
  }

  template <RoundMode kMode, bool kClamp>
  static void quantize_runs(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params, bool) {
    for_each_run(f, n, r,
                 [&](int64_t c, int64_t b, int64_t len) { quantize_run<kMode, kClamp>(x + b, y + b, len, params[c]); });
  }

  template <RoundMode kMode, bool kClamp>
  static void quantize_row(const T* x, T* y, int64_t n, const RowParams<C>& p, bool) {
    for (int64_t i = 0; i < n; ++i) {
      const bool degenerate = p.degenerate != nullptr && p.degenerate[i] != 0;
      const SliceParams<C> r{p.lo[i], p.hi[i], p.scale[i], p.inv_scale[i], degenerate};
      y[i] = store(quantize_value<kMode, kClamp>(load(x[i]), r));
    }
  }

  static void reduce_runs(const T* x, int64_t f, int64_t n, const Runs& r, C* lo, C* hi) {
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      C l = lo[c], h = hi[c];
      for (int64_t i = b; i < b + len; ++i) accumulate(load(x[i]), l, h);
      lo[c] = l;
      hi[c] = h;
    });
  }

  static void reduce_rows(const T* x, int64_t rows, int64_t stride, int64_t n, C* lo, C* hi) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = x + r * stride;
      for (int64_t i = 0; i < n; ++i) accumulate(load(row[i]), lo[i], hi[i]);
    }
  }

  // x * 0 is NaN exactly for NaN and infinite x, and a NaN stays in a sum: four sums so
  // the additions are not one dependency chain.
  static bool all_finite(const T* x, int64_t n) {
    C a[4] = {C(0), C(0), C(0), C(0)};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int k = 0; k < 4; ++k) a[k] += load(x[i + k]) * C(0);
    }
    for (; i < n; ++i) a[0] += load(x[i]) * C(0);
    return (a[0] + a[1]) + (a[2] + a[3]) == C(0);
  }

  template <RoundMode kMode>
  static void quantize_measure_runs(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params,
                                    bool, C* lo, C* hi, char* nan) {
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      const SliceParams<C>& p = params[c];
      C l = lo[c], h = hi[c];
      bool seen = false;
      for (int64_t i = b; i < b + len; ++i) {
        const C v = load(x[i]);
        y[i] = store(quantize_value<kMode, true>(v, p));
        accumulate(v, l, h);
        seen = seen || is_nan(v);
      }
      lo[c] = l;
      hi[c] = h;
      if (seen) nan[c] = 1;
    });
  }

  static void gradient_runs(const T* g, const T* x, T* out, int64_t f, int64_t n, const Runs& r, const C* lo,
                            const C* hi, bool) {
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      const C l = lo[c], h = hi[c];
      for (int64_t i = b; i < b + len; ++i) out[i] = store(masked_gradient(load(g[i]), load(x[i]), l, h));
    });
  }

  static void gradient_row(const T* g, const T* x, T* out, int64_t n, const C* lo, const C* hi, bool) {
    for (int64_t i = 0; i < n; ++i) out[i] = store(masked_gradient(load(g[i]), load(x[i]), lo[i], hi[i]));
  }
};

}  // namespace

template <typename T>
const CpuLoops<T>& baseline_loops() {
  static const CpuLoops<T> table = make_loops<T, Baseline<T>>("baseline");
  return table;
}

#define QDQ_INSTANTIATE(T) template const CpuLoops<T>& baseline_loops<T>();
QDQ_FOR_EACH_TYPE(QDQ_INSTANTIATE)
#undef QDQ_INSTANTIATE

}  // namespace qdq
