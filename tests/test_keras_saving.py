"""Saving models with our layers: the .keras format and SavedModel (model.export and
tf.saved_model.save), reloaded in a fresh process; without the import the errors name
tensorflow_qdq / its ops."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tensorflow_qdq
from tensorflow_qdq.keras import QuantizeAndDequantize, quantize_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: first without tensorflow_qdq (both loads must fail with
# errors that say what is missing), then after the import (outputs must be identical).
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf, keras
    tmp = sys.argv[1]
    x = np.load(tmp + "/x.npy")
    report = {}
    try:
        tf.saved_model.load(tmp + "/exported")
    except Exception as exc:
        report["saved_model_error"] = f"{type(exc).__name__}: {exc}"
    try:
        keras.saving.load_model(tmp + "/model.keras")
    except Exception as exc:
        report["keras_error"] = f"{type(exc).__name__}: {exc}"
    assert "tensorflow_qdq" not in sys.modules
    import tensorflow_qdq  # the ops: all a SavedModel needs
    exported = tf.saved_model.load(tmp + "/exported")  # keep a reference: it owns the variables
    np.save(tmp + "/exported_out.npy", exported.serve(tf.constant(x)).numpy())
    tf_saved = tensorflow_qdq.load_saved_model(tmp + "/tf_saved")
    serving = tf_saved.signatures["serving_default"]
    (input_name,) = serving.structured_input_signature[1]
    (output,) = serving(**{input_name: tf.constant(x)}).values()
    np.save(tmp + "/tf_saved_out.npy", output.numpy())
    report["ops"] = tensorflow_qdq.qdq_ops_in_saved_model(tmp + "/exported")
    assert "tensorflow_qdq.keras" not in sys.modules
    import tensorflow_qdq.keras  # the layer classes: what a .keras file needs
    model = keras.saving.load_model(tmp + "/model.keras")
    np.save(tmp + "/keras_out.npy", model.predict(x, verbose=0))
    report["keras_ranges"] = [w.numpy().tolist() for w in model.weights if "tracked" in w.path]
    print("REPORT" + json.dumps(report))
    """
)


def trained_model():
    keras.utils.set_random_seed(11)
    inputs = keras.Input((6, 6, 1))
    x = QuantizeAndDequantize(range_mode="tracked", num_bits=7, name="qdq_input")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5)(x)
    x = QuantizeAndDequantize(range_mode="fixed", axis=-1, min_value=[-1, -2, -3, -4, -5], max_value=[1, 2, 3, 4, 5])(x)
    x = QuantizeAndDequantize(gradient="straight_through", round_mode="HALF_UP", num_bits=5)(x)
    model = quantize_model(keras.Model(inputs, x), weight_bits=6, activation_bits=6)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((64, 6, 6, 1)).astype(np.float32), rng.standard_normal((64, 5)).astype(np.float32),
              epochs=2, batch_size=16, verbose=0)
    return model


def test_keras_and_saved_model_round_trips_in_a_fresh_process(tmp_path):
    model = trained_model()
    x = np.random.default_rng(1).standard_normal((10, 6, 6, 1)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    ranges = [w.numpy().tolist() for w in model.weights if "tracked" in w.path]
    # 2 tracked quantizers, trained: the input's, and the conv's output (which Flatten passes on to
    # the Dense on the same grid, so no third)
    assert len(ranges) == 2 * 3 and ranges[0] != -6.0
    model.save(tmp_path / "model.keras")
    model.export(str(tmp_path / "exported"), verbose=False)
    tf.saved_model.save(model, str(tmp_path / "tf_saved"))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])

    # without `import tensorflow_qdq`: TensorFlow names our op type; Keras names the package
    assert "Op type not registered 'Qdq>QuantizeAndDequantize" in report["saved_model_error"]
    assert "tensorflow_qdq>QuantizeAndDequantize" in report["keras_error"] or \
        "tensorflow_qdq>Quantized" in report["keras_error"], report["keras_error"]
    # after it: identical outputs from all three formats, and the trained ranges came back
    for name in ("keras_out", "exported_out", "tf_saved_out"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected, err_msg=name)
    assert report["keras_ranges"] == ranges
    assert report["ops"] == ["Qdq>QuantizeAndDequantizeV2", "Qdq>QuantizeAndDequantizeV4"]


def test_load_saved_model_explains_ops_this_build_lacks(tmp_path):
    """A SavedModel from a (hypothetical) newer tensorflow-qdq with an op we do not register."""
    module = tf.Module()
    module.f = tf.function(lambda x: tensorflow_qdq.quantize_and_dequantize_v2(x, -1.0, 1.0, range_given=True),
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    np.testing.assert_array_equal(tensorflow_qdq.load_saved_model(str(tmp_path)).f(tf.constant([0.5, 3.0])).numpy(),
                                  tensorflow_qdq.quantize_and_dequantize_v2([0.5, 3.0], -1.0, 1.0, range_given=True))
    path = tmp_path / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    renamed = 0
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Qdq>QuantizeAndDequantizeV4":
                node.op, renamed = "Qdq>QuantizeAndDequantizeV9", renamed + 1
    assert renamed
    path.write_bytes(proto.SerializeToString())
    assert tensorflow_qdq.qdq_ops_in_saved_model(str(tmp_path)) == ["Qdq>QuantizeAndDequantizeV9"]
    with pytest.raises(tensorflow_qdq.LibraryError, match=r"Qdq>QuantizeAndDequantizeV9.*saved by another version"):
        tensorflow_qdq.load_saved_model(str(tmp_path))
