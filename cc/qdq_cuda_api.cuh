// The templated entry points of qdq_cuda.h over cuda_impl, with their explicit
// instantiations. Included once per backend, after a port layer and the
// kernels: by qdq_cuda.cu (CUDA) and tests/cuda_emu/emu_api.cc (host emulation).
#pragma once

#include "qdq_cuda.h"
#include "qdq_cuda_kernels.cuh"

namespace qdq {

template <typename T>
size_t quantize_cuda_workspace(Layout layout, bool range_given) {
  return cuda_impl::quantize_workspace<T>(layout, range_given);
}

template <typename T>
int quantize_cuda(CudaStream stream, const T* in, T* out, Layout layout, const T* given_lo, const T* given_hi,
                  const QuantizeAttrs& attrs, void* workspace) {
  return cuda_impl::quantize<T>(stream, in, out, layout, given_lo, given_hi, attrs, workspace);
}

template <typename T>
size_t gradient_cuda_workspace(Layout layout) {
  return cuda_impl::gradient_workspace<T>(layout);
}

template <typename T>
int masked_gradient_cuda(CudaStream stream, const T* grad, const T* x, T* out, Layout layout, const T* lo, const T* hi,
                         void* workspace) {
  return cuda_impl::masked_gradient<T>(stream, grad, x, out, layout, lo, hi, workspace);
}

template <typename T>
size_t tracked_cuda_workspace(Layout layout) {
  return cuda_impl::tracked_workspace<T>(layout);
}

template <typename T>
int tracked_quantize_cuda(CudaStream stream, const T* in, T* out, Layout layout, const float* old_lo,
                          const float* old_hi, const int64_t* old_updates, TrackedAttrs tracked,
                          const QuantizeAttrs& attrs, TrackedOutputs out_range, void* workspace) {
  return cuda_impl::tracked_quantize<T>(stream, in, out, layout, old_lo, old_hi, old_updates, tracked, attrs, out_range,
                                        workspace);
}

template <typename T>
size_t lsq_gradient_cuda_workspace(Layout layout) {
  return cuda_impl::lsq_workspace<T>(layout);
}

template <typename T>
int lsq_gradient_cuda(CudaStream stream, const T* grad, const T* x, T* input_out, T* step_out, Layout layout,
                      const T* lo, const T* hi, IntRange range, RoundMode round_mode, void* workspace) {
  return cuda_impl::lsq_gradient<T>(stream, grad, x, input_out, step_out, layout, lo, hi, range, round_mode, workspace);
}

#define QDQ_INSTANTIATE(T)                                                                                            \
  template size_t quantize_cuda_workspace<T>(Layout, bool);                                                           \
  template int quantize_cuda<T>(CudaStream, const T*, T*, Layout, const T*, const T*, const QuantizeAttrs&, void*);   \
  template size_t gradient_cuda_workspace<T>(Layout);                                                                 \
  template int masked_gradient_cuda<T>(CudaStream, const T*, const T*, T*, Layout, const T*, const T*, void*);        \
  template size_t tracked_cuda_workspace<T>(Layout);                                                                  \
  template int tracked_quantize_cuda<T>(CudaStream, const T*, T*, Layout, const float*, const float*, const int64_t*, \
                                        TrackedAttrs, const QuantizeAttrs&, TrackedOutputs, void*);                   \
  template size_t lsq_gradient_cuda_workspace<T>(Layout);                                                             \
  template int lsq_gradient_cuda<T>(CudaStream, const T*, const T*, T*, T*, Layout, const T*, const T*, IntRange,     \
                                    RoundMode, void*);
QDQ_FOR_EACH_TYPE(QDQ_INSTANTIATE)
#undef QDQ_INSTANTIATE

}  // namespace qdq
