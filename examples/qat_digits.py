"""Quantization-aware training with tensorflow-qdq on scikit-learn's bundled digits.

Trains a small CNN (conv -> BatchNorm -> ReLU, ...) in float; makes 8-bit and 4-bit copies
with ``tensorflow_qdq.keras.quantize_model`` (per-channel weights, BatchNorm folded, activation
quantizers where ONNX Runtime and TFLite need them), calibrates them on training data, and
compares post-training quantization (calibration only) with quantization-aware training.
Then it ships the 8-bit model: SavedModel round trip, and integer models for ONNX Runtime
and TFLite, with a table of accuracy, agreement with Keras, latency and file size.
The digits data (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded.
About two minutes on 2 CPU cores.

    python examples/qat_digits.py [--epochs 20] [--qat-epochs 6] [--export-dir DIR]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runtimes.py, also when loaded by path

import keras  # noqa: E402
import runtimes  # noqa: E402 - examples/runtimes.py
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tensorflow_qdq  # noqa: E402 - registers the ops a reloaded SavedModel needs
from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402


def digits(seed=0):
    """Train/test split of the digits images scaled to [0, 1], shape (n, 8, 8, 1)."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., np.newaxis]
    return train_test_split(images, data.target, test_size=0.25, random_state=seed, stratify=data.target)


def float_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),  # folded into the conv by quantize_model
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="digits_cnn",
    )


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step (the first epoch's steps, which trace, are dropped)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.steps_per_epoch = len(self.times)

    def median_ms(self):
        settled = self.times[getattr(self, "steps_per_epoch", 0) :] or self.times
        return 1e3 * float(np.median(settled))


def train(model, data, epochs, learning_rate, verbose=1, batch_size=32):
    """Compiles and fits ``model``; returns (test accuracy, median step time in ms)."""
    x_train, x_test, y_train, y_test = data
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = StepTimer()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, callbacks=[timer], verbose=verbose)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return accuracy, timer.median_ms()


def run_qat(data, epochs=20, qat_epochs=6, bits=(8, 4), seed=0, verbose=1):
    """Float training, post-training quantization at 8 bits, then QAT at each bit width.

    Returns (rows of (name, test accuracy, median step ms or None), {bits: QAT model}, the
    float model)."""
    keras.utils.set_random_seed(seed)
    model = float_model()
    say(f"float training ({epochs} epochs)")
    rows = [("float32", *train(model, data, epochs, 3e-3, verbose))]
    x_train, x_test, _, y_test = data

    say("post-training quantization at 8 bits: quantize_model + calibrate, no training")
    ptq = quantize_model(model, weight_bits=8, activation_bits=8, verbose=verbose > 0)
    calibrate(ptq, x_train, verbose=verbose > 0)
    rows.append(("8-bit PTQ", accuracy(ptq, x_test, y_test), None))
    quantized = {}
    for b in bits:
        say(f"quantization-aware training at {b} bits ({qat_epochs} epochs), from the float weights")
        quantized[b] = quantize_model(model, weight_bits=b, activation_bits=b, verbose=False)
        calibrate(quantized[b], x_train, verbose=False)  # start the ranges from data
        rows.append((f"{b}-bit QAT", *train(quantized[b], data, qat_epochs, 1e-3, verbose)))
    return rows, quantized, model


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def export_and_reload(model, x, export_dir):
    """SavedModel round trip: returns (Keras outputs, reloaded SavedModel outputs)."""
    model.export(export_dir, verbose=False)
    reloaded = tf.saved_model.load(export_dir)
    return model.predict(x, verbose=0), reloaded.serve(tf.constant(x)).numpy()


