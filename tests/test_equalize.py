"""equalize: cross-layer equalization (Nagel et al. 2019) on real Keras models.

The checks are derived from the definitions, not from the implementation: the function is the
original model's outputs on random inputs; "equalized" is the paper's condition on the ranges
read back from the returned kernels (r1_i / s_i = r2_i * s_i, so the per-channel ranges of the
two layers agree); the gain is measured with quantize_model + calibrate and with per-tensor weight
quantization written here in NumPy."""

import keras
import numpy as np
import pytest

from tensorflow_qdq.keras import calibrate, quantize_model
from tensorflow_qdq.keras._equalize import equalize

L = keras.layers


def randomize_batch_norms(model, seed=0):
    """Non-trivial BatchNorm parameters and statistics (a fresh one is the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.3, 3.0, n), rng.normal(0.0, 1.0, n), rng.normal(0.0, 1.0, n),
                               rng.uniform(0.3, 3.0, n)])
    return model


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def sqnr_db(reference, approximation):
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - approximation) ** 2)))


def images(shape, n=16, seed=1, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((n,) + shape) * scale).astype(np.float32)


def chain_model():
    """Conv-BN-ReLU -> DepthwiseConv-BN-ReLU -> Conv-BN, a residual block after it, a Dense chain."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 4))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_a")(inputs)
    x = L.BatchNormalization(name="bn_a")(x)
    x = L.ReLU(name="relu_a")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    x = L.ReLU(name="relu_dw")(x)
    x = L.Conv2D(6, 1, name="conv_b")(x)
    x = L.BatchNormalization(name="bn_b")(x)
    y = L.Conv2D(6, 1, activation="relu", name="res_a")(x)
    y = L.Conv2D(6, 3, padding="same", name="res_b")(y)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(16, activation="relu", name="fc_a")(x)
    x = L.Dense(12, name="fc_b")(x)
    x = L.LeakyReLU(0.1, name="leaky")(x)
    x = L.Dense(5, name="fc_c")(x)
    return randomize_batch_norms(keras.Model(inputs, x, name="chain"))


def conv_out_ranges(kernel):
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0)


def depthwise_ranges(kernel):  # multiplier 1: channel c is kernel[..., c, 0], on both sides
    return np.abs(kernel[..., 0]).reshape(-1, kernel.shape[-2]).max(0)


def in_ranges(kernel):
    """max |w| per input channel of a Conv/Dense kernel (..., in, out)."""
    return np.abs(np.moveaxis(kernel, -2, 0)).reshape(kernel.shape[-2], -1).max(1)


# -- (1) the function is preserved --

def test_chain_model_function_preserved_and_batch_norms_folded():
    model = chain_model()
    x = images((12, 12, 4))
    equalized, report = equalize(model, verbose=False)
    assert relative_error(model.predict(x, verbose=0), equalized.predict(x, verbose=0)) < 2e-5
    assert not any(isinstance(layer, L.BatchNormalization) for layer in equalized.layers)
    assert sorted(report.folded) == [("conv_a", "bn_a"), ("conv_b", "bn_b"), ("dw", "bn_dw")]
    pairs = {(row.layer, row.next_layer) for row in report.equalized}
    assert pairs == {("conv_a", "dw"), ("dw", "conv_b"), ("res_a", "res_b"), ("fc_a", "fc_b"), ("fc_b", "fc_c")}
    # the original is untouched (its BatchNorms still there, its kernels unchanged)
    assert isinstance(model.get_layer("bn_a"), L.BatchNormalization)
    # and the copy's kernels did move (a no-op would pass the function check too)
    assert not np.allclose(equalized.get_layer("dw").kernel.numpy(), model.get_layer("dw").kernel.numpy())


