// CPU registrations: the core's loops on TensorFlow's intra-op thread pool.
#define EIGEN_USE_THREADS

#include <algorithm>

#include "cc/qdq_cpu.h"
#include "kernels/qdq_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace qdq_kernels {
namespace {

// TensorFlow's intra-op pool behind the core's ThreadPool interface.
class IntraOpPool final : public ::qdq::ThreadPool {
 public:
  explicit IntraOpPool(OpKernelContext* ctx) : pool_(ctx->device()->tensorflow_cpu_worker_threads()->workers) {}
  int num_threads() const override { return pool_->NumThreads(); }
  void parallel_for(int64_t n, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& fn) const override {
    if (n <= 0) return;
    pool_->ParallelFor(n, thread::ThreadPool::SchedulingParams::Adaptive(cost_per_unit), fn);
  }

 private:
  thread::ThreadPool* pool_;
};

}  // namespace

template <typename T>
struct QdqLaunch<Eigen::ThreadPoolDevice, T> {
  static void Quantize(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const T* lo, const T* hi,
                       const ::qdq::QuantizeAttrs& attrs) {
    ::qdq::quantize_cpu(IntraOpPool(ctx), Core(in), Core(out), layout, Core(lo), Core(hi), attrs);
  }
  static void Gradient(OpKernelContext* ctx, const T* grad, const T* x, T* out, ::qdq::Layout layout, const T* lo,
                       const T* hi) {
    ::qdq::masked_gradient_cpu(IntraOpPool(ctx), Core(grad), Core(x), Core(out), layout, Core(lo), Core(hi));
  }
  static void Zero(OpKernelContext*, T* out, int64_t n) { std::fill(out, out + n, T(0)); }
  static void Tracked(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const float* old_lo,
                      const float* old_hi, const int64_t* old_updates, ::qdq::TrackedAttrs tracked,
                      const ::qdq::QuantizeAttrs& attrs, ::qdq::TrackedOutputs out_range) {
    ::qdq::tracked_quantize_cpu(IntraOpPool(ctx), Core(in), Core(out), layout, old_lo, old_hi, old_updates, tracked,
                                attrs, out_range);
  }
  static void LsqGradient(OpKernelContext* ctx, const T* grad, const T* x, T* input_out, T* step_out,
                          ::qdq::Layout layout, const T* lo, const T* hi, ::qdq::IntRange range,
                          ::qdq::RoundMode round_mode) {
    ::qdq::lsq_gradient_cpu(IntraOpPool(ctx), Core(grad), Core(x), Core(input_out), Core(step_out), layout, Core(lo),
                            Core(hi), range, round_mode);
  }
};

#define QDQ_REGISTER_CPU(T, CORE)                                                                             \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV2").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
                          QuantizeAttrKernel<Eigen::ThreadPoolDevice, T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV3").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
                          QuantizeV3Kernel<Eigen::ThreadPoolDevice, T>);                                      \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV4").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
                          QuantizeAttrKernel<Eigen::ThreadPoolDevice, T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeV4Grad").Device(DEVICE_CPU).TypeConstraint<T>("T"),  \
                          GradientKernel<Eigen::ThreadPoolDevice, T>);                                        \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeTracked").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          TrackedKernel<Eigen::ThreadPoolDevice, T>);                                         \
  REGISTER_KERNEL_BUILDER(Name("Qdq>QuantizeAndDequantizeLsqGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          LsqGradientKernel<Eigen::ThreadPoolDevice, T>);

QDQ_FOR_EACH_TF_TYPE(QDQ_REGISTER_CPU)
#undef QDQ_REGISTER_CPU

}  // namespace qdq_kernels
}  // namespace tensorflow
