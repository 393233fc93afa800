"""sensitivity: per-layer metric with only that layer quantized and with only it left float.

The independent check: "only this layer quantized" must equal a model built by
quantize_model(float_model, skip_layers=every other layer) with the same calibrated ranges, its
output SQNR computed here in NumPy against the float model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from tensorflow_qdq.keras import QuantizeAndDequantize, calibrate, quantize_model
from tensorflow_qdq.keras._sensitivity import LayerSensitivity, SensitivityReport, layer_quantizers, sensitivity

L = keras.layers
QUANTIZED = ("conv1", "conv2", "head")


@pytest.fixture(scope="module")
def trained():
    """A small chain CNN (conv+ReLU, conv -> BatchNorm -> ReLU, pooling, dense) trained briefly
    on scikit-learn's digits, so the BatchNorm has real statistics."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, activation="relu", name="conv1"),
        L.Conv2D(16, 3, use_bias=False, name="conv2"),
        L.BatchNormalization(name="bn2"),
        L.ReLU(name="relu2"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(10, name="head"),
    ], name="chain")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], epochs=3, batch_size=32, verbose=0)
    return model, x[1200:], y[1200:]


def quantized(model, x, **options):
    q = quantize_model(model, verbose=False, **options)
    calibrate(q, x, verbose=False)
    return q


def np_sqnr(reference, y):
    reference, y = np.asarray(reference, np.float64), np.asarray(y, np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((y - reference) ** 2))


def producer(quantizer):
    """The float tensor a quantizer reads, named by the layer that computes it ("<input>" for a
    model input); quantizer nodes in between are skipped."""
    node = quantizer._inbound_nodes[0]
    while True:
        parent = node.parent_nodes[0]
        operation = parent.operation
        if isinstance(operation, keras.layers.InputLayer):
            return "<input>"
        if not isinstance(operation, QuantizeAndDequantize):
            return operation.name
        node = parent


def quantizers_of(model):
    return [layer for layer in model.layers if isinstance(layer, QuantizeAndDequantize)]


def test_a_two_bit_layer_ranks_first(trained):
    model, x, _ = trained
    q = quantized(model, x)
    q.get_layer("conv2").weight_bits = 2  # this layer alone on a 2-bit weight grid
    report = sensitivity(q, x, float_model=model, verbose=False)
    assert isinstance(report, SensitivityReport) and all(isinstance(r, LayerSensitivity) for r in report)
    print(report)
    assert [r.name for r in report][0] == "conv2"
    assert sorted(r.name for r in report) == sorted(QUANTIZED)
    by_name = {r.name: r for r in report}
    # leaving it float recovers the most; alone it costs the most
    assert by_name["conv2"].only_float == max(r.only_float for r in report)
    assert by_name["conv2"].only_quantized < min(by_name[n].only_quantized for n in ("conv1", "head")) - 3.0
    # the whole model's metric is the model's own SQNR
    assert report.quantized == pytest.approx(np_sqnr(model.predict(x, verbose=0), q.predict(x, verbose=0)), abs=1e-3)
    assert report.float > 100.0  # every quantizer bypassed: the float model up to float rounding
    text = str(report)
    assert text.splitlines()[2].startswith("conv2") and "only this quantized (SQNR dB)" in text

    # the same ranking with a metric passed in: the loss, lower is better, on (x, y) batches
    labels = trained[2]
    batches = [(x[i:i + 100], labels[i:i + 100]) for i in range(0, len(x), 100)]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def cross_entropy(outputs, batch):
        return float(loss(batch[1], outputs))

    by_loss = sensitivity(q, batches, metric=cross_entropy, higher_is_better=False, verbose=False)
    assert by_loss[0].name == "conv2" and by_loss.metric == "cross_entropy"
    weighted = sum(cross_entropy(q(b[0]), b) * len(b[0]) for b in batches) / len(x)
    assert by_loss.quantized == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("layer", QUANTIZED)
def test_only_this_layer_quantized_equals_a_model_with_every_other_layer_skipped(trained, layer):
    model, x, _ = trained
    q = quantized(model, x, weight_bits=4, activation_bits=6)
    report = {r.name: r for r in sensitivity(q, x, float_model=model, verbose=False)}
    owners, unassigned = layer_quantizers(q)
    assert unassigned == []  # a chain: every quantizer belongs to a layer
    mine = {producer(z): z for z in owners[q.get_layer(layer)]}
    assert set(report[layer].quantizers) == {z.name for z in mine.values()}

    # the independent model: only `layer` quantized, its quantizers placed by quantize_model
    others = [name for name in QUANTIZED if name != layer]
    # with conv2 float its BatchNorm cannot fold, and quantize_model would quantize it as a layer
    # of its own (TFLite's int8 depthwise form): skipped too, so everything but `layer` is float
    skipped = quantize_model(model, weight_bits=4, activation_bits=6, verbose=False,
                             skip_layers=others + (["bn2"] if "conv2" in others else []))
    placed = {producer(z): z for z in quantizers_of(skipped)}
    assert set(placed) == set(mine)  # the same tensors quantized: the layer's input(s) and output
    for tensor, z in placed.items():
        z.set_range(*mine[tensor].constant_range())
    expected = np_sqnr(model.predict(x, verbose=0), skipped.predict(x, verbose=0))
    assert report[layer].only_quantized == pytest.approx(expected, abs=1e-4), (layer, expected)


def test_the_model_is_unchanged_afterwards(trained):
    model, x, _ = trained
    q = quantized(model, x, weight_bits=4)
    before_outputs = q.predict(x, verbose=0)
    before_eager = np.asarray(q(x, training=False))
    before_weights = [w.copy() for w in q.get_weights()]
    report = sensitivity(q, x, verbose=False)
    assert len(report) == 3

    def boom(outputs, batch):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):  # an error half way restores the model too
        sensitivity(q, x, metric=boom, verbose=False)
    np.testing.assert_array_equal(q.predict(x, verbose=0), before_outputs)
    np.testing.assert_array_equal(np.asarray(q(x, training=False)), before_eager)
    for a, b in zip(before_weights, q.get_weights()):
        np.testing.assert_array_equal(a, b)
    for layer in q._flatten_layers(include_self=False, recursive=True):
        assert "call" not in layer.__dict__, layer.name
    assert [q.get_layer(n).weight_bits for n in QUANTIZED] == [4, 4, 4]


def test_float_reference_and_errors(trained, capsys):
    model, x, _ = trained
    q = quantized(model, x)
    # without float_model the reference is the quantized model with every quantizer bypassed
    own = sensitivity(q, x, verbose=True)
    assert "variant" in capsys.readouterr().out  # the progress bar
    given = {r.name: r for r in sensitivity(q, x, float_model=model, verbose=False)}
    for r in own:
        assert r.only_quantized == pytest.approx(given[r.name].only_quantized, abs=1e-3)
    with pytest.raises(ValueError, match="calibrate"):
        sensitivity(quantize_model(model, verbose=False), x, verbose=False)
    with pytest.raises(TypeError, match="callable"):
        sensitivity(q, x, metric="accuracy", verbose=False)
    with pytest.raises(ValueError, match="higher"):
        sensitivity(q, x, higher_is_better=False, verbose=False)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(64)
    assert len(sensitivity(q, dataset, num_batches=2, verbose=False)) == 3
    # after correct_bias the bypassed model keeps the corrected biases: not the float model
    from tensorflow_qdq.keras._bias_correction import correct_bias

    correct_bias(q, x, verbose=False)
    with pytest.warns(UserWarning, match="float_model"):
        sensitivity(q, x, num_batches=1, verbose=False)
