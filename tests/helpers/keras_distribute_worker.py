"""Worker for tests/test_keras_distribute.py: trains a model with our layers under a
tf.distribute strategy and prints a JSON report. Runs in its own process because logical
devices and TF_CONFIG must be set before TensorFlow initialises its devices.

    python keras_distribute_worker.py mirrored
    TF_CONFIG=... python keras_distribute_worker.py multi_worker
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 6


def data():
    """Rows whose scale grows with the row index, so each replica's share of a global batch
    has a different range from the whole batch (a local-only range would be caught)."""
    rng = np.random.default_rng(42)
    rows = GLOBAL_BATCH * STEPS
    scale = np.linspace(0.5, 4.0, rows, dtype=np.float32)[:, None]
    x = (rng.standard_normal((rows, 6)) * scale).astype(np.float32)
    y = (x[:, :2] * 0.5 - x[:, 2:4] * 0.25).astype(np.float32)
    return x, y


def build_model():
    import keras

    from tensorflow_qdq.keras import QuantizeAndDequantize, quantize_model

    keras.utils.set_random_seed(7)
    inputs = keras.Input((6,))
    x = QuantizeAndDequantize(range_mode="tracked", momentum=0.9, name="qdq_in")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return quantize_model(keras.Model(inputs, outputs), momentum=0.9)


def replica_values(strategy, variable):
    """Every replica's copy of a (Keras) variable on this worker."""
    return [np.asarray(v.numpy()).tolist() for v in strategy.experimental_local_results(variable.value)]


def report(strategy, model, losses):
    tracked = {}
    for name in ("qdq_in", "hidden_output_quantizer", "head_output_quantizer"):
        layer = model.get_layer(name)
        tracked[name] = {
            "min": replica_values(strategy, layer.tracked_min),
            "max": replica_values(strategy, layer.tracked_max),
            "updates": replica_values(strategy, layer.tracked_updates),
        }
    kernels = {w.path: replica_values(strategy, w) for w in model.trainable_weights}
    print("REPORT" + json.dumps(dict(replicas=strategy.num_replicas_in_sync, tracked=tracked,
                                     kernels=kernels, losses=losses)), flush=True)


def mirrored():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = data()
    with strategy.scope():
        model = build_model()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    before = {w.path: replica_values(strategy, w) for w in model.non_trainable_weights}
    model.predict(x, batch_size=GLOBAL_BATCH, verbose=0)  # inference leaves the ranges alone
    model.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0)
    assert before == {w.path: replica_values(strategy, w) for w in model.non_trainable_weights}
    report(strategy, model, history.history["loss"])


def multi_worker():
    """Custom training loop: each worker feeds its half of every global batch."""
    import keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    workers = strategy.num_replicas_in_sync
    x, y = data()
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.SGD(0.05)

    @tf.function
    def step(xb, yb):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(xb, training=True) - yb)) / (GLOBAL_BATCH * 2)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        per_replica = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    share = GLOBAL_BATCH // workers
    losses = []
    for _epoch in range(2):
        total = 0.0
        for s in range(STEPS):
            rows = slice(s * GLOBAL_BATCH + task * share, s * GLOBAL_BATCH + (task + 1) * share)
            total += float(step(tf.constant(x[rows]), tf.constant(y[rows])))
        losses.append(total / STEPS)
    report(strategy, model, losses)


if __name__ == "__main__":
    {"mirrored": mirrored, "multi_worker": multi_worker}[sys.argv[1]]()
