"""QAT step cost: a training step of ``quantize_model(model)`` against the float model's step.

    python benchmarks/qat_step.py            # writes the "QAT step" section of benchmarks/RESULTS.md
    python benchmarks/qat_step.py --quick    # fewer rounds, prints only

Models (weights=None, random data): keras.applications MobileNetV2 (alpha 0.35, 96x96, batch
32), ResNet50 (64x64, batch 16) and the test zoo's transformer block (Embedding, MultiHeadAttention, a
feed-forward pair; sequence 64, width 128, batch 32). The QAT model is calibrated first so
every range is set, as it is in real QAT.

* Step time: ``train_on_batch`` of the float and the QAT model, interleaved round after round in
  one process (load from other processes hits both alike); the median of the rounds.
* Peak memory: the peak resident set size of a fresh process that builds one variant and runs
  a few steps (a process's peak cannot be split between two models living in it).
* Where the time goes: TensorFlow's profiler over a few QAT steps; op time summed by kind:
  our ``Qdq>`` kernels, the other ops inside quantizers (tracked-range reductions and updates,
  the BatchNorm fold's extra ops), and everything else.
"""

import argparse
import collections
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _results import machine_info, write_results  # noqa: E402

from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402
from tests.helpers import zoo  # noqa: E402 - the test suite's model zoo

BEGIN, END = "<!-- qat-step:begin -->", "<!-- qat-step:end -->"
# name: (builder, batch, input maker)
MODELS = {
    "MobileNetV2-0.35 96x96 b32": (
        lambda: keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=10), 32,
        lambda rng, n: rng.uniform(-1, 1, (n, 96, 96, 3)).astype(np.float32)),
    "ResNet50 64x64 b16": (
        lambda: keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10), 16,
        lambda rng, n: rng.uniform(0, 255, (n, 64, 64, 3)).astype(np.float32)),
    "Transformer block s64 d128 b32": (
        lambda: zoo.transformer_block(seq=64, vocab=1000, dim=128, heads=4, classes=10), 32,
        lambda rng, n: rng.integers(0, 1000, (n, 64)).astype(np.int32)),
}


def prepared(name, variant, seed=0):
    """A compiled float or QAT model with its batch (x, y), after warm-up steps."""
    build, batch, make = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = build()
    rng = np.random.default_rng(seed)
    x = make(rng, batch)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    if variant == "qat":
        model = quantize_model(model, verbose=False)
        calibrate(model, x, verbose=False)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="categorical_crossentropy")
    for _ in range(3):
        model.train_on_batch(x, y)
    return model, x, y


def step_times(name, rounds):
    """Median step time (s) of float and QAT, interleaved."""
    runs = {v: prepared(name, v) for v in ("float", "qat")}
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for variant, (model, x, y) in runs.items():
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            times[variant].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}, runs["qat"]


def _xspace(path):
    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # the module's home moved between TensorFlow versions
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def time_shares(model, x, y, steps=3):
    """{"qdq kernels", "other quantizer ops", "rest"}: shares of op time over a few steps."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            model.train_on_batch(x, y)
        tf.profiler.experimental.stop()
        space = _xspace(sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1])
    totals = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                op_name, _, op_type = names[event.metadata_id].name.rpartition(":")
                if not op_name or "::" in op_name:
                    continue  # executor bookkeeping (ExecutorState::Process), not an op
                if op_type.startswith("Qdq>"):
                    totals["qdq kernels"] += event.duration_ps
                elif "quantizer" in op_name or "weight_qdq" in op_name:
                    totals["other quantizer ops"] += event.duration_ps
                else:
                    totals["rest"] += event.duration_ps
    whole = sum(totals.values()) or 1
    return {k: totals[k] / whole for k in ("qdq kernels", "other quantizer ops", "rest")}


def peak_rss_mb(name, variant):
    """Peak RSS of a fresh process that builds one variant and trains a few steps."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import qat_step; "
            f"m, x, y = qat_step.prepared({name!r}, {variant!r}); [m.train_on_batch(x, y) for _ in range(3)]; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800)
    return float(out.stdout.strip().splitlines()[-1])


def section(rows, info, seconds):
    lines = [
        BEGIN,
        "## QAT step: quantize_model's training step vs the float step",
        "",
        f"`python benchmarks/qat_step.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"{info['cpu']}, TensorFlow {info['tensorflow']}, Keras {keras.__version__}, kernels: {info['isa']}; "
        f"{seconds:.0f} s. `train_on_batch`, float and QAT interleaved in one process, median of the rounds; "
        "peak RSS of a fresh process per variant; op-time shares from TensorFlow's profiler over 3 QAT steps "
        "(\"quantizer ops\": the other ops inside quantizers, i.e. tracked-range reductions and updates, "
        "weight ranges; the BatchNorm fold's own ops count as the rest).",
        "",
        "| model | float step | QAT step | QAT / float | peak RSS float | peak RSS QAT | Qdq> kernels | "
        "other quantizer ops | rest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['float'] * 1e3:.1f} ms | {r['qat'] * 1e3:.1f} ms | "
                     f"{r['qat'] / r['float']:.2f}x | {r['rss_float']:.0f} MB | {r['rss_qat']:.0f} MB | "
                     f"{r['shares']['qdq kernels']:.1%} | {r['shares']['other quantizer ops']:.1%} | "
                     f"{r['shares']['rest']:.1%} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, no peak memory, print only")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    start = time.monotonic()
    rows = []
    for name in args.models:
        medians, (qat, x, y) = step_times(name, rounds)
        shares = time_shares(qat, x, y)
        row = {"model": name, **medians, "shares": shares, "rss_float": float("nan"), "rss_qat": float("nan")}
        if not args.quick:
            row["rss_float"], row["rss_qat"] = peak_rss_mb(name, "float"), peak_rss_mb(name, "qat")
        rows.append(row)
        print(f"[qat-step] {json.dumps(row)}", flush=True)
        del qat
        keras.backend.clear_session()
    text = section(rows, machine_info(), time.monotonic() - start)
    print(text)
    if not args.quick:
        write_results(HERE / "RESULTS.md", text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
