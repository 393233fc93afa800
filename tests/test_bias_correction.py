"""correct_bias: empirical bias correction (Nagel et al. 2019, section 4.2) of a model from
quantize_model.

References, independent of the library's code: the weight grid and the expected output error
``mean(x_q @ (W_q - W))`` computed in float64 NumPy; the folded bias computed from the float
BatchNorm's variables; the exported models' biases read back from the ONNX initializers and
the TFLite tensors."""

import os

import keras
import numpy as np
import pytest

from tensorflow_qdq.keras import calibrate, quantize_model
from tensorflow_qdq.keras._bias_correction import BiasCorrectionReport, correct_bias

L = keras.layers


def numpy_weight_grid(w, bits):
    """Per-output-channel (last axis) symmetric narrow-range grid, round half to even, float64."""
    w = np.asarray(w, np.float64)
    top = 2 ** (bits - 1) - 1
    amax = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0)
    step = np.where(amax > 0, amax / top, 1.0)
    return np.clip(np.rint(w / step), -top, top) * step


def mlp():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16,), name="x")
    h = L.Dense(32, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, L.Dense(10, name="d2")(h), name="mlp")


def mlp_data(n=512):
    # not zero-mean: E[x] (W_q - W) is what bias correction removes
    return np.random.default_rng(2).normal(0.7, 1.0, (n, 16)).astype(np.float32)


def probe(model, name, output=False):
    layer = model.get_layer(name)
    return keras.Model(model.input, layer.output if output else layer.input)