def deploy(model, data, out_dir, float_model=None):
    """Exports ``model`` as integer ONNX and TFLite models into ``out_dir``; returns table rows
    (runtime, test accuracy, agreement with the Keras model, batch-1 latency ms, file bytes).
    With ``float_model``, its float ONNX/TFLite exports are rows too (the speed baseline)."""
    _, x_test, _, y_test = data
    keras_out = model.predict(x_test, verbose=0)
    files = {
        "ONNX Runtime int8": tensorflow_qdq.to_onnx(model).SerializeToString(),
        "TFLite int8": tensorflow_qdq.to_tflite(model),
    }
    runners = {
        "ONNX Runtime int8": runtimes.onnx_runner(files["ONNX Runtime int8"], threads=1),
        "TFLite int8": runtimes.tflite_runner(files["TFLite int8"], threads=1),
    }
    if float_model is not None:
        files["ONNX Runtime float32"] = runtimes.float_onnx(float_model).SerializeToString()
        files["TFLite float32"] = runtimes.float_tflite(float_model)
        runners["ONNX Runtime float32"] = runtimes.onnx_runner(files["ONNX Runtime float32"], threads=1)
        runners["TFLite float32"] = runtimes.tflite_runner(files["TFLite float32"], threads=1)
    latency = runtimes.latencies_ms(runners, x_test[:1])
    rows = []
    for name, run in runners.items():
        with open(os.path.join(out_dir, name.replace(" ", "_").lower() + (".onnx" if "ONNX" in name else ".tflite")),
                  "wb") as f:
            f.write(files[name])
        out = run(x_test)
        predicted = out.argmax(-1)
        rows.append((name, float(np.mean(predicted == y_test)), float(np.mean(predicted == keras_out.argmax(-1))),
                     latency[name], len(files[name])))
    return rows


def print_deploy_table(rows):
    print(f"{'runtime':<22} {'accuracy':>9} {'agrees w/ Keras QAT':>20} {'latency b=1':>12} {'file size':>10}")
    for name, acc, agree, ms, size in rows:
        print(f"{name:<22} {100 * acc:>8.2f}% {100 * agree:>19.1f}% {ms:>9.3f} ms {size / 1024:>7.1f} KB")


def say(message):
    print(f"\n== {message}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=6, help="quantization-aware training epochs per bit width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-dir", help="where to write the 8-bit SavedModel (default: a temporary folder)")
    args = parser.parse_args()

    data = digits(args.seed)
    print(f"digits: {len(data[0])} training and {len(data[1])} test images of 8x8 pixels, 10 classes")
    start = time.perf_counter()
    rows, quantized, model = run_qat(data, args.epochs, args.qat_epochs, seed=args.seed)

    say("results on the test set")
    print(f"{'model':<12} {'accuracy':>9} {'vs float':>9} {'step time':>10}")
    for name, acc, step_ms in rows:
        step = "        -" if step_ms is None else f"{step_ms:>7.2f} ms"
        print(f"{name:<12} {100 * acc:>8.2f}% {round(100 * (acc - rows[0][1]), 2) + 0.0:>+8.2f}  {step}")

    say("SavedModel export of the 8-bit model")
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export_dir or os.path.join(tmp, "digits_qat8")
        keras_out, saved_out = export_and_reload(quantized[8], data[1], export_dir)
        print(f"exported to {export_dir} and reloaded with tf.saved_model.load "
              f"(tensorflow-qdq ops in it: {', '.join(tensorflow_qdq.qdq_ops_in_saved_model(export_dir))})")
    same = np.array_equal(keras_out, saved_out)
    agree = np.mean(keras_out.argmax(1) == saved_out.argmax(1))
    print(f"outputs on {len(keras_out)} test images: bit-identical {same}, max |difference| "
          f"{np.max(np.abs(keras_out - saved_out)):.3g}, predictions agree {100 * agree:.1f}%")
    if not same:
        raise SystemExit("the reloaded SavedModel's outputs differ from the Keras model's")

    say("the 8-bit QAT model as integer models (to_onnx, to_tflite), vs the float model's exports; "
        f"{len(data[1])} test images, latency: batch 1, one thread, median of interleaved runs")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = os.path.dirname(os.path.abspath(args.export_dir)) if args.export_dir else tmp
        print_deploy_table(deploy(quantized[8], data, out_dir, float_model=model))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
