"""When can ONNX Runtime's u8s8 kernels saturate on an x86 CPU without VNNI? A NumPy emulation.

On x86 without VNNI (AVX2, or AVX-512 without AVX512_VNNI), ONNX Runtime's (MLAS) u8s8 GEMM and
convolution kernels multiply uint8 activation codes by int8 weight codes with ``vpmaddubsw``:
it adds the two products of each *adjacent pair* along the reduction axis K into an int16 with
saturation, and only then widens to int32 (``vpmaddwd`` with ones). One pair can reach
255 * 127 * 2 = 64770 > 32767, so full-range int8 weights can give a wrong sum; with 7-bit weights
(|code| <= 63) a pair stays within 255 * 63 * 2 = 32130 and nothing saturates. VNNI CPUs
(``vpdpbusd(s)``: four products summed into the int32 accumulator) and u8u8 kernels (16-bit
widening, ``vpmaddwd``) are exact.

This script runs an exported model (``tensorflow_qdq.to_onnx``) on real inputs, takes the uint8
input codes of every Conv (one group), MatMul and Gemm whose weight is int8, and computes each
integer sum twice: exactly, and as ``vpmaddubsw`` would (pairs of adjacent K, saturated to
int16). K is ordered as ONNX Runtime's NHWC convolutions read it: (kernel row, kernel column,
input channel), padded with one zero at the end when odd (the im2col layout; with an even channel
count every pair is two channels of one pixel, whatever the kernel; the end-to-end check also
runs with the channels padded per kernel tap, where an odd count pairs a product with a zero).
It reports, per layer,
how many int32 sums differ and how many *output codes* differ after the bias, the activation
(Relu/Clip) and the output quantizer, one layer at a time from the exact inputs; then the
whole model with every covered layer emulated (ONNX's reference evaluator for the rest), so
errors propagate: exact sums must reproduce ONNX Runtime's output, saturated sums give the test
accuracy and the agreement with Keras that a CPU without VNNI would. It follows the instruction's
documented semantics, not ONNX Runtime's code. Depthwise convolutions run on other (widening)
kernels and are not counted.

    python benchmarks/u8s8_saturation.py            # the digits demo: 8-bit and 7-bit weights
    python benchmarks/u8s8_saturation.py --quick    # fewer epochs
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

INT16_MIN, INT16_MAX = -(2 ** 15), 2 ** 15 - 1
BEGIN, END = "<!-- u8s8:begin -->", "<!-- u8s8:end -->"
# The CPU flags that say how int8 products are computed (x86: /proc/cpuinfo "flags"; ARM: "Features").
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp",
              "i8mm")


def cpu_flags():
    """The CPU's flags from /proc/cpuinfo (an empty set where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def has_vnni(flags=None):
    """True where x86 u8s8 products sum in int32 (VNNI), so they cannot saturate in int16."""
    return bool((cpu_flags() if flags is None else flags) & {"avx512_vnni", "avx_vnni"})


def int8_features():
    """The CPU's int8 instruction flags, e.g. "avx2 avx512f avx512bw avx512_vnni (VNNI)"."""
    flags = cpu_flags()
    found = [f for f in INT8_FLAGS if f in flags]
    return f"{' '.join(found) or 'none of ' + ', '.join(INT8_FLAGS)} ({'VNNI' if has_vnni(flags) else 'no VNNI'})"


def pairwise_sums(a, w, chunk=256):
    """(exact, vpmaddubsw, largest |pair|) integer sums of ``a @ w``: ``a`` (M, K) uint8 codes,
    ``w`` (K, N) int8 codes, K even (pad with zeros). The second sums each adjacent pair (k, k+1),
    k even, into an int16 with saturation first. Sums int64 (M, N)."""
    a = np.asarray(a, np.int32)
    w = np.asarray(w, np.int32)
    if a.shape[1] % 2:
        raise ValueError(f"K={a.shape[1]} must be even (pad a and w with a zero column/row)")
    exact = a.astype(np.int64) @ w.astype(np.int64)
    emulated = np.empty_like(exact)
    largest = 0
    for start in range(0, a.shape[0], chunk):
        rows = a[start:start + chunk]
        pairs = rows[:, 0::2, None] * w[None, 0::2, :] + rows[:, 1::2, None] * w[None, 1::2, :]
        emulated[start:start + chunk] = np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1, dtype=np.int64)
        largest = max(largest, int(np.max(np.abs(pairs), initial=0)))
    return exact, emulated, largest


def _even_channels(array, axis):
    """Pads ``axis`` with zeros to an even length."""
    if array.shape[axis] % 2 == 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, 1)
    return np.pad(array, pad)


