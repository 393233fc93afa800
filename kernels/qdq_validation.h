// Input validation for every kernel, run on the host before any work starts.
// Each failure is an InvalidArgumentError naming the argument and the bound it
// broke; nothing here can read out of bounds or abort.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/qdq_contract.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {
namespace qdq_kernels {

inline absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

inline absl::Status CheckNumBits(int64_t num_bits, bool signed_input) {
  const int64_t max_bits = ::qdq::contract::max_bits(signed_input);
  if (num_bits < ::qdq::contract::kMinBits || num_bits > max_bits) {
    return Invalid(absl::StrCat("num_bits must be in [", ::qdq::contract::kMinBits, ", ", max_bits,
                                "] when signed_input is ", signed_input ? "true" : "false", ", got ", num_bits));
  }
  return absl::OkStatus();
}

inline absl::Status CheckAxisAttr(int64_t axis) {
  if (axis < -1) {
    return Invalid(absl::StrCat("axis must be -1 (per-tensor) or a dimension index >= 0, got ", axis));
  }
  return absl::OkStatus();
}

inline absl::Status CheckAxisForInput(int64_t axis, const TensorShape& input) {
  TF_RETURN_IF_ERROR(CheckAxisAttr(axis));
  if (axis >= input.dims()) {
    return Invalid(absl::StrCat("axis ", axis, " is out of range for input of rank ", input.dims(),
                                " (must be -1 or in [0, ", input.dims(), "))"));
  }
  return absl::OkStatus();
}

// How many range values a call needs: 1 per-tensor, dim(axis) per-channel.
inline int64_t RangeDepth(int64_t axis, const TensorShape& input) { return axis == -1 ? 1 : input.dim_size(axis); }

// input_min/input_max shapes: one element per-tensor (rank 0 or 1), or a vector
// of dim(axis) per-channel.
inline absl::Status CheckRangeShape(const char* name, const Tensor& t, int64_t axis, const TensorShape& input) {
  if (axis == -1) {
    if (t.dims() > 1 || t.NumElements() != 1) {
      return Invalid(absl::StrCat(name,
                                  " must be a scalar (one element) for per-tensor quantization (axis=-1), got shape ",
                                  t.shape().DebugString()));
    }
    return absl::OkStatus();
  }
  const int64_t depth = input.dim_size(axis);
  if (t.dims() != 1 || t.dim_size(0) != depth) {
    return Invalid(absl::StrCat(name, " must be a vector of length ", depth, " = dim(input, axis=", axis,
                                ") for per-channel quantization, got shape ", t.shape().DebugString()));
  }
  return absl::OkStatus();
}

template <typename T>
double AsDouble(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double AsDouble<double>(double v) {
  return v;
}

// lo[c] <= hi[c] in every slice (a NaN fails); host memory only.
template <typename T>
absl::Status CheckOrderedRange(const char* lo_name, const char* hi_name, const Tensor& min_t, const Tensor& max_t,
                               int64_t axis) {
  const T* lo = min_t.unaligned_flat<T>().data();
  const T* hi = max_t.unaligned_flat<T>().data();
  for (int64_t c = 0; c < min_t.NumElements(); ++c) {
    const double l = AsDouble(lo[c]);
    const double h = AsDouble(hi[c]);
    if (!(l <= h)) {
      return Invalid(axis == -1 ? absl::StrCat(lo_name, " must be <= ", hi_name, ", got ", lo_name, "=", l, " and ",
                                               hi_name, "=", h)
                                : absl::StrCat(lo_name, " must be <= ", hi_name, " for every channel; channel ", c,
                                               " has ", lo_name, "=", l, " and ", hi_name, "=", h));
    }
  }
  return absl::OkStatus();
}

// Given ranges: the shapes of CheckRangeShape and lo <= hi in every slice (a NaN fails).
template <typename T>
absl::Status CheckGivenRange(const Tensor& min_t, const Tensor& max_t, int64_t axis, const TensorShape& input) {
  TF_RETURN_IF_ERROR(CheckRangeShape("input_min", min_t, axis, input));
  TF_RETURN_IF_ERROR(CheckRangeShape("input_max", max_t, axis, input));
  return CheckOrderedRange<T>("input_min", "input_max", min_t, max_t, axis);
}

// V4Grad: same-shaped gradients and input; min/max of rank <= 1 holding one
// value per-tensor or dim(axis) values per-channel.
inline absl::Status CheckGradientInputs(const Tensor& gradients, const Tensor& input, const Tensor& min_t,
                                        const Tensor& max_t, int64_t axis) {
  if (gradients.shape() != input.shape()) {
    return Invalid(absl::StrCat("gradients must have the shape of input ", input.shape().DebugString(), ", got ",
                                gradients.shape().DebugString()));
  }
  TF_RETURN_IF_ERROR(CheckAxisForInput(axis, input.shape()));
  TF_RETURN_IF_ERROR(CheckRangeShape("input_min", min_t, axis, input.shape()));
  return CheckRangeShape("input_max", max_t, axis, input.shape());
}

}  // namespace qdq_kernels
}  // namespace tensorflow
