"""Concurrency check, run as its own process so TensorFlow's thread pools can be configured:

    python -m tests.fuzz.concurrency_check --threads 16 --rounds 3 --inter-op 4 --intra-op 2

Computes every call of a varied set once, sequentially; then many Python threads repeat the
calls at once, eagerly and through tf.function, and one tf.function holding every call (its
independent ops run in parallel on the inter-op pool) is run from several threads. Prints a
JSON summary: every concurrent result must be bit-identical to its sequential one.
"""

import argparse
import json
import os
import random
import sys
import threading


def specs(rng, count):
    import numpy as np

    from tests.helpers import reference as ref

    out = []
    for k in range(count):
        op = ("V2", "V3", "V4", "V4Grad")[k % 4]
        dtype = ref.FLOAT_DTYPES[(k // 4) % 4]
        big = k % 5 == 0
        if big:
            shape = (int(rng.integers(2, 6)), 30_000)
        else:
            shape = tuple(int(d) for d in rng.integers(1, 9, size=rng.integers(1, 4)))
        axis = int(rng.integers(-1, len(shape)))
        depth = 1 if axis == -1 else shape[axis]
        x = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3)
        given = bool(rng.integers(2)) or op == "V4Grad"
        peak = float(np.max(np.abs(x)))
        lo = -rng.uniform(0.1, 1.0, size=depth) * peak
        hi = rng.uniform(0.1, 1.0, size=depth) * peak
        rs = () if axis == -1 else (depth,)
        cast = lambda a: np.asarray(a, ref.NP_DTYPES[dtype])  # noqa: E731
        out.append(dict(op=op, dtype=dtype, x=cast(x), lo=cast(lo.reshape(rs)), hi=cast(hi.reshape(rs)),
                        g=cast(rng.normal(size=shape)), axis=axis, given=given, bits=int(rng.integers(1, 17)),
                        signed=bool(rng.integers(2)), narrow=bool(rng.integers(2)),
                        half_up=bool(rng.integers(2)) and op != "V3"))
    return out


def call(s):
    import tensorflow as tf

    import tensorflow_qdq as qdq

    R = qdq.raw_ops
    x, lo, hi = tf.constant(s["x"]), tf.constant(s["lo"]), tf.constant(s["hi"])
    common = dict(input=x, input_min=lo, input_max=hi, signed_input=s["signed"], range_given=s["given"],
                  narrow_range=s["narrow"], axis=s["axis"])
    if s["op"] == "V4Grad":
        return R.QuantizeAndDequantizeV4Grad(gradients=tf.constant(s["g"]), input=x, input_min=lo, input_max=hi,
                                             axis=s["axis"])[0]
    if s["op"] == "V3":
        return R.QuantizeAndDequantizeV3(num_bits=tf.constant(s["bits"]), **common)
    fn = R.QuantizeAndDequantizeV2 if s["op"] == "V2" else R.QuantizeAndDequantizeV4
    return fn(num_bits=s["bits"], round_mode="HALF_UP" if s["half_up"] else "HALF_TO_EVEN", **common)


def _closure(s):
    return lambda: call(s)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--specs", type=int, default=48)
    parser.add_argument("--inter-op", type=int, default=4)
    parser.add_argument("--intra-op", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)

    all_specs = specs(np.random.default_rng(11), args.specs)
    expected = [call(s).numpy().tobytes() for s in all_specs]  # sequential, eager
    functions = [tf.function(_closure(s)) for s in all_specs]
    mismatches, errors, calls = [], [], [0]
    lock = threading.Lock()

    def check(k, value, how):
        with lock:
            calls[0] += 1
            if value.tobytes() != expected[k]:
                mismatches.append({"spec": k, "how": how, "op": all_specs[k]["op"], "dtype": all_specs[k]["dtype"]})

    def worker(t):
        order = list(range(len(all_specs))) * args.rounds
        random.Random(t).shuffle(order)
        try:
            for j, k in enumerate(order):
                if (j + t) % 2:
                    check(k, functions[k]().numpy(), "tf.function")
                else:
                    check(k, call(all_specs[k]).numpy(), "eager")
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    @tf.function
    def everything():
        return [call(s) for s in all_specs]  # independent ops: run in parallel by the inter-op pool

    def graph_worker(t):
        try:
            for _ in range(args.rounds):
                for k, v in enumerate(everything()):
                    check(k, v.numpy(), "one graph")
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(f"graph thread {t}: {type(exc).__name__}: {exc}")

    everything()  # trace once
    threads = [threading.Thread(target=graph_worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps({"calls": calls[0], "mismatches": mismatches[:20], "mismatch_count": len(mismatches),
                      "errors": errors[:20], "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                      "intra_op": tf.config.threading.get_intra_op_parallelism_threads()}))
    return 0 if not mismatches and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