def test_dense_correction_equals_float64_numpy_and_follows_graph_order():
    float_model = mlp()
    x = mlp_data()
    q = quantize_model(float_model, weight_bits=3, verbose=False)
    calibrate(q, x, verbose=False)
    d2_input_before = np.asarray(probe(q, "d2")(x), np.float64)
    biases = {name: np.asarray(q.get_layer(name).layer.bias, np.float64) for name in ("d1", "d2")}
    report = correct_bias(q, x, batch_size=100, verbose=False)
    assert isinstance(report, BiasCorrectionReport)
    assert [r.name for r in report] == ["d1", "d2"] and all(r.status == "corrected" for r in report)
    records = {r.name: r for r in report}
    for name in ("d1", "d2"):
        wrapper = q.get_layer(name)
        w = np.asarray(wrapper.layer.kernel, np.float64)
        w_q = numpy_weight_grid(w, 3)
        # the library's weight grid is this one
        from tensorflow_qdq.keras import _weights
        np.testing.assert_allclose(np.asarray(_weights.quantize_weight(wrapper.layer.kernel, (-1,), 3)), w_q,
                                   rtol=1e-6, atol=1e-7)
        # x_q: the layer's input in the corrected quantized model (d1's correction reaches d2's input)
        x_q = np.asarray(probe(q, name)(x), np.float64)
        expected = (x_q @ (w_q - w)).mean(axis=0)
        assert np.max(np.abs(expected)) > 1e-2  # 3-bit weights: a real shift to correct
        np.testing.assert_allclose(records[name].correction, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(biases[name] - np.asarray(wrapper.layer.bias, np.float64), expected,
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        assert records[name].channels == w.shape[-1]
        assert records[name].max_abs_correction == pytest.approx(np.max(np.abs(expected)), rel=1e-5)
    # layer by layer: d2's correction was measured on the input that d1's correction produces,
    # which differs from the uncorrected model's by more than the tolerance above
    w2 = np.asarray(q.get_layer("d2").layer.kernel, np.float64)
    stale = (d2_input_before @ (numpy_weight_grid(w2, 3) - w2)).mean(axis=0)
    assert np.max(np.abs(stale - records["d2"].correction)) > 1e-4
    text = str(report)
    assert "d1" in text and "bias" in text and "2 of 2 quantized layers corrected" in text


def test_the_corrected_layer_has_zero_mean_output_error():
    float_model = mlp()
    x = mlp_data()
    q = quantize_model(float_model, weight_bits=3, verbose=False)
    calibrate(q, x, verbose=False)
    correct_bias(q, x, verbose=False)
    w = np.asarray(float_model.get_layer("d2").kernel, np.float64)
    b = np.asarray(float_model.get_layer("d2").bias, np.float64)
    x_q = np.asarray(probe(q, "d2")(x), np.float64)
    y_q = np.asarray(probe(q, "d2", output=True)(x), np.float64)  # quantized weights, corrected bias
    y_float_weights = x_q @ w + b
    error = (y_q - y_float_weights).mean(axis=0)
    uncorrected = (x_q @ (numpy_weight_grid(w, 3) - w)).mean(axis=0)
    # the bias is added on the int32 grid input step x weight step: up to half a step off
    lo, hi = (float(np.asarray(v)) for v in q.get_layer("d1_output_quantizer").constant_range())
    input_step = (hi - min(lo, 0.0)) / 255.0
    weight_step = np.abs(w).max(axis=0) / 3.0
    tolerance = 0.5 * input_step * weight_step + 1e-5
    assert np.all(np.abs(error) <= tolerance), (error, tolerance)
    assert np.max(np.abs(uncorrected)) > 20 * np.max(tolerance)


def digits_float_model():
    """The README demo's CNN (examples/qat_digits.py), with fixed layer names."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1"),
        L.BatchNormalization(name="bn1"),  # folded into conv1 by quantize_model
        L.ReLU(name="relu1"),
        L.MaxPooling2D(name="pool1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.Flatten(name="flatten"),
        L.Dense(10, name="head"),
    ], name="digits_cnn")


@pytest.fixture(scope="module")
def digits_cnn(qat_demo):
    """The demo's CNN (conv -> BatchNorm -> ReLU, conv+ReLU, dense) trained in float on digits."""
    data = qat_demo.digits(seed=0)
    keras.utils.set_random_seed(0)
    model = digits_float_model()
    accuracy, _ = qat_demo.train(model, data, 10, 3e-3, verbose=0)
    assert accuracy > 0.9
    return model, data


def sqnr(reference, y):
    return 10 * np.log10(np.sum(np.square(reference)) / np.sum(np.square(y - reference)))


@pytest.mark.parametrize("bits", [3, 4])
def test_bias_correction_recovers_low_bit_ptq_on_digits(digits_cnn, bits):
    model, (x_train, x_test, _, y_test) = digits_cnn
    reference = model.predict(x_test, verbose=0)
    q = quantize_model(model, weight_bits=bits, activation_bits=8, verbose=False)
    calibrate(q, x_train, verbose=False)
    before = q.predict(x_test, verbose=0)
    report = correct_bias(q, x_train, verbose=False)
    after = q.predict(x_test, verbose=0)
    statuses = {r.name: (r.status, r.where) for r in report}
    assert statuses["conv1"] == ("corrected", "moving_mean of folded BatchNorm 'bn1'")
    gain = sqnr(reference, after) - sqnr(reference, before)
    accuracies = [float(np.mean(y.argmax(-1) == y_test)) for y in (before, after)]
    print(f"W{bits}A8 PTQ on digits: output SQNR {sqnr(reference, before):.2f} -> {sqnr(reference, after):.2f} dB, "
          f"accuracy {accuracies[0]:.4f} -> {accuracies[1]:.4f}")
    assert gain > 1.0  # measured: +8.0 dB at 3 bits, +6.1 dB at 4 bits
    if bits == 3:  # measured: 93.33 -> 96.89 %
        assert accuracies[1] > accuracies[0]
    else:  # measured: 97.33 -> 97.78 % (two images, so only "no worse" here)
        assert accuracies[1] >= accuracies[0] - 0.005


def folded_bias_float64(float_model, conv_name, bn_name=None):
    """The bias the deployed layer adds, from the float model's own variables."""
    conv = float_model.get_layer(conv_name)
    bias = np.zeros(conv.kernel.shape[-1]) if conv.bias is None else np.asarray(conv.bias, np.float64)
    if bn_name is None:
        return bias
    bn = float_model.get_layer(bn_name)
    gamma, beta, mean, variance = (np.asarray(v, np.float64) for v in bn.get_weights())
    return beta + (bias - mean) * gamma / np.sqrt(variance + bn.epsilon)


def onnx_biases(proto):
    """Every bias-like vector of an ONNX model: int32 initializers dequantized with their scale,
    and float vectors added to a MatMul's output."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int32:
            found.append(inits[node.input[0]].astype(np.float64) * inits[node.input[1]].astype(np.float64))
        if node.op_type == "Add":
            found += [inits[i].astype(np.float64) for i in node.input if i in inits and inits[i].ndim == 1]
    return found


def tflite_biases(flatbuffer):
    from tensorflow_qdq.deploy.tflite import interpreter

    it = interpreter(flatbuffer)
    it.allocate_tensors()
    found = []
    for detail in it.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] == np.int32 and len(detail["shape"]) == 1 and len(scales) == detail["shape"][0] > 0:
            found.append(it.get_tensor(detail["index"]).astype(np.float64) * scales.astype(np.float64))
    return found


def test_corrected_biases_survive_keras_files_and_both_exporters(digits_cnn, tmp_path):
    from tensorflow_qdq.deploy.onnx import to_onnx
    from tensorflow_qdq.deploy.tflite import to_tflite

    model, (x_train, x_test, _, _) = digits_cnn
    q = quantize_model(model, weight_bits=8, activation_bits=8, verbose=False)
    calibrate(q, x_train, verbose=False)
    uncorrected = q.predict(x_test, verbose=0)
    report = {r.name: r for r in correct_bias(q, x_train, verbose=False)}
    corrected = q.predict(x_test, verbose=0)
    assert not np.array_equal(corrected, uncorrected)

    # .keras round trip: same outputs bit for bit, the corrected moving mean and bias kept
    path = os.path.join(tmp_path, "corrected.keras")
    q.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), corrected)
    np.testing.assert_array_equal(loaded.get_layer("conv1").batch_norm.moving_mean.numpy(),
                                  q.get_layer("conv1").batch_norm.moving_mean.numpy())
    np.testing.assert_array_equal(loaded.get_layer("head").layer.bias.numpy(), q.get_layer("head").layer.bias.numpy())

    # SavedModel: the same outputs bit for bit
    import tensorflow as tf

    import tensorflow_qdq

    q.export(os.path.join(tmp_path, "saved"), verbose=False)
    reloaded = tensorflow_qdq.load_saved_model(os.path.join(tmp_path, "saved"))  # kept: serve needs its variables
    np.testing.assert_array_equal(reloaded.serve(tf.constant(x_test)).numpy(), corrected)

    # the biases the deployed layers must add: the float model's, minus the correction
    expected = {"conv1": folded_bias_float64(model, "conv1", "bn1"), "conv2": folded_bias_float64(model, "conv2"),
                "head": folded_bias_float64(model, "head")}
    # verified exports (verify=True raises ExportMismatchError if a runtime parts from Keras)
    proto = to_onnx(q, verify_data=x_test[:64])
    flatbuffer = to_tflite(q, verify_data=x_test[:64])
    for runtime, biases in (("onnx", onnx_biases(proto)), ("tflite", tflite_biases(flatbuffer))):
        for name, old in expected.items():
            new = old - report[name].correction
            shift = np.max(np.abs(report[name].correction))
            candidates = [b for b in biases if b.shape == new.shape]
            distance = min(np.max(np.abs(b - new)) for b in candidates)
            stale = min(np.max(np.abs(b - old)) for b in candidates)
            # on the int32 grid: within far less than the correction of the corrected bias, and
            # not the uncorrected one
            assert distance < 0.05 * shift, (runtime, name, distance, shift)
            assert stale > 0.5 * shift, (runtime, name, stale, shift)

    # and ONNX Runtime's outputs follow the corrected model
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x_test})[0]
    assert np.mean(onnx_out.argmax(-1) == corrected.argmax(-1)) >= 0.99
    assert np.mean(np.abs(onnx_out - corrected)) < np.mean(np.abs(onnx_out - uncorrected))


def test_layers_without_bias_are_reported_not_changed():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12,))
    h = L.Dense(8, use_bias=False, name="nobias")(inputs)
    model = keras.Model(inputs, L.Dense(4, name="head")(h))
    x = mlp_data(128)[:, :12]
    q = quantize_model(model, weight_bits=3, verbose=False)
    calibrate(q, x, verbose=False)
    before = [w.copy() for w in q.get_layer("nobias").get_weights()]
    report = {r.name: r for r in correct_bias(q, x, verbose=False)}
    assert report["nobias"].status == "no bias" and report["nobias"].max_abs_correction > 0
    assert report["head"].status == "corrected"
    for a, b in zip(before, q.get_layer("nobias").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(q.get_layer("nobias").layer.weights) == 1  # no bias was added


def test_needs_calibrated_ranges_and_data(capsys):
    q = quantize_model(mlp(), weight_bits=4, verbose=False)
    with pytest.raises(ValueError, match="calibrate"):
        correct_bias(q, mlp_data(32), verbose=False)
    calibrate(q, mlp_data(64), verbose=False)
    with pytest.raises(ValueError, match="no batch"):
        correct_bias(q, [], verbose=False)
    with pytest.raises(ValueError, match="does not fit"):
        correct_bias(q, np.zeros((4, 3), np.float32), verbose=False)
    correct_bias(q, mlp_data(64), num_batches=1, verbose=True)
    assert "layer" in capsys.readouterr().out  # the progress bar
    # (x, y) batches of a Dataset: x is used; num_batches limits the data
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((mlp_data(96), np.zeros(96))).batch(32)
    fresh = quantize_model(mlp(), weight_bits=4, verbose=False)
    calibrate(fresh, mlp_data(64), verbose=False)
    assert [r.status for r in correct_bias(fresh, dataset, num_batches=2, verbose=False)] == ["corrected"] * 2
    with pytest.warns(UserWarning, match="already corrected"):  # a second run would correct twice
        correct_bias(fresh, dataset, num_batches=1, verbose=False)


def test_depthwise_with_folded_batch_norm_has_zero_mean_error_against_the_float_layers():
    """A DepthwiseConv2D -> BatchNorm (folded: the correction lands in the moving mean) and a
    Conv2D over padded inputs (the error is measured per output position, not as mean(x) @ dW):
    after correction the quantized layer's mean output equals that of the float model's own
    layers (Keras', independent of the wrapper) on the same quantized inputs."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(inputs)
    h = L.BatchNormalization(name="dw_bn")(h)
    h = L.ReLU(name="dw_relu")(h)
    h = L.Conv2D(6, 3, padding="same", name="conv")(h)
    h = L.ReLU(name="conv_relu")(h)
    model = keras.Model(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(5).normal(0.4, 1.0, (256, 8, 8, 3)).astype(np.float32)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros((256, 4)), epochs=1, verbose=0)  # real BatchNorm statistics
    q = quantize_model(model, weight_bits=3, verbose=False)
    calibrate(q, x, verbose=False)
    float_dw = lambda t: model.get_layer("dw_bn")(model.get_layer("dw")(t), training=False)  # noqa: E731
    float_conv = model.get_layer("conv")

    def mean_errors():
        out = {}
        for name, float_layer in (("dw", float_dw), ("conv", float_conv)):
            x_q = probe(q, name)(x)
            y_q = np.asarray(probe(q, name, output=True)(x), np.float64)
            out[name] = (y_q - np.asarray(float_layer(x_q), np.float64)).mean(axis=(0, 1, 2))
        return out

    before = mean_errors()
    mean_before = q.get_layer("dw").batch_norm.moving_mean.numpy().copy()
    report = {r.name: r for r in correct_bias(q, x, verbose=False)}
    assert report["dw"].where == "moving_mean of folded BatchNorm 'dw_bn'"
    assert not np.array_equal(q.get_layer("dw").batch_norm.moving_mean.numpy(), mean_before)
    # the float model is untouched
    np.testing.assert_array_equal(model.get_layer("dw_bn").moving_mean.numpy(), mean_before)
    after = mean_errors()
    # what is left is the bias's rounding onto the int32 grid input step x weight step (up to
    # half a step per channel; coarse with 3-bit weights)
    bn = model.get_layer("dw_bn")
    gamma, _, _, variance = (np.asarray(v, np.float64) for v in bn.get_weights())
    folded = np.asarray(model.get_layer("dw").kernel, np.float64)[..., 0] * gamma / np.sqrt(variance + bn.epsilon)
    weight_steps = {"dw": np.abs(folded).max(axis=(0, 1)) / 3,
                    "conv": np.abs(np.asarray(float_conv.kernel, np.float64)).max(axis=(0, 1, 2)) / 3}
    for name, quantizer in (("dw", "dw_input_quantizer"), ("conv", "dw_relu_output_quantizer")):
        lo, hi = (float(np.asarray(v)) for v in q.get_layer(quantizer).constant_range())
        input_step = (max(hi, 0.0) - min(lo, 0.0)) / 255.0  # 8-bit grid over the range (signed or not)
        half_step = 0.5 * input_step * weight_steps[name]
        assert np.max(np.abs(before[name])) > 1e-2, name
        assert np.all(np.abs(after[name]) <= half_step * 1.01 + 1e-5), (name, after[name], half_step)
        assert np.max(np.abs(after[name])) < 0.1 * np.max(np.abs(before[name])), (name, before[name], after[name])
