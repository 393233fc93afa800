"""tf.distribute: a quantized model trains under MirroredStrategy (two logical CPU devices,
model.fit) and MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1, custom loop).

Tracked ranges are aggregated by gathering every replica's batch min/max each step
(ReplicaContext.all_gather) and reducing them, so all replicas apply the same update: the
ranges equal those one device tracks on the global batches, on every replica and worker."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import keras_distribute_worker as worker
from tests.helpers.keras_reference import tracked_ranges

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(mode, tf_config=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, os.path.join(HERE, "helpers", "keras_distribute_worker.py"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _report(process):
    try:
        out, err = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0 and "REPORT" in out, err[-3000:]
    return json.loads(out.split("REPORT", 1)[1])


@pytest.fixture(scope="module")
def reports():
    """All three processes run at once (they wait on each other's collectives only pairwise)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    processes = {"mirrored": _start("mirrored")}
    for i in range(2):
        processes[f"worker{i}"] = _start("multi_worker", {"cluster": cluster, "task": {"type": "worker", "index": i}})
    return {name: _report(p) for name, p in processes.items()}


def _expected_input_ranges():
    x, _ = worker.data()
    batches = np.split(x, worker.STEPS)
    return tracked_ranges(batches * 2, 0.9)[-1]  # 2 epochs over the global batches


def _check_consistent_and_global(report, copies):
    assert report["replicas"] == 2
    lo, hi = _expected_input_ranges()
    tracked = report["tracked"]
    for name, ranges in tracked.items():
        assert len(ranges["min"]) == copies
        # every replica holds the same range, updated once per step
        assert all(v == ranges["min"][0] for v in ranges["min"]), name
        assert all(v == ranges["max"][0] for v in ranges["max"]), name
        assert ranges["updates"] == [2 * worker.STEPS] * copies
    # the input range is that of the GLOBAL batches (a per-replica range would be narrower
    # for the first half of each batch and wider for the second)
    assert np.float32(tracked["qdq_in"]["min"][0]) == lo
    assert np.float32(tracked["qdq_in"]["max"][0]) == hi
    for name, values in report["kernels"].items():
        assert all(v == values[0] for v in values), name
    assert report["losses"][-1] < report["losses"][0]


def test_mirrored_strategy_two_logical_cpus(reports):
    _check_consistent_and_global(reports["mirrored"], copies=2)


def test_multi_worker_mirrored_strategy_two_processes(reports):
    for name in ("worker0", "worker1"):
        _check_consistent_and_global(reports[name], copies=1)
    # both workers end with the same model and ranges ...
    assert reports["worker0"]["tracked"] == reports["worker1"]["tracked"]
    assert reports["worker0"]["kernels"] == reports["worker1"]["kernels"]
    # ... as MirroredStrategy's model.fit on the same global batches
    mirrored = reports["mirrored"]
    for name, ranges in reports["worker0"]["tracked"].items():
        np.testing.assert_allclose(ranges["min"][0], mirrored["tracked"][name]["min"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ranges["max"][0], mirrored["tracked"][name]["max"][0], rtol=1e-5, atol=1e-6)
    for name, values in reports["worker0"]["kernels"].items():
        np.testing.assert_allclose(values[0], mirrored["kernels"][name][0], rtol=1e-4, atol=1e-6)


def test_single_device_training_tracks_the_same_ranges(reports):
    """The reference run without a strategy (in this process): same ranges, same model."""
    import keras

    x, y = worker.data()
    model = worker.build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=worker.GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    lo, hi = _expected_input_ranges()
    assert model.get_layer("qdq_in").tracked_min.numpy() == lo
    assert model.get_layer("qdq_in").tracked_max.numpy() == hi
    mirrored = reports["mirrored"]
    head = model.get_layer("head_output_quantizer")
    np.testing.assert_allclose(head.tracked_max.numpy(), mirrored["tracked"][head.name]["max"][0], rtol=1e-4)
    for w in model.trainable_weights:
        np.testing.assert_allclose(w.numpy(), mirrored["kernels"][w.path][0], rtol=1e-4, atol=1e-6)
