"""What the two-way QAT comparisons on the digits task share (learned_ranges.py,
range_update.py): their arguments, the float model they start from, and the table of mean and
spread over seeds."""

import argparse

import keras
import numpy as np
from qat_digits import digits, float_model, train


def arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=6)
    return parser.parse_args()


def float_baseline(epochs):
    """(data, the float model trained for `epochs` (seed 0), its test accuracy)."""
    data = digits(0)
    keras.utils.set_random_seed(0)
    model = float_model()
    accuracy, _ = train(model, data, epochs, 3e-3, verbose=0)
    print(f"float model: {100 * accuracy:.2f}% on {len(data[1])} test images")
    return data, model, accuracy


def print_table(results, variants, titles, float_accuracy, seeds):
    """results: {(bits, variant): [accuracy per seed]}; one row per width, the second variant's
    difference from the first."""
    first, second = variants
    print(f"\n{'bits':>4} {titles[0]:>16} {titles[1]:>16} {'difference':>11}"
          f"   (float {100 * float_accuracy:.2f}%, mean +- std over {seeds} seeds)")
    for b in sorted({b for b, _ in results}, reverse=True):
        a, z = np.array(results[(b, first)]), np.array(results[(b, second)])
        print(f"{b:>4} {100 * a.mean():>9.2f} +- {100 * a.std():.2f} {100 * z.mean():>9.2f} +- {100 * z.std():.2f}"
              f" {100 * (z.mean() - a.mean()):>+10.2f}")
