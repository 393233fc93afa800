// The CUDA kernels and their launchers, written against the small port layer
// (qdq_cuda_port.cuh on a GPU, tests/cuda_emu/cuda_emu.h on a host) so the same
// text is compiled by nvcc and tested on a CPU. No kernel uses shared memory or
// block barriers: cross-thread work goes through warp-level merges and global
// atomics only, which the host port can run one thread after another.
//
// One call is at most four stream operations, whatever the channel count:
//   auto:  clear accumulators -> reduce min/max -> compute scales -> element pass
//   given: (per-channel only) copy host-computed scales -> element pass
// The scalar math is the CPU path's (qdq_math.h), so results are bit-identical.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "qdq_cuda.h"
#include "qdq_float16.h"
#include "qdq_math.h"
#include "qdq_types.h"

namespace qdq {
namespace cuda_impl {

constexpr int kBlock = 256;             // threads per block, every kernel
constexpr int kInvalidValue = 1;        // cudaErrorInvalidValue: an argument outside its domain
constexpr int kUnroll = 4;              // vectors per thread per tile (reduction)
constexpr int64_t kRunMin = 2048;       // inner extent from which rows are reduced as runs
constexpr int64_t kMinColumnRows = 16;  // rows each thread reduces (at least) on the column path
// Tensors below this many elements find channels with 32-bit FastDiv; the emulation
// tests lower it to 0 to run the 64-bit path on small tensors.
#ifndef QDQ_CUDA_FAST_INDEX_LIMIT
#define QDQ_CUDA_FAST_INDEX_LIMIT (int64_t{1} << 32)
#endif

// 16-byte packs: 4 floats, 2 doubles, 8 halves or bfloat16s.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// ---- Order-preserving keys: min/max of floats as unsigned integer atomics. ----
// key(x) orders like x for non-NaN values; the max accumulator stores ~key so
// both bounds use atomicMin and start from all-ones (kNone = nothing seen).
template <typename C>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = uint32_t;
  static constexpr uint32_t kNone = 0xffffffffu;
  static QDQ_DEV uint32_t encode(float v) {
    const uint32_t u = port::as_bits(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  static QDQ_DEV float decode(uint32_t k) { return port::float_from((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }
};
template <>
struct KeyOf<double> {
  using type = uint64_t;
  static constexpr uint64_t kNone = ~uint64_t{0};
  static constexpr uint64_t kSign = uint64_t{1} << 63;
  static QDQ_DEV uint64_t encode(double v) {
    const uint64_t u = port::as_bits(v);
    return (u & kSign) ? ~u : (u | kSign);
  }
  static QDQ_DEV double decode(uint64_t k) { return port::double_from((k & kSign) ? (k & ~kSign) : ~k); }
};

// Running NaN-free min/max of one thread, in the compute type (as the CPU loop).
template <typename C>
struct Range {
  C lo, hi;
  QDQ_DEV void reset() {
    lo = C(INFINITY);
    hi = -lo;
  }
  QDQ_DEV void add(C v) {
    lo = (v < lo) ? v : lo;
    hi = (v > hi) ? v : hi;
  }
};

template <typename C, typename Key = typename KeyOf<C>::type>
QDQ_DEV void flush(const Range<C>& r, int64_t c, Key* lo_acc, Key* hi_acc) {
  const bool seen = r.lo <= r.hi;
  const Key none = KeyOf<C>::kNone;
  port::merge_keys(lo_acc, hi_acc, c, seen ? KeyOf<C>::encode(r.lo) : none,
                   seen ? static_cast<Key>(~KeyOf<C>::encode(r.hi)) : none, none);
}

// Elements before the first 16-byte boundary at or after p (at most n).
template <typename T>
QDQ_HD int64_t head_of(const T* p, int64_t n) {
  const int64_t h = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(p) & 15u)) & 15u) / int64_t{sizeof(T)};
  return h < n ? h : n;
}

// ---- Reduction, path 1: long rows. Rows of `inner` elements (row r is channel
// r % depth) are cut into tiles of kBlock*kUnroll packs; each block takes a
// contiguous range of tiles and flushes its running range only when the
// channel changes (once, per-tensor), so atomics stay few. ----
struct RunGeom {
  int64_t rows, inner, depth, tiles_per_row, tiles;
};

template <typename T, typename C = compute_t<T>, typename Key = typename KeyOf<C>::type>
QDQ_KERNEL void reduce_runs_kernel(const T* x, RunGeom g, Key* lo_acc, Key* hi_acc) {
  constexpr int V = Pack<T>::kSize;
  const int64_t t = threadIdx.x;
  const int64_t first = g.tiles * blockIdx.x / gridDim.x;
  const int64_t last = g.tiles * (blockIdx.x + 1) / gridDim.x;
  Range<C> r;
  r.reset();
  int64_t c_cur = -1;
  // (row, k) = divmod(tile, tiles_per_row), advanced without dividing again.
  int64_t row = first / g.tiles_per_row;
  int64_t k = first - row * g.tiles_per_row - 1;
  int64_t c = row % g.depth;
  for (int64_t tile = first; tile < last; ++tile) {
    if (++k == g.tiles_per_row) {
      k = 0;
      ++row;
      if (++c == g.depth) c = 0;
    }
    if (c != c_cur) {  // block-uniform
      flush(r, c_cur, lo_acc, hi_acc);
      r.reset();
      c_cur = c;
    }
    const T* base = x + row * g.inner;
    const int64_t head = head_of(base, g.inner);
    const int64_t nv = (g.inner - head) / V;
    const int64_t tail = head + nv * V;
    if (k == 0) {
      if (t < head) r.add(Compute<T>::load(base[t]));
      if (t < g.inner - tail) r.add(Compute<T>::load(base[tail + t]));
    }
    const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(base + head);
    const int64_t v_end = nv < (k + 1) * kBlock * kUnroll ? nv : (k + 1) * kBlock * kUnroll;
    QDQ_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = k * kBlock * kUnroll + u * kBlock + t;
      if (v < v_end) {
        const Pack<T> p = packs[v];
        QDQ_UNROLL
        for (int j = 0; j < V; ++j) r.add(Compute<T>::load(p.v[j]));
      }
    }
  }
  flush(r, c_cur, lo_acc, hi_acc);
}

// ---- Reduction, path 2: short rows. The tensor is a matrix [outer, W] with
// W = depth * inner and column j in channel j / inner. Each thread owns one
// column and walks rows (packing several rows per block when W < kBlock), so
// loads are coalesced along W and each thread flushes once. ----
struct ColGeom {
  int64_t rows, width, inner;
  int64_t rows_per_step;   // rows a block covers per step (kBlock / width, or 1)
  int64_t col_tiles;       // blocks across the width
  int64_t rows_per_chunk;  // multiple of rows_per_step
};

template <typename T, typename C = compute_t<T>, typename Key = typename KeyOf<C>::type>
QDQ_KERNEL void reduce_columns_kernel(const T* x, ColGeom g, Key* lo_acc, Key* hi_acc) {
  const int64_t t = threadIdx.x;
  const int64_t col_tile = blockIdx.x % g.col_tiles;
  const int64_t chunk = blockIdx.x / g.col_tiles;
  int64_t col, r0;
  bool active;
  if (g.rows_per_step > 1) {
    col = t % g.width;
    r0 = t / g.width;
    active = r0 < g.rows_per_step;
  } else {
    col = col_tile * kBlock + t;
    r0 = 0;
    active = col < g.width;
  }
  Range<C> r;
  r.reset();
  if (active) {
    const int64_t begin = chunk * g.rows_per_chunk;
    const int64_t end = g.rows < begin + g.rows_per_chunk ? g.rows : begin + g.rows_per_chunk;
    const T* p = x + col;
    QDQ_UNROLL_4
    for (int64_t row = begin + r0; row < end; row += g.rows_per_step) r.add(Compute<T>::load(p[row * g.width]));
  }
  flush(r, active ? col / g.inner : int64_t{-1}, lo_acc, hi_acc);
}

// SliceParams as 16-byte vectors (one for float, two for double), so a per-channel
// element reads its channel's parameters with one load even when every lane of a
// warp is in a different channel (last axis). A degenerate slice stores a NaN scale:
// its scale is never used, and no usable range yields a NaN scale.
template <typename C>
struct alignas(16) Scales {
  C lo, hi, scale, inv_scale;
  static QDQ_HD Scales pack(const SliceParams<C>& p) {
    return Scales{p.lo, p.hi, p.degenerate ? C(NAN) : p.scale, p.inv_scale};
  }
  QDQ_HD SliceParams<C> unpack() const {
    SliceParams<C> p;
    p.lo = lo;
    p.hi = hi;
    p.scale = scale;
    p.inv_scale = inv_scale;
    p.degenerate = is_nan(scale);
    return p;
  }
};

// Channel c's measured NaN-free min/max; NaN bounds where it had no non-NaN element, as on the CPU.
template <typename C, typename Key = typename KeyOf<C>::type>
QDQ_DEV void measured_bounds(const Key* lo_acc, const Key* hi_acc, int64_t c, C* lo, C* hi) {
  if (lo_acc[c] == KeyOf<C>::kNone) {
    *lo = *hi = C(NAN);
  } else {
    *lo = KeyOf<C>::decode(lo_acc[c]);
    *hi = KeyOf<C>::decode(static_cast<Key>(~hi_acc[c]));
  }
}

// ---- Scales: one thread per channel turns the measured keys into parameters. ----
template <typename C, typename Key = typename KeyOf<C>::type>
QDQ_KERNEL void params_kernel(const Key* lo_acc, const Key* hi_acc, int64_t depth, IntRange range, Scales<C>* params) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= depth) return;
  C lo, hi;
  measured_bounds(lo_acc, hi_acc, c, &lo, &hi);
  params[c] = Scales<C>::pack(compute_params(lo, hi, range));
}

