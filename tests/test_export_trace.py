"""How models are traced for the exporters (tensorflow_qdq/deploy/_trace.py): layers and model
kinds that to_onnx / to_tflite failed on, checked in the real runtimes (ONNX Runtime, the LiteRT
interpreter) against the Keras model's own predictions.

- exact GELU (TensorFlow's Erfc, no tf2onnx rule), grouped Conv2D (Keras runs it in an
  XLA-compiled function: a PartitionedCall), LSTM/GRU/Bidirectional (a While loop);
- TFLite: Rescaling/Normalization at the input and Dense on a rank-3 input as int8 ops,
  recurrent layers unrolled;
- subclassed models (no ``inputs``): calibrate and both exporters."""

import collections
import os
import tempfile

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import _trace, tflite
from tensorflow_qdq.keras import QuantizeAndDequantize, QuantizeWrapper, calibrate, quantize_model

L = keras.layers


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)  # the same initial weights whatever tests run before


def _quantized(model, x):
    q = quantize_model(model, verbose=False)
    calibrate(q, x, verbose=False)
    return q


def _onnx_run(proto, x, optimized_ops=False):
    options = ort.SessionOptions()
    path = None
    if optimized_ops:
        path = os.path.join(tempfile.mkdtemp(), "optimized.onnx")
        options.optimized_model_filepath = path
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node) if path else None
    return out, ops


def _tflite_run(flatbuffer, x):
    interpreter = tflite.interpreter(flatbuffer)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _tflite_ops(flatbuffer):
    return collections.Counter(op["op_name"] for op in tflite.interpreter(flatbuffer)._get_ops_details())


def _assert_agrees(got, expected, what, step=None):
    """Correlation >= 0.99 with the Keras output, and the same class for >= 98% of the rows
    (with ``step``, of the rows whose two top Keras outputs are more than two steps apart: an
    untrained model has near ties that one step decides)."""
    corr = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    got, expected = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
    rows = np.ones(len(expected), bool)
    if step is not None:
        top2 = np.sort(expected, axis=1)[:, -2:]
        rows = top2[:, 1] - top2[:, 0] > 2 * step
    agree = np.mean(got[rows].argmax(1) == expected[rows].argmax(1))
    print(f"{what}: correlation {corr:.5f}, argmax agreement {agree:.3f} on {rows.sum()} rows, "
          f"max diff {np.abs(got - expected).max():.4g} (output step {step})")
    assert corr >= 0.99, what
    assert rows.sum() >= len(rows) // 2 and agree >= 0.98, what


def _onnx_op_types(proto):
    return {n.op_type for n in proto.graph.node}


# -- to_onnx: ops the trace used to leave for tf2onnx -------------------------------------------


def test_exact_gelu_exports_to_onnx_and_agrees_with_keras():
    i = keras.Input((8,))
    model = keras.Model(i, L.Dense(4)(L.Dense(16, activation="gelu")(i)))  # approximate=False: Erfc
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    q = _quantized(model, x)
    proto = qdq.to_onnx(q)
    assert "Erfc" not in _onnx_op_types(proto) and "Erf" in _onnx_op_types(proto)
    _assert_agrees(_onnx_run(proto, x)[0], q.predict(x, verbose=0), "gelu, ONNX Runtime")


def test_grouped_conv_exports_to_onnx_and_tflite_as_integer_kernels():
    i = keras.Input((8, 8, 4))
    y = L.Conv2D(8, 3, groups=2, activation="relu")(i)
    model = keras.Model(i, L.Dense(3)(L.GlobalAveragePooling2D()(y)))
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 4)).astype(np.float32)
    q = _quantized(model, x)
    expected = q.predict(x, verbose=0)

    proto = qdq.to_onnx(q)
    assert not any("PartitionedCall" in t for t in _onnx_op_types(proto))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert {a.name: a.i for a in conv.attribute}["group"] == 2
    got, ops = _onnx_run(proto, x, optimized_ops=True)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0, ops
    _assert_agrees(got, expected, "grouped conv, ONNX Runtime")

    flatbuffer = qdq.to_tflite(q)  # raises if an op stayed float
    assert _tflite_ops(flatbuffer)["CONV_2D"] == 1
    _assert_agrees(_tflite_run(flatbuffer, x), expected, "grouped conv, TFLite")


def _recurrent_model(kind, timesteps=6):
    i = keras.Input((timesteps, 3))
    layers = {"lstm": lambda: L.LSTM(8), "gru": lambda: L.GRU(8),
              "bilstm": lambda: L.Bidirectional(L.LSTM(8)), "bigru": lambda: L.Bidirectional(L.GRU(8))}
    return keras.Model(i, L.Dense(4)(layers[kind]()(i)))


