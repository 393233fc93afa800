// AVX2 + F16C inner loops (this file alone is compiled with -mavx2 -mf16c;
// qdq_cpu.cc calls it only after checking the CPU). Whole vectors here, tails
// and degenerate slices through the baseline loops, so every result is the
// baseline's bit for bit.
//
// Everything is in an anonymous namespace: an inline function compiled here
// with AVX2 must never be merged with another unit's copy (the linker could
// otherwise hand AVX2 code to the baseline path).
#include "qdq_simd_loops.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>

namespace qdq {
namespace {

#include "qdq_avx2_lanes.h"

// Calls body(i) -> vector for each whole vector of y[0, n) and stores it;
// tail(i, count) handles what is left. Streaming starts after a head that
// brings y to the vector alignment; the driver fences once per parallel piece.
template <typename T, typename Body, typename Tail>
void for_each_vector(T* y, int64_t n, bool stream, Body&& body, Tail&& tail) {
  using L = Lanes<T>;
  constexpr int64_t kLanes = L::kLanes;
  constexpr uintptr_t kAlign = kLanes * sizeof(T);
  const uintptr_t address = reinterpret_cast<uintptr_t>(y);
  int64_t i = 0;
  if (stream && address % sizeof(T) == 0) {
    int64_t head = static_cast<int64_t>(((kAlign - address % kAlign) % kAlign) / sizeof(T));
    head = head < n ? head : n;
    if (head > 0) tail(0, head);
    for (i = head; i + kLanes <= n; i += kLanes) L::stream(y + i, body(i));
  } else {
    for (; i + kLanes <= n; i += kLanes) L::store(y + i, body(i));
  }
  if (i < n) tail(i, n - i);
}

template <typename T>
struct Avx2 {
  using L = Lanes<T>;
  using V = typename L::V;
  using C = typename L::C;
  static const CpuLoops<T>& base() { return baseline_loops<T>(); }

  // The element math of qdq_math.h over the vector lanes (the portable loops and CUDA run
  // the same templates over ScalarLanes).
  template <bool kClamp>
  static V clamp(V x, V lo, V hi) {
    return kClamp ? clamp_lanes<L>(x, lo, hi) : x;
  }

  template <RoundMode kMode>
  static V quantize(V v, V scale, V inv) {
    return quantize_lanes<kMode, L>(v, scale, inv);
  }

  template <RoundMode kMode, bool kClamp>
  static void quantize_runs(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params,
                            bool stream) {
    const auto tail = base().rounding(kMode).quantize_runs[kClamp];
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      const SliceParams<C>& p = params[c];
      if (p.degenerate) return tail(x, y, b, len, r, params, false);
      const V lo = L::set1(p.lo), hi = L::set1(p.hi), scale = L::set1(p.scale), inv = L::set1(p.inv_scale);
      for_each_vector(
          y + b, len, stream,
          [&](int64_t i) { return quantize<kMode>(clamp<kClamp>(L::load(x + b + i), lo, hi), scale, inv); },
          [&](int64_t i, int64_t m) { tail(x, y, b + i, m, r, params, false); });
    });
  }