// ---- Tracked quantizer: which channels hold a NaN (the reductions ignore NaNs): each
// thread ORs its flag into its channel's word when its channel changes. ----
template <typename T>
QDQ_KERNEL void nan_flags_kernel(const T* x, int64_t n, int64_t inner, int64_t depth, uint32_t* flags) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t held = -1;
  bool nan = false;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t c = depth == 1 ? 0 : (i / inner) % depth;
    if (c != held) {
      if (nan) port::atomic_or(flags + held, 1u);
      held = c;
      nan = false;
    }
    nan = nan || is_nan(Compute<T>::load(x[i]));
  }
  if (nan) port::atomic_or(flags + held, 1u);
}

// One thread per channel: the tracked-range update (qdq_math.h), and the range to quantize
// with (the new one, or the old one when delayed), cast to T as the layer casts it, as the
// element pass's parameters.
template <typename T, typename C = compute_t<T>, typename Key = typename KeyOf<C>::type>
QDQ_KERNEL void tracked_params_kernel(const Key* lo_acc, const Key* hi_acc, const uint32_t* nan, int64_t depth,
                                      const float* old_lo, const float* old_hi, const int64_t* old_updates,
                                      TrackedAttrs tracked, IntRange range, TrackedOutputs out_range,
                                      Scales<C>* params) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= depth) return;
  C lo, hi;
  measured_bounds(lo_acc, hi_acc, c, &lo, &hi);
  const TrackedRange used = tracked_step(TrackedRange{old_lo[c], old_hi[c], old_updates[c]}, static_cast<float>(lo),
                                         static_cast<float>(hi), nan[c] == 0, tracked, out_range, c);
  const C given_lo = Compute<T>::load(Compute<T>::store(static_cast<C>(used.lo)));
  const C given_hi = Compute<T>::load(Compute<T>::store(static_cast<C>(used.hi)));
  params[c] = Scales<C>::pack(compute_params(given_lo, given_hi, range));
}

