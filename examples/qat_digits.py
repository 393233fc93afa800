"""Quantization-aware training with tensorflow-qdq on scikit-learn's bundled digits.

Trains a small CNN in float, then fine-tunes 8-bit and 4-bit copies made by
``tensorflow_qdq.keras.quantize_model`` (per-channel weights, tracked activation ranges),
prints accuracy and training step time side by side, exports the 8-bit model as a
SavedModel, reloads it and checks that its outputs match. The digits data (1,797 8x8
images) ships inside scikit-learn: nothing is downloaded. About a minute on 2 CPU cores.

    python examples/qat_digits.py [--epochs 20] [--qat-epochs 6] [--export-dir DIR]
"""

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tensorflow_qdq  # noqa: E402 - registers the ops a reloaded SavedModel needs
from tensorflow_qdq.keras import quantize_model  # noqa: E402


def digits(seed=0):
    """Train/test split of the digits images scaled to [0, 1], shape (n, 8, 8, 1)."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., np.newaxis]
    return train_test_split(images, data.target, test_size=0.25, random_state=seed, stratify=data.target)


def float_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
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
    """Float training, then QAT at each bit width. Returns (rows, {bits: quantized model})."""
    keras.utils.set_random_seed(seed)
    model = float_model()
    say(f"float training ({epochs} epochs)")
    rows = [("float32", *train(model, data, epochs, 3e-3, verbose))]
    quantized = {}
    for b in bits:
        say(f"quantization-aware training at {b} bits ({qat_epochs} epochs), from the float weights")
        quantized[b] = quantize_model(model, weight_bits=b, activation_bits=b)
        rows.append((f"{b}-bit QAT", *train(quantized[b], data, qat_epochs, 1e-3, verbose)))
    return rows, quantized


def export_and_reload(model, x, export_dir):
    """SavedModel round trip: returns (Keras outputs, reloaded SavedModel outputs)."""
    model.export(export_dir, verbose=False)
    reloaded = tf.saved_model.load(export_dir)
    return model.predict(x, verbose=0), reloaded.serve(tf.constant(x)).numpy()


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
    rows, quantized = run_qat(data, args.epochs, args.qat_epochs, seed=args.seed)

    say("results on the test set")
    print(f"{'model':<12} {'accuracy':>9} {'vs float':>9} {'step time':>10}")
    for name, accuracy, step_ms in rows:
        print(f"{name:<12} {100 * accuracy:>8.2f}% {100 * (accuracy - rows[0][1]):>+8.2f}  {step_ms:>7.2f} ms")

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
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    if not same:
        raise SystemExit("the reloaded SavedModel's outputs differ from the Keras model's")


if __name__ == "__main__":
    main()
