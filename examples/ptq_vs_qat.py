"""Float vs post-training quantization (PTQ) vs quantization-aware training (QAT) on a real
architecture: keras.applications MobileNetV2 (alpha 0.35, trained from scratch) on
scikit-learn's digits upsampled to 32x32x3, at 8 and 4 bits, then the 8-bit QAT model
deployed as int8 in ONNX Runtime and TFLite. Nothing is downloaded; a few minutes on 2 cores.

    python examples/ptq_vs_qat.py [--epochs 20] [--qat-epochs 5] [--seed 0]
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import runtimes  # noqa: E402 - examples/runtimes.py
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tensorflow_qdq  # noqa: E402
from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402


def digits_32(seed=0):
    """Digits scaled to [-1, 1] (MobileNetV2's input range), 4x nearest upsampling, 3 channels."""
    data = load_digits()
    images = (data.images / 8.0 - 1.0).astype(np.float32)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)[..., None].repeat(3, axis=-1)
    return train_test_split(images, data.target, test_size=0.25, random_state=seed, stratify=data.target)


def compile_and_fit(model, data, epochs, learning_rate):
    x_train, _, y_train, _ = data
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)


def accuracy(predict, data):
    _, x_test, _, y_test = data
    return float(np.mean(predict(x_test).argmax(-1) == y_test))


def keras_predict(model):
    return lambda x: model.predict(x, batch_size=64, verbose=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    data = digits_32(args.seed)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10)
    for layer in model.layers:  # its BatchNorms average over ~1000 steps: too slow for 1,347 images
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    compile_and_fit(model, data, args.epochs, 2e-3)
    rows = [("float32", accuracy(keras_predict(model), data))]
    print(f"float32 trained ({args.epochs} epochs): {100 * rows[0][1]:.2f}%", flush=True)
    # QAT trains qat_epochs more: the fair float baseline gets those epochs too (on a copy)
    longer = keras.models.clone_model(model)
    longer.set_weights(model.get_weights())
    compile_and_fit(longer, data, args.qat_epochs, 2e-4)
    rows.append((f"float32 + {args.qat_epochs} epochs", accuracy(keras_predict(longer), data)))
    deployed = None
    for bits in (8, 4):
        ptq = quantize_model(model, weight_bits=bits, activation_bits=bits, verbose=bits == 8)
        calibrate(ptq, data[0], verbose=False)
        rows.append((f"{bits}-bit PTQ (calibrate, max)", accuracy(keras_predict(ptq), data)))
        ptq = quantize_model(model, weight_bits=bits, activation_bits=bits, verbose=False)
        calibrate(ptq, data[0], method="percentile", percentile=99.99, verbose=False)
        rows.append((f"{bits}-bit PTQ (calibrate, percentile 99.99)", accuracy(keras_predict(ptq), data)))
        qat = quantize_model(model, weight_bits=bits, activation_bits=bits, freeze_bn_delay=None, verbose=False)
        calibrate(qat, data[0], verbose=False)
        compile_and_fit(qat, data, args.qat_epochs, 2e-4)
        rows.append((f"{bits}-bit QAT ({args.qat_epochs} epochs)", accuracy(keras_predict(qat), data)))
        print(f"{bits} bits done", flush=True)
        if bits == 8:
            deployed = qat
    onnx_run = runtimes.onnx_runner(tensorflow_qdq.to_onnx(deployed))
    tflite_run = runtimes.tflite_runner(tensorflow_qdq.to_tflite(deployed))
    rows.append(("8-bit QAT, ONNX Runtime int8", accuracy(onnx_run, data)))
    rows.append(("8-bit QAT, TFLite int8", accuracy(tflite_run, data)))

    print(f"\nMobileNetV2-0.35 on digits 32x32 ({len(data[1])} test images):")
    print(f"| {'model':<44} | test accuracy | vs float |")
    print(f"|{'-' * 46}|---------------|----------|")
    for name, acc in rows:
        print(f"| {name:<44} | {100 * acc:12.2f}% | {100 * (acc - rows[0][1]):+7.2f}  |")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
