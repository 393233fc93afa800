"""Runs quantize-and-dequantize calls in a child process, so an abort or a segfault
(TensorFlow's V3 still aborts on some inputs) fails one case instead of killing pytest.

Parent side: `run_calls(calls)` -> {id: result}. Each call is a dict
    {"id": str, "lib": "qdq"|"tf", "op": "QuantizeAndDequantizeV3", "mode": MODE, "kwargs": {...}}
where tensor arguments are {"value": nested list, "dtype": "float32"} and everything else
is an attribute. MODE is "eager", "function" (tf.function over constants: static shapes,
so shape functions run at trace) or "graph" (tf.function whose tensor arguments have
unknown shapes: the kernel's own checks run). A result is
    {"outcome": "ok"|"error"|"crash", "type": exception class, "message": str, "returncode": int}.
Child side: `python tests/helpers/qdq_worker.py` reads the call list as JSON on stdin and writes
a "start" line before and a result line after each call, flushing both.
"""
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))


def tensor(value, dtype="float32"):
    """A JSON-able tensor argument."""
    import numpy as np

    return {"value": np.asarray(value).tolist(), "dtype": dtype}


def call(id_, op, kwargs, lib="qdq", mode="eager"):
    return {"id": id_, "lib": lib, "op": op, "mode": mode, "kwargs": kwargs}


def _no_core_dumps():
    """An expected abort should not spend seconds writing a core file."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def run_calls(calls, timeout=240):
    """Runs the calls in as few child processes as crashes allow; returns {id: result}."""
    results = {}
    pending = list(calls)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    while pending:
        proc = subprocess.run([sys.executable, os.path.join(_HERE, "qdq_worker.py")], input=json.dumps(pending),
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=_ROOT,
                              preexec_fn=_no_core_dumps)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["id"]] = msg
                started = None
        done = set(results)
        if started is None and all(c["id"] in done for c in pending):
            break
        if started is None:  # died before its first call: report every pending call as crashed
            for c in pending:
                results[c["id"]] = {"id": c["id"], "outcome": "crash", "returncode": proc.returncode,
                                    "message": proc.stderr[-2000:]}
            break
        results[started] = {"id": started, "outcome": "crash", "returncode": proc.returncode,
                            "message": proc.stderr[-2000:]}
        pending = [c for c in pending if c["id"] not in results]
    return results


def _child():
    import numpy as np
    import tensorflow as tf

    import tensorflow_qdq as qdq

    def run(c):
        fn = getattr((qdq if c["lib"] == "qdq" else tf).raw_ops, c["op"])
        tensors = {k: np.asarray(v["value"], dtype=v["dtype"]) for k, v in c["kwargs"].items()
                   if isinstance(v, dict)}
        attrs = {k: v for k, v in c["kwargs"].items() if not isinstance(v, dict)}
        if c["mode"] == "eager":
            return fn(**tensors, **attrs)
        if c["mode"] == "function":
            return tf.function(lambda: fn(**{k: tf.constant(v) for k, v in tensors.items()}, **attrs))()
        names = sorted(tensors)
        spec = [tf.TensorSpec(None, tf.as_dtype(tensors[k].dtype)) for k in names]
        graph_fn = tf.function(lambda *args: fn(**dict(zip(names, args)), **attrs), input_signature=spec)
        return graph_fn(*[tensors[k] for k in names])

    for c in json.loads(sys.stdin.read()):
        print(json.dumps({"start": c["id"]}), flush=True)
        try:
            out = run(c)
            outs = out if isinstance(out, (list, tuple)) else [out]
            res = {"outcome": "ok", "values": [np.asarray(o).tolist() for o in outs]}
        except Exception as exc:  # noqa: BLE001 - every exception is reported to the parent
            res = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)[:1500]}
        res["id"] = c["id"]
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, _ROOT)
    _child()
