// CPU loops of the core. Every pass walks the flat buffer once; channels are
// found from the [outer, depth, inner] layout, so per-channel work on any axis
// uses the same loops as per-tensor work (no per-channel launches or copies).
#include "qdq_cpu.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace qdq {
namespace {

// Below this many elements a shard is not worth a thread.
constexpr int64_t kMinShardElements = int64_t{1} << 15;
// Channel counts up to this use per-shard partial ranges; above, shards own channels.
constexpr int64_t kMaxPartialDepth = 1024;
// Rough cycles per element, for the pool's cost model.
constexpr int64_t kCyclesPerElement = 6;

// A size-1 channel axis is per-tensor work; folding it keeps the loops long.
Layout canonical(Layout l) {
  if (l.depth == 1) return Layout{1, 1, l.size()};
  return l;
}

// Splits the flat range [b, e) into pieces: with inner > 1, run(c, f, len) for
// pieces inside one channel; with inner == 1, row(c0, f, len) for pieces whose
// element j belongs to channel c0 + j.
template <typename Run, typename Row>
void for_each_piece(const Layout& l, int64_t b, int64_t e, Run&& run, Row&& row) {
  int64_t f = b;
  if (l.inner == 1) {
    while (f < e) {
      const int64_t c = f % l.depth;
      const int64_t len = std::min(e - f, l.depth - c);
      row(c, f, len);
      f += len;
    }
    return;
  }
  while (f < e) {
    const int64_t block = f / l.inner;
    const int64_t len = std::min(e - f, (block + 1) * l.inner - f);
    run(block % l.depth, f, len);
    f += len;
  }
}

// NaN-ignoring min/max: a NaN fails both comparisons and changes nothing.
template <typename C>
inline void accumulate(C v, C& lo, C& hi) {
  lo = (v < lo) ? v : lo;
  hi = (v > hi) ? v : hi;
}

template <typename T, typename C = compute_t<T>>
void reduce_run(const T* x, int64_t n, C& lo, C& hi) {
  C l = lo, h = hi;
  for (int64_t i = 0; i < n; ++i) accumulate(Compute<T>::load(x[i]), l, h);
  lo = l;
  hi = h;
}

template <typename T, typename C = compute_t<T>>
void reduce_row(const T* x, int64_t n, C* lo, C* hi) {
  for (int64_t i = 0; i < n; ++i) accumulate(Compute<T>::load(x[i]), lo[i], hi[i]);
}

// Per-channel NaN-free min/max of x. A channel with no non-NaN element gets NaN
// bounds, which makes its range degenerate and keeps its NaNs.
template <typename T, typename C = compute_t<T>>
void measure_ranges(const ThreadPool& pool, const T* x, const Layout& l, C* lo, C* hi) {
  const C inf = std::numeric_limits<C>::infinity();
  std::fill(lo, lo + l.depth, inf);
  std::fill(hi, hi + l.depth, -inf);
  const int64_t n = l.size();
  if (l.depth <= kMaxPartialDepth) {
    const int64_t shards =
        std::max<int64_t>(1, std::min<int64_t>(n / kMinShardElements, 4 * int64_t{pool.num_threads()}));
    std::vector<C> part(static_cast<size_t>(2 * shards * l.depth));
    for (int64_t s = 0; s < shards; ++s) {
      std::fill_n(part.begin() + 2 * s * l.depth, l.depth, inf);
      std::fill_n(part.begin() + (2 * s + 1) * l.depth, l.depth, -inf);
    }
    pool.parallel_for(shards, (n / shards + 1) * kCyclesPerElement, [&](int64_t first, int64_t last) {
      for (int64_t s = first; s < last; ++s) {
        C* plo = part.data() + 2 * s * l.depth;
        C* phi = plo + l.depth;
        for_each_piece(
            l, n * s / shards, n * (s + 1) / shards,
            [&](int64_t c, int64_t f, int64_t len) { reduce_run(x + f, len, plo[c], phi[c]); },
            [&](int64_t c, int64_t f, int64_t len) { reduce_row(x + f, len, plo + c, phi + c); });
      }
    });
    for (int64_t s = 0; s < shards; ++s) {
      const C* plo = part.data() + 2 * s * l.depth;
      const C* phi = plo + l.depth;
      for (int64_t c = 0; c < l.depth; ++c) {
        // Merge bound with bound: an empty shard's +inf/-inf must not leak into the other side.
        lo[c] = (plo[c] < lo[c]) ? plo[c] : lo[c];
        hi[c] = (phi[c] > hi[c]) ? phi[c] : hi[c];
      }
    }
  } else {
    // Many channels: each shard owns a channel range across every row.
    pool.parallel_for(l.depth, l.outer * l.inner * kCyclesPerElement, [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < l.outer; ++o) {
        const T* row = x + (o * l.depth + c0) * l.inner;
        if (l.inner == 1) {
          reduce_row(row, c1 - c0, lo + c0, hi + c0);
        } else {
          for (int64_t c = c0; c < c1; ++c) reduce_run(row + (c - c0) * l.inner, l.inner, lo[c], hi[c]);
        }
      }
    });
  }
  const C nan = std::numeric_limits<C>::quiet_NaN();
  for (int64_t c = 0; c < l.depth; ++c) {
    if (lo[c] > hi[c]) lo[c] = hi[c] = nan;
  }
}

