// tensorflow_qdq._core: the framework-free core as a Python module that imports
// without TensorFlow. CPU launchers run on NumPy arrays (the narrow types via NumPy extensions);
// CUDA launchers (when built with QDQ_WITH_CUDA) run on raw device pointers and a
// stream given as integers, e.g. from torch.Tensor.data_ptr() and
// torch.cuda.current_stream().cuda_stream, or CuPy. Bad arguments raise
// ValueError naming the argument; nothing here can read out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "qdq_contract.h"
#include "qdq_cpu.h"
#include "qdq_cuda.h"
#include "qdq_float16.h"
#include "qdq_types.h"

namespace py = pybind11;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

// Calls fn(T{}) for the storage type named by a dtype string (the contract's types).
template <typename Fn>
auto dispatch(const std::string& dtype, Fn&& fn) {
#define QDQ_DISPATCH(T, name) \
  if (dtype == name) return fn(T{});
  QDQ_FOR_EACH_NAMED_TYPE(QDQ_DISPATCH)
#undef QDQ_DISPATCH
  std::string names;
#define QDQ_NAME(T, name) names += std::string(names.empty() ? "" : ", ") + name;
  QDQ_FOR_EACH_NAMED_TYPE(QDQ_NAME)
#undef QDQ_NAME
  fail("dtype must be one of " + names + ", got " + dtype);
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype().attr("name")); }

qdq::Layout layout_of(const std::vector<int64_t>& shape, int axis) {
  const int rank = static_cast<int>(shape.size());
  if (axis < -1 || axis >= rank)
    fail("axis must be -1 (per-tensor) or in [0, " + std::to_string(rank) + "), got " + std::to_string(axis));
  for (int64_t d : shape)
    if (d < 0) fail("shape dimensions must be >= 0");
  return qdq::make_layout(shape.data(), rank, axis);
}

qdq::RoundMode round_mode_of(const std::string& mode) {
  for (int m = 0; m < qdq::contract::kNumRoundModes; ++m) {
    if (mode == qdq::contract::kRoundModes[m]) return static_cast<qdq::RoundMode>(m);
  }
  fail(std::string("round_mode must be ") + qdq::contract::kRoundModesText + ", got " + mode);
}

qdq::QuantizeAttrs attrs_of(bool signed_input, int num_bits, bool range_given, const std::string& round_mode,
                            bool narrow_range) {
  const int max_bits = qdq::contract::max_bits(signed_input);
  if (num_bits < qdq::contract::kMinBits || num_bits > max_bits)
    fail("num_bits must be in [" + std::to_string(qdq::contract::kMinBits) + ", " + std::to_string(max_bits) +
         "], got " + std::to_string(num_bits));
  return qdq::QuantizeAttrs{qdq::int_range(signed_input, num_bits, narrow_range), range_given,
                            round_mode_of(round_mode)};
}

std::vector<int64_t> shape_of(const py::array& a) { return std::vector<int64_t>(a.shape(), a.shape() + a.ndim()); }

void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
}

// Host range values: `depth` of them, of the input's dtype; for given ranges
// lo[c] <= hi[c] (a NaN fails). Returns pointers into the arrays.
template <typename T>
void check_ranges(const py::array& lo, const py::array& hi, const std::string& dtype, int64_t depth, bool ordered) {
  for (const auto* a : {&lo, &hi}) {
    const char* name = a == &lo ? "input_min" : "input_max";
    if (dtype_name(*a) != dtype) fail(std::string(name) + " must have dtype " + dtype);
    if (a->size() != depth)
      fail(std::string(name) + " must hold " + std::to_string(depth) + " value(s) (one per channel), got " +
           std::to_string(a->size()));
    require_c_contiguous(*a, name);
  }
  if (!ordered) return;
  const T* l = static_cast<const T*>(lo.data());
  const T* h = static_cast<const T*>(hi.data());
  for (int64_t c = 0; c < depth; ++c) {
    if (!(qdq::Compute<T>::load(l[c]) <= qdq::Compute<T>::load(h[c])))
      fail("input_min must be <= input_max for every channel; channel " + std::to_string(c) + " is not");
  }
}

