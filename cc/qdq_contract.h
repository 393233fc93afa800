// The op contract for C++, in one place: the element types, the num_bits bounds, the round
// modes and the attribute defaults. kernels/qdq_ops.cc registers the ops with these, the
// kernels and the Python binding validate with them, and the core instantiates its
// templates for these types. tensorflow_qdq/_contract.py states the same facts for Python;
// tests/test_contract.py checks that the two agree with each other and with the OpDefs
// TensorFlow registered. Semantics: docs/SEMANTICS.md.
#pragma once

namespace qdq {
namespace contract {

// num_bits: 1..61 for a signed grid, 1..62 unsigned (TensorFlow's bounds: the grid and its
// span stay exact in int64).
constexpr int kMinBits = 1;
constexpr int kMaxSignedBits = 61;
constexpr int kMaxUnsignedBits = 62;
constexpr int max_bits(bool signed_input) { return signed_input ? kMaxSignedBits : kMaxUnsignedBits; }

// Round modes, indexed by qdq::RoundMode (qdq_math.h): the attribute's values.
constexpr int kNumRoundModes = 2;
constexpr const char* kRoundModes[kNumRoundModes] = {"HALF_TO_EVEN", "HALF_UP"};
constexpr const char* kRoundModesText = "HALF_TO_EVEN or HALF_UP";  // for error messages

// Attribute defaults (V2/V4; V3 has range_given = true and no round_mode).
constexpr bool kDefaultSignedInput = true;
constexpr int kDefaultNumBits = 8;
constexpr bool kDefaultRangeGiven = false;
constexpr bool kDefaultNarrowRange = false;
constexpr int kDefaultAxis = -1;  // per tensor

}  // namespace contract
}  // namespace qdq

// The element types, in one order, in the four spellings the layers need: TensorFlow's
// attribute, TensorFlow's C++ types paired with the core's layout-compatible storage types
// (kernel registrations, kernels/qdq_kernels.h's CoreType), the core's storage types
// (explicit instantiations) and the NumPy names (the binding's dispatch).
#define QDQ_TYPE_ATTR "T: {bfloat16, half, float, double}"
#define QDQ_FOR_EACH_TF_TYPE(X) \
  X(::tensorflow::bfloat16, ::qdq::bf16_t) X(Eigen::half, ::qdq::half_t) X(float, float) X(double, double)
#define QDQ_FOR_EACH_TYPE(X) X(::qdq::bf16_t) X(::qdq::half_t) X(float) X(double)
#define QDQ_FOR_EACH_NAMED_TYPE(X) \
  X(::qdq::bf16_t, "bfloat16") X(::qdq::half_t, "float16") X(float, "float32") X(double, "float64")

// The attributes of the registrations (kernels/qdq_ops.cc), with the defaults above.
#define QDQ_ROUND_MODE_ATTR "round_mode: {'HALF_TO_EVEN', 'HALF_UP'} = 'HALF_TO_EVEN'"
#define QDQ_SIGNED_INPUT_ATTR "signed_input: bool = true"
#define QDQ_NUM_BITS_ATTR "num_bits: int = 8"
#define QDQ_RANGE_GIVEN_ATTR "range_given: bool = false"
#define QDQ_NARROW_RANGE_ATTR "narrow_range: bool = false"
#define QDQ_AXIS_ATTR "axis: int = -1"
