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

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from qat_digits import train  # noqa: E402
from seed_comparison import arguments, float_baseline, print_table  # noqa: E402

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


def main():
    args = arguments(__doc__.splitlines()[0])
    start = time.perf_counter()
    data, model, float_accuracy = float_baseline(args.epochs)
    results = compare(model, data, args.bits, args.seeds, args.qat_epochs)
    print_table(results, UPDATES, ("immediate", "delayed"), float_accuracy, args.seeds)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