def test_sequential_with_pooling_flatten_dropout_and_grouped_conv():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.MaxPooling2D(name="pool"),
        L.ZeroPadding2D(name="pad"),
        L.Conv2D(8, 3, groups=2, name="grouped"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu"),
        L.Flatten(name="flat"),
        L.Dropout(0.3, name="drop"),
        L.Dense(10, name="head"),
    ], name="seq")
    randomize_batch_norms(model)
    x = images((10, 10, 3))
    equalized, report = equalize(model, verbose=False)
    assert relative_error(model.predict(x, verbose=0), equalized.predict(x, verbose=0)) < 2e-5
    assert {(row.layer, row.next_layer) for row in report.equalized} == {("c1", "grouped"), ("grouped", "head")}
    # the Dense after the Flatten reads channel c in rows p * 8 + c: equal ranges there
    grouped = equalized.get_layer("grouped").kernel.numpy()
    head = equalized.get_layer("head").kernel.numpy()
    np.testing.assert_allclose(conv_out_ranges(grouped), np.abs(head.reshape(-1, 8, 10)).max(axis=(0, 2)), rtol=1e-5)
    # the grouped conv (2 groups of 4) reads input channel c with kernel[..., c % 4, outputs of group c // 4]
    c1 = equalized.get_layer("c1").kernel.numpy()
    grouped_in = [np.abs(grouped[:, :, c % 4, (c // 4) * 4:(c // 4 + 1) * 4]).max() for c in range(8)]
    np.testing.assert_allclose(conv_out_ranges(c1), grouped_in, rtol=1e-5)


# -- (2) the ranges really are equalized --

def test_ranges_of_each_pair_are_equal_as_the_paper_defines():
    model = chain_model()
    equalized, _ = equalize(model, verbose=False)
    k = {name: equalized.get_layer(name).kernel.numpy() for name in ("conv_a", "dw", "conv_b", "res_a", "res_b",
                                                                      "fc_a", "fc_b", "fc_c")}
    # r1_i / s_i = r2_i * s_i: the output-channel range of layer 1 equals the input-channel range
    # of layer 2, channel by channel; in conv -> depthwise -> conv all three agree
    r_conv_a, r_dw, r_conv_b = conv_out_ranges(k["conv_a"]), depthwise_ranges(k["dw"]), in_ranges(k["conv_b"])
    np.testing.assert_allclose(r_conv_a, r_dw, rtol=1e-5)
    np.testing.assert_allclose(r_dw, r_conv_b, rtol=1e-5)
    for first, second in (("res_a", "res_b"), ("fc_a", "fc_b"), ("fc_b", "fc_c")):
        r1, r2 = conv_out_ranges(k[first]), in_ranges(k[second])
        np.testing.assert_allclose(r1, r2, rtol=1e-5)
        # hence the paper's per-channel precisions p_i = r_i / R agree as well
        np.testing.assert_allclose(r1 / r1.max(), r2 / r2.max(), rtol=1e-5)
    # the paper's objective for a pair, sum_i p1_i * p2_i, is not lower than before
    # (res_a -> res_b is a pair on its own; a layer in two pairs, fc_b, trades one for the other)
    for first, second in (("res_a", "res_b"),):
        before1, before2 = (conv_out_ranges(model.get_layer(first).kernel.numpy()),
                            in_ranges(model.get_layer(second).kernel.numpy()))
        after1, after2 = conv_out_ranges(k[first]), in_ranges(k[second])
        objective_before = np.sum(before1 / before1.max() * before2 / before2.max())
        objective_after = np.sum(after1 / after1.max() * after2 / after2.max())
        assert objective_after >= objective_before - 1e-9
        assert not np.allclose(before1 / before1.max(), before2 / before2.max(), rtol=1e-2)  # not trivially equal


# -- (3) a 100x channel spread: what equalization is for --

def spread_model(factor):
    """conv -> ReLU -> conv -> GAP -> Dense, then half of c1's output channels times ``factor`` and
    c2's matching input channels times 1/factor: the same function (ReLU is homogeneous)."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, name="head")(x))
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    scale = np.where(np.arange(16) < 8, factor, 1.0).astype(np.float32)
    kernel, bias = c1.get_weights()
    c1.set_weights([kernel * scale, bias * scale])
    kernel, bias = c2.get_weights()
    c2.set_weights([kernel / scale[:, None], bias])
    return model


def per_tensor_weights(model, bits):
    """A copy with every kernel fake-quantized per tensor (symmetric, narrow range), in NumPy."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    levels = 2 ** (bits - 1) - 1
    for layer in copy.layers:
        if hasattr(layer, "kernel"):
            kernel = layer.kernel.numpy()
            step = np.abs(kernel).max() / levels
            layer.kernel.assign(np.clip(np.round(kernel / step), -levels, levels) * step)
    return copy


def calibrated_sqnr(model, data, test, bits):
    quantized = quantize_model(model, weight_bits=bits, activation_bits=bits, verbose=False)
    calibrate(quantized, data, verbose=False)
    return sqnr_db(model.predict(test, verbose=0), quantized.predict(test, verbose=0))


def test_a_100x_channel_spread_quantizes_much_better_after_equalize():
    plain, spread = spread_model(1.0), spread_model(100.0)
    data, test = images((8, 8, 3), n=64, seed=2), images((8, 8, 3), n=32, seed=3)
    assert relative_error(plain.predict(test, verbose=0), spread.predict(test, verbose=0)) < 1e-5  # same function
    equalized, report = equalize(spread, verbose=False)
    assert ("c1", "c2") in {(row.layer, row.next_layer) for row in report.equalized}
    assert relative_error(spread.predict(test, verbose=0), equalized.predict(test, verbose=0)) < 1e-5
    # per-channel weights, per-tensor activations (quantize_model + calibrate), W8A8 and W4A8
    for bits, gain in ((8, 15.0), (4, 6.0)):
        before = calibrated_sqnr(spread, data, test, bits)
        after = calibrated_sqnr(equalized, data, test, bits)
        assert after > before + gain, (bits, before, after)
    # per-tensor 4-bit weights alone (float activations), in NumPy
    reference = spread.predict(test, verbose=0)
    before = sqnr_db(reference, per_tensor_weights(spread, 4).predict(test, verbose=0))
    after = sqnr_db(reference, per_tensor_weights(equalized, 4).predict(test, verbose=0))
    assert after > before + 10.0, (before, after)


# -- (4) what cannot be equalized is reported, with the reason --

class Scale(L.Layer):
    """A custom layer with a weight of its own."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma


def test_report_lists_every_layer_it_cannot_equalize_with_the_reason():
    keras.utils.set_random_seed(11)
    inputs = keras.Input((8, 8, 4))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    a = L.BatchNormalization(name="bn_a")(a)
    a = L.ReLU(6.0, name="relu6")(a)
    b = L.Conv2D(6, 1, name="b")(a)  # a -> relu6 -> b: ReLU6
    c = L.Conv2D(6, 1, name="c")(b)
    c = L.Activation("swish", name="swish")(c)
    d = L.Conv2D(6, 1, name="d")(c)  # c -> swish -> d: not homogeneous
    e = L.Conv2D(6, 1, name="e")(d)
    f = L.Concatenate(name="cat")([e, d])  # e -> concat; d read twice
    g = L.Conv2D(6, 1, activation="relu", name="g")(f)
    g = L.ReLU(name="post_relu")(g)
    g = L.BatchNormalization(name="bn_unfoldable")(g)  # after an activation: not folded
    h = L.SeparableConv2D(6, 3, padding="same", name="sep")(g)
    h = Scale(name="custom")(h)
    nested = keras.Sequential([keras.Input((8, 8, 6)), L.Conv2D(6, 1, name="in_a"), L.ReLU(name="in_relu"),
                               L.Conv2D(6, 1, name="in_b")], name="inner")
    h = nested(h)
    h = L.Lambda(lambda t: t * 2.0, name="lam")(h)
    out = L.Conv2D(3, 1, name="last")(h)
    model = randomize_batch_norms(keras.Model(inputs, out, name="mixed"))

    x = images((8, 8, 4))
    equalized, report = equalize(model, verbose=False)
    assert relative_error(model.predict(x, verbose=0), equalized.predict(x, verbose=0)) < 2e-5
    rows = {row.layer: row for row in report.rows}
    expect = {
        "a": ("not equalized", "ReLU with max_value 6.0"),
        "c": ("not equalized", "swish"),
        "d": ("not equalized", "2 readers"),
        "e": ("not equalized", "Concatenate"),
        "g": ("not equalized", "BatchNormalization"),
        "sep": ("unsupported", "no equalization rule"),
        "custom": ("unsupported", "no equalization rule"),
        "inner": ("unsupported", "nested model"),
        "last": ("not equalized", "model output"),
    }
    assert rows["b"].status == "equalized" and rows["b"].next_layer == "c"  # a linear connection
    for name, (status, words) in expect.items():
        assert rows[name].status == status, rows[name]
        assert words in rows[name].detail, rows[name]
    assert rows["inner/in_a"].status == "equalized" and rows["inner/in_a"].next_layer == "inner/in_b"
    assert dict(report.batch_norms_kept)["bn_unfoldable"].startswith("follows 'post_relu'")
    assert report.folded == [("a", "bn_a")]
    text = str(report)
    for name in expect:
        assert f"  {name} (" in text


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="Sequential or functional"):
        equalize(Net())


def test_a_quantized_model_is_refused():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="relu"), L.Dense(2)])
    with pytest.raises(ValueError, match="quantized already"):
        equalize(quantize_model(model, verbose=False))


# -- ReLU6 and high-bias absorption --

def relu6_model(weight_scale):
    keras.utils.set_random_seed(13)
    inputs = keras.Input((16,))
    x = L.Dense(32, name="d1", kernel_initializer=keras.initializers.RandomNormal(stddev=weight_scale))(inputs)
    x = L.ReLU(6.0, name="relu6")(x)
    return keras.Model(inputs, L.Dense(4, name="d2")(x))


def test_relu6_is_left_alone_by_default_and_replaced_only_on_request():
    x = images((16,), n=64)
    small = relu6_model(0.05)  # pre-activations far below 6: ReLU6 is ReLU on these inputs
    equalized, report = equalize(small, verbose=False)
    assert [row.status for row in report.rows if row.layer == "d1"] == ["not equalized"]
    assert "relu6_to_relu=True" in [row for row in report.rows if row.layer == "d1"][0].detail
    assert not report.relu6_replaced
    swapped, report = equalize(small, relu6_to_relu=True, verbose=False)
    assert report.relu6_replaced == ["relu6"]
    assert swapped.get_layer("relu6").max_value is None
    assert relative_error(small.predict(x, verbose=0), swapped.predict(x, verbose=0)) < 2e-5
    # where pre-activations pass 6 the opt-in changes the function (which is why it is opt-in)
    large = relu6_model(3.0)
    swapped, _ = equalize(large, relu6_to_relu=True, verbose=False)
    assert relative_error(large.predict(x, verbose=0), swapped.predict(x, verbose=0)) > 1e-2
    equalized, _ = equalize(large, verbose=False)
    assert relative_error(large.predict(x, verbose=0), equalized.predict(x, verbose=0)) < 2e-5


@pytest.mark.parametrize("form", ["own activation", "Activation layer"])
def test_relu6_in_other_forms_and_a_shared_layer(form):
    keras.utils.set_random_seed(19)
    inputs = keras.Input((16,))
    if form == "own activation":
        x = L.Dense(32, activation="relu6", name="d1")(inputs)
    else:
        x = L.Activation("relu6", name="act")(L.Dense(32, name="d1")(inputs))
    shared = L.Dense(8, name="shared")
    x = shared(L.Dense(8, name="d2")(x))
    x = shared(x)
    model = keras.Model(inputs, L.Dense(2, name="d3")(x))
    x = images((16,), n=32, scale=0.1)
    kept, report = equalize(model, verbose=False)
    rows = {row.layer: row for row in report.rows}
    assert rows["d1"].status == "not equalized" and "relu6" in rows["d1"].detail
    assert rows["shared"].status == "not equalized" and "called 2 times" in rows["shared"].detail
    assert rows["d2"].status == "not equalized" and "'shared'" in rows["d2"].detail
    swapped, report = equalize(model, relu6_to_relu=True, verbose=False)
    assert {row.layer for row in report.equalized} == {"d1"}
    replaced = "d1" if form == "own activation" else "act"
    assert report.relu6_replaced == [replaced]
    assert keras.activations.serialize(swapped.get_layer(replaced).activation) == "relu"
    for candidate in (kept, swapped):  # small inputs: no pre-activation reaches 6
        assert relative_error(model.predict(x, verbose=0), candidate.predict(x, verbose=0)) < 2e-5


def absorption_model():
    keras.utils.set_random_seed(17)
    inputs = keras.Input((8,))
    x = L.Dense(12, use_bias=False, name="d1")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    model = keras.Model(inputs, L.Dense(3, name="d2", use_bias=False)(x))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.0, 12) * np.where(np.arange(12) % 2, 1.0, -1.0)  # a negative gamma too
    beta = np.where(np.arange(12) < 8, 10.0, -1.0)  # 8 channels with a high bias, 4 without
    bn.set_weights([gamma, beta, rng.normal(0, 1, 12), rng.uniform(0.5, 2.0, 12)])
    return model


def test_high_bias_absorption_moves_the_bias_and_keeps_the_function_where_its_assumption_holds():
    model = absorption_model()
    # inputs whose BatchNorm outputs stay within 3 sigma of beta (the paper's assumption)
    x = np.random.default_rng(4).uniform(-0.3, 0.3, (64, 8)).astype(np.float32)
    plain, _ = equalize(model, verbose=False)
    absorbed, report = equalize(model, high_bias_absorption=True, verbose=False)
    reference = model.predict(x, verbose=0)
    assert relative_error(reference, plain.predict(x, verbose=0)) < 2e-5
    assert relative_error(reference, absorbed.predict(x, verbose=0)) < 2e-5
    assert list(report.absorbed) == [("d1", "d2")]
    # derived from the paper: c = max(0, beta' - 3 |gamma'|) with beta', gamma' the BatchNorm's
    # after the fold and the equalizing scale s (read back as folded kernel / equalized kernel)
    bn = model.get_layer("bn")
    gamma, beta, mean, var = (w.numpy() for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    folded = model.get_layer("d1").kernel.numpy() * gamma / np.sqrt(var + bn.epsilon)
    s = (folded / plain.get_layer("d1").kernel.numpy())[0]
    c = np.maximum(0.0, beta / s - 3.0 * np.abs(gamma) / s)
    assert np.count_nonzero(c) == 8
    np.testing.assert_allclose(absorbed.get_layer("d1").bias.numpy(), plain.get_layer("d1").bias.numpy() - c,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(absorbed.get_layer("d2").bias.numpy(), c @ plain.get_layer("d2").kernel.numpy(),
                               rtol=1e-5, atol=1e-5)
    # the activation range between the layers shrinks
    inner = keras.Model(absorbed.inputs, absorbed.get_layer("relu").output).predict(x, verbose=0)
    inner_plain = keras.Model(plain.inputs, plain.get_layer("relu").output).predict(x, verbose=0)
    assert inner.max() < 0.5 * inner_plain.max()
    # outside the assumption (pre-activations below c) it is not exact: documented, shown here
    far = np.random.default_rng(5).normal(0.0, 30.0, (64, 8)).astype(np.float32)
    assert relative_error(model.predict(far, verbose=0), absorbed.predict(far, verbose=0)) > 1e-3


@pytest.mark.parametrize("second", ["grouped conv", "depthwise x2", "flatten dense"])
def test_high_bias_absorption_into_each_kind_of_second_layer(second):
    """W2 c summed over the kernel's spatial taps, groups, multipliers and flattened positions."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((9, 9, 4))
    x = L.Conv2D(8, 3, use_bias=False, name="first")(inputs)
    x = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(x))
    if second == "grouped conv":
        x = L.Conv2D(6, 3, groups=2, name="second")(x)
    elif second == "depthwise x2":
        x = L.DepthwiseConv2D(3, depth_multiplier=2, name="second")(x)
    else:
        x = L.Dense(5, name="second")(L.Flatten()(x))
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1, 8), np.full(8, 10.0), rng.normal(0, 1, 8),
                                       rng.uniform(0.5, 2, 8)])
    x = rng.uniform(-0.2, 0.2, (8, 9, 9, 4)).astype(np.float32)  # valid padding, pre-activations above c
    absorbed, report = equalize(model, high_bias_absorption=True, verbose=False)
    assert list(report.absorbed) == [("first", "second")] and report.absorbed[("first", "second")] > 8 * 5.0
    assert relative_error(model.predict(x, verbose=0), absorbed.predict(x, verbose=0)) < 2e-5