py::array quantize_cpu(const py::array& x, const py::array& lo, const py::array& hi, bool signed_input, int num_bits,
                       bool range_given, const std::string& round_mode, bool narrow_range, int axis) {
  require_c_contiguous(x, "input");
  const std::string dtype = dtype_name(x);
  const qdq::Layout l = layout_of(shape_of(x), axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, range_given, round_mode, narrow_range);
  py::array out(x.dtype(), shape_of(x));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, axis == -1 ? 1 : l.depth, range_given);
    const T* in = static_cast<const T*>(x.data());
    T* o = static_cast<T*>(out.mutable_data());
    const T* plo = static_cast<const T*>(lo.data());
    const T* phi = static_cast<const T*>(hi.data());
    py::gil_scoped_release release;
    qdq::quantize_cpu(qdq::SerialPool(), in, o, l, plo, phi, attrs);
  });
  return out;
}

py::array masked_gradient_cpu(const py::array& grad, const py::array& x, const py::array& lo, const py::array& hi,
                              int axis) {
  require_c_contiguous(x, "input");
  require_c_contiguous(grad, "gradients");
  const std::string dtype = dtype_name(x);
  if (dtype_name(grad) != dtype) fail("gradients must have the dtype of input");
  if (shape_of(grad) != shape_of(x)) fail("gradients must have the shape of input");
  const qdq::Layout l = layout_of(shape_of(x), axis);
  py::array out(x.dtype(), shape_of(x));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, axis == -1 ? 1 : l.depth, false);
    const T* g = static_cast<const T*>(grad.data());
    const T* in = static_cast<const T*>(x.data());
    T* o = static_cast<T*>(out.mutable_data());
    const T* plo = static_cast<const T*>(lo.data());
    const T* phi = static_cast<const T*>(hi.data());
    py::gil_scoped_release release;
    qdq::masked_gradient_cpu(qdq::SerialPool(), g, in, o, l, plo, phi);
  });
  return out;
}

py::tuple lsq_gradient_cpu(const py::array& grad, const py::array& x, const py::array& lo, const py::array& hi,
                           bool signed_input, int num_bits, const std::string& round_mode, bool narrow_range,
                           int axis) {
  require_c_contiguous(x, "input");
  require_c_contiguous(grad, "gradients");
  const std::string dtype = dtype_name(x);
  if (dtype_name(grad) != dtype) fail("gradients must have the dtype of input");
  if (shape_of(grad) != shape_of(x)) fail("gradients must have the shape of input");
  const qdq::Layout l = layout_of(shape_of(x), axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, true, round_mode, narrow_range);
  const int64_t depth = axis == -1 ? 1 : l.depth;
  py::array out(x.dtype(), shape_of(x));
  py::array step(x.dtype(), std::vector<int64_t>(axis == -1 ? 0 : 1, depth));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, depth, true);
    const T* g = static_cast<const T*>(grad.data());
    const T* in = static_cast<const T*>(x.data());
    T* o = static_cast<T*>(out.mutable_data());
    T* st = static_cast<T*>(step.mutable_data());
    const T* plo = static_cast<const T*>(lo.data());
    const T* phi = static_cast<const T*>(hi.data());
    py::gil_scoped_release release;
    qdq::lsq_gradient_cpu(qdq::SerialPool(), g, in, o, st, l, plo, phi, attrs.range, attrs.round_mode);
  });
  return py::make_tuple(out, step);
}

// Tracked-step state: `depth` float32 bounds and int64 counts, C-contiguous.
void check_tracked(const py::array& lo, const py::array& hi, const py::array& updates, int64_t depth) {
  for (const auto* a : {&lo, &hi, &updates}) {
    const char* name = a == &lo ? "tracked_min" : a == &hi ? "tracked_max" : "tracked_updates";
    const char* want = a == &updates ? "int64" : "float32";
    if (dtype_name(*a) != want) fail(std::string(name) + " must have dtype " + want);
    if (a->size() != depth)
      fail(std::string(name) + " must hold " + std::to_string(depth) + " value(s) (one per channel), got " +
           std::to_string(a->size()));
    require_c_contiguous(*a, name);
  }
}

