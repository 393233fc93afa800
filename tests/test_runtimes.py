"""examples/runtimes.py, the runners the demo and the benchmarks use: their outputs
against independent references (the Keras model for the float baselines, onnx's reference
evaluator for a 4-bit export), across batch sizes."""

import sys
from pathlib import Path

import keras
import numpy as np
import onnx.reference

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import _sessions
from tensorflow_qdq.keras import calibrate, quantize_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # examples/runtimes.py: tooling
import runtimes  # noqa: E402

L = keras.layers


def _float_model():
    inputs = keras.Input((6, 6, 2), name="image")
    x = L.Normalization(axis=-1, mean=[0.1, -0.2], variance=[0.5, 2.0])(inputs)  # captured constants
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.Conv2D(4, 3, padding="same")(x)))
    return keras.Model(inputs, L.Dense(3)(x))


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 6, 6, 2)).astype(np.float32)


def test_float_baselines_run_the_keras_model_at_any_batch_size():
    model = _float_model()
    onnx_run = runtimes.onnx_runner(runtimes.float_onnx(model))
    tflite_run = runtimes.tflite_runner(runtimes.float_tflite(model))
    for n in (1, 5, 2):  # the TFLite runner resizes its input, also back to a smaller batch
        x = _images(n, seed=n)
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(onnx_run(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tflite_run(x), expected, rtol=1e-5, atol=1e-6)


def test_four_bit_export_runs_in_onnx_runtime_as_the_reference_evaluator_computes_it():
    inputs = keras.Input((6, 6, 2))
    x = L.MaxPooling2D()(L.ReLU()(L.Conv2D(4, 3, padding="same", name="conv")(inputs)))
    model = quantize_model(keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(x))), weight_bits=4,
                           activation_bits=4, verbose=False)
    x = _images(8)
    calibrate(model, x, verbose=False)
    four, eight = qdq.to_onnx(model), qdq.to_onnx(quantize_model(_float_model(), verbose=False))
    assert _sessions.has_four_bit_tensors(four) and not _sessions.has_four_bit_tensors(eight)
    reference = onnx.reference.ReferenceEvaluator(four).run(None, {four.graph.input[0].name: x})[0]
    np.testing.assert_allclose(runtimes.onnx_runner(four)(x), reference, rtol=1e-6, atol=1e-6)


def test_latencies_cover_every_runner():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(x):
            calls[name] += 1
            return x
        return run

    ms = runtimes.latencies_ms({"a": runner("a"), "b": runner("b")}, np.zeros(1), rounds=3, calls=2, warmup=1)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls == {"a": 1 + 3 * 2, "b": 1 + 3 * 2}
