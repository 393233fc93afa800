"""Post-training quantization with and without cross-layer equalization (``equalize``) on the
README's MobileNetV2-0.35 digits task (examples/ptq_vs_qat.py's setup: keras.applications
MobileNetV2, alpha 0.35, trained from scratch on scikit-learn's digits at 32x32x3). For each seed
the float model is trained once; then each variant (the model as trained, equalized, equalized
with ReLU6 replaced by ReLU, and that with high-bias absorption) is quantized with quantize_model,
calibrated ("max", on the training images) and scored on the test images at W8A8, W4A8 and W4A4
(quantize_model: weights per channel, activations per tensor); and, as in the paper's setting,
with every kernel on one grid per tensor (8 and 6 bits, weights only, in NumPy).
Nothing is downloaded; a few minutes per seed on 2 cores.

    python examples/equalize_digits.py [--seeds 0 1 2] [--epochs 20]
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import ptq_vs_qat  # noqa: E402 - examples/ptq_vs_qat.py: the data, training and scoring

from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402

try:
    from tensorflow_qdq.keras import equalize  # noqa: E402
except ImportError:  # before the package face exports it
    from tensorflow_qdq.keras._equalize import equalize  # noqa: E402

VARIANTS = ("as trained", "equalize", "equalize, relu6_to_relu", "equalize, relu6_to_relu, high-bias absorption")
WIDTHS = ((8, 8), (4, 8), (4, 4))  # (weight bits, activation bits)
PER_TENSOR_BITS = (8, 6)  # weights only, one grid per kernel


def trained_model(data, epochs, seed):
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10)
    for layer in model.layers:  # as ptq_vs_qat.py: BatchNorm statistics that follow 1,347 images
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    ptq_vs_qat.compile_and_fit(model, data, epochs, 2e-3)
    return model


def variant(model, name):
    """(the model for this variant, a line saying what equalize did)."""
    if name == "as trained":
        return model, ""
    equalized, report = equalize(model, relu6_to_relu="relu6_to_relu" in name,
                                 high_bias_absorption="absorption" in name, verbose=False)
    return equalized, str(report).splitlines()[0]


def per_tensor_weights(model, bits):
    """A float copy with every kernel fake-quantized on one symmetric grid per tensor (the paper's
    setting, where equalization matters most; quantize_model's weight grids are per channel)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    levels = 2 ** (bits - 1) - 1
    for layer in copy.layers:
        for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            variable = getattr(layer, name, None)
            if isinstance(variable, keras.Variable):
                value = variable.numpy()
                step = np.abs(value).max() / levels
                variable.assign(np.clip(np.round(value / step), -levels, levels) * step)
    return copy


def run_seed(seed, epochs):
    data = ptq_vs_qat.digits_32(seed)
    model = trained_model(data, epochs, seed)
    scores = {}
    for name in VARIANTS:
        candidate, summary = variant(model, name)
        x_test = data[1]
        change = np.max(np.abs(candidate.predict(x_test, verbose=0) - model.predict(x_test, verbose=0)))
        scores[(name, "float")] = ptq_vs_qat.accuracy(ptq_vs_qat.keras_predict(candidate), data)
        for weight_bits, activation_bits in WIDTHS:
            quantized = quantize_model(candidate, weight_bits=weight_bits, activation_bits=activation_bits,
                                       verbose=False)
            calibrate(quantized, data[0], verbose=False)
            scores[(name, f"W{weight_bits}A{activation_bits}")] = ptq_vs_qat.accuracy(
                ptq_vs_qat.keras_predict(quantized), data)
        for bits in PER_TENSOR_BITS:
            scores[(name, f"W{bits} per tensor, float activations")] = ptq_vs_qat.accuracy(
                ptq_vs_qat.keras_predict(per_tensor_weights(candidate, bits)), data)
        print(f"seed {seed}, {name}: " + ", ".join(f"{column} {100 * acc:.2f}%" for (row, column), acc
                                                   in scores.items() if row == name)
              + f"; largest change of a float output probability {change:.2e}" + (f"\n  {summary}" if summary else ""),
              flush=True)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    runs = [run_seed(seed, args.epochs) for seed in args.seeds]
    columns = (["float"] + [f"W{w}A{a}" for w, a in WIDTHS]
               + [f"W{bits} per tensor, float activations" for bits in PER_TENSOR_BITS])
    print(f"\nMobileNetV2-0.35 on digits 32x32, PTQ (calibrate max), test accuracy, seeds {args.seeds}:")
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in VARIANTS:
        cells = []
        for column in columns:
            values = 100 * np.array([run[(name, column)] for run in runs])
            cells.append(f"{values.mean():.2f}" + (f" +- {values.std():.2f}" if len(values) > 1 else "") + " %")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
