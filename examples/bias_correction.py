"""Post-training quantization at low weight widths on scikit-learn's digits: nearest rounding vs
nearest rounding + empirical bias correction (``correct_bias``), and where the error comes from
(``sensitivity``).

For each seed: the README demo's CNN (examples/qat_digits.py: conv -> BatchNorm -> ReLU,
conv+ReLU, dense) trained in float, then for each weight width a ``quantize_model`` copy with
8-bit activations, calibrated on the training images (max), evaluated on the test images
before and after ``correct_bias`` (measured on the training images). Prints a table of test
accuracy and output SQNR against the float model (mean +- std over the seeds), then the
per-layer sensitivity of the first seed's 3-bit model. About a minute on 2 CPU cores.

    python examples/bias_correction.py [--seeds 3] [--epochs 10]
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # qat_digits.py

import keras  # noqa: E402
import qat_digits  # noqa: E402

from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402

try:
    from tensorflow_qdq.keras import correct_bias, sensitivity
except ImportError:  # a package face that does not present them yet
    from tensorflow_qdq.keras._bias_correction import correct_bias
    from tensorflow_qdq.keras._sensitivity import sensitivity


def sqnr(reference, y):
    return float(10 * np.log10(np.sum(np.square(reference)) / np.sum(np.square(y - reference))))


def measure(seed, bits, epochs):
    """{bits: (accuracy before, after, SQNR before, after)}, float accuracy, a 3-bit model, data."""
    data = qat_digits.digits(seed=seed)
    x_train, x_test, _, y_test = data
    keras.utils.set_random_seed(seed)
    model = qat_digits.float_model()
    float_accuracy, _ = qat_digits.train(model, data, epochs, 3e-3, verbose=0)
    reference = model.predict(x_test, verbose=0)
    rows, kept = {}, None
    for b in bits:
        q = quantize_model(model, weight_bits=b, activation_bits=8, verbose=False)
        calibrate(q, x_train, verbose=False)
        before = q.predict(x_test, verbose=0)
        if b == 3 and kept is None:
            kept = (q, model, x_test)
            sensitivity_report = sensitivity(q, x_test, float_model=model, verbose=False)
        correct_bias(q, x_train, verbose=False)
        after = q.predict(x_test, verbose=0)
        rows[b] = (np.mean(before.argmax(-1) == y_test), np.mean(after.argmax(-1) == y_test),
                   sqnr(reference, before), sqnr(reference, after))
    return rows, float_accuracy, (sensitivity_report if kept is not None else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    bits = (2, 3, 4)
    results, floats, first_report = {b: [] for b in bits}, [], None
    for seed in range(args.seeds):
        rows, float_accuracy, report = measure(seed, bits, args.epochs)
        floats.append(float_accuracy)
        first_report = first_report or report
        for b in bits:
            results[b].append(rows[b])
    def pm(values, scale=1.0, digits=2):
        values = np.asarray(values) * scale
        return f"{values.mean():.{digits}f} +- {values.std():.{digits}f}"

    print(f"\nfloat: {pm(floats, 100)} %  ({args.seeds} seeds, {args.epochs} epochs)")
    print("| weights | accuracy, nearest | accuracy, + correct_bias | SQNR, nearest | SQNR, + correct_bias |")
    print("|---|---|---|---|---|")
    for b in bits:
        r = np.asarray(results[b])
        print(f"| W{b}A8 | {pm(r[:, 0], 100)} % | {pm(r[:, 1], 100)} % | {pm(r[:, 2], digits=1)} dB | "
              f"{pm(r[:, 3], digits=1)} dB |")
    if first_report is not None:
        print("\nsensitivity of the W3A8 model (seed 0, test images, before bias correction):")
        print(first_report)


if __name__ == "__main__":
    main()