def conv_as_matrices(x, x_zero_point, w, strides, pads, dilations, per_tap=False):
    """im2col of a 2-D convolution (one group) over codes: ``x`` (N, C, H, W) uint8 padded with
    its zero point, ``w`` (O, C, kh, kw) int8 -> (A (M, K), B (K, O), (N, OH, OW)) with K ordered
    (kh, kw, C), padded to even at the end, or (``per_tap``) C padded to even at each kernel tap
    (the two differ only for an odd channel count)."""
    n, c, h, width = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    padded = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])], constant_values=x_zero_point)
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    oh, ow = windows.shape[2:4]
    a, b = np.transpose(windows, (0, 2, 3, 4, 5, 1)), np.transpose(w, (2, 3, 1, 0))
    if per_tap:
        a, b = _even_channels(a, 5), _even_channels(b, 2)
    a, b = _even_channels(a.reshape(n * oh * ow, -1), 1), _even_channels(b.reshape(-1, o), 0)
    return a, b, (n, oh, ow)


class _Model:
    def __init__(self, proto):
        from onnx import numpy_helper

        self.proto = proto
        self.inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        self.producer = {out: n for n in proto.graph.node for out in n.output}
        self.consumers = {}
        for node in proto.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name):
        return self.inits.get(name)

    def attr(self, node, name, default):
        from onnx import helper

        found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
        return found[0] if found else default

    def dequantized(self, name):
        """(codes name or array, scale, zero point, axis) of the DequantizeLinear producing ``name``."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            return None
        return dq.input[0], self.const(dq.input[1]), self.const(dq.input[2]), self.attr(dq, "axis", 1)

    def output_quantizer(self, node):
        """(activation nodes, scale, zero point) of the QuantizeLinear after ``node`` (through
        Relu/Clip), or None."""
        chain, name = [], node.output[0]
        while True:
            readers = self.consumers.get(name, [])
            if len(readers) != 1:
                return None
            reader = readers[0]
            if reader.op_type == "QuantizeLinear":
                return chain, self.const(reader.input[1]), self.const(reader.input[2])
            if reader.op_type not in ("Relu", "Clip"):
                return None
            chain.append(reader)
            name = reader.output[0]

    def activation(self, node, y):
        if node.op_type == "Relu":
            return np.maximum(y, 0)
        low = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        high = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return np.clip(y, -np.inf if low is None else low, np.inf if high is None else high)


def layers(proto):
    """The layers this analysis covers: (node, input codes name, x scale, x zero point, weight
    codes as (K, N) for MatMul/Gemm or (O, C, kh, kw) for Conv, weight scale per output)."""
    m = _Model(proto)
    found = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        x, w = m.dequantized(node.input[0]), m.dequantized(node.input[1])
        if x is None or w is None or m.const(w[0]) is None or x[2] is None or x[2].dtype != np.uint8:
            continue
        codes = m.const(w[0])
        if codes.dtype != np.int8 or np.any(w[2] != 0):
            continue  # u8u8 (uint8 weights) is computed exactly
        if node.op_type == "Conv" and (m.attr(node, "group", 1) != 1 or codes.ndim != 4):
            continue
        if node.op_type == "Gemm" and m.attr(node, "transB", 0):
            codes = codes.T
        found.append((node, x[0], x[1], x[2], codes, np.atleast_1d(w[1])))
    return m, found


def analyse(proto, inputs):
    """Per covered layer: a dict (name, op, K, sums, differing sums, outputs, differing output
    codes, largest pair sum |.|), on ``inputs`` (a float array for the model's one input)."""
    import onnx
    import onnxruntime as ort

    m, found = layers(proto)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for _, codes_name, *_ in found:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(codes_name, onnx.TensorProto.UINT8, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ graph as written
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {proto.graph.input[0].name: np.asarray(inputs, np.float32)})))
    rows = []
    for node, codes_name, x_scale, x_zp, w, w_scale in found:
        x = values[codes_name]
        if node.op_type == "Conv":
            rank = 2
            a, b, out_shape = conv_as_matrices(
                x, int(x_zp), w, m.attr(node, "strides", [1] * rank), m.attr(node, "pads", [0] * 2 * rank),
                m.attr(node, "dilations", [1] * rank))
        else:
            a, b = _even_channels(x.reshape(-1, x.shape[-1]), 1), _even_channels(w, 0)
        exact, emulated, largest = pairwise_sums(a, b)
        rows.append(dict(name=node.name or node.output[0], op=node.op_type, K=a.shape[1], sums=exact.size,
                         differing_sums=int(np.sum(exact != emulated)), largest_pair=largest,
                         **_output_codes(m, node, exact, emulated, a, b, x_scale, x_zp, w_scale)))
    return rows