# -- (5) MobileNetV2 --

def test_mobilenet_v2_equalizes_exactly_and_then_quantizes_and_calibrates():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10,
                                           classifier_activation=None)
    randomize_batch_norms(model)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    reference = model.predict(x, verbose=0)

    # default: ReLU6 left alone, the function preserved, every BatchNorm folded
    equalized, report = equalize(model, verbose=False)
    assert relative_error(reference, equalized.predict(x, verbose=0)) < 1e-4
    assert not any(isinstance(layer, L.BatchNormalization) for layer in equalized.layers)
    assert len(report.folded) == 52 and not report.batch_norms_kept
    # the two project -> conv pairs with no residual add after them are linear: equalized
    assert {(row.layer, row.next_layer) for row in report.equalized} == {
        ("expanded_conv_project", "block_1_expand"), ("block_16_project", "Conv_1")}
    assert sum("ReLU with max_value 6.0" in row.detail for row in report.not_equalized) == 35

    # opt-in: ReLU6 -> ReLU inside the equalized chains (all 35 of them here). The function
    # changes where a pre-activation passes 6, to exactly that of the model with ReLU instead
    swapped, report = equalize(model, relu6_to_relu=True, verbose=False)
    assert len(report.equalized) == 37 and len(report.relu6_replaced) == 35

    def relu_for_relu6(layer):
        config = layer.get_config()
        if layer.name in report.relu6_replaced:
            config["max_value"] = None
        return layer.__class__.from_config(config)

    with_relu = keras.models.clone_model(model, clone_function=relu_for_relu6)
    with_relu.set_weights(model.get_weights())
    assert relative_error(with_relu.predict(x, verbose=0), swapped.predict(x, verbose=0)) < 1e-4
    assert relative_error(reference, swapped.predict(x, verbose=0)) > 1e-3  # these inputs pass 6 somewhere

    quantized = quantize_model(equalized, weight_bits=8, activation_bits=8, verbose=False)
    calibrate(quantized, x, verbose=False)
    assert sqnr_db(reference, quantized.predict(x, verbose=0)) > 10.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV3Small", "DenseNet121", "EfficientNetB0"])
def test_keras_applications_keep_their_function(name):
    keras.utils.set_random_seed(0)
    model = randomize_batch_norms(getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    equalized, report = equalize(model, verbose=False)
    assert report.folded and report.equalized
    # random BatchNorm statistics blow EfficientNet's activations up to 1e6: its float32 rounding
    # differences grow with them (5.9e-4 at the output; 1e-7 at the first layers)
    tolerance = 2e-3 if name == "EfficientNetB0" else 2e-5
    assert relative_error(model.predict(x, verbose=0), equalized.predict(x, verbose=0)) < tolerance
    assert not any(isinstance(layer, L.BatchNormalization) for layer in equalized.layers
                   if layer.name in dict(report.folded).values())
