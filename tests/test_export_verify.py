"""Verified exports: to_onnx and to_tflite run what they exported in ONNX Runtime / the TFLite
interpreter and compare it with the Keras model (docs/DEPLOY.md, "Verified exports"); NaN/Inf
weights and ranges are refused before tracing; converter noise stays inside our calls."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import ExportMismatchError, ExportMismatchWarning, _verify
from tensorflow_qdq.keras import calibrate, quantize_model

L = keras.layers


@keras.saving.register_keras_serializable(package="tests")
class TracedNegates(L.Layer):
    """A user layer whose Python code branches on eager execution: called eagerly (Keras
    inference) it passes x through, traced into a graph (every export) it reverses the
    channels (an op both runtimes keep in int8). The
    exported model then computes another function than the Keras model, the failure class that
    verification exists to catch."""

    def call(self, x):
        return x if tf.executing_eagerly() else tf.reverse(x, axis=[-1])


def _images(n=48, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


def _float_model(middle=None):
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(6, 3, activation="relu", name="conv1")(inputs)
    if middle is not None:
        x = middle(x)
    x = L.Conv2D(4, 3, activation="relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def _model(middle=None):
    return _model_of(_float_model(middle))


def _model_of(float_model):
    model = quantize_model(float_model, verbose=False)
    calibrate(model, _images(), verbose=False)
    return model


@pytest.fixture(scope="module")
def good():
    return _model()


@pytest.fixture(scope="module")
def bad():
    return _model(TracedNegates(name="negates"))


def test_agreeing_exports_pass_and_run_like_keras(good, tmp_path):
    path = tmp_path / "m.onnx"
    proto = qdq.to_onnx(good, path)
    assert path.exists() and len(proto.graph.node) > 0
    assert len(qdq.to_tflite(good)) > 0


@pytest.mark.parametrize("export", ["to_onnx", "to_tflite"])
def test_a_disagreeing_export_raises_naming_where_it_parts(bad, export, tmp_path):
    with pytest.raises(ExportMismatchError) as info:
        getattr(qdq, export)(bad)
    message = str(info.value)
    assert "disagrees with the Keras model" in message and "correlation" in message
    # conv1's output quantizer agrees; the first quantized tensor after the user layer does not
    assert "conv2_input_quantizer" in message and "'negates'" in message and "TracedNegates" in message


@pytest.mark.parametrize("export", ["to_onnx", "to_tflite"])
def test_a_disagreement_inside_a_nested_model_is_named_there(export):
    """A backbone called as one layer: the stretch that parts is found inside it (before, the
    message named the first quantizer after the nested model), and the model gains no nodes."""
    inner = _float_model(TracedNegates(name="negates"))
    image = keras.Input((8, 8, 1), name="image")
    model = _model_of(keras.Model(image, L.Dense(2, name="top")(inner(image))))
    nodes = [len(layer._inbound_nodes) for layer in model._flatten_layers()]
    with pytest.raises(ExportMismatchError) as info:
        getattr(qdq, export)(model)
    message = str(info.value)
    assert f"'{inner.name}/conv2_input_quantizer'" in message, message
    assert f"'{inner.name}/negates' (TracedNegates)" in message, message
    assert [len(layer._inbound_nodes) for layer in model._flatten_layers()] == nodes


def test_a_disagreeing_onnx_file_is_not_written(bad, tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportMismatchError):
        qdq.to_onnx(bad, path)
    assert not path.exists()


@pytest.mark.parametrize("export", ["to_onnx", "to_tflite"])
def test_verify_warn_exports_anyway_and_false_skips(bad, export):
    with pytest.warns(ExportMismatchWarning, match="disagrees"):
        assert getattr(qdq, export)(bad, verify="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(qdq, export)(bad, verify=False)


def test_verify_data_is_used(good):
    # the sample inputs are what is given: an export that agrees on them passes, and a wrong
    # number of model inputs is an error of the data, not a pass
    qdq.to_onnx(good, verify=_images(5, seed=3))
    qdq.to_onnx(good, verify_data=_images(5, seed=3))
    with pytest.raises(ValueError, match="verify"):
        qdq.to_onnx(good, verify="sometimes")
    with pytest.raises(ValueError, match="once"):
        qdq.to_onnx(good, verify=_images(2), verify_data=_images(2))


def test_sample_inputs_come_from_calibration_else_from_the_input_quantizer(good):
    remembered = _verify.sample_inputs(good)
    np.testing.assert_array_equal(remembered[0], _images()[:_verify.SAMPLES])
    fresh = quantize_model(_float_model(), verbose=False)  # never calibrated
    quantizer = next(layer for layer in fresh.layers if layer.name == "conv1_input_quantizer")
    quantizer.set_range(-0.25, 0.5)
    drawn = _verify.sample_inputs(fresh)[0]
    assert drawn.shape == (_verify.SAMPLES, 8, 8, 1)
    assert drawn.min() >= -0.25 and drawn.max() <= 0.5 and drawn.std() > 0.1


def test_the_bound():
    rng = np.random.default_rng(1)
    keras_out = rng.normal(size=(16, 10))
    step = 0.05
    one_step_off = keras_out + step * (rng.random(keras_out.shape) < 0.05)
    assert _verify.agreement(keras_out, one_step_off, step).ok
    shuffled = rng.permutation(keras_out.reshape(-1)).reshape(keras_out.shape)
    found = _verify.agreement(keras_out, shuffled, step)
    assert not found.ok and abs(found.correlation - np.corrcoef(keras_out.ravel(), shuffled.ravel())[0, 1]) < 1e-12
    # near-constant softmax outputs (an untrained model): within two output steps agrees
    flat = np.full((4, 10), 0.1) + rng.normal(scale=1e-5, size=(4, 10))
    assert _verify.agreement(flat, np.full((4, 10), 0.1015625), 1 / 256).ok
    assert not _verify.agreement(flat, np.full((4, 10), 0.2), 1 / 256).ok
    assert not _verify.agreement(keras_out, np.full_like(keras_out, np.nan), step).ok


def _poisoned(what):
    copy = _model()
    if what == "weight":
        layer = copy.get_layer("conv2")
        kernel = layer.layer.kernel.numpy()
        kernel[0, 0, 0, 0] = np.nan
        layer.layer.kernel.assign(kernel)
    else:
        copy.get_layer("conv1_output_quantizer").set_range(0.0, np.inf)
    return copy


@pytest.mark.parametrize("export", ["to_onnx", "to_tflite"])
@pytest.mark.parametrize("what, named", [("weight", "conv2/kernel"), ("range", "conv1_output_quantizer")])
def test_nan_or_inf_is_refused_naming_the_place(export, what, named):
    with pytest.raises(ValueError, match="NaN or Inf") as info:
        getattr(qdq, export)(_poisoned(what))
    assert named in str(info.value)


def test_to_tflite_of_a_model_without_quantizers_raises_and_float_is_explicit():
    inputs = keras.Input((4,))
    float_model = keras.Model(inputs, L.Dense(2)(inputs))
    for export in (qdq.to_onnx, qdq.to_tflite):
        with pytest.raises(ValueError, match="no quantizers"):
            export(float_model)
    flatbuffer = qdq.to_tflite(float_model, integer=False)  # verified against Keras too
    assert len(flatbuffer) > 0


_EXPORT_QUIETLY = """
import sys
import numpy as np, keras
import tensorflow_qdq as qdq
from tensorflow_qdq.keras import quantize_model, calibrate
inputs = keras.Input((8, 8, 1))
x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
model = quantize_model(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x))), verbose=False)
calibrate(model, np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype("float32"), verbose=False)
qdq.to_onnx(model)  # the first export also loads the converters (their import-time lines are theirs)
qdq.to_tflite(model)
sys.stdout.flush(); sys.stderr.flush()
print("<<<", flush=True); print("<<<", file=sys.stderr, flush=True)
qdq.to_onnx(model)
qdq.to_tflite(model)
sys.stdout.flush(); sys.stderr.flush()
print(">>>", flush=True); print(">>>", file=sys.stderr, flush=True)
"""


def test_exports_print_nothing():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # what a user sees by default
    done = subprocess.run([sys.executable, "-c", _EXPORT_QUIETLY], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for stream in (done.stdout, done.stderr):
        between = stream.split("<<<", 1)[1].split(">>>", 1)[0]
        assert between.strip() == "", between


def test_segment_bound():
    step = 0.5
    exact = np.arange(-8, 8, dtype=np.float64) * step
    assert _verify._segment_agreement(exact, exact + step, step) is None  # one step everywhere
    few = exact.repeat(100)
    flipped = few.copy()
    flipped[0] += 3 * step  # one element in 1,600 off: a rounding flip widened by a sigmoid
    assert _verify._segment_agreement(few, flipped, step) is None
    flipped[:10] += 2 * step
    assert "more than one step apart" in _verify._segment_agreement(few, flipped, step)
    assert "3 steps" in _verify._segment_agreement(exact, exact + 3 * step, step)
    assert _verify._segment_agreement(exact, exact * np.nan, step) is not None


@pytest.mark.slow
def test_rounding_grown_by_depth_warns_instead_of_raising():
    """An untrained EfficientNetV2B1 (random biases): each stretch between quantizers agrees with
    Keras, the logits do not (docs/DEPLOY.md, 'Verified exports'). Both exporters return the
    model and say why in a warning."""
    from tests.test_onnx_fidelity import quantized

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetV2B1(weights=None, input_shape=(64, 64, 3), classes=10,
                                                classifier_activation=None)
    images = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)
    model = quantized(model, images)
    for export in (qdq.to_onnx, qdq.to_tflite):
        with pytest.warns(ExportMismatchWarning, match="Segment by segment the export agrees"):
            assert export(model)


def test_onnx_names_every_quantizer_it_cannot_export_in_one_error():
    model = _model()
    model.get_layer("conv1_input_quantizer").set_range(0.0, 0.0)  # degenerate
    model.get_layer("head_input_quantizer").set_range(0.0, 0.0)
    with pytest.raises(ValueError, match="2 problems") as info:
        qdq.to_onnx(model)
    assert "'conv1_input_quantizer' has the degenerate range" in str(info.value)
    assert "'head_input_quantizer' has the degenerate range" in str(info.value)


def _graphs_left_as_garbage(export):
    """The TF FuncGraphs and tf2onnx graphs that ``export()`` leaves unreachable (by type), with
    Python's automatic cycle collection off: what it would hold until a full collection."""
    import collections
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph
    from tf2onnx.graph import Graph

    def census():
        return collections.Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, (FuncGraph, Graph)))

    gc.collect()
    gc.disable()
    try:
        export()
        found = census()
    finally:
        gc.enable()
    gc.collect()
    found.subtract(census())
    return {kind: n for kind, n in found.items() if n}


def test_exports_free_their_graphs_without_waiting_for_the_cycle_collector(good, monkeypatch):
    """tf2onnx runs each optimizer on a deep copy of its graph, and traced functions' graphs are
    cyclic: in a process holding a large model, Python's full collections are rare, and a trained
    InceptionResNetV2's to_onnx ran out of 23 GB on such copies. With automatic collection off,
    at most three tf2onnx graphs live when an optimizer starts (24 without the fix, one more per
    optimizer run), and neither exporter leaves graphs behind (25 and 5 without it)."""
    import collections
    import gc

    import tf2onnx.optimizer as optimizer
    from tf2onnx.graph import Graph

    live = []

    def counting(factory):
        def make():
            live.append(sum(isinstance(o, Graph) for o in gc.get_objects()))
            return factory()
        return make

    monkeypatch.setattr(optimizer, "_optimizers",
                        collections.OrderedDict((name, counting(f)) for name, f in optimizer._optimizers.items()))
    assert _graphs_left_as_garbage(lambda: qdq.to_onnx(good)) == {}
    assert live and max(live) <= 3, live
    assert _graphs_left_as_garbage(lambda: qdq.to_tflite(good)) == {}
