// The OpKernels of the family, written once for every device. A device supplies
// QdqLaunch<Device, T> (CPU: qdq_kernels_cpu.cc; GPU: qdq_kernels_gpu.cc), which
// runs the framework-free core on validated inputs.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "cc/qdq_float16.h"
#include "cc/qdq_types.h"
#include "kernels/qdq_validation.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"

namespace tensorflow {
namespace qdq_kernels {

// TensorFlow's element types -> the core's layout-compatible storage types (the contract's pairs).
template <typename T>
struct CoreType;
#define QDQ_CORE_TYPE(TF, CORE)                                                 \
  template <>                                                                   \
  struct CoreType<TF> {                                                         \
    using type = CORE;                                                          \
    static_assert(sizeof(TF) == sizeof(CORE), "a core type has its TF layout"); \
  };
QDQ_FOR_EACH_TF_TYPE(QDQ_CORE_TYPE)
#undef QDQ_CORE_TYPE

template <typename T>
const typename CoreType<T>::type* Core(const T* p) {
  return reinterpret_cast<const typename CoreType<T>::type*>(p);
}
template <typename T>
typename CoreType<T>::type* Core(T* p) {
  return reinterpret_cast<typename CoreType<T>::type*>(p);
}

// Per-device work. `lo`/`hi` point to host memory (validated given ranges, or
// the gradient's bounds); everything else lives on the device.
template <typename Device, typename T>
struct QdqLaunch {
  static void Quantize(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const T* lo, const T* hi,
                       const ::qdq::QuantizeAttrs& attrs);
  static void Gradient(OpKernelContext* ctx, const T* grad, const T* x, T* out, ::qdq::Layout layout, const T* lo,
                       const T* hi);
  static void Zero(OpKernelContext* ctx, T* out, int64_t n);
  // Tracked: old/new ranges and counts live where the device keeps its tensors.
  static void Tracked(OpKernelContext* ctx, const T* in, T* out, ::qdq::Layout layout, const float* old_lo,
                      const float* old_hi, const int64_t* old_updates, ::qdq::TrackedAttrs tracked,
                      const ::qdq::QuantizeAttrs& attrs, ::qdq::TrackedOutputs out_range);
  static void LsqGradient(OpKernelContext* ctx, const T* grad, const T* x, T* input_out, T* step_out,
                          ::qdq::Layout layout, const T* lo, const T* hi, ::qdq::IntRange range,
                          ::qdq::RoundMode round_mode);
};

inline ::qdq::Layout LayoutOf(const TensorShape& shape, int axis) {
  const auto dims = shape.dim_sizes();
  return ::qdq::make_layout(dims.data(), shape.dims(), axis);
}

// Shared forward body of V2, V3 and V4.
template <typename Device, typename T>
class QuantizeKernelBase : public OpKernel {
 public:
  explicit QuantizeKernelBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("signed_input", &signed_input_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("range_given", &range_given_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("narrow_range", &narrow_range_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    OP_REQUIRES_OK(ctx, CheckAxisAttr(axis_));
  }

 protected:
  void Run(OpKernelContext* ctx, int num_bits, ::qdq::RoundMode round_mode) {
    const Tensor& input = ctx->input(0);
    const Tensor& min_t = ctx->input(1);
    const Tensor& max_t = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckAxisForInput(axis_, input.shape()));
    // Auto ranges ignore the values of input_min/input_max, as TensorFlow does.
    if (range_given_) OP_REQUIRES_OK(ctx, CheckGivenRange<T>(min_t, max_t, axis_, input.shape()));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, input.shape(), &output));
    if (input.NumElements() == 0) return;
    const ::qdq::QuantizeAttrs attrs{::qdq::int_range(signed_input_, num_bits, narrow_range_), range_given_,
                                     round_mode};
    const T* lo = range_given_ ? min_t.unaligned_flat<T>().data() : nullptr;
    const T* hi = range_given_ ? max_t.unaligned_flat<T>().data() : nullptr;
    QdqLaunch<Device, T>::Quantize(ctx, input.flat<T>().data(), output->flat<T>().data(),
                                   LayoutOf(input.shape(), axis_), lo, hi, attrs);
  }

