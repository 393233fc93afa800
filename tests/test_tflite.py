"""TFLite: the README's QAT digits model (examples/qat_digits.py), exported with
tensorflow_qdq.to_tflite and run by the TFLite interpreter, predicts what the Keras model does.

Measured on the 450 digits test images (this machine, TF 2.21, the training below): both
exact=True (the composite everywhere) and exact=False (TFLite's own int8 QUANTIZE/DEQUANTIZE
grid for the per-tensor activations) agree with Keras on 100% of the predicted classes; the
logits differ by at most 0.196 (exact: TFLite's convolutions sum in another order, which can
move an activation across a grid step) and 1.91 (built-in: TFLite's asymmetric grid). The
assertions require 99.5% and 98%.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq

_DEMO = Path(__file__).resolve().parents[1] / "examples" / "qat_digits.py"
MIN_AGREEMENT = {True: 0.995, False: 0.98}


@pytest.fixture(scope="module")
def trained():
    spec = importlib.util.spec_from_file_location("qat_digits", _DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    data = demo.digits(seed=0)
    # Shorter than the demo's 20 + 6 epochs: agreement, not accuracy, is under test here.
    rows, quantized = demo.run_qat(data, epochs=8, qat_epochs=2, bits=(8,), seed=0, verbose=0)
    return data, dict((name, acc) for name, acc, _ in rows), quantized[8]


def _interpreter_predictions(tflite_bytes, images):
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    logits = [next(iter(runner(**{name: image[None]}).values()))[0] for image in images]
    return np.asarray(logits)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "builtin"])
def test_tflite_predictions_agree_with_keras(trained, exact):
    (_, x_test, _, y_test), accuracy, model = trained
    assert accuracy["8-bit QAT"] > 0.8  # a model that learned something, so agreement means something
    keras_logits = model.predict(x_test, verbose=0)
    tflite_bytes = qdq.to_tflite(model, exact=exact)
    ops = {d["op_name"] for d in tf.lite.Interpreter(model_content=tflite_bytes)._get_ops_details()}
    assert not any("Flex" in op or "Custom" in op.title() for op in ops), ops  # plain TFLite builtins
    if not exact:
        assert {"QUANTIZE", "DEQUANTIZE"} <= ops
    tflite_logits = _interpreter_predictions(tflite_bytes, x_test)
    agreement = float(np.mean(tflite_logits.argmax(1) == keras_logits.argmax(1)))
    tflite_accuracy = float(np.mean(tflite_logits.argmax(1) == y_test))
    print(f"exact={exact}: TFLite agrees with Keras on {100 * agreement:.2f}% of {len(x_test)} test images; "
          f"accuracy Keras {100 * accuracy['8-bit QAT']:.2f}%, TFLite {100 * tflite_accuracy:.2f}%; "
          f"max |logit difference| {np.max(np.abs(tflite_logits - keras_logits)):.3g}")
    assert agreement >= MIN_AGREEMENT[exact]


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
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path / "x.npy"), str(tmp_path / "out.npz"), *dirs],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = np.load(tmp_path / "out.npz")
    expected = model.predict(x_test, verbose=0)
    for i, name in enumerate(("default", "exact")):
        np.testing.assert_array_equal(results[str(i)], expected, err_msg=name)
