"""Deployment benchmark: latency of the float model, our int8 export and the runtime's own int8
model, in ONNX Runtime and in the TFLite interpreter.

    python benchmarks/deploy.py             # writes the "Deploy" section of benchmarks/RESULTS.md
    python benchmarks/deploy.py --quick     # one small configuration, few rounds, prints only

Models (``--configs``; default: the QAT digits CNN of the demo, then ResNet50 and MobileNetV2
(alpha 1.0) at 128, 160 and 224 pixels): keras.applications networks with weights=None (latency
does not depend on the weights), ``quantize_model`` calibrated on random images so every range is
set. Per model: batch 1 and 8, one and two intra-op threads; the six variants of a model
(float, ours, own int8 in each runtime) run interleaved, round after round, and each number is
the median of the rounds, so the ratios come from one run under the same load. Each model runs
in a process of its own (a ResNet50 worker peaks at about 9 GB: the converters keep memory).

"ours" = ``tensorflow_qdq.to_onnx`` / ``to_tflite`` of the calibrated QAT model (ONNX Runtime:
uint8 activations, int8 weights, its u8s8 kernels); "own int8" = the runtime's own post-training
int8 model of the same float model: ONNX Runtime's ``quantize_static`` (QDQ, per-channel, uint8
activations, int8 weights, no reduce_range) and the TFLite converter's full-integer quantization
(representative dataset). The CPU's int8 instructions (/proc/cpuinfo) are printed with the table:
VNNI (avx512_vnni, avx_vnni) changes what int8 gains.
"""

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
sys.path.insert(0, str(HERE.parent / "examples"))  # the demo's runners (examples/runtimes.py)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import runtimes  # noqa: E402
from _results import machine_info, write_results  # noqa: E402
from u8s8_saturation import int8_features  # noqa: E402

import tensorflow_qdq as qdq  # noqa: E402
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


# keras.applications networks benchmarked at several input sizes, weights=None.
NETWORKS = {
    "ResNet50": lambda size: keras.applications.ResNet50(weights=None, input_shape=(size, size, 3)),
    "MobileNetV2-1.0": lambda size: keras.applications.MobileNetV2(weights=None, alpha=1.0,
                                                                   input_shape=(size, size, 3)),
    "MobileNetV2-0.35": lambda size: keras.applications.MobileNetV2(weights=None, alpha=0.35,
                                                                    input_shape=(size, size, 3)),
}
DIGITS = "digits"
FULL_CONFIGS = (DIGITS, "ResNet50:128", "ResNet50:160", "ResNet50:224", "MobileNetV2-1.0:128",
                "MobileNetV2-1.0:160", "MobileNetV2-1.0:224")
QUICK_CONFIGS = ("MobileNetV2-1.0:96",)


def application_models(network, size, calibration_images=32):
    """(float model, calibrated QAT model, sample images) of a keras.applications network."""
    import resource

    start = time.perf_counter()
    float_model = NETWORKS[network](size)
    q = quantize_model(float_model, verbose=False)
    images = np.random.default_rng(0).uniform(-1, 1, (calibration_images, size, size, 3)).astype(np.float32)
    calibrate(q, images, batch_size=8, verbose=False)
    print(f"[deploy] {network} {size}x{size}: quantize_model + calibrate {time.perf_counter() - start:.0f} s, peak "
          f"memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GB", flush=True)
    return float_model, q, images


def parse_config(config):
    """"digits" or "NETWORK:SIZE" -> (table name, builder); a ValueError names the bad value."""
    if config == DIGITS:
        return "QAT digits CNN", digits_models
    network, _, size = config.partition(":")
    if network not in NETWORKS or not size.isdigit() or not 32 <= int(size) <= 1024:
        raise ValueError(f"--configs: {config!r} is not 'digits' or NETWORK:SIZE with NETWORK one of "
                         f"{', '.join(NETWORKS)} and SIZE in [32, 1024]")
    return f"{network} {size}x{size}", lambda: application_models(network, int(size))


def exports(float_model, q, samples):
    """{variant: file bytes}, {variant: runner factory(file, threads)}; prints each export's time
    and the process's peak memory."""
    import resource

    steps = {
        "ONNX Runtime float32": lambda: runtimes.float_onnx(float_model).SerializeToString(),
        # verified on the benchmark's samples (fewer rows than calibrate's 16: ResNet50 at 224 in memory)
        "ONNX Runtime int8": lambda: qdq.to_onnx(q, verify_data=samples).SerializeToString(),
        "TFLite float32": lambda: runtimes.float_tflite(float_model),
        "TFLite int8": lambda: qdq.to_tflite(q, verify_data=samples),
        "ONNX Runtime own int8": lambda: ort_static_int8(files["ONNX Runtime float32"], samples),
        "TFLite own int8": lambda: tflite_converter_int8(float_model, samples),
    }
    files = {}
    for name, make in steps.items():
        start = time.perf_counter()
        files[name] = make()
        print(f"[deploy]   {name}: {time.perf_counter() - start:.0f} s, peak memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GB", flush=True)
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