  bool signed_input_ = true;
  bool range_given_ = false;
  bool narrow_range_ = false;
  int axis_ = -1;
};

inline absl::Status RoundModeAttr(OpKernelConstruction* ctx, ::qdq::RoundMode* round_mode) {
  std::string mode;
  TF_RETURN_IF_ERROR(ctx->GetAttr("round_mode", &mode));
  for (int m = 0; m < ::qdq::contract::kNumRoundModes; ++m) {
    if (mode == ::qdq::contract::kRoundModes[m]) {
      *round_mode = static_cast<::qdq::RoundMode>(m);
      return absl::OkStatus();
    }
  }
  return Invalid(std::string("round_mode must be ") + ::qdq::contract::kRoundModesText + ", got " + mode);
}

// The grid attributes of the ops that take num_bits as an attribute (Tracked, LsqGrad),
// validated: signed_input, num_bits, narrow_range, round_mode and axis.
inline absl::Status GridAttrs(OpKernelConstruction* ctx, int* axis, ::qdq::QuantizeAttrs* attrs) {
  bool signed_input = true, narrow_range = false;
  int num_bits = 8;
  TF_RETURN_IF_ERROR(ctx->GetAttr("signed_input", &signed_input));
  TF_RETURN_IF_ERROR(ctx->GetAttr("num_bits", &num_bits));
  TF_RETURN_IF_ERROR(ctx->GetAttr("narrow_range", &narrow_range));
  TF_RETURN_IF_ERROR(ctx->GetAttr("axis", axis));
  TF_RETURN_IF_ERROR(CheckAxisAttr(*axis));
  TF_RETURN_IF_ERROR(CheckNumBits(num_bits, signed_input));
  ::qdq::RoundMode round_mode;
  TF_RETURN_IF_ERROR(RoundModeAttr(ctx, &round_mode));
  *attrs = ::qdq::QuantizeAttrs{::qdq::int_range(signed_input, num_bits, narrow_range), true, round_mode};
  return absl::OkStatus();
}

// V2 and V4: num_bits and round_mode are attributes (V4 differs only in its gradient).
template <typename Device, typename T>
class QuantizeAttrKernel : public QuantizeKernelBase<Device, T> {
 public:
  explicit QuantizeAttrKernel(OpKernelConstruction* ctx) : QuantizeKernelBase<Device, T>(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_bits", &num_bits_));
    OP_REQUIRES_OK(ctx, CheckNumBits(num_bits_, this->signed_input_));
    OP_REQUIRES_OK(ctx, RoundModeAttr(ctx, &round_mode_));
  }
  void Compute(OpKernelContext* ctx) override { this->Run(ctx, num_bits_, round_mode_); }

 private:
  int num_bits_ = 8;
  ::qdq::RoundMode round_mode_ = ::qdq::RoundMode::kHalfToEven;
};

// V3: num_bits is a scalar int32 input (host memory on every device).
template <typename Device, typename T>
class QuantizeV3Kernel : public QuantizeKernelBase<Device, T> {
 public:
  using QuantizeKernelBase<Device, T>::QuantizeKernelBase;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& bits = ctx->input(3);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(bits.shape()),
                Invalid("num_bits must be a scalar, got shape " + bits.shape().DebugString()));
    const int num_bits = bits.scalar<int32_t>()();
    OP_REQUIRES_OK(ctx, CheckNumBits(num_bits, this->signed_input_));
    this->Run(ctx, num_bits, ::qdq::RoundMode::kHalfToEven);
  }
};

// V4Grad: input_backprop = gradients * (input_min <= input <= input_max); the
// min/max backprops are zeros shaped like input_min/input_max.
template <typename Device, typename T>
class GradientKernel : public OpKernel {
 public:
  explicit GradientKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    OP_REQUIRES_OK(ctx, CheckAxisAttr(axis_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad = ctx->input(0);
    const Tensor& input = ctx->input(1);
    const Tensor& min_t = ctx->input(2);
    const Tensor& max_t = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckGradientInputs(grad, input, min_t, max_t, axis_));
    Tensor* backprop = nullptr;
    Tensor* min_backprop = nullptr;
    Tensor* max_backprop = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, input.shape(), &backprop));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, min_t.shape(), &min_backprop));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, max_t.shape(), &max_backprop));
    QdqLaunch<Device, T>::Zero(ctx, min_backprop->flat<T>().data(), min_backprop->NumElements());
    QdqLaunch<Device, T>::Zero(ctx, max_backprop->flat<T>().data(), max_backprop->NumElements());
    if (input.NumElements() == 0) return;
    QdqLaunch<Device, T>::Gradient(ctx, grad.flat<T>().data(), input.flat<T>().data(), backprop->flat<T>().data(),
                                   LayoutOf(input.shape(), axis_), min_t.unaligned_flat<T>().data(),
                                   max_t.unaligned_flat<T>().data());
  }

 private:
  int axis_ = -1;
};

