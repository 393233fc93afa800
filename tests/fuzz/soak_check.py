"""Soak check, run as its own process so its RSS is its own:

    MALLOC_MMAP_THRESHOLD_=1048576 python -m tests.fuzz.soak_check --small 1000000 --large 1000

The fixed mmap threshold makes glibc hand every freed buffer over 1 MiB straight back to the
system; with its default (a threshold that adapts to freed sizes) RSS moves in 16 MB steps
between identical large calls, which would hide or fake a leak.

Warms up, then makes `small` small calls (every op, dtype, per-tensor/per-channel, auto/given)
and `large` calls on 4M-element tensors, then `small`/10 calls that raise, of our op and of
TensorFlow's own (baseline), and prints a JSON summary with the resident set size (VmRSS).
"""

import argparse
import json
import os
import sys
import time


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def small_calls():
    import numpy as np
    import tensorflow as tf

    import tensorflow_qdq as qdq

    R = qdq.raw_ops
    x = tf.constant(np.linspace(-3, 5, 24, dtype=np.float32).reshape(4, 6))
    xh = tf.cast(x, tf.float16)
    xb = tf.cast(x, tf.bfloat16)
    xd = tf.cast(x, tf.float64)
    lo6, hi6 = tf.fill([6], -2.0), tf.fill([6], 4.0)
    s0, s1 = tf.constant(-2.0), tf.constant(4.0)
    nb = tf.constant(5)

    return [
        lambda: R.QuantizeAndDequantizeV2(input=x, input_min=s0, input_max=s1),
        lambda: R.QuantizeAndDequantizeV4(input=x, input_min=lo6, input_max=hi6, range_given=True, axis=1),
        lambda: R.QuantizeAndDequantizeV3(input=xd, input_min=tf.cast(s0, tf.float64),
                                          input_max=tf.cast(s1, tf.float64), num_bits=nb),
        lambda: R.QuantizeAndDequantizeV4(input=xh, input_min=tf.zeros([4], tf.float16),
                                          input_max=tf.zeros([4], tf.float16), num_bits=3, round_mode="HALF_UP",
                                          axis=0),
        lambda: R.QuantizeAndDequantizeV4Grad(gradients=x, input=x, input_min=lo6, input_max=hi6, axis=1),
        lambda: R.QuantizeAndDequantizeV2(input=xb, input_min=tf.cast(s0, tf.bfloat16),
                                          input_max=tf.cast(s1, tf.bfloat16), signed_input=False, num_bits=7),
        lambda: qdq.quantize_and_dequantize_v2(x, lo6, hi6, range_given=True, axis=-1),
    ]


def error_calls(builtin):
    """A call that raises InvalidArgumentError (min > max): ours, or TensorFlow's own op, whose
    eager error path is the baseline (TensorFlow keeps ~0.7 KB per raised error itself)."""
    import tensorflow as tf

    import tensorflow_qdq as qdq

    ops = tf.raw_ops if builtin else qdq.raw_ops
    x = tf.constant([[-3.0, 1.0, 5.0]])
    s0, s1 = tf.constant(-2.0), tf.constant(4.0)

    def invalid():
        try:
            ops.QuantizeAndDequantizeV4(input=x, input_min=s1, input_max=s0, range_given=True)
        except tf.errors.InvalidArgumentError:
            return
        raise AssertionError("an invalid call succeeded")

    return [invalid]


def large_calls():
    import tensorflow as tf

    import tensorflow_qdq as qdq

    R = qdq.raw_ops
    x = tf.random.stateless_normal([1024, 4096], seed=[1, 2])
    z = tf.zeros([4096])
    return [
        lambda: R.QuantizeAndDequantizeV4(input=x, input_min=z, input_max=z, axis=1),
        lambda: R.QuantizeAndDequantizeV2(input=x, input_min=-1.0, input_max=1.0, range_given=True),
        lambda: R.QuantizeAndDequantizeV4Grad(gradients=x, input=x, input_min=-1.0, input_max=1.0),
        lambda: R.QuantizeAndDequantizeV4(input=tf.cast(x, tf.float16), input_min=tf.zeros([], tf.float16),
                                          input_max=tf.zeros([], tf.float16)),
    ]


def run(fns, count, checkpoints):
    marks = []
    step = max(1, count // checkpoints)
    for i in range(count):
        fns[i % len(fns)]()
        if (i + 1) % step == 0:
            marks.append(round(rss_mb(), 1))
    return marks


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=4000)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    small, large = small_calls(), large_calls()
    errors, builtin_errors = error_calls(False), error_calls(True)
    run(small, args.warmup, 1)
    run(large, 40, 1)
    run(errors, args.warmup, 1)
    run(builtin_errors, args.warmup, 1)
    base = rss_mb()
    t0 = time.monotonic()
    small_marks = run(small, args.small, 10)
    t1 = time.monotonic()
    large_marks = run(large, args.large, 10)
    t2 = time.monotonic()
    n_err = max(1, args.small // 10)
    before = rss_mb()
    run(errors, n_err, 1)
    ours = rss_mb() - before
    before = rss_mb()
    run(builtin_errors, n_err, 1)
    theirs = rss_mb() - before
    summary = {
        "small_calls": args.small, "large_calls": args.large, "error_calls": n_err,
        "rss_after_warmup_mb": round(base, 1), "small_rss_mb": small_marks, "large_rss_mb": large_marks,
        "small_growth_mb": round(small_marks[-1] - base, 1),
        # After the first tenth: what a leak would add linearly, without allocator settling.
        "small_steady_growth_mb": round(small_marks[-1] - small_marks[0], 1),
        "large_growth_mb": round(large_marks[-1] - small_marks[-1], 1),
        "large_steady_growth_mb": round(large_marks[-1] - large_marks[0], 1),
        "error_growth_mb": round(ours, 1), "builtin_error_growth_mb": round(theirs, 1),
        "small_seconds": round(t1 - t0, 1), "large_seconds": round(t2 - t1, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
