"""to_onnx's weight storage for ONNX Runtime: INT8 weights (zero point 0, its u8s8 kernels), 7-bit
weight grids for x86 CPUs without VNNI, and ``x86_without_vnni=True`` (UINT8 8-bit weights, u8u8).

References: ONNX Runtime itself (the integer kernels its optimizer forms, its outputs against the
Keras model's), a pure-Python loop for the vpmaddubsw emulation (benchmarks/u8s8_saturation.py)
and the CPU's own flags (/proc/cpuinfo) for what the machine's kernels compute."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

import tensorflow_qdq as qdq
from tensorflow_qdq.keras import calibrate, quantize_model
from tests.test_onnx import output_step, run, session, weight_dequantizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # tooling, not the package
import u8s8_saturation as saturation  # noqa: E402

L = keras.layers


def conv_model(weight_bits, seed=0):
    """conv -> ReLU -> conv -> pooling -> dense, calibrated on random images."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU(name="relu")(L.Conv2D(8, 3, padding="same", name="conv")(inputs))
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(16, 3, padding="same", name="conv2")(x))
    model = quantize_model(keras.Model(inputs, L.Dense(5, name="head")(x)), weight_bits=weight_bits,
                           activation_bits=8, verbose=False)
    x = np.random.default_rng(seed).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    calibrate(model, x, verbose=False)
    return model, x


def weight_codes(proto):
    """{op name: (codes TensorProto, codes, zero point)} of every Conv/MatMul/Gemm weight."""
    init = {t.name: t for t in proto.graph.initializer}
    found = {}
    for name, dq in weight_dequantizers(proto).items():
        assert dq is not None and dq.op_type == "DequantizeLinear", name
        found[name] = (init[dq.input[0]], numpy_helper.to_array(init[dq.input[0]]),
                       numpy_helper.to_array(init[dq.input[2]]))
    return found