// Tracked: the moving-average update and the quantize pass of a tracked quantizer in training.
template <typename Device, typename T>
class TrackedKernel : public OpKernel {
 public:
  explicit TrackedKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, GridAttrs(ctx, &axis_, &attrs_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum", &tracked_.momentum));
    OP_REQUIRES(ctx, tracked_.momentum >= 0.0f && tracked_.momentum < 1.0f,
                Invalid("momentum must be in [0, 1), got " + std::to_string(tracked_.momentum)));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("delayed", &tracked_.delayed));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& lo = ctx->input(1);
    const Tensor& hi = ctx->input(2);
    const Tensor& updates = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckAxisForInput(axis_, input.shape()));
    OP_REQUIRES_OK(ctx, CheckRangeShape("tracked_min", lo, axis_, input.shape()));
    OP_REQUIRES_OK(ctx, CheckRangeShape("tracked_max", hi, axis_, input.shape()));
    OP_REQUIRES_OK(ctx, CheckRangeShape("tracked_updates", updates, axis_, input.shape()));
    // The range must be one V4 would take; the GPU keeps it in device memory, unchecked.
    if (std::is_same<Device, Eigen::ThreadPoolDevice>::value) {
      OP_REQUIRES_OK(ctx, CheckOrderedRange<float>("tracked_min", "tracked_max", lo, hi, axis_));
    }
    Tensor* output = nullptr;
    Tensor* new_lo = nullptr;
    Tensor* new_hi = nullptr;
    Tensor* new_updates = nullptr;
    Tensor* used_lo = nullptr;
    Tensor* used_hi = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, input.shape(), &output));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, lo.shape(), &new_lo));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, hi.shape(), &new_hi));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, updates.shape(), &new_updates));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, lo.shape(), &used_lo));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, hi.shape(), &used_hi));
    QdqLaunch<Device, T>::Tracked(ctx, input.flat<T>().data(), output->flat<T>().data(), LayoutOf(input.shape(), axis_),
                                  lo.unaligned_flat<float>().data(), hi.unaligned_flat<float>().data(),
                                  updates.unaligned_flat<int64_t>().data(), tracked_, attrs_,
                                  ::qdq::TrackedOutputs{new_lo->flat<float>().data(), new_hi->flat<float>().data(),
                                                        new_updates->flat<int64_t>().data(),
                                                        used_lo->flat<float>().data(), used_hi->flat<float>().data()});
  }

 private:
  int axis_ = -1;
  ::qdq::TrackedAttrs tracked_{0.99f, false};
  ::qdq::QuantizeAttrs attrs_{};
};

// LsqGrad: V4Grad's input_backprop and the per-slice LSQ step gradient, in one pass.
template <typename Device, typename T>
class LsqGradientKernel : public OpKernel {
 public:
  explicit LsqGradientKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ::qdq::QuantizeAttrs attrs;
    OP_REQUIRES_OK(ctx, GridAttrs(ctx, &axis_, &attrs));
    range_ = attrs.range;
    round_mode_ = attrs.round_mode;
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad = ctx->input(0);
    const Tensor& input = ctx->input(1);
    const Tensor& min_t = ctx->input(2);
    const Tensor& max_t = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckGradientInputs(grad, input, min_t, max_t, axis_));
    OP_REQUIRES_OK(ctx, CheckGivenRange<T>(min_t, max_t, axis_, input.shape()));
    Tensor* backprop = nullptr;
    Tensor* step_backprop = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, input.shape(), &backprop));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, max_t.shape(), &step_backprop));
    QdqLaunch<Device, T>::LsqGradient(ctx, grad.flat<T>().data(), input.flat<T>().data(), backprop->flat<T>().data(),
                                      step_backprop->flat<T>().data(), LayoutOf(input.shape(), axis_),
                                      min_t.unaligned_flat<T>().data(), max_t.unaligned_flat<T>().data(), range_,
                                      round_mode_);
  }

 private:
  int axis_ = -1;
  ::qdq::IntRange range_{};
  ::qdq::RoundMode round_mode_ = ::qdq::RoundMode::kHalfToEven;
};

}  // namespace qdq_kernels
}  // namespace tensorflow
