"""Learned (LSQ) vs tracked activation ranges at 8, 4 and 3 bits on scikit-learn's digits.

Trains the digits CNN of ``qat_digits.py`` in float once; then, for each bit width and each
seed, makes two QAT copies with ``quantize_model`` that differ only in ``activation_range``
(``"tracked"``: moving averages of the batch min/max; ``"learned"``: a trainable step per
quantizer with LSQ's gradient), starts both from the same calibration, trains both the same
way, and prints mean and spread of the test accuracy. Finally the learned models of the
first seed are exported, 8 bits with ``to_onnx`` and ``to_tflite``, 4 bits with ``to_onnx``
(TFLite's integer kernels take 8 bits only), and the runtimes' predictions are compared
with Keras'. Nothing is downloaded; about three minutes on 2 CPU cores.

    python examples/learned_ranges.py [--bits 8 4 3] [--seeds 5] [--qat-epochs 6]
"""

import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import runtimes  # noqa: E402 - examples/runtimes.py
from qat_digits import train  # noqa: E402
from seed_comparison import arguments, float_baseline, print_table  # noqa: E402

import tensorflow_qdq  # noqa: E402
from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402

MODES = ("tracked", "learned")


def compare(model, data, bits, seeds, qat_epochs):
    """{(bits, mode): [test accuracy per seed]} and the learned models of the first seed."""
    x_train = data[0]
    results, first = {}, {}
    for b in bits:
        for seed in range(seeds):
            for mode in MODES:
                keras.utils.set_random_seed(1000 + seed)  # the same shuffling for both modes
                qat = quantize_model(model, weight_bits=b, activation_bits=b, activation_range=mode, verbose=False)
                calibrate(qat, x_train, verbose=False)
                acc, _ = train(qat, data, qat_epochs, 1e-3, verbose=0)
                results.setdefault((b, mode), []).append(acc)
                if seed == 0:
                    first[(b, mode)] = qat
                print(f"  {b}-bit {mode:<8} seed {seed}: {100 * acc:.2f}%", flush=True)
    return results, first


def export_check(model, bits, data):
    """Test accuracy and agreement with Keras of the model's ONNX Runtime (and, at 8 bits,
    TFLite) integer exports."""
    _, x_test, _, y_test = data
    keras_pred = model.predict(x_test, verbose=0).argmax(-1)
    print(f"the learned {bits}-bit model (seed 0): Keras accuracy {100 * np.mean(keras_pred == y_test):.2f}%")
    runners = {"ONNX Runtime": runtimes.onnx_runner(tensorflow_qdq.to_onnx(model).SerializeToString(), threads=1)}
    if bits == 8:
        runners["TFLite"] = runtimes.tflite_runner(tensorflow_qdq.to_tflite(model), threads=1)
    for name, run in runners.items():
        pred = run(x_test).argmax(-1)
        print(f"  {name:<13} accuracy {100 * np.mean(pred == y_test):.2f}%, "
              f"agrees with Keras on {100 * np.mean(pred == keras_pred):.1f}% of {len(y_test)} test images")


def main():
    args = arguments(__doc__.splitlines()[0])
    start = time.perf_counter()
    data, model, float_accuracy = float_baseline(args.epochs)
    results, first = compare(model, data, args.bits, args.seeds, args.qat_epochs)
    print_table(results, MODES, ("tracked ranges", "learned ranges"), float_accuracy, args.seeds)
    print()
    for b in [b for b in args.bits if b in (8, 4)]:
        export_check(first[(b, "learned")], b, data)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
