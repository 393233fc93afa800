// GPU registrations: the core's CUDA launchers (cc/qdq_cuda.cu) on TensorFlow's
// stream. Built only with -DGOOGLE_CUDA=1 (setup.py does so when nvcc is found).
// Ranges stay in host memory: given ranges are validated there, and the
// launchers never need the device to report back (the auto range is measured
// and used on the device).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "absl/strings/str_cat.h"
#include "cc/qdq_cuda.h"
#include "kernels/qdq_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace qdq_kernels {
namespace {

::qdq::CudaStream StreamOf(OpKernelContext* ctx) {
  return reinterpret_cast<::qdq::CudaStream>(ctx->eigen_device<Eigen::GpuDevice>().stream());
}

absl::Status CudaStatus(int code, const char* what) {
  if (code == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed on the GPU: ", ::qdq::cuda_error_string(code)));
}

// Device scratch from TensorFlow's allocator (stream-ordered with the op's stream).
absl::Status Workspace(OpKernelContext* ctx, size_t bytes, Tensor* holder, void** ptr) {
  *ptr = nullptr;
  if (bytes == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(DT_INT8, TensorShape({static_cast<int64_t>(bytes)}), holder));
  *ptr = holder->flat<int8_t>().data();
  return absl::OkStatus();
}

}  // namespace

template <typename T>
struct QdqLaunch<Eigen::GpuDevice, T> {
  using CoreT = typename CoreType<T>::type;

  static void Quantize(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const T* lo, const T* hi,
                       const ::qdq::QuantizeAttrs& attrs) {
    Tensor scratch;
    void* ws = nullptr;
    OP_REQUIRES_OK(ctx,
                   Workspace(ctx, ::qdq::quantize_cuda_workspace<CoreT>(layout, attrs.range_given), &scratch, &ws));
    OP_REQUIRES_OK(
        ctx, CudaStatus(::qdq::quantize_cuda(StreamOf(ctx), Core(in), Core(out), layout, Core(lo), Core(hi), attrs, ws),
                        "quantize_and_dequantize"));
  }
  static void Gradient(OpKernelContext* ctx, const T* grad, const T* x, T* out, ::qdq::Layout layout, const T* lo,
                       const T* hi) {
    Tensor scratch;
    void* ws = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, ::qdq::gradient_cuda_workspace<CoreT>(layout), &scratch, &ws));
    OP_REQUIRES_OK(ctx, CudaStatus(::qdq::masked_gradient_cuda(StreamOf(ctx), Core(grad), Core(x), Core(out), layout,
                                                               Core(lo), Core(hi), ws),
                                   "quantize_and_dequantize_v4_grad"));
  }
  static void Zero(OpKernelContext* ctx, T* out, int64_t n) {
    OP_REQUIRES_OK(ctx,
                   CudaStatus(::qdq::cuda_zero(StreamOf(ctx), out, static_cast<size_t>(n) * sizeof(T)), "zero fill"));
  }
  static void Tracked(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const float* old_lo,
                      const float* old_hi, const int64_t* old_updates, ::qdq::TrackedAttrs tracked,
                      const ::qdq::QuantizeAttrs& attrs, ::qdq::TrackedOutputs out_range) {
    Tensor scratch;
    void* ws = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, ::qdq::tracked_cuda_workspace<CoreT>(layout), &scratch, &ws));
    OP_REQUIRES_OK(ctx, CudaStatus(::qdq::tracked_quantize_cuda(StreamOf(ctx), Core(in), Core(out), layout, old_lo,
                                                                old_hi, old_updates, tracked, attrs, out_range, ws),
                                   "quantize_and_dequantize_tracked"));
  }
  static void LsqGradient(OpKernelContext* ctx, const T* grad, const T* x, T* input_out, T* step_out,
                          ::qdq::Layout layout, const T* lo, const T* hi, ::qdq::IntRange range,
                          ::qdq::RoundMode round_mode) {
    Tensor scratch;
    void* ws = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, ::qdq::lsq_gradient_cuda_workspace<CoreT>(layout), &scratch, &ws));
    OP_REQUIRES_OK(
        ctx, CudaStatus(::qdq::lsq_gradient_cuda(StreamOf(ctx), Core(grad), Core(x), Core(input_out), Core(step_out),
                                                 layout, Core(lo), Core(hi), range, round_mode, ws),
                        "quantize_and_dequantize_lsq_grad"));
  }
};

#define QDQ_REGISTER_GPU(T, CORE)                                                                             \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV2")                                                 \
                              .Device(DEVICE_GPU)                                                             \
                              .HostMemory("input_min")                                                        \
                              .HostMemory("input_max")                                                        \
                              .TypeConstraint<T>("T"),                                                        \
                          QuantizeAttrKernel<Eigen::GpuDevice, T>);                                           \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV3")                                                 \
                              .Device(DEVICE_GPU)                                                             \
                              .HostMemory("input_min")                                                        \
                              .HostMemory("input_max")                                                        \
                              .HostMemory("num_bits")                                                         \
                              .TypeConstraint<T>("T"),                                                        \
                          QuantizeV3Kernel<Eigen::GpuDevice, T>);                                             \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV4")                                                 \
                              .Device(DEVICE_GPU)                                                             \
                              .HostMemory("input_min")                                                        \
                              .HostMemory("input_max")                                                        \
                              .TypeConstraint<T>("T"),                                                        \
                          QuantizeAttrKernel<Eigen::GpuDevice, T>);                                           \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV4Grad")                                             \
                              .Device(DEVICE_GPU)                                                             \
                              .HostMemory("input_min")                                                        \
                              .HostMemory("input_max")                                                        \
                              .TypeConstraint<T>("T"),                                                        \
                          GradientKernel<Eigen::GpuDevice, T>);                                               \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeTracked").Device(DEVICE_GPU).TypeConstraint<T>("T"), \
                          TrackedKernel<Eigen::GpuDevice, T>);                                                \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeLsqGrad")                                            \
                              .Device(DEVICE_GPU)                                                             \
                              .HostMemory("input_min")                                                        \
                              .HostMemory("input_max")                                                        \
                              .TypeConstraint<T>("T"),                                                        \
                          LsqGradientKernel<Eigen::GpuDevice, T>);

QDQ_FOR_EACH_TF_TYPE(QDQ_REGISTER_GPU)
#undef QDQ_REGISTER_GPU

}  // namespace qdq_kernels
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