def _output_codes(m, node, exact, emulated, a, b, x_scale, x_zp, w_scale):
    """How many output codes differ once the sums are finished as the integer kernel does:
    minus the zero point's share, plus the int32 bias, scaled, activation, requantized."""
    quantizer = m.output_quantizer(node)
    if quantizer is None:
        return dict(outputs=None, differing_outputs=None)
    chain, y_scale, y_zp = quantizer
    correction = -int(x_zp) * b.astype(np.int64).sum(axis=0)
    bias = 0
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        found = m.dequantized(node.input[2])
        bias = m.const(found[0]).astype(np.int64) if found is not None else 0
    info = np.iinfo(y_zp.dtype)

    def codes(sums):
        y = (sums + correction + bias).astype(np.float64) * float(x_scale) * w_scale.astype(np.float64)
        for act in chain:
            y = m.activation(act, y)
        return np.clip(np.rint(y / float(y_scale)) + int(y_zp), info.min, info.max)

    return dict(outputs=exact.size, differing_outputs=int(np.sum(codes(exact) != codes(emulated))))


# ------------------------------------------------------------------ end to end


_DOMAIN = "u8s8.emulation"


def emulated(proto, saturate=True, per_tap=False):
    """A copy of ``proto`` whose covered layers (see ``layers``) compute their integer sums in
    NumPy, as ``vpmaddubsw`` would (``saturate``) or exactly, so an error propagates to the output
    as it would on x86 without VNNI (``per_tap``: see ``conv_as_matrices``). Run it with
    ``run_emulated``."""
    import onnx
    from onnx import helper

    if next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) < 21:
        proto = onnx.version_converter.convert_version(proto, 21)  # the reference evaluator's QDQ ops
    m, found = layers(proto)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    replaced = {}
    for node, codes_name, x_scale, x_zp, w, w_scale in found:
        weight_name = f"{node.output[0]}_emulated_weight"
        out.graph.initializer.append(onnx.numpy_helper.from_array(w, weight_name))
        inputs = [codes_name, weight_name]
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            bias = m.dequantized(node.input[2])
            if bias is None:
                raise ValueError(f"{node.name}: a float bias (not int32 codes) is not emulated")
            inputs.append(bias[0])
        attrs = dict(x_scale=float(x_scale), x_zero_point=int(x_zp), w_scale=[float(v) for v in w_scale],
                     saturate=int(saturate))
        if node.op_type == "Conv":
            attrs.update(strides=m.attr(node, "strides", [1, 1]), pads=m.attr(node, "pads", [0, 0, 0, 0]),
                         dilations=m.attr(node, "dilations", [1, 1]), per_tap=int(per_tap))
        replaced[id(node)] = helper.make_node("IntConv" if node.op_type == "Conv" else "IntMatMul", inputs,
                                              list(node.output), domain=_DOMAIN, **attrs)
    nodes = [replaced.get(id(n), n) for n in proto.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.opset_import.append(helper.make_opsetid(_DOMAIN, 1))
    return out


def _finish_sums(a, b, bias, x_zero_point, x_scale, w_scale, saturate):
    exact, emulated_sums, _ = pairwise_sums(a, b)
    sums = (emulated_sums if saturate else exact) - x_zero_point * b.astype(np.int64).sum(axis=0)
    if bias is not None:
        sums = sums + bias.astype(np.int64)
    return (sums.astype(np.float64) * x_scale * np.asarray(w_scale, np.float64)).astype(np.float32)


def run_emulated(proto, inputs):
    """The output of ``emulated(...)`` on ``inputs``, with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class IntConv(OpRun):
        op_domain = _DOMAIN

        def _run(self, x, w, bias=None, x_scale=None, x_zero_point=None, w_scale=None, saturate=None,
                 strides=None, pads=None, dilations=None, per_tap=None):
            a, b, (n, oh, ow) = conv_as_matrices(x, x_zero_point, w, strides, pads, dilations, bool(per_tap))
            y = _finish_sums(a, b, bias, x_zero_point, x_scale, w_scale, saturate)
            return (np.ascontiguousarray(y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)),)

    class IntMatMul(OpRun):
        op_domain = _DOMAIN

        def _run(self, x, w, bias=None, x_scale=None, x_zero_point=None, w_scale=None, saturate=None):
            a, b = _even_channels(x.reshape(-1, x.shape[-1]), 1), _even_channels(w, 0)
            y = _finish_sums(a, b, bias, x_zero_point, x_scale, w_scale, saturate)
            return (y.reshape(x.shape[:-1] + (w.shape[-1],)),)

    evaluator = ReferenceEvaluator(proto, new_ops=[IntConv, IntMatMul])
    return evaluator.run(None, {proto.graph.input[0].name: np.asarray(inputs, np.float32)})[0]


def end_to_end(model, proto, x, labels):
    """One line: the whole model with every covered layer emulated, exactly (must equal ONNX
    Runtime on this machine) and with saturation (errors propagate), against Keras and the labels."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    runtime = session.run(None, {proto.graph.input[0].name: np.asarray(x, np.float32)})[0]
    keras_out = model.predict(x, verbose=0)
    exact = run_emulated(emulated(proto, saturate=False), x)

    def accuracy(out):
        return 100 * np.mean(out.argmax(-1) == labels)

    line = (f"End to end (every covered layer emulated, errors propagating): exact sums give ONNX Runtime's "
            f"output here (max |difference| {np.max(np.abs(exact - runtime)):.3g}), test accuracy "
            f"{accuracy(exact):.2f}%; with vpmaddubsw saturation")
    for per_tap, layout in ((False, "im2col pairs"), (True, "channels padded per kernel tap")):
        saturated = run_emulated(emulated(proto, saturate=True, per_tap=per_tap), x)
        line += (f"{',' if per_tap else ''} ({layout}): test accuracy {accuracy(saturated):.2f}%, argmax agrees "
                 f"with Keras on {100 * np.mean(saturated.argmax(-1) == keras_out.argmax(-1)):.2f}% of the images, "
                 f"max |difference| from Keras {np.max(np.abs(saturated - keras_out)):.3g}")
    return line + "."


def report(title, rows):
    lines = [f"{title}", "", "| layer | op | K | int32 sums | differing sums | output codes | differing codes | "
             "largest pair |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['op']} | {r['K']} | {r['sums']} | {r['differing_sums']} | "
                     f"{r['outputs'] if r['outputs'] is not None else '-'} | "
                     f"{r['differing_outputs'] if r['differing_outputs'] is not None else '-'} | "
                     f"{r['largest_pair']} |")
    return "\n".join(lines)


def digits_models(quick):
    """The digits demo's float training and QAT with 8-bit weights, and QAT with 7-bit weights
    (``quantize_model(..., weight_bits=7)``) from the same float model; both 8-bit activations."""
    from tensorflow_qdq.keras import calibrate, quantize_model

    spec = importlib.util.spec_from_file_location("qat_digits", HERE.parent / "examples" / "qat_digits.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    data = demo.digits(seed=0)
    epochs, qat_epochs = (4, 1) if quick else (20, 6)
    _, quantized, float_model = demo.run_qat(data, epochs=epochs, qat_epochs=qat_epochs, bits=(8,), seed=0, verbose=0)
    seven = quantize_model(float_model, weight_bits=7, activation_bits=8, verbose=False)
    calibrate(seven, data[0], verbose=False)
    accuracy_7 = demo.train(seven, data, qat_epochs, 1e-3, verbose=0)[0]
    accuracy_8 = demo.accuracy(quantized[8], data[1], data[3])
    return data, {f"8-bit weights (test accuracy {accuracy_8:.4f})": quantized[8],
                  f"7-bit weights (test accuracy {accuracy_7:.4f})": seven}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter training, print only")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the results file to update")
    args = parser.parse_args(argv)
    import datetime

    import tensorflow_qdq as qdq

    data, models = digits_models(args.quick)
    x_test = data[1]
    out = [BEGIN, "## u8s8 saturation without VNNI (emulated)", "",
           f"`python benchmarks/u8s8_saturation.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
           f"UTC (this CPU: {int8_features()}; the emulation does not depend on it). Per integer layer of the export: "
           "int32 sums and output codes that `vpmaddubsw` (u8 x s8 pairs saturated to int16, x86 without VNNI) "
           "would change, one layer at a time from exact inputs; largest |pair sum| (int16 holds 32767). "
           "'-': no output quantizer right after the op (the Dense's bias is a separate Add).", ""]
    for title, model in models.items():
        proto = qdq.to_onnx(model)
        rows = analyse(proto, x_test)
        out += [report(f"Digits demo QAT model, {title}, to_onnx (INT8 weights), {len(x_test)} test images:", rows),
                "", end_to_end(model, proto, x_test, data[3]), ""]
    out.append(END)
    text = "\n".join(out)
    print(text)
    if not args.quick:
        from _results import write_results

        write_results(args.out, text, BEGIN, END)
        print(f"[u8s8] wrote {args.out} (u8s8 section)")
    return text


if __name__ == "__main__":
    main()