def _recurrent_data(timesteps=6):
    return np.random.default_rng(0).normal(size=(32, timesteps, 3)).astype(np.float32)


def _onnx_recurrent_case(kind):
    x = _recurrent_data()
    q = _quantized(_recurrent_model(kind), x)
    proto = qdq.to_onnx(q)
    assert "TensorListReserve" not in _onnx_op_types(proto)
    got = _onnx_run(proto, x)[0]
    expected = q.predict(x, verbose=0)
    _assert_agrees(got, expected, f"{kind}, ONNX Runtime")
    # The recurrent part is float: only the Dense after it quantizes, so the outputs agree to
    # within one step of its output grid (float32 summation order at a rounding boundary).
    assert np.abs(got - expected).max() <= _output_step(q) * 1.01


def _output_step(q):
    """The grid step of the model's last activation quantizer (the Dense output)."""
    from tensorflow_qdq import _grid

    last = [layer for layer in q.layers if isinstance(layer, QuantizeAndDequantize)][-1]
    lo, hi = last.constant_range()
    return float(_grid.step(lo, hi, last.num_bits, last.signed, last.narrow_range))


@pytest.mark.parametrize("kind", ["lstm", "bilstm"])
def test_recurrent_layers_export_to_onnx_float_and_agree(kind):
    _onnx_recurrent_case(kind)  # tf2onnx makes ONNX LSTM ops of them


@pytest.mark.parametrize("kind", ["gru", "bigru"])
def test_gru_exports_to_onnx_float_and_agrees(kind):
    # tf2onnx writes Keras 3's GRU as an ONNX Loop whose body reads a value of the outer graph:
    # the passes must keep it (deploy/_onnx_passes._prune looks into subgraphs)
    _onnx_recurrent_case(kind)


# -- to_tflite: recurrent layers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "bigru"])
def test_recurrent_layers_convert_to_tflite_unrolled_for_any_batch(kind):
    x = _recurrent_data()
    q = _quantized(_recurrent_model(kind), x)
    flatbuffer = qdq.to_tflite(q, allow_float_ops=True)  # the recurrent cells stay float
    assert "WHILE" not in _tflite_ops(flatbuffer)
    for rows in (1, 32):
        _assert_agrees(_tflite_run(flatbuffer, x[:rows]), q.predict(x[:rows], verbose=0), f"{kind} x{rows}, TFLite")
    # The trace unrolled the layers for the converter only.
    assert not any(layer.unroll for layer in q._flatten_layers() if isinstance(layer, L.RNN))


def test_recurrent_layer_without_fixed_length_names_the_fix_for_tflite():
    i = keras.Input((None, 3))
    model = keras.Model(i, L.Dense(4)(L.LSTM(8)(i)))
    q = _quantized(model, _recurrent_data())
    with pytest.raises(ValueError, match="fixed sequence length"):
        qdq.to_tflite(q, allow_float_ops=True)


# -- to_tflite: preprocessing at the input and Dense on rank-3 inputs ---------------------------


def _image_model(preprocessing, channels):
    i = keras.Input((8, 8, channels))
    y = L.Conv2D(6, 3, activation="relu")(preprocessing(i))
    return keras.Model(i, L.Dense(5)(L.GlobalAveragePooling2D()(y)))


@pytest.mark.parametrize("scale, offset", [(1 / 255, 0.0), (1 / 127.5, -1.0)])
def test_rescaling_at_the_input_runs_as_integer_ops_in_tflite(scale, offset):
    x = np.round(np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3))).astype(np.float32)  # raw pixel values
    q = _quantized(_image_model(L.Rescaling(scale, offset=offset), 3), x)
    flatbuffer = qdq.to_tflite(q)  # raised before: MUL (and ADD) stayed float
    ops = _tflite_ops(flatbuffer)
    assert ops["QUANTIZE"] == 1 and "MUL" not in ops, ops
    _assert_agrees(_tflite_run(flatbuffer, x), q.predict(x, verbose=0), f"Rescaling({scale:.4g}, {offset})",
                   _output_step(q))


def test_normalization_at_the_input_runs_as_integer_ops_in_tflite():
    # ImageNet's per-channel statistics over raw pixels. TFLite quantizes the raw input per
    # tensor: one grid for three channels whose statistics differ, so the result is close to,
    # not equal to, the Keras model (which quantizes only after the normalization).
    mean, std = np.array([123.7, 116.3, 103.5]), np.array([58.4, 57.1, 57.4])
    x = np.round(np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3))).astype(np.float32)
    q = _quantized(_image_model(L.Normalization(mean=mean, variance=std**2), 3), x)
    flatbuffer = qdq.to_tflite(q)  # raised before: SUB, MUL stayed float
    assert not {"SUB", "MUL", "DIV"} & set(_tflite_ops(flatbuffer))
    _assert_agrees(_tflite_run(flatbuffer, x), q.predict(x, verbose=0), "Normalization, TFLite", _output_step(q))


