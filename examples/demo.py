"""Quick demo: tensorflow-qdq against TensorFlow's built-in op, per tensor and per
channel, in all four float types. The main demo (scripts/demo.sh) is examples/qat_digits.py."""

import numpy as np
import tensorflow as tf

import tensorflow_qdq as qdq


def main():
    rng = np.random.default_rng(0)
    x32 = tf.constant(rng.standard_normal((4, 3)).astype(np.float32))
    print("input (float32):\n", x32.numpy())
    for dtype in (tf.float32, tf.float64, tf.half, tf.bfloat16):
        x = tf.cast(x32, dtype)
        for axis, label in ((None, "per-tensor"), (1, "per-channel axis=1")):
            ours = qdq.quantize_and_dequantize_v2(x, 0.0, 0.0, num_bits=4, axis=axis)
            # The built-in has float32/float64 kernels only: a half/bfloat16 user must cast.
            builtin_in = tf.cast(x, tf.float32) if dtype in (tf.half, tf.bfloat16) else x
            theirs = tf.cast(
                tf.quantization.quantize_and_dequantize_v2(builtin_in, 0.0, 0.0, num_bits=4, axis=axis), dtype
            )
            same = np.array_equal(
                tf.bitcast(ours, tf.uint16 if dtype.size == 2 else tf.uint32 if dtype.size == 4 else tf.uint64),
                tf.bitcast(theirs, tf.uint16 if dtype.size == 2 else tf.uint32 if dtype.size == 4 else tf.uint64),
            )
            print(f"{dtype.name:>8} {label:<19} bit-identical to the built-in: {same}")
            print("   ", np.asarray(tf.cast(ours, tf.float32)).round(4).tolist())


if __name__ == "__main__":
    main()
