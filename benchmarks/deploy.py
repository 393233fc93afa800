"""Deployment benchmark: latency of the float model vs its int8 export, in ONNX Runtime and in
the TFLite interpreter, at batch 1 and batch 32.

    python benchmarks/deploy.py             # writes the "Deploy" section of benchmarks/RESULTS.md
    python benchmarks/deploy.py --quick     # fewer rounds, prints only

Models: the QAT digits CNN of the demo (examples/qat_digits.py, trained briefly) and
keras.applications MobileNetV2 (alpha 0.35, 224x224, weights=None: latency does not depend on
the weights; calibrated on random images so every range is set). Each runtime runs with one
and with all intra-op threads; the variants of a model run interleaved, round after round,
and each number is the median of the rounds.

As a yardstick for "is our int8 graph as fast as int8 gets in this runtime", each runtime's
own post-training int8 model of the same float model is timed too: the TFLite converter's
full-integer quantization (representative dataset) and ONNX Runtime's ``quantize_static``
(QDQ, per-channel int8 weights, uint8 activations).
"""

import argparse
import datetime
import importlib.util
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from _results import machine_info, write_results  # noqa: E402

import tensorflow_qdq as qdq  # noqa: E402
from tensorflow_qdq.deploy import runtimes  # noqa: E402
from tensorflow_qdq.keras import calibrate, quantize_model  # noqa: E402

BEGIN, END = "<!-- deploy:begin -->", "<!-- deploy:end -->"
RUNTIMES = ("ONNX Runtime", "TFLite")
VARIANTS = tuple(f"{r} {v}" for r in RUNTIMES for v in ("float32", "int8", "own int8"))


def digits_models():
    spec = importlib.util.spec_from_file_location("qat_digits", HERE.parent / "examples" / "qat_digits.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    data = demo.digits(seed=0)
    _, quantized, float_model = demo.run_qat(data, epochs=5, qat_epochs=1, bits=(8,), seed=0, verbose=0)
    return float_model, quantized[8], data[1][:32]


def mobilenet_models(size=224):
    float_model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(size, size, 3))
    q = quantize_model(float_model, verbose=False)
    images = np.random.default_rng(0).uniform(-1, 1, (64, size, size, 3)).astype(np.float32)
    calibrate(q, images, batch_size=16, verbose=False)
    return float_model, q, images[:32]


def exports(float_model, q, samples):
    """{variant: file bytes}, {variant: runner factory(file, threads)}"""
    files = {
        "ONNX Runtime float32": runtimes.float_onnx(float_model).SerializeToString(),
        "ONNX Runtime int8": qdq.to_onnx(q).SerializeToString(),
        "TFLite float32": runtimes.float_tflite(float_model),
        "TFLite int8": qdq.to_tflite(q),
    }
    files["ONNX Runtime own int8"] = ort_static_int8(files["ONNX Runtime float32"], samples)
    files["TFLite own int8"] = tflite_converter_int8(float_model, samples)
    factory = {name: (runtimes.onnx_runner if "ONNX" in name else runtimes.tflite_runner) for name in files}
    return files, factory


def ort_static_int8(float_bytes, samples):
    """ONNX Runtime's own post-training quantization of the float ONNX model."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load_from_string(float_bytes).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{name: samples[i:i + 1]} for i in range(len(samples))])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        with open(source, "wb") as f:
            f.write(float_bytes)
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        with open(target, "rb") as f:
            return f.read()


def tflite_converter_int8(float_model, samples):
    """The TFLite converter's own full-integer post-training quantization."""
    import tensorflow as tf

    from tensorflow_qdq.deploy import _trace

    converter = tf.lite.TFLiteConverter.from_concrete_functions([_trace.frozen(float_model, None)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
    return converter.convert()


def measure(name, float_model, q, x, threads, rounds):
    files, factory = exports(float_model, q, x[:8])
    rows = []
    for t in threads:
        runners = {v: factory[v](files[v], threads=t) for v in VARIANTS}
        for batch in (1, 32):
            ms = runtimes.latencies_ms(runners, x[:batch], rounds=rounds, calls=max(1, 10 // batch))
            for runtime in RUNTIMES:
                fl, i8, own = (ms[f"{runtime} {v}"] for v in ("float32", "int8", "own int8"))
                rows.append((name, runtime, t, batch, fl, i8, own, len(files[f"{runtime} float32"]),
                             len(files[f"{runtime} int8"])))
                print(f"[deploy] {name:<22} {runtime:<13} threads {t} batch {batch:>2}: float {fl:8.3f} ms, "
                      f"int8 {i8:8.3f} ms ({fl / i8:4.2f}x), runtime's own int8 {own:8.3f} ms", flush=True)
    return rows


def section(rows, info, seconds):
    lines = [
        BEGIN,
        "## Deploy: float vs int8 in ONNX Runtime and TFLite",
        "",
        f"`python benchmarks/deploy.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"{info['cpu']}, TensorFlow {info['tensorflow']}, ONNX Runtime {onnxruntime.__version__}, "
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}. Took {seconds:.0f} s.",
        "",
        "float = the float Keras model through tf2onnx / the TFLite converter; int8 = the QAT model through "
        "`tensorflow_qdq.to_onnx` / `to_tflite` (integer kernels); own int8 = the runtime's own post-training "
        "int8 model of the float model (ORT `quantize_static`, the TFLite converter's full-integer mode), the "
        "yardstick for how fast int8 gets in that runtime on this CPU. Median ms per call of interleaved "
        "rounds (the six variants of a model take turns), same input.",
        "",
        "| model | runtime | threads | batch | float ms | int8 ms | own int8 ms | int8 speed-up | int8 vs own | "
        "float file | int8 file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runtime, threads, batch, fl, i8, own, fsize, isize in rows:
        lines.append(f"| {name} | {runtime} | {threads} | {batch} | {fl:.3f} | {i8:.3f} | {own:.3f} | {fl / i8:.2f}x | "
                     f"{own / i8:.2f}x | {fsize / 1024:.0f} KB | {isize / 1024:.0f} KB |")
    lines += ["", END]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, print only")
    parser.add_argument("--size", type=int, default=224, help="MobileNetV2 input size")
    args = parser.parse_args()
    start = time.perf_counter()
    rounds = 5 if args.quick else 15
    threads = sorted({1, os.cpu_count() or 1})
    rows = measure("QAT digits CNN", *digits_models(), threads, rounds)
    rows += measure(f"MobileNetV2-0.35 {args.size}x{args.size}", *mobilenet_models(args.size), threads, rounds)
    text = section(rows, machine_info(), time.perf_counter() - start)
    print(text)
    if not args.quick:
        write_results(HERE / "RESULTS.md", text, BEGIN, END)
        print(f"[deploy] wrote {HERE / 'RESULTS.md'} (Deploy section)")


if __name__ == "__main__":
    main()
