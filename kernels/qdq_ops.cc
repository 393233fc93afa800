// Op definitions and shape functions. Names live in the `Qdq>` namespace so they
// never collide with TensorFlow's built-in ops of the same family.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "cc/qdq_contract.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// The framework's shape errors ("Shape must be rank 0 but is rank 1") do not say
// which argument is wrong; this prefixes them with the argument and the rule.
absl::Status Named(const std::string& what, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", s.message()));
}

// Static checks shared by every op of the family: `axis` is -1 (per-tensor) or
// a dimension of `input`, and min/max are scalars (per-tensor) or vectors of
// dim(axis) (per-channel), as TensorFlow's own shape functions require.
absl::Status CheckRangeShapes(InferenceContext* c, ShapeHandle input, int min_index, int max_index,
                              ShapeHandle* minmax) {
  int axis;
  TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
  if (axis < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("axis must be -1 (per-tensor) or a dimension index >= 0, got ", axis));
  }
  // axis >= rank first: otherwise a per-tensor-shaped min/max is blamed for the bad axis.
  if (axis != -1 && c->RankKnown(input) && axis >= c->Rank(input)) {
    const int input_rank = c->Rank(input);
    return absl::InvalidArgumentError(absl::StrCat("axis ", axis, " is out of range for input of rank ", input_rank,
                                                   " (must be -1 or in [0, ", input_rank, "))"));
  }
  const int rank = axis == -1 ? 0 : 1;
  const char* rule = axis == -1 ? " must be a scalar for per-tensor quantization (axis=-1)"
                                : " must be a vector (one value per channel) for per-channel quantization";
  ShapeHandle max_shape;
  TF_RETURN_IF_ERROR(Named(absl::StrCat("input_min", rule), c->WithRank(c->input(min_index), rank, minmax)));
  TF_RETURN_IF_ERROR(Named(absl::StrCat("input_max", rule), c->WithRank(c->input(max_index), rank, &max_shape)));
  TF_RETURN_IF_ERROR(Named("input_max must have the shape of input_min", c->Merge(max_shape, *minmax, minmax)));
  if (axis == -1) return absl::OkStatus();
  if (c->RankKnown(input)) {
    DimensionHandle depth;
    TF_RETURN_IF_ERROR(Named(absl::StrCat("input_min and input_max must hold dim(input, axis=", axis,
                                          ") values for per-channel quantization"),
                             c->Merge(c->Dim(*minmax, 0), c->Dim(input, axis), &depth)));
  }
  return absl::OkStatus();
}

absl::Status QuantizeShape(InferenceContext* c) {
  ShapeHandle minmax;
  TF_RETURN_IF_ERROR(CheckRangeShapes(c, c->input(0), 1, 2, &minmax));
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

absl::Status QuantizeV3Shape(InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(Named("num_bits must be a scalar", c->WithRank(c->input(3), 0, &unused)));
  return QuantizeShape(c);
}

absl::Status GradientShape(InferenceContext* c) {
  ShapeHandle input;
  TF_RETURN_IF_ERROR(Named("gradients must have the shape of input", c->Merge(c->input(0), c->input(1), &input)));
  ShapeHandle minmax;
  TF_RETURN_IF_ERROR(CheckRangeShapes(c, input, 2, 3, &minmax));
  c->set_output(0, input);
  c->set_output(1, minmax);
  c->set_output(2, minmax);
  return absl::OkStatus();
}

// V2 and V4 share their interface and kernel; they differ only in their gradients (registered
// in Python). The attribute order is the generated Python wrappers' argument order.
register_op::OpDefBuilderWrapper QuantizeOp(const char name[], const char* doc) {
  register_op::OpDefBuilderWrapper op(name);
  op.Input("input: T")
      .Input("input_min: T")
      .Input("input_max: T")
      .Attr(QDQ_SIGNED_INPUT_ATTR)
      .Attr(QDQ_NUM_BITS_ATTR)
      .Attr(QDQ_RANGE_GIVEN_ATTR)
      .Output("output: T")
      .Attr(QDQ_TYPE_ATTR)
      .Attr(QDQ_ROUND_MODE_ATTR)
      .Attr(QDQ_NARROW_RANGE_ATTR)
      .Attr(QDQ_AXIS_ATTR)
      .SetShapeFn(QuantizeShape)
      .Doc(doc);
  return op;
}

}  // namespace

// What REGISTER_OP expands to, for a builder made by a function (InitOnStartupMarker's documented use).
static InitOnStartupMarker const register_v2 TF_ATTRIBUTE_UNUSED =
    InitOnStartupMarker{} << QuantizeOp("Qdq>QuantizeAndDequantizeV2",
                                        "Quantize-and-dequantize with a straight-through gradient (tensorflow-qdq).");