// ---- Element pass: a grid-stride loop over "units" = head scalars, 16-byte
// packs, tail scalars (all scalars when the buffers' alignments differ). ----
// Division by a fixed 32-bit divisor as a multiply and a shift (Granlund-Montgomery):
// exact for every 32-bit dividend. The per-channel element pass uses it to find an
// element's channel when the tensor has fewer than 2^32 elements; 64-bit division
// would make that pass compute-bound.
struct FastDiv {
  uint32_t d, mul, shift;
  static FastDiv make(uint32_t d) {
    uint32_t l = 0;
    while (l < 32 && (uint64_t{1} << l) < d) ++l;
    const uint64_t m = ((uint64_t{1} << 32) * ((uint64_t{1} << l) - d)) / d + 1;
    return FastDiv{d, static_cast<uint32_t>(m), l};
  }
  QDQ_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, mul);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t{n} * mul) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t{hi} + n) >> shift);
  }
};

struct ElemGeom {
  int64_t n, inner, depth;
  int64_t head;  // scalar elements before the first pack
  int64_t packs;
  int64_t units;  // head + packs + tail
  bool small;     // n < 2^32: channels via FastDiv
  FastDiv by_inner, by_depth;
};

// Channel of flat element i, and i's position inside its run of `inner` elements.
QDQ_HD void locate(const ElemGeom& g, int64_t i, int64_t* c, int64_t* rem) {
  if (g.small) {
    const uint32_t q = g.by_inner.div(static_cast<uint32_t>(i));
    *rem = i - int64_t{q} * g.inner;
    *c = q - int64_t{g.by_depth.div(q)} * g.depth;
  } else {
    const int64_t q = i / g.inner;
    *rem = i - q * g.inner;
    *c = q % g.depth;
  }
}