qdq::TrackedAttrs tracked_attrs_of(float momentum, bool delayed) {
  if (!(momentum >= 0.0f && momentum < 1.0f)) fail("momentum must be in [0, 1), got " + std::to_string(momentum));
  return qdq::TrackedAttrs{momentum, delayed};
}

py::tuple tracked_quantize_cpu(const py::array& x, const py::array& lo, const py::array& hi, const py::array& updates,
                               float momentum, bool delayed, bool signed_input, int num_bits,
                               const std::string& round_mode, bool narrow_range, int axis) {
  require_c_contiguous(x, "input");
  const std::string dtype = dtype_name(x);
  const qdq::Layout l = layout_of(shape_of(x), axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, true, round_mode, narrow_range);
  const qdq::TrackedAttrs tracked = tracked_attrs_of(momentum, delayed);
  const int64_t depth = axis == -1 ? 1 : l.depth;
  check_tracked(lo, hi, updates, depth);
  const std::vector<int64_t> range_shape(axis == -1 ? 0 : 1, depth);
  py::array out(x.dtype(), shape_of(x));
  py::array_t<float> new_lo(range_shape), new_hi(range_shape), used_lo(range_shape), used_hi(range_shape);
  py::array_t<int64_t> new_updates(range_shape);
  const qdq::TrackedOutputs outs{new_lo.mutable_data(), new_hi.mutable_data(), new_updates.mutable_data(),
                                 used_lo.mutable_data(), used_hi.mutable_data()};
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x.data());
    T* o = static_cast<T*>(out.mutable_data());
    py::gil_scoped_release release;
    qdq::tracked_quantize_cpu(qdq::SerialPool(), in, o, l, static_cast<const float*>(lo.data()),
                              static_cast<const float*>(hi.data()), static_cast<const int64_t*>(updates.data()),
                              tracked, attrs, outs);
  });
  return py::make_tuple(out, new_lo, new_hi, new_updates, used_lo, used_hi);
}

#ifdef QDQ_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// Calls fn(T{}) for dtype's storage type when the module was built with CUDA, else raises.
// fn states its return type, so a build without CUDA never instantiates its body (and so
// never refers to a launcher it lacks).
template <typename Fn>
auto on_cuda(const std::string& dtype, Fn&& fn) -> decltype(fn(float{})) {
  if constexpr (kWithCuda) {
    return dispatch(dtype, fn);
  } else {
    throw std::runtime_error("tensorflow_qdq._core was built without CUDA (nvcc was not found at build time)");
  }
}

// Helpers of the launch bodies (inline: a build without CUDA emits none of them).
inline void check_cuda(int code, const char* what) {
  if (code != 0) throw std::runtime_error(std::string(what) + " failed: " + qdq::cuda_error_string(code));
}

template <typename P>
P* ptr(uintptr_t v) {
  return reinterpret_cast<P*>(v);
}

inline void require_workspace(size_t need, uintptr_t ws, size_t ws_bytes) {
  if (need > ws_bytes) fail("workspace must hold " + std::to_string(need) + " bytes, got " + std::to_string(ws_bytes));
  if (need > 0 && (ws == 0 || ws % 16 != 0)) fail("workspace must be a 16-byte aligned device pointer");
}

size_t quantize_workspace_bytes(const std::string& dtype, const std::vector<int64_t>& shape, int axis,
                                bool range_given) {
  const qdq::Layout l = layout_of(shape, axis);
  return on_cuda(dtype,
                 [&](auto tag) -> size_t { return qdq::quantize_cuda_workspace<decltype(tag)>(l, range_given); });
}

size_t gradient_workspace_bytes(const std::string& dtype, const std::vector<int64_t>& shape, int axis) {
  const qdq::Layout l = layout_of(shape, axis);
  return on_cuda(dtype, [&](auto tag) -> size_t { return qdq::gradient_cuda_workspace<decltype(tag)>(l); });
}

