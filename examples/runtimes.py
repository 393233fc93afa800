"""Run exported models in the runtimes that deploy them, for the demo and the benchmarks
(tooling, not in the installed package: the examples import it from their folder,
benchmarks/deploy.py and the tests put examples/ on sys.path).

``onnx_runner`` and ``tflite_runner`` return a function ``predict(x) -> np.ndarray`` over a
batch of any size (one input, one output); ``latencies_ms`` times several of them
interleaved, so a change in the machine's load hits all of them alike.
"""

import time

import numpy as np


def onnx_runner(model, threads=None):
    """ONNX Runtime's CPU session over ``model`` (a ModelProto or its bytes), with all graph
    optimizations (that is where QDQ pairs become QLinearConv and friends).

    A model with 4-bit tensors runs with ONNX Runtime's QDQ fusion off
    (``session.disable_quant_qdq``): it has no 4-bit integer conv/matmul kernels to fuse into,
    and its fusion (1.32) drops the DequantizeLinear/QuantizeLinear around a MaxPool, leaving a
    uint4 MaxPool that it then rejects. The 4-bit grid is computed exactly either way."""
    import onnx
    import onnxruntime as ort

    from tensorflow_qdq.deploy import _sessions

    proto = model if hasattr(model, "SerializeToString") else onnx.load_from_string(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    _sessions.four_bit_options(proto, options)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x):
        return session.run(None, {name: np.asarray(x, np.float32)})[0]

    return predict


def tflite_runner(flatbuffer, threads=None):
    """The TFLite interpreter (LiteRT, default delegates on) over a flatbuffer; resizes its
    input to each batch."""
    from tensorflow_qdq.deploy import tflite

    interpreter = tflite.interpreter(flatbuffer, default_delegates=True, threads=threads)
    interpreter.allocate_tensors()
    state = {"shape": None}

    def predict(x):
        x = np.asarray(x, np.float32)
        source = interpreter.get_input_details()[0]
        if state["shape"] != x.shape:
            interpreter.resize_tensor_input(source["index"], x.shape)
            interpreter.allocate_tensors()
            state["shape"] = x.shape
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    return predict


def latencies_ms(runners, x, rounds=20, calls=10, warmup=3):
    """Median milliseconds per call of each runner on ``x``: ``rounds`` rounds, each calling
    every runner ``calls`` times in turn (interleaved); {name: median ms}."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(calls):
                run(x)
            samples[name].append((time.perf_counter() - start) * 1e3 / calls)
    return {name: float(np.median(values)) for name, values in samples.items()}


def float_onnx(model):
    """The float Keras model as ONNX (tf2onnx, opset 17): the baseline an int8 export is
    compared with."""
    from tensorflow_qdq.deploy import _quiet, _trace, onnx

    with _quiet.converter_output_hidden():
        return onnx.convert_frozen(_trace.frozen(model, None))


def float_tflite(model):
    """The float Keras model as a float TFLite flatbuffer (the baseline), variables frozen."""
    import tensorflow as tf

    from tensorflow_qdq.deploy import _quiet, _trace

    with _quiet.converter_output_hidden():
        return tf.lite.TFLiteConverter.from_concrete_functions([_trace.frozen(model, None)]).convert()
