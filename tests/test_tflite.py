"""TFLite: the README's QAT digits model (examples/qat_digits.py), exported with
tensorflow_qdq.to_tflite and run by the TFLite interpreter, predicts what the Keras model does.

The default (integer=True) is a full-integer model: int8 weights per channel, int8
activations with the model's ranges, int32 biases. integer=False is the float model with
QUANTIZE/DEQUANTIZE pairs: exact=True (the composite everywhere) or exact=False (TFLite's own
grid for the per-tensor activations). Measured agreement and logit differences are printed
(`pytest -s`) and recorded in docs/DEPLOY.md; the assertions require 98% (integer, as the
issue asks), 99.5% (exact) and 98% (built-in).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq

MIN_AGREEMENT = {True: 0.995, False: 0.98}


@pytest.fixture(scope="module")
def trained(short_qat):
    data, accuracy, quantized = short_qat
    return data, accuracy, quantized[8]


def _interpreter_predictions(tflite_bytes, images):
    """One image at a time through TensorFlow's TFLite interpreter."""
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    source, result = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    logits = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(result["index"])[0])
    return np.asarray(logits)


def _agreement(name, model, tflite_bytes, x_test, y_test):
    keras_logits = model.predict(x_test, verbose=0)
    tflite_logits = _interpreter_predictions(tflite_bytes, x_test)
    agreement = float(np.mean(tflite_logits.argmax(1) == keras_logits.argmax(1)))
    print(f"{name}: TFLite agrees with Keras on {100 * agreement:.2f}% of {len(x_test)} test images; accuracy "
          f"Keras {100 * np.mean(keras_logits.argmax(1) == y_test):.2f}%, TFLite "
          f"{100 * np.mean(tflite_logits.argmax(1) == y_test):.2f}%; max |logit difference| "
          f"{np.max(np.abs(tflite_logits - keras_logits)):.3g}")
    return agreement


def test_default_is_a_full_integer_model_that_agrees_with_keras(trained):
    (_, x_test, _, y_test), accuracy, model = trained
    assert accuracy["8-bit QAT"] > 0.8
    tflite_bytes = qdq.to_tflite(model)
    # the ops as converted (without XNNPACK, which would replace them by a DELEGATE op)
    interpreter = tf.lite.Interpreter(
        model_content=tflite_bytes,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    names = [op["op_name"] for op in ops]
    assert names.count("CONV_2D") == 2 and "FULLY_CONNECTED" in names, names
    for op in ops:
        dtypes = {tensors[i]["dtype"] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0}
        if op["op_name"] == "QUANTIZE" or op["op_name"] == "DEQUANTIZE":
            continue  # the float input and output of the model
        assert dtypes <= {np.int8, np.int32}, (op["op_name"], dtypes)
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            weight, bias = tensors[op["inputs"][1]], tensors[op["inputs"][2]]
            channels = weight["shape"][0]
            assert weight["dtype"] == np.int8 and bias["dtype"] == np.int32
            assert len(weight["quantization_parameters"]["scales"]) == channels  # per output channel
    assert _agreement("integer", model, tflite_bytes, x_test, y_test) >= 0.98


def test_layers_without_int8_kernels_are_named_not_left_float_silently():
    import keras

    from tensorflow_qdq.keras import calibrate, quantize_model

    inputs = keras.Input((4, 4, 4, 2))
    x = keras.layers.Conv3D(3, 3, padding="same", name="vol")(inputs)
    model = quantize_model(keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(x)), verbose=False)
    calibrate(model, np.random.default_rng(0).standard_normal((8, 4, 4, 4, 2)).astype(np.float32), verbose=False)
    with pytest.raises(ValueError, match=r"stayed float in the TFLite model.*CONV_3D"):
        qdq.to_tflite(model)
    assert len(qdq.to_tflite(model, allow_float_ops=True)) > 0
    with pytest.raises(ValueError, match="no quantizers"):
        qdq.to_tflite(keras.Model(inputs, x), integer=True)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "builtin"])
def test_float_with_qdq_predictions_agree_with_keras(trained, exact):
    (_, x_test, _, y_test), accuracy, model = trained
    assert accuracy["8-bit QAT"] > 0.8  # a model that learned something, so agreement means something
    tflite_bytes = qdq.to_tflite(model, integer=False, exact=exact)
    ops = {d["op_name"] for d in tf.lite.Interpreter(model_content=tflite_bytes)._get_ops_details()}
    assert not any("Flex" in op or "Custom" in op.title() for op in ops), ops  # plain TFLite builtins
    if not exact:
        assert {"QUANTIZE", "DEQUANTIZE"} <= ops
    assert _agreement(f"integer=False, exact={exact}", model, tflite_bytes, x_test, y_test) >= MIN_AGREEMENT[exact]


_LOAD_AND_RUN = """
import sys
import numpy as np
import tensorflow as tf
data, out, *dirs = sys.argv[1:]
x = np.load(data)
models = [tf.saved_model.load(d) for d in dirs]  # kept alive while their functions run
np.savez(out, **{str(i): m.serve(tf.constant(x)).numpy() for i, m in enumerate(models)})
assert "tensorflow_qdq" not in sys.modules
"""


def test_exported_keras_model_runs_without_the_library(trained, tmp_path):
    """export() of the Keras QAT model loads in a fresh process that never imports
    tensorflow_qdq, and its outputs equal the Keras model's bit for bit, both ways
    (the built-in activations hold no NaN and have non-degenerate tracked ranges)."""
    (_, x_test, _, _), _, model = trained
    dirs = [str(tmp_path / name) for name in ("default", "exact")]
    counts = [qdq.export(model, d, exact=(d == dirs[1])) for d in dirs]
    assert counts[0] == counts[1] > 0
    np.save(tmp_path / "x.npy", x_test)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path / "x.npy"), str(tmp_path / "out.npz"),
                           *dirs],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = np.load(tmp_path / "out.npz")
    expected = model.predict(x_test, verbose=0)
    for i, name in enumerate(("default", "exact")):
        np.testing.assert_array_equal(results[str(i)], expected, err_msg=name)