  // A delayed tracked step: quantize_runs (with clamp) and reduce_runs from the same loads,
  // plus a NaN flag. Head and tail elements go through the baseline, which folds them into
  // lo[c]/hi[c] directly; a bound that ends at zero is re-read in order (see order_zero_signs).
  template <RoundMode kMode>
  static void quantize_measure_runs(const T* x, T* y, int64_t f, int64_t n, const Runs& r, const SliceParams<C>* params,
                                    bool stream, C* lo, C* hi, char* nan) {
    const auto tail = base().rounding(kMode).quantize_measure_runs;
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      const SliceParams<C>& p = params[c];
      if (p.degenerate) return tail(x, y, b, len, r, params, false, lo, hi, nan);
      const C lo_before = lo[c], hi_before = hi[c];
      const V vlo = L::set1(p.lo), vhi = L::set1(p.hi), scale = L::set1(p.scale), inv = L::set1(p.inv_scale);
      V l = L::set1(lo_before), h = L::set1(hi_before), seen = L::set1(C(0));
      for_each_vector(
          y + b, len, stream,
          [&](int64_t i) {
            const V u = L::load(x + b + i);
            l = L::min(u, l);
            h = L::max(u, h);
            seen = L::bit_or(seen, L::is_nan(u));
            return quantize<kMode>(clamp<true>(u, vlo, vhi), scale, inv);
          },
          [&](int64_t i, int64_t m) { tail(x, y, b + i, m, r, params, false, lo, hi, nan); });
      C fl = L::fold_min(l), fh = L::fold_max(h);
      fl = (lo[c] < fl) ? lo[c] : fl;
      fh = (hi[c] > fh) ? hi[c] : fh;
      lo[c] = (fl == C(0) && lo_before != C(0)) ? first_zero_scalar(x + b, len) : fl;
      hi[c] = (fh == C(0) && hi_before != C(0)) ? first_zero_scalar(x + b, len) : fh;
      if (L::zero_mask(seen) != (1 << L::kLanes) - 1) nan[c] = 1;
    });
  }

  // First zero of p[0, n) in order; the caller knows there is one.
  static C first_zero_scalar(const T* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const C v = Compute<T>::load(p[i]);
      if (v == C(0)) return v;
    }
    return C(0);
  }

  // Rows with a degenerate slice (rare: all-zero data and the like) take the baseline loop,
  // which owns the degenerate-range rule.
  template <RoundMode kMode, bool kClamp>
  static void quantize_row(const T* x, T* y, int64_t n, const RowParams<C>& p, bool stream) {
    const auto tail = base().rounding(kMode).quantize_row[kClamp];
    if (p.degenerate != nullptr) return tail(x, y, n, p, stream);
    for_each_vector(
        y, n, stream,
        [&](int64_t i) {
          const V v = clamp<kClamp>(L::load(x + i), L::loadc(p.lo + i), L::loadc(p.hi + i));
          return quantize<kMode>(v, L::loadc(p.scale + i), L::loadc(p.inv_scale + i));
        },
        [&](int64_t i, int64_t m) {
          const RowParams<C> r{p.lo + i, p.hi + i, p.scale + i, p.inv_scale + i, nullptr};
          tail(x + i, y + i, m, r, false);
        });
  }

  // Zero signs: the baseline scans in order and keeps the first of equal bounds,
  // so a zero bound has the sign of the first zero it met (the sign can reach the
  // output through inv_scale in degenerate ranges). Vector lanes meet zeros out
  // of order, so when a bound becomes zero here it is re-read in order (rare:
  // only slices whose min or max is exactly zero).
  static C lane(V v, int k) {
    C lanes[L::kLanes];
    L::storec(lanes, v);
    return lanes[k];
  }

  // First zero among rows[r][k], r = 0, 1, ...; the caller knows there is one.
  static C first_zero(const T* x, int64_t rows, int64_t stride, int k) {
    for (int64_t r = 0; r < rows; ++r) {
      const V a = L::load(x + r * stride);
      if (L::zero_mask(a) >> k & 1) return lane(a, k);
    }
    return C(0);
  }

  // A bound the vector loop made zero (and that was not zero before) gets the sign
  // of the first zero in order; `rows` vectors at x + r * stride fed it.
  static V order_zero_signs(V bound, V before, const T* x, int64_t rows, int64_t stride) {
    const int fix = L::zero_mask(bound) & ~L::zero_mask(before);
    if (fix == 0) return bound;
    C lanes[L::kLanes];
    L::storec(lanes, bound);
    for (int k = 0; k < L::kLanes; ++k) {
      if (fix >> k & 1) lanes[k] = first_zero(x, rows, stride, k);
    }
    return L::loadc(lanes);
  }

  // Accumulators never hold NaN: min(x, acc) keeps acc when x is NaN.
  static void reduce_runs(const T* x, int64_t f, int64_t n, const Runs& r, C* lo, C* hi) {
    constexpr int64_t kLanes = L::kLanes;
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      V l0 = L::set1(lo[c]), l1 = l0, h0 = L::set1(hi[c]), h1 = h0;
      const T* p = x + b;
      int64_t i = 0;
      for (; i + 2 * kLanes <= len; i += 2 * kLanes) {
        const V u = L::load(p + i), v = L::load(p + i + kLanes);
        l0 = L::min(u, l0);
        h0 = L::max(u, h0);
        l1 = L::min(v, l1);
        h1 = L::max(v, h1);
      }
      for (; i + kLanes <= len; i += kLanes) {
        const V u = L::load(p + i);
        l0 = L::min(u, l0);
        h0 = L::max(u, h0);
      }
      const C l = L::fold_min(L::min(l1, l0)), h = L::fold_max(L::max(h1, h0));
      // Zero signs in order (see order_zero_signs): the whole vectors form one row.
      lo[c] = (l == C(0) && lo[c] != C(0)) ? first_zero_in(p, i) : l;
      hi[c] = (h == C(0) && hi[c] != C(0)) ? first_zero_in(p, i) : h;
      if (i < len) base().reduce_runs(x, b + i, len - i, r, lo, hi);
    });
  }

  // First zero of p[0, n), n a multiple of the vector width; the caller knows there is one.
  static C first_zero_in(const T* p, int64_t n) {
    for (int64_t i = 0; i < n; i += L::kLanes) {
      const V a = L::load(p + i);
      const int mask = L::zero_mask(a);
      if (mask != 0) return lane(a, __builtin_ctz(static_cast<unsigned>(mask)));
    }
    return C(0);
  }

  // Column blocks of 4 vectors stay in registers while the rows stream past.
  static void reduce_rows(const T* x, int64_t rows, int64_t stride, int64_t n, C* lo, C* hi) {
    constexpr int64_t kLanes = L::kLanes;
    constexpr int kBlock = 4;
    int64_t i = 0;
    for (; i + kBlock * kLanes <= n; i += kBlock * kLanes) {
      V l[kBlock], h[kBlock];
      for (int k = 0; k < kBlock; ++k) {
        l[k] = L::loadc(lo + i + k * kLanes);
        h[k] = L::loadc(hi + i + k * kLanes);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T* p = x + r * stride + i;
        for (int k = 0; k < kBlock; ++k) {
          const V a = L::load(p + k * kLanes);
          l[k] = L::min(a, l[k]);
          h[k] = L::max(a, h[k]);
        }
      }
      for (int k = 0; k < kBlock; ++k) {
        const int64_t at = i + k * kLanes;
        L::storec(lo + at, order_zero_signs(l[k], L::loadc(lo + at), x + at, rows, stride));
        L::storec(hi + at, order_zero_signs(h[k], L::loadc(hi + at), x + at, rows, stride));
      }
    }
    for (; i + kLanes <= n; i += kLanes) {
      V l = L::loadc(lo + i), h = L::loadc(hi + i);
      for (int64_t r = 0; r < rows; ++r) {
        const V a = L::load(x + r * stride + i);
        l = L::min(a, l);
        h = L::max(a, h);
      }
      L::storec(lo + i, order_zero_signs(l, L::loadc(lo + i), x + i, rows, stride));
      L::storec(hi + i, order_zero_signs(h, L::loadc(hi + i), x + i, rows, stride));
    }
    if (i < n) base().reduce_rows(x + i, rows, stride, n - i, lo + i, hi + i);
  }

  // As the baseline: x * 0 is NaN exactly for NaN and infinite x, and sums keep a NaN.
  static bool all_finite(const T* x, int64_t n) {
    constexpr int64_t kLanes = L::kLanes;
    const V zero = L::set1(C(0));
    V a0 = zero, a1 = zero;
    int64_t i = 0;
    for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
      a0 = L::add(a0, L::mul(L::load(x + i), zero));
      a1 = L::add(a1, L::mul(L::load(x + i + kLanes), zero));
    }
    for (; i + kLanes <= n; i += kLanes) a0 = L::add(a0, L::mul(L::load(x + i), zero));
    const bool vectors_finite = L::zero_mask(L::add(a0, a1)) == (1 << kLanes) - 1;
    return vectors_finite && (i == n || base().all_finite(x + i, n - i));
  }

  static V masked(V g, V x, V lo, V hi) { return masked_lanes<L>(g, x, lo, hi); }

  static void gradient_runs(const T* g, const T* x, T* out, int64_t f, int64_t n, const Runs& r, const C* lo,
                            const C* hi, bool stream) {
    for_each_run(f, n, r, [&](int64_t c, int64_t b, int64_t len) {
      const V vlo = L::set1(lo[c]), vhi = L::set1(hi[c]);
      for_each_vector(
          out + b, len, stream, [&](int64_t i) { return masked(L::load(g + b + i), L::load(x + b + i), vlo, vhi); },
          [&](int64_t i, int64_t m) { base().gradient_runs(g, x, out, b + i, m, r, lo, hi, false); });
    });
  }

  static void gradient_row(const T* g, const T* x, T* out, int64_t n, const C* lo, const C* hi, bool stream) {
    for_each_vector(
        out, n, stream,
        [&](int64_t i) { return masked(L::load(g + i), L::load(x + i), L::loadc(lo + i), L::loadc(hi + i)); },
        [&](int64_t i, int64_t m) { base().gradient_row(g + i, x + i, out + i, m, lo + i, hi + i, false); });
  }
};

}  // namespace

template <typename T>
const CpuLoops<T>* avx2_loops() {
  static const CpuLoops<T> table = make_loops<T, Avx2<T>>("avx2");
  return &table;
}

}  // namespace qdq

#else  // no AVX2 in this build (another architecture): the baseline loops serve alone

namespace qdq {
template <typename T>
const CpuLoops<T>* avx2_loops() {
  return nullptr;
}
}  // namespace qdq

#endif

namespace qdq {
#define QDQ_INSTANTIATE(T) template const CpuLoops<T>* avx2_loops<T>();
QDQ_FOR_EACH_TYPE(QDQ_INSTANTIATE)
#undef QDQ_INSTANTIATE
}  // namespace qdq
