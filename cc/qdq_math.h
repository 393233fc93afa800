// The quantization-range math and the per-element operations, shared by the
// CPU loops and the CUDA kernels (__host__ __device__) so the two cannot drift.
// Every operation mirrors TensorFlow's CPU kernel step by step in the compute
// type (see SEMANTICS §3); the comments name the places where we deliberately differ.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "qdq_contract.h"
#include "qdq_hd.h"

namespace qdq {

// The round modes, in the order of contract::kRoundModes (their attribute values).
enum class RoundMode : int { kHalfToEven = 0, kHalfUp = 1 };
static_assert(static_cast<int>(RoundMode::kHalfUp) + 1 == contract::kNumRoundModes, "one RoundMode per round mode");

// A round mode as a type, for generic lambdas: `decltype(mode)::value`.
template <RoundMode kMode>
using RoundModeTag = std::integral_constant<RoundMode, kMode>;

// Calls fn(RoundModeTag<m>{}) for every round mode m, in RoundMode order: how the CPU loop
// tables instantiate every mode (qdq_simd_loops.h).
template <typename Fn, int... kModes>
void for_each_round_mode(Fn&& fn, std::integer_sequence<int, kModes...>) {
  (fn(RoundModeTag<static_cast<RoundMode>(kModes)>{}), ...);
}
template <typename Fn>
void for_each_round_mode(Fn&& fn) {
  for_each_round_mode(fn, std::make_integer_sequence<int, contract::kNumRoundModes>{});
}

// The one switch from a run-time round mode to a template instance: calls
// fn(RoundModeTag<mode>{}). The LSQ loop and the CUDA launchers go through it, so a new mode
// needs only its RoundMode value and its rounding in round_lanes below. A RoundMode comes
// only from a validated attribute (kernels, binding); false (fn not called) would mean a
// value outside the enumeration, which the callers turn into an error.
template <typename Fn>
[[nodiscard]] bool with_round_mode(RoundMode mode, Fn&& fn) {
  bool called = false;
  for_each_round_mode([&](auto m) {
    if (decltype(m)::value == mode) {
      fn(m);
      called = true;
    }
  });
  return called;
}

// The simulated integer grid, exact in int64.
struct IntRange {
  int64_t qmin;
  int64_t qmax;
};

// Valid num_bits: contract::kMinBits..contract::max_bits(signed_input) (callers validate first).
QDQ_HD IntRange int_range(bool signed_input, int num_bits, bool narrow_range) {
  if (!signed_input) return IntRange{0, static_cast<int64_t>((uint64_t{1} << num_bits) - 1)};
  const int64_t half = static_cast<int64_t>(uint64_t{1} << (num_bits - 1));
  return IntRange{-half + (narrow_range ? 1 : 0), half - 1};
}

template <typename C>
QDQ_HD C max_finite();
template <>
QDQ_HD float max_finite<float>() {
  return FLT_MAX;
}
template <>
QDQ_HD double max_finite<double>() {
  return DBL_MAX;
}

// Plain IEEE multiply/add. On the device they are spelled as _rn intrinsics so
// nvcc can never contract them into an FMA (TensorFlow's CPU kernel rounds each).
QDQ_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
QDQ_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
QDQ_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
QDQ_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

QDQ_HD bool is_nan(float v) { return v != v; }
QDQ_HD bool is_nan(double v) { return v != v; }

// Overloads that resolve to the float or double routine on host and device alike.
#if defined(__CUDA_ARCH__)
QDQ_HD float rint_c(float v) { return rintf(v); }
QDQ_HD double rint_c(double v) { return rint(v); }
QDQ_HD float floor_c(float v) { return floorf(v); }
QDQ_HD double floor_c(double v) { return floor(v); }
QDQ_HD float signed_zero(float v) { return copysignf(0.0f, v); }
QDQ_HD double signed_zero(double v) { return copysign(0.0, v); }
#else
QDQ_INLINE float rint_c(float v) { return std::rint(v); }
QDQ_INLINE double rint_c(double v) { return std::rint(v); }
QDQ_INLINE float floor_c(float v) { return std::floor(v); }
QDQ_INLINE double floor_c(double v) { return std::floor(v); }
QDQ_INLINE float signed_zero(float v) { return std::copysign(0.0f, v); }
QDQ_INLINE double signed_zero(double v) { return std::copysign(0.0, v); }
#endif

// What one slice (the whole tensor, or one channel) needs for the element pass.
template <typename C>
struct SliceParams {
  C lo;  // clamp bounds after the range adjustment (given ranges only)
  C hi;
  C scale;      // value -> grid
  C inv_scale;  // grid -> value
  bool degenerate;
};

// The range math: TensorFlow's ComputeQuantizationRange, plus our degenerate-range
// rule. `lo`/`hi` are the given range or the measured min/max of the slice.
template <typename C>
QDQ_HD SliceParams<C> compute_params(C lo, C hi, IntRange r) {
  const C qmin = static_cast<C>(r.qmin);
  const C qmax = static_cast<C>(r.qmax);
  const C kMax = max_finite<C>();
  const bool lo_usable = mul(qmin, lo) > C(0);
  const bool hi_usable = mul(qmax, hi) > C(0);
  const C scale_lo = lo_usable ? qmin / lo : kMax;
  const C scale_hi = hi_usable ? qmax / hi : kMax;
  SliceParams<C> p;
  if (scale_lo < scale_hi) {  // strict, as TF: ties keep the max side
    p.scale = scale_lo;
    p.inv_scale = lo / qmin;
    p.lo = lo;
    p.hi = mul(qmax, p.inv_scale);
  } else {
    p.scale = scale_hi;
    p.inv_scale = hi / qmax;
    p.lo = mul(qmin, p.inv_scale);
    p.hi = hi;
  }
  // FIX (SEMANTICS §3.4): no side of the range can set a finite scale (all-zero
  // data, unsigned data <= 0, 1-bit signed data >= 0, ...). TF returns NaN/inf or
  // garbage there; every non-NaN element becomes a zero instead.
  p.degenerate = !lo_usable && !hi_usable;
  return p;
}

// ---- The element math, written once over lanes ----
// A lanes type L holds one value (ScalarLanes: the portable loops and the CUDA kernels) or a
// vector of them (Lanes<T> in qdq_avx2_lanes.h: the AVX2 loops), with L::C the compute type,
// set1, mul, add, min(a, b) = (a < b) ? a : b, max(a, b) = (a > b) ? a : b, rint, floor and
// unit_if_within(x, lo, hi) = (lo <= x <= hi) ? 1 : 0. The CPU loops of every instruction
// set and the CUDA kernels instantiate the templates below, so their element math is one text.
template <typename C_>
struct ScalarLanes {
  using C = C_;
  using V = C_;
  static QDQ_HD V set1(C v) { return v; }
  static QDQ_HD V mul(V a, V b) { return qdq::mul(a, b); }
  static QDQ_HD V add(V a, V b) { return qdq::add(a, b); }
  static QDQ_HD V min(V a, V b) { return (a < b) ? a : b; }
  static QDQ_HD V max(V a, V b) { return (a > b) ? a : b; }
  static QDQ_HD V rint(V v) { return rint_c(v); }  // IEEE default rounding: ties to even, -0.5 -> -0.0
  static QDQ_HD V floor(V v) { return floor_c(v); }
  static QDQ_HD V unit_if_within(V x, V lo, V hi) { return (x >= lo && x <= hi) ? C(1) : C(0); }
};

// Clamp with TF's operand order: min(hi, x) then max(lo, v). A NaN x stays NaN (a NaN bound
// clamps nothing).
template <typename L, typename V = typename L::V>
QDQ_HD V clamp_lanes(V x, V lo, V hi) {
  return L::max(lo, L::min(hi, x));
}

// HALF_TO_EVEN: rint. HALF_UP: floor(y + 0.5) with the add rounded in C, as TF (0.49999997f -> 1).
template <RoundMode kMode, typename L, typename V = typename L::V>
QDQ_HD V round_lanes(V y) {
  return kMode == RoundMode::kHalfToEven ? L::rint(y) : L::floor(L::add(y, L::set1(typename L::C(0.5))));
}

// A slice's element pass outside the degenerate case: round(v * scale) * inv_scale.
template <RoundMode kMode, typename L, typename V = typename L::V>
QDQ_HD V quantize_lanes(V v, V scale, V inv_scale) {
  return L::mul(round_lanes<kMode, L>(L::mul(v, scale)), inv_scale);
}

// V4Grad: the gradient times a 1/0 mask (inclusive range; a NaN x fails both comparisons).
// A multiply, not a select, to be bit-identical with TF (-g * 0 is -0.0; NaN or inf gradients
// stay NaN).
template <typename L, typename V = typename L::V>
QDQ_HD V masked_lanes(V g, V x, V lo, V hi) {
  return L::mul(g, L::unit_if_within(x, lo, hi));
}

template <typename C>
QDQ_HD C clamp_value(C x, C lo, C hi) {
  return clamp_lanes<ScalarLanes<C>>(x, lo, hi);
}

template <RoundMode kMode, typename C>
QDQ_HD C round_with_mode(C y) {
  return round_lanes<kMode, ScalarLanes<C>>(y);
}

// FIX (SEMANTICS §3.4): a degenerate slice returns zeros. TF computes round(v * T_MAX) *
// inv_scale there; whenever that is a zero (v = ±0, or a zero inv_scale) its sign is
// that of round(v * T_MAX) (v's sign, except HALF_UP's floor(-0 + 0.5) = +0) times
// inv_scale's, so the zero is built the same way and is bit-identical wherever TF is
// right. Where inv_scale is not finite (1-bit signed: hi / 0) that zero is returned.
template <RoundMode kMode, typename C>
QDQ_HD C degenerate_value(C v, C inv_scale) {
  if (is_nan(v)) return v;
  const C r = (v == C(0)) ? round_with_mode<kMode>(v) : signed_zero(v);
  const bool finite_inv = inv_scale - inv_scale == C(0);  // false for inf and NaN
  return finite_inv ? mul(r, inv_scale) : r;
}

// One element of the forward pass. `v` is already clamped when the range is given.
template <RoundMode kMode, typename C>
QDQ_HD C quantize_scaled(C v, const SliceParams<C>& p) {
  if (p.degenerate) return degenerate_value<kMode>(v, p.inv_scale);
  return quantize_lanes<kMode, ScalarLanes<C>>(v, p.scale, p.inv_scale);
}

template <RoundMode kMode, bool kClamp, typename C>
QDQ_HD C quantize_value(C x, const SliceParams<C>& p) {
  return quantize_scaled<kMode>(kClamp ? clamp_value(x, p.lo, p.hi) : x, p);
}

// One element of V4Grad (masked_lanes): the one mask function of the kernels.
template <typename C>
QDQ_HD C masked_gradient(C g, C x, C lo, C hi) {
  return masked_lanes<ScalarLanes<C>>(g, x, lo, hi);
}

// A tracked range (QuantizeAndDequantize(range_mode="tracked")) and its update by one
// batch, in float32 operation by operation as the layer's TensorFlow ops compute it
// (tensorflow_qdq/keras/_layer.py): the batch range widened to include 0 (a zero bound
// keeps its sign, as tf.minimum/maximum do), taken as is on a slice's first update, else
// old * m + batch * (1 - m). A slice whose batch held a NaN or an infinity, or no element,
// keeps its range and count.
struct TrackedRange {
  float lo;
  float hi;
  int64_t updates;
};

// A tracked step's attributes: the moving average's momentum, and whether the step is
// delayed (quantizes with the range from before this batch, so one pass can quantize and
// measure; a slice without an update yet has no such range and uses the updated one).
struct TrackedAttrs {
  float momentum;
  bool delayed;
};

// Where a tracked step writes, per slice: the updated range and count, and the range it
// quantized with (for the gradient's mask).
struct TrackedOutputs {
  float* lo;
  float* hi;
  int64_t* updates;
  float* used_lo;
  float* used_hi;
};

QDQ_HD TrackedRange tracked_update(TrackedRange old, float batch_lo, float batch_hi, bool all_finite, float momentum) {
  const bool valid = all_finite && batch_lo - batch_lo == 0.0f && batch_hi - batch_hi == 0.0f;
  if (!valid) return old;
  const float lo = (0.0f < batch_lo) ? 0.0f : batch_lo;
  const float hi = (batch_hi < 0.0f) ? 0.0f : batch_hi;
  const float decay = old.updates > 0 ? momentum : 0.0f;
  const float keep = 1.0f - decay;
  return TrackedRange{add(mul(old.lo, decay), mul(lo, keep)), add(mul(old.hi, decay), mul(hi, keep)), old.updates + 1};
}

// The range a tracked step quantizes with (see TrackedAttrs).
QDQ_HD TrackedRange tracked_quantize_range(TrackedRange old, TrackedRange updated, bool delayed) {
  return (delayed && old.updates > 0) ? old : updated;
}

// Slice c of a tracked step (CPU and CUDA): the update from the batch's min/max (converted to
// float32, as the layer converts them) and finiteness, written to slot c of `out` with the
// range to quantize with, which is returned.
QDQ_HD TrackedRange tracked_step(TrackedRange old, float batch_lo, float batch_hi, bool all_finite, TrackedAttrs attrs,
                                 TrackedOutputs out, int64_t c) {
  const TrackedRange updated = tracked_update(old, batch_lo, batch_hi, all_finite, attrs.momentum);
  const TrackedRange used = tracked_quantize_range(old, updated, attrs.delayed);
  out.lo[c] = updated.lo;
  out.hi[c] = updated.hi;
  out.updates[c] = updated.updates;
  out.used_lo[c] = used.lo;
  out.used_hi[c] = used.hi;
  return used;
}

// LSQ (Esser et al., "Learned Step Size Quantization", 2020): the derivative of one
// quantize-dequantize output with respect to the step (inv_scale) of its slice, for
// q = step * round(clamp(x / step)). Inside [lo, hi] (the mask of masked_gradient) it is
// the rounding residual round(v * scale) - v * scale of the forward pass; below lo it is
// qmin, above hi qmax. A NaN x or a degenerate slice contributes 0 (they have no step).
template <RoundMode kMode, typename C>
QDQ_HD C lsq_step_derivative(C x, C lo, C hi, const SliceParams<C>& p, IntRange r) {
  if (p.degenerate || is_nan(x)) return C(0);
  if (x < lo) return static_cast<C>(r.qmin);
  if (x > hi) return static_cast<C>(r.qmax);
  const C y = mul(clamp_value(x, p.lo, p.hi), p.scale);
  return round_with_mode<kMode>(y) - y;
}

// LSQ's gradient scale 1 / sqrt(n * Qp): n elements in the slice, Qp the positive end of
// the grid (at least 1, so a 1-bit signed grid, whose qmax is 0, still learns).
QDQ_HD double lsq_gradient_scale(int64_t n, IntRange r) {
  const double qp = r.qmax > 0 ? static_cast<double>(r.qmax) : 1.0;
  return n > 0 ? 1.0 / sqrt(static_cast<double>(n) * qp) : 0.0;
}

}  // namespace qdq