template <typename T, RoundMode kMode, bool kClamp>
struct QuantizeOp {
  using C = compute_t<T>;
  using Param = Scales<C>;
  static constexpr bool kTwoInputs = false;
  static QDQ_DEV T apply(T x, T, const Param& p) {
    return Compute<T>::store(quantize_value<kMode, kClamp>(Compute<T>::load(x), p.unpack()));
  }
};

template <typename C>
struct alignas(2 * sizeof(C)) Bounds {
  C lo, hi;
};

template <typename T>
struct GradientOp {
  using C = compute_t<T>;
  using Param = Bounds<C>;
  static constexpr bool kTwoInputs = true;
  static QDQ_DEV T apply(T g, T x, const Param& p) {
    return Compute<T>::store(masked_gradient(Compute<T>::load(g), Compute<T>::load(x), p.lo, p.hi));
  }
};

// Per-tensor: `one` (by value) or per[0] when per is set. Per-channel: per[c].
template <typename Op, bool kPerChannel, typename T>
QDQ_KERNEL void element_kernel(const T* a, const T* b, T* out, ElemGeom g, typename Op::Param one,
                               const typename Op::Param* per) {
  using Param = typename Op::Param;
  constexpr int V = Pack<T>::kSize;
  const Param fixed = (!kPerChannel && per != nullptr) ? per[0] : one;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t u = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; u < g.units; u += stride) {
    const bool is_pack = u >= g.head && u < g.head + g.packs;
    const int64_t i = u < g.head ? u : (is_pack ? g.head + (u - g.head) * V : u + (g.packs * (V - 1)));
    int64_t c = 0, rem = 0;
    if (kPerChannel) locate(g, i, &c, &rem);
    Param p = kPerChannel ? per[c] : fixed;
    if (!is_pack) {
      out[i] = Op::apply(a[i], Op::kTwoInputs ? b[i] : a[i], p);
      continue;
    }
    const Pack<T> pa = *reinterpret_cast<const Pack<T>*>(a + i);
    Pack<T> pb;
    if (Op::kTwoInputs) pb = *reinterpret_cast<const Pack<T>*>(b + i);
    Pack<T> po;
    QDQ_UNROLL
    for (int j = 0; j < V; ++j) {
      po.v[j] = Op::apply(pa.v[j], Op::kTwoInputs ? pb.v[j] : pa.v[j], p);
      if (kPerChannel && ++rem == g.inner && j + 1 < V) {  // next element starts a new channel
        rem = 0;
        if (++c == g.depth) c = 0;
        p = per[c];
      }
    }
    *reinterpret_cast<Pack<T>*>(out + i) = po;
  }
}