def activation_zero_points(proto):
    init = {t.name: t for t in proto.graph.initializer}
    return [init[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("weight_bits,x86_without_vnni,stored,largest", [
    (8, False, TensorProto.INT8, 127),  # the default: u8s8
    (7, False, TensorProto.INT8, 63),  # the grid for x86 without VNNI, stored as INT8
    (7, True, TensorProto.INT8, 63),  # cannot saturate: stays INT8
    (8, True, TensorProto.UINT8, 127),  # full range on x86 without VNNI: UINT8, zero point 128 (u8u8)
])
def test_weight_storage_fuses_into_integer_kernels_and_agrees_with_keras(weight_bits, x86_without_vnni, stored,
                                                                          largest, tmp_path):
    model, x = conv_model(weight_bits)
    proto = qdq.to_onnx(model, x86_without_vnni=x86_without_vnni)  # its own verification passes
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17  # 7 bits: no opset 21
    for name, (tensor, codes, zp) in weight_codes(proto).items():
        assert tensor.data_type == stored, name
        assert np.all(zp == (128 if stored == TensorProto.UINT8 else 0)), name
        # per-channel symmetric grids: the largest code of the layer is qmax
        assert np.max(np.abs(codes.astype(np.int64) - int(zp.flat[0]))) == largest, name
    # activations stay uint8 (ONNX Runtime's CPU kernels take uint8 activations)
    assert all(z.data_type == TensorProto.UINT8 for z in activation_zero_points(proto))
    s, ops = session(proto, tmp_path)
    assert ops["QLinearConv"] == 2, ops
    assert ops["QLinearMatMul"] + ops["QGemm"] + ops["MatMulInteger"] >= 1, ops
    assert "Conv" not in ops and "MatMul" not in ops, ops
    expected = model.predict(x, verbose=0)
    assert np.max(np.abs(run(s, x) - expected)) <= output_step(proto) * (1 + 1e-5)


def test_seven_bit_qat_digits_model_exports_and_agrees(qat_demo, tmp_path):
    """quantize_model(..., weight_bits=7) trains on codes -63..63; to_onnx stores them as INT8."""
    data = qat_demo.digits(seed=0)
    _, quantized, float_model = qat_demo.run_qat(data, epochs=4, qat_epochs=1, bits=(), seed=0, verbose=0)
    model = quantize_model(float_model, weight_bits=7, activation_bits=8, verbose=False)
    calibrate(model, data[0], verbose=False)
    qat_demo.train(model, data, 1, 1e-3, verbose=0)
    proto = qdq.to_onnx(model, tmp_path / "digits7.onnx")
    for name, (tensor, codes, zp) in weight_codes(proto).items():
        assert tensor.data_type == TensorProto.INT8 and not np.any(zp), name
        assert np.max(np.abs(codes.astype(np.int64))) == 63, name
    s, ops = session(proto, tmp_path)
    assert ops["QLinearConv"] == 2, ops
    x_test = data[1]
    out, expected = run(s, x_test), model.predict(x_test, verbose=0)
    assert np.mean(out.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.max(np.abs(out - expected)) <= output_step(proto) * (1 + 1e-5)


def test_bad_x86_without_vnni_values_raise_naming_the_argument():
    model, _ = conv_model(8)
    with pytest.raises(ValueError, match=r"x86_without_vnni='yes' must be True or False"):
        qdq.to_onnx(model, x86_without_vnni="yes")
    with pytest.raises(ValueError, match=r"x86_without_vnni=True applies to runtime='onnxruntime' only"):
        qdq.to_onnx(model, runtime="tensorrt", x86_without_vnni=True)
    with pytest.raises(ValueError, match=r"quantized to 5 bits.*weights may also use 7 bits"):
        qdq.to_onnx(conv_model(5)[0])


# ------------------------------------------------------------------ the vpmaddubsw emulation


def _loop_reference(a, w):
    """Pure-Python vpmaddubsw + vpmaddwd: int16-saturated pairs, summed exactly."""
    out = np.zeros((a.shape[0], w.shape[1]), np.int64)
    for i in range(a.shape[0]):
        for j in range(w.shape[1]):
            total = 0
            for k in range(0, a.shape[1], 2):
                pair = int(a[i, k]) * int(w[k, j]) + int(a[i, k + 1]) * int(w[k + 1, j])
                total += min(max(pair, -32768), 32767)
            out[i, j] = total
    return out


def test_emulation_matches_a_loop_and_saturates_only_full_range_weights():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 12)).astype(np.uint8)
    a[0] = 255
    w = rng.integers(-127, 128, (12, 5)).astype(np.int8)
    w[:, 0] = 127
    w[:, 1] = -127
    exact, emulated, largest = saturation.pairwise_sums(a, w)
    np.testing.assert_array_equal(emulated, _loop_reference(a, w))
    np.testing.assert_array_equal(exact, a.astype(np.int64) @ w.astype(np.int64))
    assert emulated[0, 0] == 6 * 32767 and exact[0, 0] == 12 * 255 * 127 and largest == 2 * 255 * 127
    assert emulated[0, 1] == 6 * -32768
    # 7-bit weights (|code| <= 63, and ONNX Runtime's reduce_range bound 64) never saturate
    for bound in (63, 64):
        w7 = rng.integers(-bound, bound + 1, (12, 5)).astype(np.int8)
        w7[:, 0], w7[:, 1] = bound, -bound
        exact, emulated, _ = saturation.pairwise_sums(a, w7)
        np.testing.assert_array_equal(emulated, exact)


def test_im2col_of_the_emulation_computes_the_convolution():
    """conv_as_matrices with exact sums = a float convolution of (codes - zero point) * weights."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 3, 3, 2)).astype(np.int8)
    padded = np.pad(x.astype(np.int64) - 128, [(0, 0), (0, 0), (1, 1), (0, 1)])
    for per_tap in (False, True):  # 3 channels: pairs across taps, or each tap padded to 4
        a, b, (n, oh, ow) = saturation.conv_as_matrices(x, 128, w, strides=(2, 1), pads=(1, 0, 1, 1),
                                                        dilations=(1, 2), per_tap=per_tap)
        assert a.shape[1] == (3 * 2 * 4 if per_tap else 3 * 2 * 3)
        exact = (a.astype(np.int64) - 128) @ b.astype(np.int64)  # the zero point's share, as the kernel subtracts it
        expected = np.zeros((n, oh, ow, 4), np.int64)
        for i in range(oh):
            for j in range(ow):
                patch = padded[:, :, 2 * i:2 * i + 3, j:j + 3:2]  # stride (2, 1), dilation (1, 2)
                expected[:, i, j] = np.einsum("nchw,ochw->no", patch, w.astype(np.int64))
        np.testing.assert_array_equal(exact.reshape(n, oh, ow, 4), expected)


def test_worst_case_codes_in_onnx_runtime():
    """Inputs at the top of their grid and weights at +-127 in every pair: the emulation says the
    u8s8 sums saturate without VNNI. In this machine's ONNX Runtime: 7-bit weights and
    x86_without_vnni=True always agree with Keras; the default INT8 export agrees where the CPU
    has VNNI (its own verification would fail without)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 8))
    outputs = L.Conv2D(4, 1, name="conv", kernel_initializer="ones", bias_initializer="zeros")(inputs)
    x = np.ones((2, 4, 4, 8), np.float32)
    x[1] = -1.0  # the bottom of the grid too (codes 1)
    results = {}
    for weight_bits, flag in ((8, False), (7, False), (8, True)):
        model = quantize_model(keras.Model(inputs, outputs), weight_bits=weight_bits, verbose=False)
        calibrate(model, np.concatenate([x, -x]), verbose=False)
        proto = qdq.to_onnx(model, x86_without_vnni=flag, verify=False)
        s, ops = session(proto, None)
        rows = saturation.analyse(proto, x)  # INT8 weights only: u8u8 is exact
        assert [r["op"] for r in rows] == ([] if flag else ["Conv"])
        difference = np.max(np.abs(run(s, x) - model.predict(x, verbose=0)))
        results[weight_bits, flag] = (rows[0] if rows else None, difference, output_step(proto))
    row8, _, _ = results[8, False]
    assert row8["largest_pair"] == 2 * 255 * 127  # saturates without VNNI, and changes the output codes
    assert row8["differing_sums"] > 0 and row8["differing_outputs"] > 0
    row7, difference, step = results[7, False]
    assert row7["largest_pair"] <= 32767 and row7["differing_sums"] == 0
    assert difference <= step * (1 + 1e-5)
    _, difference, step = results[8, True]
    assert difference <= step * (1 + 1e-5)  # UINT8 weights (u8u8) agree
    flags = saturation.cpu_flags()
    if not saturation.has_vnni(flags) and "avx2" in flags:
        pytest.skip("x86 without VNNI: the default INT8 export may saturate here (what x86_without_vnni is for)")
    _, difference, step = results[8, False]
    assert difference <= step * (1 + 1e-5)


def test_exact_emulation_reproduces_onnx_runtime_and_saturation_propagates():
    """The emulation's bookkeeping (im2col, zero points, int32 biases, scales) is checked against
    ONNX Runtime itself: with exact sums the emulated model gives ONNX Runtime's output."""
    model, x = conv_model(8, seed=3)
    x = np.abs(x)  # the top of the signed input grid: large uint8 codes
    proto = qdq.to_onnx(model, verify=False)
    s, _ = session(proto)
    np.testing.assert_allclose(saturation.run_emulated(saturation.emulated(proto, saturate=False), x), run(s, x),
                               rtol=1e-5, atol=1e-6)
    saturated = saturation.run_emulated(saturation.emulated(proto, saturate=True), x)
    assert saturated.shape == run(s, x).shape and np.all(np.isfinite(saturated))
