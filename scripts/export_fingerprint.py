"""Fingerprints of what the library produces, for refactors that must not change behaviour.

Builds two models deterministically (the demo's digits CNN after one QAT epoch, and
MobileNetV2 alpha 0.35 at 32x32 after calibration and two QAT steps), exports each to ONNX and
TFLite, and writes into OUT_DIR the exported files, the Keras outputs (.npy) and
``fingerprints.txt`` (sha256 of each; of an ONNX model with its tensors and nodes renamed in
graph order, since tf2onnx numbers its names differently from run to run). Run it before and
after a change and compare:

    python scripts/export_fingerprint.py /tmp/before      # on the old commit
    python scripts/export_fingerprint.py /tmp/after
    diff /tmp/before/fingerprints.txt /tmp/after/fingerprints.txt
"""

import hashlib
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_qdq  # noqa: E402
from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402


def _fit(model, x, y, epochs, batch_size):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)


def digits_model():
    import qat_digits

    x_train, x_test, y_train, _ = qat_digits.digits()
    keras.utils.set_random_seed(0)
    float_model = qat_digits.float_model()
    _fit(float_model, x_train, y_train, epochs=3, batch_size=32)
    model = quantize_model(float_model, verbose=False)
    calibrate(model, x_train, verbose=False)
    _fit(model, x_train, y_train, epochs=1, batch_size=32)
    return model, x_test


def mobilenet_v2():
    keras.utils.set_random_seed(0)
    float_model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    x = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    y = np.arange(64) % 10
    model = quantize_model(float_model, verbose=False)
    calibrate(model, x[:32], verbose=False)
    _fit(model, x[:32], y[:32], epochs=1, batch_size=16)
    return model, x[32:]


def canonical_onnx(serialized):
    """The ONNX model with every tensor named by its order of appearance and nodes unnamed."""
    import onnx

    model = onnx.load_from_string(serialized)
    graph, names = model.graph, {}

    def rename(name):
        return names.setdefault(name, f"t{len(names)}") if name else name

    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = rename(value.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for field in (graph.initializer, graph.value_info):
        ordered = sorted(field, key=lambda item: int(item.name[1:]) if item.name[1:].isdigit() else -1)
        del field[:]
        field.extend(ordered)
    return model.SerializeToString()


def main(out_dir):
    tf.config.experimental.enable_op_determinism()
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for name, build in (("digits", digits_model), ("mobilenet_v2", mobilenet_v2)):
        model, x = build()
        outputs = {
            f"{name}_keras.npy": model.predict(x, verbose=0),
            f"{name}.onnx": tensorflow_qdq.to_onnx(model).SerializeToString(),
            f"{name}.tflite": tensorflow_qdq.to_tflite(model),
        }
        for file, value in outputs.items():
            path = os.path.join(out_dir, file)
            if file.endswith(".npy"):
                np.save(path, value)
                value = open(path, "rb").read()
            else:
                with open(path, "wb") as f:
                    f.write(value)
            if file.endswith(".onnx"):
                value = canonical_onnx(value)
            lines.append(f"{hashlib.sha256(value).hexdigest()}  {file}")
            print(lines[-1], flush=True)
    with open(os.path.join(out_dir, "fingerprints.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fingerprints")