def test_chained_preprocessing_at_the_input_runs_as_one_integer_op_in_tflite():
    # EfficientNet's stem: Rescaling(1/255), then Normalization (statistics of [0, 1] pixels).
    x = np.round(np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3))).astype(np.float32)
    chain = keras.Sequential([L.Rescaling(1 / 255), L.Normalization(mean=[0.485, 0.456, 0.406],
                                                                    variance=[0.052, 0.050, 0.051])])
    q = _quantized(_image_model(lambda t: chain.layers[1](chain.layers[0](t)), 3), x)
    flatbuffer = qdq.to_tflite(q)
    ops = _tflite_ops(flatbuffer)
    assert ops["FULLY_CONNECTED"] == 2 and not {"SUB", "MUL", "ADD"} & set(ops), ops  # one op for the chain
    _assert_agrees(_tflite_run(flatbuffer, x), q.predict(x, verbose=0), "Rescaling + Normalization, TFLite",
                   _output_step(q))


def test_rescaling_before_a_nested_backbone_runs_as_an_integer_op_in_tflite():
    # The common wrapping: pixels scaled, then a backbone model (keras.applications, KerasHub)
    # called as one layer, whose first quantizer is inside it.
    x = np.round(np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3))).astype(np.float32)
    backbone = _image_model(lambda t: t, 3)
    i = keras.Input((8, 8, 3))
    model = keras.Model(i, L.Dense(2)(backbone(L.Rescaling(1 / 255)(i))))
    q = _quantized(model, x)
    flatbuffer = qdq.to_tflite(q)  # raised before: MUL stayed float (the quantizer was not found)
    ops = _tflite_ops(flatbuffer)
    assert ops["QUANTIZE"] == 1 and "MUL" not in ops, ops
    _assert_agrees(_tflite_run(flatbuffer, x), q.predict(x, verbose=0), "Rescaling -> nested model, TFLite",
                   _output_step(q))


@pytest.mark.parametrize("bias", ["ones", "random_normal"])
def test_dense_on_rank3_input_with_bias_is_one_int8_fully_connected(bias):
    i = keras.Input((5, 6))
    model = keras.Model(i, L.Dense(4, bias_initializer=bias)(i))
    x = np.random.default_rng(0).normal(size=(32, 5, 6)).astype(np.float32)
    q = _quantized(model, x)
    flatbuffer = qdq.to_tflite(q)  # raised before: FULLY_CONNECTED, RESHAPE, ADD float
    assert _tflite_ops(flatbuffer) == {"QUANTIZE": 1, "FULLY_CONNECTED": 1, "DEQUANTIZE": 1}
    got, expected = _tflite_run(flatbuffer, x), q.predict(x, verbose=0)
    _assert_agrees(got, expected, f"Dense rank-3, bias {bias}, TFLite")
    # A uniform bias ("ones") was quantized with the first channel's scale only (a converter
    # bug that the trace avoids): within one output step everywhere.
    assert np.abs(got - expected).max() <= _output_step(q) * 1.01


# -- subclassed models ----------------------------------------------------------------------------