void quantize_cuda(const std::string& dtype, uintptr_t in, uintptr_t out, const std::vector<int64_t>& shape,
                   const py::array& lo, const py::array& hi, bool signed_input, int num_bits, bool range_given,
                   const std::string& round_mode, bool narrow_range, int axis, uintptr_t workspace,
                   size_t workspace_bytes, uintptr_t stream) {
  const qdq::Layout l = layout_of(shape, axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, range_given, round_mode, narrow_range);
  on_cuda(dtype, [&](auto tag) -> void {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, axis == -1 ? 1 : l.depth, range_given);
    require_workspace(qdq::quantize_cuda_workspace<T>(l, range_given), workspace, workspace_bytes);
    if (l.size() > 0 && (in == 0 || out == 0)) fail("input and output must be device pointers");
    check_cuda(
        qdq::quantize_cuda(ptr<CUstream_st>(stream), ptr<const T>(in), ptr<T>(out), l, static_cast<const T*>(lo.data()),
                           static_cast<const T*>(hi.data()), attrs, ptr<void>(workspace)),
        "quantize_cuda");
  });
}

void masked_gradient_cuda(const std::string& dtype, uintptr_t grad, uintptr_t x, uintptr_t out,
                          const std::vector<int64_t>& shape, const py::array& lo, const py::array& hi, int axis,
                          uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
  const qdq::Layout l = layout_of(shape, axis);
  on_cuda(dtype, [&](auto tag) -> void {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, axis == -1 ? 1 : l.depth, false);
    require_workspace(qdq::gradient_cuda_workspace<T>(l), workspace, workspace_bytes);
    if (l.size() > 0 && (grad == 0 || x == 0 || out == 0)) fail("gradients, input and output must be device pointers");
    check_cuda(qdq::masked_gradient_cuda(ptr<CUstream_st>(stream), ptr<const T>(grad), ptr<const T>(x), ptr<T>(out), l,
                                         static_cast<const T*>(lo.data()), static_cast<const T*>(hi.data()),
                                         ptr<void>(workspace)),
               "masked_gradient_cuda");
  });
}

size_t lsq_gradient_workspace_bytes(const std::string& dtype, const std::vector<int64_t>& shape, int axis) {
  const qdq::Layout l = layout_of(shape, axis);
  return on_cuda(dtype, [&](auto tag) -> size_t { return qdq::lsq_gradient_cuda_workspace<decltype(tag)>(l); });
}

void lsq_gradient_cuda(const std::string& dtype, uintptr_t grad, uintptr_t x, uintptr_t out, uintptr_t step,
                       const std::vector<int64_t>& shape, const py::array& lo, const py::array& hi, bool signed_input,
                       int num_bits, const std::string& round_mode, bool narrow_range, int axis, uintptr_t workspace,
                       size_t workspace_bytes, uintptr_t stream) {
  const qdq::Layout l = layout_of(shape, axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, true, round_mode, narrow_range);
  on_cuda(dtype, [&](auto tag) -> void {
    using T = decltype(tag);
    check_ranges<T>(lo, hi, dtype, axis == -1 ? 1 : l.depth, true);
    require_workspace(qdq::lsq_gradient_cuda_workspace<T>(l), workspace, workspace_bytes);
    if (step == 0 || (l.size() > 0 && (grad == 0 || x == 0 || out == 0)))
      fail("gradients, input, output and step output must be device pointers");
    check_cuda(
        qdq::lsq_gradient_cuda(ptr<CUstream_st>(stream), ptr<const T>(grad), ptr<const T>(x), ptr<T>(out), ptr<T>(step),
                               l, static_cast<const T*>(lo.data()), static_cast<const T*>(hi.data()), attrs.range,
                               attrs.round_mode, ptr<void>(workspace)),
        "lsq_gradient_cuda");
  });
}

size_t tracked_workspace_bytes(const std::string& dtype, const std::vector<int64_t>& shape, int axis) {
  const qdq::Layout l = layout_of(shape, axis);
  return on_cuda(dtype, [&](auto tag) -> size_t { return qdq::tracked_cuda_workspace<decltype(tag)>(l); });
}

