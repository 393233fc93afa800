// CPU entry points of the framework-free core. T is one of QDQ_FOR_EACH_TYPE (qdq_contract.h).
#pragma once

#include "qdq_float16.h"
#include "qdq_types.h"

namespace qdq {

// Quantize-and-dequantize `in` into `out` (may alias). With attrs.range_given,
// given_lo/given_hi hold layout.depth values (validated by the caller: lo <= hi);
// otherwise they are ignored and each slice's range is its NaN-free min/max.
template <typename T>
void quantize_cpu(const ThreadPool& pool, const T* in, T* out, Layout layout, const T* given_lo, const T* given_hi,
                  const QuantizeAttrs& attrs);

// V4Grad: out = grad * (lo[c] <= x <= hi[c]); lo/hi hold layout.depth values.
template <typename T>
void masked_gradient_cpu(const ThreadPool& pool, const T* grad, const T* x, T* out, Layout layout, const T* lo,
                         const T* hi);

// A tracked quantizer's training step in one call: measures each slice's NaN-free
// min/max and whether it holds a NaN, updates the tracked ranges (tracked_update in
// qdq_math.h; old_* and new_* hold layout.depth values and may alias), then quantizes
// `in` with the new range cast to T as a given range (attrs.range_given is ignored).
template <typename T>
void tracked_quantize_cpu(const ThreadPool& pool, const T* in, T* out, Layout layout, const float* old_lo,
                          const float* old_hi, const int64_t* old_updates, TrackedAttrs tracked,
                          const QuantizeAttrs& attrs, TrackedOutputs out_range);

// The fused gradient of learned ranges (LSQ) for a forward pass with given range
// lo/hi (layout.depth values): input_out = grad * (lo[c] <= x <= hi[c]) (V4Grad's
// mask) and step_out[c] = lsq_gradient_scale(slice size) * sum over channel c of
// grad * lsq_step_derivative(x), summed in double (qdq_math.h). One pass over x.
template <typename T>
void lsq_gradient_cpu(const ThreadPool& pool, const T* grad, const T* x, T* input_out, T* step_out, Layout layout,
                      const T* lo, const T* hi, IntRange range, RoundMode round_mode);

// The instruction set the CPU loops use ("avx2" or "baseline"), and a way to
// change it for tests and benchmarks ("baseline", "avx2"; anything else = best
// available). The environment variable QDQ_CPU_ISA sets the initial choice.
const char* cpu_isa();
const char* set_cpu_isa(const char* name);

}  // namespace qdq