template <RoundMode kMode, bool kClamp, typename T, typename C = compute_t<T>>
void quantize_run(const T* x, T* y, int64_t n, SliceParams<C> p) {
  for (int64_t i = 0; i < n; ++i) y[i] = Compute<T>::store(quantize_value<kMode, kClamp>(Compute<T>::load(x[i]), p));
}

template <RoundMode kMode, bool kClamp, typename T, typename C = compute_t<T>>
void quantize_row(const T* x, T* y, int64_t n, const SliceParams<C>* p) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = Compute<T>::store(quantize_value<kMode, kClamp>(Compute<T>::load(x[i]), p[i]));
}

template <RoundMode kMode, bool kClamp, typename T, typename C = compute_t<T>>
void quantize_pass(const ThreadPool& pool, const T* x, T* y, const Layout& l, const SliceParams<C>* params) {
  pool.parallel_for(l.size(), kCyclesPerElement, [&](int64_t b, int64_t e) {
    for_each_piece(
        l, b, e, [&](int64_t c, int64_t f, int64_t len) { quantize_run<kMode, kClamp>(x + f, y + f, len, params[c]); },
        [&](int64_t c, int64_t f, int64_t len) { quantize_row<kMode, kClamp>(x + f, y + f, len, params + c); });
  });
}

}  // namespace

template <typename T>
void quantize_cpu(const ThreadPool& pool, const T* in, T* out, Layout layout, const T* given_lo,
                  const T* given_hi, const QuantizeAttrs& attrs) {
  using C = compute_t<T>;
  const Layout l = canonical(layout);
  if (l.size() == 0) return;
  std::vector<C> lo(static_cast<size_t>(l.depth)), hi(static_cast<size_t>(l.depth));
  if (attrs.range_given) {
    for (int64_t c = 0; c < l.depth; ++c) {
      lo[c] = Compute<T>::load(given_lo[c]);
      hi[c] = Compute<T>::load(given_hi[c]);
    }
  } else {
    measure_ranges(pool, in, l, lo.data(), hi.data());
  }
  std::vector<SliceParams<C>> params(static_cast<size_t>(l.depth));
  for (int64_t c = 0; c < l.depth; ++c) params[c] = compute_params(lo[c], hi[c], attrs.range);

  const bool half_up = attrs.round_mode == RoundMode::kHalfUp;
  if (attrs.range_given) {
    if (half_up)
      quantize_pass<RoundMode::kHalfUp, true>(pool, in, out, l, params.data());
    else
      quantize_pass<RoundMode::kHalfToEven, true>(pool, in, out, l, params.data());
  } else {
    if (half_up)
      quantize_pass<RoundMode::kHalfUp, false>(pool, in, out, l, params.data());
    else
      quantize_pass<RoundMode::kHalfToEven, false>(pool, in, out, l, params.data());
  }
}

template <typename T>
void masked_gradient_cpu(const ThreadPool& pool, const T* grad, const T* x, T* out, Layout layout, const T* lo,
                         const T* hi) {
  using C = compute_t<T>;
  const Layout l = canonical(layout);
  if (l.size() == 0) return;
  std::vector<C> clo(static_cast<size_t>(l.depth)), chi(static_cast<size_t>(l.depth));
  for (int64_t c = 0; c < l.depth; ++c) {
    clo[c] = Compute<T>::load(lo[c]);
    chi[c] = Compute<T>::load(hi[c]);
  }
  auto element = [](T g, T v, C a, C b) {
    return Compute<T>::store(masked_gradient(Compute<T>::load(g), Compute<T>::load(v), a, b));
  };
  pool.parallel_for(l.size(), kCyclesPerElement, [&](int64_t b, int64_t e) {
    for_each_piece(
        l, b, e,
        [&](int64_t c, int64_t f, int64_t len) {
          const C a = clo[c], z = chi[c];
          for (int64_t i = f; i < f + len; ++i) out[i] = element(grad[i], x[i], a, z);
        },
        [&](int64_t c, int64_t f, int64_t len) {
          for (int64_t i = 0; i < len; ++i) out[f + i] = element(grad[f + i], x[f + i], clo[c + i], chi[c + i]);
        });
  });
}

#define QDQ_INSTANTIATE(T)                                                                                   \
  template void quantize_cpu<T>(const ThreadPool&, const T*, T*, Layout, const T*, const T*,               \
                                const QuantizeAttrs&);                                                      \
  template void masked_gradient_cpu<T>(const ThreadPool&, const T*, const T*, T*, Layout, const T*, const T*);
QDQ_INSTANTIATE(float)
QDQ_INSTANTIATE(double)
QDQ_INSTANTIATE(half_t)
QDQ_INSTANTIATE(bf16_t)
#undef QDQ_INSTANTIATE

}  // namespace qdq
