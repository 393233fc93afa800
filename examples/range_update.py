"""Delayed vs immediate tracked-range updates in QAT, at 8, 4 and 3 bits on scikit-learn's digits.

A tracked quantizer's training step either updates its moving-average range from the batch
and then quantizes with the updated range (``range_update="immediate"``, TF Model
Optimization's order: the batch is read twice before it is quantized), or quantizes with the
range from before the batch and updates the range from the same pass over it
(``"delayed"``, the default; delayed scaling as FP8 training does it, one read of the
activation). Trains the digits CNN of ``qat_digits.py`` in float once; then, for each bit
width and seed, two QAT copies that differ only in ``range_update``, started from the same
calibration and trained the same way; prints mean and spread of the test accuracy. Nothing is
downloaded; about two minutes on 2 CPU cores.

    python examples/range_update.py [--bits 8 4 3] [--seeds 5] [--qat-epochs 6]
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from qat_digits import digits, float_model, train  # noqa: E402

from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402

UPDATES = ("immediate", "delayed")


def compare(model, data, bits, seeds, qat_epochs):
    """{(bits, range_update): [test accuracy per seed]}."""
    results = {}
    for b in bits:
        for seed in range(seeds):
            for update in UPDATES:
                keras.utils.set_random_seed(1000 + seed)  # the same shuffling for both
                qat = quantize_model(model, weight_bits=b, activation_bits=b, range_update=update, verbose=False)
                calibrate(qat, data[0], verbose=False)
                acc, _ = train(qat, data, qat_epochs, 1e-3, verbose=0)
                results.setdefault((b, update), []).append(acc)
                print(f"  {b}-bit {update:<9} seed {seed}: {100 * acc:.2f}%", flush=True)
    return results


def print_table(results, float_accuracy, seeds):
    print(f"\n{'bits':>4} {'immediate':>16} {'delayed':>16} {'difference':>11}   (float {100 * float_accuracy:.2f}%,"
          f" mean +- std over {seeds} seeds)")
    for b in sorted({b for b, _ in results}, reverse=True):
        i, d = np.array(results[(b, "immediate")]), np.array(results[(b, "delayed")])
        print(f"{b:>4} {100 * i.mean():>9.2f} +- {100 * i.std():.2f} {100 * d.mean():>9.2f} +- {100 * d.std():.2f}"
              f" {100 * (d.mean() - i.mean()):>+10.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=6)
    args = parser.parse_args()
    start = time.perf_counter()
    data = digits(0)
    keras.utils.set_random_seed(0)
    model = float_model()
    float_accuracy, _ = train(model, data, args.epochs, 3e-3, verbose=0)
    print(f"float model: {100 * float_accuracy:.2f}% on {len(data[1])} test images")
    print_table(compare(model, data, args.bits, args.seeds, args.qat_epochs), float_accuracy, args.seeds)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