// The tracked state (old_*, new_*, used_*) is on the device, as TensorFlow's variables are.
void tracked_quantize_cuda(const std::string& dtype, uintptr_t x, uintptr_t out, const std::vector<int64_t>& shape,
                           uintptr_t old_lo, uintptr_t old_hi, uintptr_t old_updates, float momentum, bool delayed,
                           bool signed_input, int num_bits, const std::string& round_mode, bool narrow_range, int axis,
                           uintptr_t new_lo, uintptr_t new_hi, uintptr_t new_updates, uintptr_t used_lo,
                           uintptr_t used_hi, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
  const qdq::Layout l = layout_of(shape, axis);
  const qdq::QuantizeAttrs attrs = attrs_of(signed_input, num_bits, true, round_mode, narrow_range);
  const qdq::TrackedAttrs tracked = tracked_attrs_of(momentum, delayed);
  on_cuda(dtype, [&](auto tag) -> void {
    using T = decltype(tag);
    require_workspace(qdq::tracked_cuda_workspace<T>(l), workspace, workspace_bytes);
    for (uintptr_t p : {old_lo, old_hi, old_updates, new_lo, new_hi, new_updates, used_lo, used_hi})
      if (p == 0) fail("the tracked ranges, counts and their outputs must be device pointers");
    if (l.size() > 0 && (x == 0 || out == 0)) fail("input and output must be device pointers");
    const qdq::TrackedOutputs outs{ptr<float>(new_lo), ptr<float>(new_hi), ptr<int64_t>(new_updates),
                                   ptr<float>(used_lo), ptr<float>(used_hi)};
    check_cuda(qdq::tracked_quantize_cuda(ptr<CUstream_st>(stream), ptr<const T>(x), ptr<T>(out), l,
                                          ptr<const float>(old_lo), ptr<const float>(old_hi),
                                          ptr<const int64_t>(old_updates), tracked, attrs, outs, ptr<void>(workspace)),
               "tracked_quantize_cuda");
  });
}