def measure(name, float_model, q, x, threads, batches, rounds):
    start = time.perf_counter()
    files, factory = exports(float_model, q, x[:8])
    print(f"[deploy] {name}: exports took {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for t in threads:
        runners = {v: factory[v](files[v], threads=t) for v in VARIANTS}
        for batch in batches:
            ms = runtimes.latencies_ms(runners, x[:batch], rounds=rounds, calls=2 if batch == 1 else 1, warmup=2)
            for runtime in RUNTIMES:
                fl, i8, own = (ms[f"{runtime} {v}"] for v in ("float32", "int8", "own int8"))
                rows.append((name, runtime, t, batch, fl, i8, own, len(files[f"{runtime} float32"]),
                             len(files[f"{runtime} int8"])))
                print(f"[deploy] {name:<22} {runtime:<13} threads {t} batch {batch:>2}: float {fl:8.3f} ms, "
                      f"ours {i8:8.3f} ms ({fl / i8:4.2f}x float), own int8 {own:8.3f} ms "
                      f"(ours {own / i8:4.2f}x own)", flush=True)
    return rows


def section(rows, info, seconds, command, load):
    lines = [
        BEGIN,
        "## Deploy: float vs int8 in ONNX Runtime and TFLite",
        "",
        f"`{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"{info['cpu']}, int8 instructions: {int8_features()}; TensorFlow {info['tensorflow']}, ONNX Runtime "
        f"{onnxruntime.__version__}, load average before: {' '.join(f'{v:.2f}' for v in load)}. "
        f"Took {seconds:.0f} s.",
        "",
        "float = the float Keras model through tf2onnx / the TFLite converter; ours = the calibrated QAT model "
        "through `tensorflow_qdq.to_onnx` / `to_tflite` (integer kernels; ONNX Runtime: uint8 activations, int8 "
        "weights); own int8 = the runtime's own post-training int8 model of the float model (ORT "
        "`quantize_static` QDQ per-channel U8S8, the TFLite converter's full-integer mode), the yardstick for "
        "how fast int8 gets in that runtime on this CPU. Median ms per call of interleaved rounds (the six "
        "variants of a model take turns), same input. ours vs own = own ms / ours ms (above 1: ours faster).",
        "",
        "| model | runtime | threads | batch | float ms | ours ms | own int8 ms | ours vs float | own vs float | "
        "ours vs own | float file | ours file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runtime, threads, batch, fl, i8, own, fsize, isize in rows:
        lines.append(f"| {name} | {runtime} | {threads} | {batch} | {fl:.3f} | {i8:.3f} | {own:.3f} | {fl / i8:.2f}x | "
                     f"{fl / own:.2f}x | {own / i8:.2f}x | {fsize / 1024:.0f} KB | {isize / 1024:.0f} KB |")
    lines += ["", END]
    return "\n".join(lines)


_ROWS = "[deploy] rows: "


def _run_worker(config, rounds, quick):
    """One config in a fresh process (TensorFlow and the converters keep memory that a process
    with several ResNet50 exports would pile up); its rows."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--rounds", str(rounds)]
    process = subprocess.Popen(command + (["--quick"] if quick else []), stdout=subprocess.PIPE, text=True)
    rows = None
    for line in process.stdout:
        if line.startswith(_ROWS):
            rows = [tuple(r) for r in json.loads(line[len(_ROWS):])]
        else:
            print(line, end="", flush=True)
    if process.wait() != 0 or rows is None:
        raise RuntimeError(f"the benchmark of {config!r} failed (exit status {process.returncode})")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_CONFIGS)}, one thread, batch 1, 3 rounds; print only")
    parser.add_argument("--configs", nargs="+", metavar="CONFIG",
                        help=f"'digits' or NETWORK:SIZE (NETWORK: {', '.join(NETWORKS)}); "
                             f"default {' '.join(FULL_CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 7; quick 3)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the results file to update")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one config in this process, rows as JSON on stdout
    args = parser.parse_args(argv)
    configs = list(args.configs or (QUICK_CONFIGS if args.quick else FULL_CONFIGS))
    for config in configs:
        parse_config(config)  # bad names fail before anything runs
    rounds = args.rounds or (3 if args.quick else 7)
    if rounds < 1:
        raise ValueError(f"--rounds={rounds} must be >= 1")
    threads, batches = ((1,), (1,)) if args.quick else ((1, 2), (1, 8))
    if args.worker:
        name, build = parse_config(args.worker)
        print(_ROWS + json.dumps(measure(name, *build(), threads, batches, rounds)), flush=True)
        return None
    start, load = time.perf_counter(), os.getloadavg()
    rows = []
    for config in configs:
        rows += _run_worker(config, rounds, args.quick)
    command = " ".join(["python benchmarks/deploy.py"] + list(argv if argv is not None else sys.argv[1:]))
    text = section(rows, machine_info(), time.perf_counter() - start, command, load)
    print(text)
    if not args.quick:
        write_results(args.out, text, BEGIN, END)
        print(f"[deploy] wrote {args.out} (Deploy section)")
    return rows


if __name__ == "__main__":
    main()