REGISTER_OP("Qdq>QuantizeAndDequantizeV3")
    .Input("input: T")
    .Input("input_min: T")
    .Input("input_max: T")
    .Input("num_bits: int32")
    .Attr(QDQ_SIGNED_INPUT_ATTR)
    .Attr("range_given: bool = true")
    .Output("output: T")
    .Attr(QDQ_TYPE_ATTR)
    .Attr(QDQ_NARROW_RANGE_ATTR)
    .Attr(QDQ_AXIS_ATTR)
    .SetShapeFn(QuantizeV3Shape)
    .Doc("Quantize-and-dequantize with num_bits as a tensor (tensorflow-qdq).");

static InitOnStartupMarker const register_v4 TF_ATTRIBUTE_UNUSED =
    InitOnStartupMarker{} << QuantizeOp("Qdq>QuantizeAndDequantizeV4",
                                        "Quantize-and-dequantize with a range-masked gradient (tensorflow-qdq).");

REGISTER_OP("Qdq>QuantizeAndDequantizeV4Grad")
    .Input("gradients: T")
    .Input("input: T")
    .Input("input_min: T")
    .Input("input_max: T")
    .Output("input_backprop: T")
    .Output("input_min_backprop: T")
    .Output("input_max_backprop: T")
    .Attr(QDQ_TYPE_ATTR)
    .Attr(QDQ_AXIS_ATTR)
    .SetShapeFn(GradientShape)
    .Doc("Gradient of Qdq>QuantizeAndDequantizeV4: gradients masked to [input_min, input_max].");

// A tracked quantizer's training step (QuantizeAndDequantize(range_mode="tracked")) in one
// op: the batch's per-slice range updates the moving averages, and the input is quantized
// as V4 with range_given=true would, with the updated range, or, `delayed`, with the range
// from before this batch where the slice has one (tracked_updates > 0), so one pass can
// quantize and measure. used_min/used_max are the range it quantized with; the gradient is
// V4's masked with it (registered in Python).
REGISTER_OP("Qdq>QuantizeAndDequantizeTracked")
    .Input("input: T")
    .Input("tracked_min: float")
    .Input("tracked_max: float")
    .Input("tracked_updates: int64")
    .Output("output: T")
    .Output("new_min: float")
    .Output("new_max: float")
    .Output("new_updates: int64")
    .Output("used_min: float")
    .Output("used_max: float")
    .Attr(QDQ_SIGNED_INPUT_ATTR)
    .Attr(QDQ_NUM_BITS_ATTR)
    .Attr(QDQ_TYPE_ATTR)
    .Attr(QDQ_ROUND_MODE_ATTR)
    .Attr(QDQ_NARROW_RANGE_ATTR)
    .Attr(QDQ_AXIS_ATTR)
    .Attr("momentum: float")
    .Attr("delayed: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle minmax, updates;
      TF_RETURN_IF_ERROR(CheckRangeShapes(c, c->input(0), 1, 2, &minmax));
      TF_RETURN_IF_ERROR(
          Named("tracked_updates must have the shape of tracked_min", c->Merge(c->input(3), minmax, &updates)));
      c->set_output(0, c->input(0));
      c->set_output(1, minmax);
      c->set_output(2, minmax);
      c->set_output(3, minmax);
      c->set_output(4, minmax);
      c->set_output(5, minmax);
      return absl::OkStatus();
    })
    .Doc("A tracked-range quantizer's training step: update the moving-average range, quantize (tensorflow-qdq).");

// The fused gradient of learned ranges (LSQ): the forward is QuantizeAndDequantizeV4 with
// range_given=true; this returns its input gradient (V4Grad's) and the gradient of the
// slice's step (input_max / qmax), scaled by LSQ's 1/sqrt(n * Qp). See docs/KERAS.md.
REGISTER_OP("Qdq>QuantizeAndDequantizeLsqGrad")
    .Input("gradients: T")
    .Input("input: T")
    .Input("input_min: T")
    .Input("input_max: T")
    .Output("input_backprop: T")
    .Output("step_backprop: T")
    .Attr(QDQ_SIGNED_INPUT_ATTR)
    .Attr(QDQ_NUM_BITS_ATTR)
    .Attr(QDQ_TYPE_ATTR)
    .Attr(QDQ_ROUND_MODE_ATTR)
    .Attr(QDQ_NARROW_RANGE_ATTR)
    .Attr(QDQ_AXIS_ATTR)
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle input;
      TF_RETURN_IF_ERROR(Named("gradients must have the shape of input", c->Merge(c->input(0), c->input(1), &input)));
      ShapeHandle minmax;
      TF_RETURN_IF_ERROR(CheckRangeShapes(c, input, 2, 3, &minmax));
      c->set_output(0, input);
      c->set_output(1, minmax);
      return absl::OkStatus();
    })
    .Doc("Learned-step (LSQ) gradient of Qdq>QuantizeAndDequantizeV4 with a given range (tensorflow-qdq).");

}  // namespace tensorflow