int cuda_device_count() {
#ifdef QDQ_WITH_CUDA
  return qdq::cuda_device_count();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  namespace contract = qdq::contract;  // the defaults below are the ops' (qdq_contract.h)
  const std::string kDefaultRoundMode = contract::kRoundModes[0];
  m.doc() = "tensorflow-qdq's framework-free core: CPU loops on NumPy arrays, CUDA launchers on device pointers.";
  m.attr("WITH_CUDA") = kWithCuda;
  m.def("quantize", &quantize_cpu, py::arg("input"), py::arg("input_min"), py::arg("input_max"),
        py::arg("signed_input") = contract::kDefaultSignedInput, py::arg("num_bits") = contract::kDefaultNumBits,
        py::arg("range_given") = contract::kDefaultRangeGiven, py::arg("round_mode") = kDefaultRoundMode,
        py::arg("narrow_range") = contract::kDefaultNarrowRange, py::arg("axis") = contract::kDefaultAxis,
        "QuantizeAndDequantizeV2/V4 forward on the CPU (axis -1 = per-tensor). Returns a new array.");
  m.def("masked_gradient", &masked_gradient_cpu, py::arg("gradients"), py::arg("input"), py::arg("input_min"),
        py::arg("input_max"), py::arg("axis") = contract::kDefaultAxis,
        "QuantizeAndDequantizeV4Grad's input_backprop on the CPU.");
  m.def("lsq_gradient", &lsq_gradient_cpu, py::arg("gradients"), py::arg("input"), py::arg("input_min"),
        py::arg("input_max"), py::arg("signed_input") = contract::kDefaultSignedInput,
        py::arg("num_bits") = contract::kDefaultNumBits, py::arg("round_mode") = kDefaultRoundMode,
        py::arg("narrow_range") = contract::kDefaultNarrowRange, py::arg("axis") = contract::kDefaultAxis,
        "QuantizeAndDequantizeLsqGrad on the CPU: (input_backprop, step_backprop).");
  m.def("tracked_quantize", &tracked_quantize_cpu, py::arg("input"), py::arg("tracked_min"), py::arg("tracked_max"),
        py::arg("tracked_updates"), py::arg("momentum"), py::arg("delayed") = false,
        py::arg("signed_input") = contract::kDefaultSignedInput, py::arg("num_bits") = contract::kDefaultNumBits,
        py::arg("round_mode") = kDefaultRoundMode, py::arg("narrow_range") = contract::kDefaultNarrowRange,
        py::arg("axis") = contract::kDefaultAxis,
        "QuantizeAndDequantizeTracked on the CPU: (output, new_min, new_max, new_updates, used_min, used_max).");
  m.def("cpu_isa", [] { return std::string(qdq::cpu_isa()); }, "Instruction set of the CPU loops (avx2/baseline).");
  m.def(
      "set_cpu_isa", [](const std::string& name) { return std::string(qdq::set_cpu_isa(name.c_str())); },
      py::arg("name"), "Selects the CPU loops: baseline, avx2 (when supported) or best; returns the one in use.");
  m.def("cuda_device_count", &cuda_device_count, "Visible CUDA devices (0 without CUDA, driver or GPU).");
  m.def("quantize_workspace_bytes", &quantize_workspace_bytes, py::arg("dtype"), py::arg("shape"), py::arg("axis"),
        py::arg("range_given"));
  m.def("gradient_workspace_bytes", &gradient_workspace_bytes, py::arg("dtype"), py::arg("shape"), py::arg("axis"));
  m.def("quantize_cuda", &quantize_cuda, py::arg("dtype"), py::arg("input_ptr"), py::arg("output_ptr"),
        py::arg("shape"), py::arg("input_min"), py::arg("input_max"), py::arg("signed_input"), py::arg("num_bits"),
        py::arg("range_given"), py::arg("round_mode"), py::arg("narrow_range"), py::arg("axis"),
        py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"),
        "Asynchronous forward on `stream`; input_min/input_max are host NumPy arrays.");
  m.def("masked_gradient_cuda", &masked_gradient_cuda, py::arg("dtype"), py::arg("gradients_ptr"), py::arg("input_ptr"),
        py::arg("output_ptr"), py::arg("shape"), py::arg("input_min"), py::arg("input_max"), py::arg("axis"),
        py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"),
        "Asynchronous V4Grad on `stream`; input_min/input_max are host NumPy arrays.");
  m.def("lsq_gradient_workspace_bytes", &lsq_gradient_workspace_bytes, py::arg("dtype"), py::arg("shape"),
        py::arg("axis"));
  m.def("lsq_gradient_cuda", &lsq_gradient_cuda, py::arg("dtype"), py::arg("gradients_ptr"), py::arg("input_ptr"),
        py::arg("output_ptr"), py::arg("step_ptr"), py::arg("shape"), py::arg("input_min"), py::arg("input_max"),
        py::arg("signed_input"), py::arg("num_bits"), py::arg("round_mode"), py::arg("narrow_range"), py::arg("axis"),
        py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"),
        "Asynchronous LsqGrad on `stream`; input_min/input_max are host NumPy arrays.");
  m.def("tracked_workspace_bytes", &tracked_workspace_bytes, py::arg("dtype"), py::arg("shape"), py::arg("axis"));
  m.def("tracked_quantize_cuda", &tracked_quantize_cuda, py::arg("dtype"), py::arg("input_ptr"), py::arg("output_ptr"),
        py::arg("shape"), py::arg("tracked_min_ptr"), py::arg("tracked_max_ptr"), py::arg("tracked_updates_ptr"),
        py::arg("momentum"), py::arg("delayed"), py::arg("signed_input"), py::arg("num_bits"), py::arg("round_mode"),
        py::arg("narrow_range"), py::arg("axis"), py::arg("new_min_ptr"), py::arg("new_max_ptr"),
        py::arg("new_updates_ptr"), py::arg("used_min_ptr"), py::arg("used_max_ptr"), py::arg("workspace_ptr"),
        py::arg("workspace_bytes"), py::arg("stream"),
        "Asynchronous tracked step on `stream`; the tracked state is on the device.");
}