class HandQuantized(keras.Model):
    """A subclassed model quantized by hand, as quantize_model's error message advises."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.q_in = QuantizeAndDequantize(range_mode="tracked", name="q_in")
        self.conv = QuantizeWrapper(L.Conv2D(4, 3, activation="relu"))
        self.q_conv = QuantizeAndDequantize(range_mode="tracked", signed=False, name="q_conv")
        self.pool = L.GlobalAveragePooling2D()
        self.q_pool = QuantizeAndDequantize(range_mode="tracked", signed=False, name="q_pool")
        self.head = QuantizeWrapper(L.Dense(3))
        self.q_out = QuantizeAndDequantize(range_mode="tracked", name="q_out")

    def call(self, x):
        y = self.q_conv(self.conv(self.q_in(x)))
        return self.q_out(self.head(self.q_pool(self.pool(y))))


def test_subclassed_model_calibrates_and_exports_to_both_runtimes():
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    model = HandQuantized()
    ranges = calibrate(model, x, verbose=False)  # raised AttributeError: no `inputs`
    assert set(ranges) == {"q_in", "q_conv", "q_pool", "q_out"}
    expected = model.predict(x, verbose=0)
    assert [s.shape.as_list() for s in _trace.input_signature(model)] == [[None, 8, 8, 1]]
    # verify=False: the exporters' verification step still reads model.inputs (see the report).
    proto = qdq.to_onnx(model, verify=False)
    _assert_agrees(_onnx_run(proto, x)[0], expected, "subclassed, ONNX Runtime")
    flatbuffer = qdq.to_tflite(model, verify=False)
    _assert_agrees(_tflite_run(flatbuffer, x), expected, "subclassed, TFLite")


def test_subclassed_model_takes_an_explicit_input_signature():
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    model = HandQuantized()
    calibrate(model, x, verbose=False)
    spec = tf.TensorSpec((None, 8, 8, 1), tf.float32, name="pixels")
    flatbuffer = tflite.integer_tflite(model, input_signature=[spec])
    details = tflite.interpreter(flatbuffer).get_input_details()
    assert "pixels" in details[0]["name"]
    _assert_agrees(_tflite_run(flatbuffer, x), model.predict(x, verbose=0), "subclassed with a signature, TFLite")


def test_never_called_subclassed_model_gets_an_error_naming_what_to_do():
    with pytest.raises(ValueError, match=r"never called.*calibrate"):
        qdq.to_onnx(HandQuantized(), verify=False)
    with pytest.raises(ValueError, match=r"never called.*calibrate"):
        qdq.to_tflite(HandQuantized(), verify=False)


def test_calibrate_names_quantizers_it_cannot_calibrate():
    class BatchRanges(keras.Model):
        def __init__(self):
            super().__init__()
            self.q = QuantizeAndDequantize()  # range_mode="batch" by default
            self.dense = QuantizeWrapper(L.Dense(2))

        def call(self, x):
            return self.dense(self.q(x))

    with pytest.raises(ValueError, match="range_mode='tracked'"):
        calibrate(BatchRanges(), np.zeros((4, 3), np.float32), verbose=False)


# -- larger models (slow) -------------------------------------------------------------------------


@pytest.mark.slow
def test_mobilenet_v2_with_rescaling_at_the_input_is_a_full_integer_tflite_model():
    i = keras.Input((32, 32, 3))
    x = L.Rescaling(1 / 127.5, offset=-1)(i)  # MobileNet's preprocessing, inside the model
    base = keras.applications.MobileNetV2(input_tensor=x, alpha=0.35, weights=None, include_top=False)
    # Its first six blocks (residual adds included), with a head: the untrained network's later
    # blocks amplify one-step differences (not what this test is about).
    y = L.Dense(10)(L.GlobalAveragePooling2D()(base.get_layer("block_5_add").output))
    model = keras.Model(i, y)
    data = np.round(np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3))).astype(np.float32)
    # Untrained BatchNorm statistics (mean 0, variance 1) let the signal fade; one pass with
    # momentum 0 sets them to the data's.
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.momentum = 0.0
    model(data, training=True)
    q = _quantized(model, data)
    images = np.round(np.random.default_rng(1).uniform(0, 255, (16, 32, 32, 3))).astype(np.float32)
    flatbuffer = qdq.to_tflite(q)  # raised before: MUL and ADD at the input stayed float
    ops = _tflite_ops(flatbuffer)
    assert ops["QUANTIZE"] == 1 and ops["ADD"] == 3 and not {"MUL", "SUB"} & set(ops), ops
    _assert_agrees(_tflite_run(flatbuffer, images), q.predict(images, verbose=0), "MobileNetV2 + Rescaling, TFLite",
                   _output_step(q))


@pytest.mark.slow
def test_text_model_with_bidirectional_lstm_and_gelu_exports_to_both_runtimes():
    i = keras.Input((20,), dtype="int32")
    x = L.Bidirectional(L.LSTM(16, return_sequences=True))(L.Embedding(100, 16)(i))
    x = L.GlobalAveragePooling1D()(L.Dense(16, activation="gelu")(x))  # Dense on rank 3, exact GELU
    tokens = np.random.default_rng(0).integers(0, 100, (64, 20)).astype(np.int32)
    q = _quantized(keras.Model(i, L.Dense(4)(x)), tokens)
    expected = q.predict(tokens, verbose=0)
    _assert_agrees(_onnx_run(qdq.to_onnx(q), tokens)[0], expected, "text model, ONNX Runtime")
    flatbuffer = qdq.to_tflite(q, allow_float_ops=True)  # the LSTM stays float
    _assert_agrees(_tflite_run(flatbuffer, tokens), expected, "text model, TFLite")