// ---- Learned-range (LSQ) gradient: a grid-stride element pass that writes the masked
// input gradient and sums grad * d(output)/d(step) per thread, adding the sum to its
// channel's double accumulator when the channel changes (per tensor: once per thread;
// per channel, at worst once per element). The accumulation order is the hardware's,
// so the step gradient is not bit-reproducible run to run (the input gradient is). ----
template <typename C>
struct LsqSlice {
  SliceParams<C> p;
  C lo, hi;
};

template <typename T, RoundMode kMode>
QDQ_KERNEL void lsq_kernel(const T* grad, const T* x, T* input_out, int64_t n, int64_t inner, int64_t depth,
                           const LsqSlice<compute_t<T>>* slices, IntRange r, double* acc) {
  using C = compute_t<T>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t held = -1;
  double sum = 0.0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t c = depth == 1 ? 0 : (i / inner) % depth;
    if (c != held) {
      if (held >= 0) port::atomic_add(acc + held, sum);
      held = c;
      sum = 0.0;
    }
    const LsqSlice<C>& s = slices[c];
    const C g = Compute<T>::load(grad[i]);
    const C v = Compute<T>::load(x[i]);
    input_out[i] = Compute<T>::store(masked_gradient(g, v, s.lo, s.hi));
    sum += static_cast<double>(g) * static_cast<double>(lsq_step_derivative<kMode>(v, s.lo, s.hi, s.p, r));
  }
  if (held >= 0) port::atomic_add(acc + held, sum);
}

template <typename T>
QDQ_KERNEL void lsq_finish_kernel(const double* acc, int64_t depth, double scale, T* step_out) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c < depth) step_out[c] = Compute<T>::store(static_cast<compute_t<T>>(acc[c] * scale));
}

// ---- Host side ----

