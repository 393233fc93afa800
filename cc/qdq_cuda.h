// CUDA entry points of the framework-free core. T is one of QDQ_FOR_EACH_TYPE (qdq_contract.h).
// No CUDA or TensorFlow headers: callers pass their stream as CUstream_st*
// (the type behind cudaStream_t and CUstream) and get a cudaError_t value back
// as an int (0 = success). Every launcher is asynchronous on `stream`.
#pragma once

#include <cstddef>

#include "qdq_float16.h"
#include "qdq_types.h"

struct CUstream_st;

namespace qdq {

using CudaStream = CUstream_st*;

// Device scratch bytes quantize_cuda needs for this call (0: pass nullptr). The
// caller allocates it on `stream`'s device, 16-byte aligned (any allocator is).
template <typename T>
size_t quantize_cuda_workspace(Layout layout, bool range_given);

// quantize_cpu on the device: `in`/`out` (may alias) are device pointers; with
// attrs.range_given, given_lo/given_hi are HOST pointers to layout.depth
// validated values (lo <= hi). The auto path measures the per-slice NaN-free
// min/max, computes the scales and runs the element pass all on the device, in
// four stream operations whatever the channel count, without waiting on it.
template <typename T>
int quantize_cuda(CudaStream stream, const T* in, T* out, Layout layout, const T* given_lo, const T* given_hi,
                  const QuantizeAttrs& attrs, void* workspace);

template <typename T>
size_t gradient_cuda_workspace(Layout layout);

// V4Grad on the device: out = grad * (lo[c] <= x <= hi[c]). grad/x/out are
// device pointers; lo/hi are HOST pointers to layout.depth values.
template <typename T>
int masked_gradient_cuda(CudaStream stream, const T* grad, const T* x, T* out, Layout layout, const T* lo, const T* hi,
                         void* workspace);

// Device scratch bytes tracked_quantize_cuda needs (16-byte aligned, as above).
template <typename T>
size_t tracked_cuda_workspace(Layout layout);

// tracked_quantize_cpu on the device: every pointer is a device pointer (the tracked
// ranges and counts stay where the variables live); no host round trip.
template <typename T>
int tracked_quantize_cuda(CudaStream stream, const T* in, T* out, Layout layout, const float* old_lo,
                          const float* old_hi, const int64_t* old_updates, TrackedAttrs tracked,
                          const QuantizeAttrs& attrs, TrackedOutputs out_range, void* workspace);

// Device scratch bytes lsq_gradient_cuda needs (16-byte aligned, as above).
template <typename T>
size_t lsq_gradient_cuda_workspace(Layout layout);

// lsq_gradient_cpu on the device: grad/x/input_out/step_out are device pointers
// (step_out holds layout.depth values); lo/hi are HOST pointers to layout.depth values.
template <typename T>
int lsq_gradient_cuda(CudaStream stream, const T* grad, const T* x, T* input_out, T* step_out, Layout layout,
                      const T* lo, const T* hi, IntRange range, RoundMode round_mode, void* workspace);

// Fills `bytes` bytes of device memory with zeros on `stream`.
int cuda_zero(CudaStream stream, void* ptr, size_t bytes);

// cudaGetErrorString for the codes above.
const char* cuda_error_string(int code);

// Visible CUDA devices (0 when there is no driver or no GPU; never fails).
int cuda_device_count();

}  // namespace qdq