inline Layout canonical(Layout l) { return l.depth == 1 ? Layout{1, 1, l.size()} : l; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t align16(size_t b) { return (b + 15) & ~size_t{15}; }

template <typename T>
ElemGeom element_geom(const Layout& l, const T* a, const T* b, const T* out) {
  constexpr int V = Pack<T>::kSize;
  ElemGeom g{l.size(), l.inner, l.depth, 0, 0, 0, false, {}, {}};
  g.small = g.n < QDQ_CUDA_FAST_INDEX_LIMIT;
  if (g.small) {
    g.by_inner = FastDiv::make(static_cast<uint32_t>(l.inner));
    g.by_depth = FastDiv::make(static_cast<uint32_t>(l.depth));
  }
  const int64_t head = head_of(a, g.n);
  const bool same = head == head_of(out, g.n) && (b == nullptr || head == head_of(b, g.n));
  g.head = same ? head : g.n;
  g.packs = same ? (g.n - head) / V : 0;
  g.units = g.n - g.packs * (V - 1);
  return g;
}

template <typename T>
struct NoDeduce {
  using type = T;
};

template <typename Op, typename T>
int launch_elements(CudaStream s, const T* a, const typename NoDeduce<T>::type* b, T* out, const Layout& l,
                    typename Op::Param one, const typename Op::Param* per) {
  const ElemGeom g = element_geom(l, a, b, out);
  const int64_t grid = std::max<int64_t>(1, std::min(ceil_div(g.units, kBlock), 4 * port::resident_blocks()));
  if (l.depth > 1)
    QDQ_LAUNCH((element_kernel<Op, true, T>), grid, kBlock, s, a, b, out, g, one, per);
  else
    QDQ_LAUNCH((element_kernel<Op, false, T>), grid, kBlock, s, a, b, out, g, one, per);
  return port::last_error();
}

template <typename T, typename Param = Scales<compute_t<T>>>
int launch_quantize_pass(CudaStream s, const T* in, T* out, const Layout& l, const QuantizeAttrs& attrs, Param one,
                         const typename NoDeduce<Param>::type* per) {
  int err = kInvalidValue;
  const bool known = with_round_mode(attrs.round_mode, [&](auto mode) {
    constexpr RoundMode k = decltype(mode)::value;
    err = attrs.range_given ? launch_elements<QuantizeOp<T, k, true>>(s, in, nullptr, out, l, one, per)
                            : launch_elements<QuantizeOp<T, k, false>>(s, in, nullptr, out, l, one, per);
  });
  return known ? err : kInvalidValue;
}

// Workspace of the auto path: lo keys, hi keys, params (each 16-byte aligned).
template <typename T>
struct AutoWorkspace {
  using C = compute_t<T>;
  using Key = typename KeyOf<C>::type;
  static size_t keys_bytes(int64_t depth) { return align16(sizeof(Key) * static_cast<size_t>(depth)); }
  static size_t bytes(int64_t depth) {
    return 2 * keys_bytes(depth) + align16(sizeof(Scales<C>) * static_cast<size_t>(depth));
  }
};

template <typename T, typename C = compute_t<T>, typename Key = typename KeyOf<C>::type>
int launch_reduce(CudaStream s, const T* x, const Layout& l, Key* lo_acc, Key* hi_acc) {
  constexpr int64_t V = Pack<T>::kSize;
  const int64_t target = port::resident_blocks();
  if (l.inner >= kRunMin) {
    RunGeom g{l.outer * l.depth, l.inner, l.depth, 0, 0};
    g.tiles_per_row = std::max<int64_t>(1, ceil_div(l.inner / V, kBlock * kUnroll));
    g.tiles = g.rows * g.tiles_per_row;
    QDQ_LAUNCH((reduce_runs_kernel<T>), std::min(g.tiles, target), kBlock, s, x, g, lo_acc, hi_acc);
  } else {
    ColGeom g{l.outer, l.depth * l.inner, l.inner, 1, 1, 0};
    if (g.width < kBlock) {
      g.rows_per_step = kBlock / g.width;
    } else {
      g.col_tiles = ceil_div(g.width, kBlock);
    }
    const int64_t steps = ceil_div(g.rows, g.rows_per_step);
    const int64_t chunks = std::max<int64_t>(1, std::min(steps / kMinColumnRows, target / g.col_tiles));
    g.rows_per_chunk = ceil_div(steps, chunks) * g.rows_per_step;
    const int64_t grid = g.col_tiles * ceil_div(g.rows, g.rows_per_chunk);
    QDQ_LAUNCH((reduce_columns_kernel<T>), grid, kBlock, s, x, g, lo_acc, hi_acc);
  }
  return port::last_error();
}

template <typename T>
size_t quantize_workspace(Layout layout, bool range_given) {
  using C = compute_t<T>;
  const Layout l = canonical(layout);
  if (l.size() == 0) return 0;
  if (!range_given) return AutoWorkspace<T>::bytes(l.depth);
  return l.depth > 1 ? align16(sizeof(Scales<C>) * static_cast<size_t>(l.depth)) : 0;
}

template <typename T>
int quantize(CudaStream s, const T* in, T* out, Layout layout, const T* given_lo, const T* given_hi,
             const QuantizeAttrs& attrs, void* workspace) {
  using C = compute_t<T>;
  using Key = typename KeyOf<C>::type;
  const Layout l = canonical(layout);
  if (l.size() == 0) return 0;
  char* ws = static_cast<char*>(workspace);
  if (attrs.range_given) {
    // Host-side ranges: the scales are computed here, with the same function.
    std::vector<Scales<C>> p(static_cast<size_t>(l.depth));
    for (int64_t c = 0; c < l.depth; ++c) {
      p[c] = Scales<C>::pack(compute_params(Compute<T>::load(given_lo[c]), Compute<T>::load(given_hi[c]), attrs.range));
    }
    if (l.depth == 1) return launch_quantize_pass<T>(s, in, out, l, attrs, p[0], nullptr);
    auto* dev = reinterpret_cast<Scales<C>*>(ws);
    if (int err = port::copy_to_device_async(dev, p.data(), sizeof(Scales<C>) * p.size(), s)) return err;
    return launch_quantize_pass<T>(s, in, out, l, attrs, p[0], dev);
  }
  const size_t kb = AutoWorkspace<T>::keys_bytes(l.depth);
  Key* lo_acc = reinterpret_cast<Key*>(ws);
  Key* hi_acc = reinterpret_cast<Key*>(ws + kb);
  auto* params = reinterpret_cast<Scales<C>*>(ws + 2 * kb);
  if (int err = port::memset_async(ws, 0xff, 2 * kb, s)) return err;
  if (int err = launch_reduce<T>(s, in, l, lo_acc, hi_acc)) return err;
  QDQ_LAUNCH((params_kernel<C>), ceil_div(l.depth, kBlock), kBlock, s, lo_acc, hi_acc, l.depth, attrs.range, params);
  if (int err = port::last_error()) return err;
  return launch_quantize_pass<T>(s, in, out, l, attrs, Scales<C>{}, params);
}

template <typename T>
size_t gradient_workspace(Layout layout) {
  const Layout l = canonical(layout);
  if (l.size() == 0 || l.depth == 1) return 0;
  return align16(sizeof(Bounds<compute_t<T>>) * static_cast<size_t>(l.depth));
}

template <typename T>
int masked_gradient(CudaStream s, const T* grad, const T* x, T* out, Layout layout, const T* lo, const T* hi,
                    void* workspace) {
  using C = compute_t<T>;
  const Layout l = canonical(layout);
  if (l.size() == 0) return 0;
  std::vector<Bounds<C>> b(static_cast<size_t>(l.depth));
  for (int64_t c = 0; c < l.depth; ++c) b[c] = Bounds<C>{Compute<T>::load(lo[c]), Compute<T>::load(hi[c])};
  if (l.depth == 1) return launch_elements<GradientOp<T>>(s, grad, x, out, l, b[0], nullptr);
  auto* dev = static_cast<Bounds<C>*>(workspace);
  if (int err = port::copy_to_device_async(dev, b.data(), sizeof(Bounds<C>) * b.size(), s)) return err;
  return launch_elements<GradientOp<T>>(s, grad, x, out, l, b[0], dev);
}

// Workspace of the tracked step: the auto path's (keys, params), then the NaN flags.
template <typename T>
size_t tracked_workspace(Layout layout) {
  const Layout l = canonical(layout);
  if (l.depth == 0) return 0;
  return AutoWorkspace<T>::bytes(l.depth) + align16(sizeof(uint32_t) * static_cast<size_t>(l.depth));
}

// Six stream operations, never waiting on the device: clear keys and flags, reduce
// min/max, flag NaNs, update + parameters, element pass. old_* / new_* are device pointers.
template <typename T>
int tracked_quantize(CudaStream s, const T* in, T* out, Layout layout, const float* old_lo, const float* old_hi,
                     const int64_t* old_updates, TrackedAttrs tracked, const QuantizeAttrs& attrs,
                     TrackedOutputs out_range, void* workspace) {
  using C = compute_t<T>;
  using Key = typename KeyOf<C>::type;
  const Layout l = canonical(layout);
  if (l.depth == 0) return 0;
  char* ws = static_cast<char*>(workspace);
  const size_t kb = AutoWorkspace<T>::keys_bytes(l.depth);
  Key* lo_acc = reinterpret_cast<Key*>(ws);
  Key* hi_acc = reinterpret_cast<Key*>(ws + kb);
  auto* params = reinterpret_cast<Scales<C>*>(ws + 2 * kb);
  auto* nan = reinterpret_cast<uint32_t*>(ws + AutoWorkspace<T>::bytes(l.depth));
  if (int err = port::memset_async(ws, 0xff, 2 * kb, s)) return err;
  if (int err = port::memset_async(nan, 0, sizeof(uint32_t) * static_cast<size_t>(l.depth), s)) return err;
  const int64_t n = l.size();
  if (n > 0) {
    if (int err = launch_reduce<T>(s, in, l, lo_acc, hi_acc)) return err;
    const int64_t grid = std::max<int64_t>(1, std::min(ceil_div(n, kBlock), 4 * port::resident_blocks()));
    QDQ_LAUNCH((nan_flags_kernel<T>), grid, kBlock, s, in, n, l.inner, l.depth, nan);
    if (int err = port::last_error()) return err;
  }
  QDQ_LAUNCH((tracked_params_kernel<T>), ceil_div(l.depth, kBlock), kBlock, s, lo_acc, hi_acc, nan, l.depth, old_lo,
             old_hi, old_updates, tracked, attrs.range, out_range, params);
  if (int err = port::last_error()) return err;
  if (n == 0) return 0;
  QuantizeAttrs given = attrs;
  given.range_given = true;
  return launch_quantize_pass<T>(s, in, out, l, given, Scales<C>{}, params);
}

// Workspace of the LSQ gradient: per-channel double accumulators, then the slices.
template <typename T>
size_t lsq_workspace(Layout layout) {
  const Layout l = canonical(layout);
  if (l.depth == 0) return 0;
  return align16(sizeof(double) * static_cast<size_t>(l.depth)) +
         align16(sizeof(LsqSlice<compute_t<T>>) * static_cast<size_t>(l.depth));
}

template <typename T>
int lsq_gradient(CudaStream s, const T* grad, const T* x, T* input_out, T* step_out, Layout layout, const T* lo,
                 const T* hi, IntRange range, RoundMode round_mode, void* workspace) {
  using C = compute_t<T>;
  const Layout l = canonical(layout);
  if (l.depth == 0) return 0;
  std::vector<LsqSlice<C>> slices(static_cast<size_t>(l.depth));
  for (int64_t c = 0; c < l.depth; ++c) {
    const C clo = Compute<T>::load(lo[c]), chi = Compute<T>::load(hi[c]);
    slices[c] = LsqSlice<C>{compute_params(clo, chi, range), clo, chi};
  }
  char* ws = static_cast<char*>(workspace);
  auto* acc = reinterpret_cast<double*>(ws);
  auto* dev = reinterpret_cast<LsqSlice<C>*>(ws + align16(sizeof(double) * static_cast<size_t>(l.depth)));
  if (int err = port::memset_async(acc, 0, sizeof(double) * static_cast<size_t>(l.depth), s)) return err;
  if (int err = port::copy_to_device_async(dev, slices.data(), sizeof(LsqSlice<C>) * slices.size(), s)) return err;
  const int64_t n = l.size();
  if (n > 0) {
    const int64_t grid = std::max<int64_t>(1, std::min(ceil_div(n, kBlock), 4 * port::resident_blocks()));
    const bool known = with_round_mode(round_mode, [&](auto mode) {
      QDQ_LAUNCH((lsq_kernel<T, decltype(mode)::value>), grid, kBlock, s, grad, x, input_out, n, l.inner, l.depth, dev,
                 range, acc);
    });
    if (!known) return kInvalidValue;
    if (int err = port::last_error()) return err;
  }
  QDQ_LAUNCH((lsq_finish_kernel<T>), ceil_div(l.depth, kBlock), kBlock, s, acc, l.depth,
             lsq_gradient_scale(l.outer * l.inner, range), step_out);
  return port::last_error();
}

}  // namespace cuda_impl
}  // namespace qdq
