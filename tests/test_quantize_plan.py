"""keras._plan: quantize_model's decisions as data, computed from the float graph alone.

Each test builds a small float model, asserts the plan's decisions directly (folds, output
sites, signedness, grid owners, float reasons), and checks the plan against the copy that
quantize_model actually builds for the same model (``assert_built_as_planned``)."""

import collections

import keras
import pytest

from tensorflow_qdq.keras import QuantizeAndDequantize, QuantizeWrapper, quantization_report, quantize_model
from tensorflow_qdq.keras._plan import Site, plan

L = keras.layers


def options(**changes):
    """quantize_model's options as it checks them (its defaults)."""
    checked = dict(weight_bits=8, activation_bits=8, momentum=0.99, activation_range="tracked",
                   range_update="delayed", scheme="default", fold_batch_norm=True, freeze_bn_delay=None,
                   skip_layers=frozenset())
    checked.update(changes)
    checked["skip_layers"] = frozenset(checked["skip_layers"])
    return checked


def planned_and_built(model, **changes):
    """(the plan, the copy quantize_model builds) for the same model and options, after checking
    that the plan left the float model as it was (no layer cloned, called or added)."""
    nodes = [(layer.name, len(layer._inbound_nodes)) for layer in model.layers]
    decided = plan(model, options(**changes))
    assert [(layer.name, len(layer._inbound_nodes)) for layer in model.layers] == nodes
    copy = quantize_model(model, verbose=False, **changes)
    assert_built_as_planned(decided, copy)
    return decided, copy


def assert_built_as_planned(decided, copy):
    """The copy holds the planned quantizers (same names, order and grids, each reading the
    planned tensor and called again once per planned passthrough/requantize), wraps and folds
    the planned layers, and reports the planned float reasons."""
    made = [layer for layer in copy.layers if isinstance(layer, QuantizeAndDequantize)]
    assert [q.name for q in made] == list(decided.quantizers)
    reuses = collections.Counter(site.quantizer for site in {id(s): s for _, _, s in decided.sites()}.values()
                                 if site.kind != "quantize")
    for quantizer in made:
        spec = decided.quantizers[quantizer.name]
        config = quantizer.get_config()
        assert {key: config[key] for key in spec.settings} == spec.settings
        first = quantizer._inbound_nodes[0].arguments.keras_tensors[0]._keras_history.operation
        assert first.name == spec.tensor
        assert len(quantizer._inbound_nodes) == 1 + reuses[quantizer.name]
    names = {layer.name for layer in copy.layers}
    for layer_plan in decided.layers.values():
        if layer_plan.folded_into is not None:
            assert layer_plan.name not in names  # folded away
        elif layer_plan.quantized:
            wrapper = copy.get_layer(layer_plan.name)
            assert isinstance(wrapper, QuantizeWrapper)
            assert (wrapper.batch_norm and wrapper.batch_norm.name) == (layer_plan.fold or None)
            assert wrapper.output_bits == layer_plan.output_bits
    floats = {row.name: row.detail for row in quantization_report(copy) if row.status == "float"}
    assert floats == {lp.name: lp.float_reason for lp in decided.layers.values() if lp.float_reason}


def only_step(decided, name):
    (step,) = decided.steps_of(name)
    return step


def test_conv_batchnorm_relu_folds_and_quantizes_after_the_relu_unsigned():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3, use_bias=False, name="conv"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu"),
        L.GlobalAveragePooling2D(name="pool"),
        L.Dense(3, name="head"),
    ], name="cbr")
    decided, copy = planned_and_built(model)
    assert decided.layers["conv"].fold == "bn" and decided.layers["bn"].folded_into == "conv"
    assert decided.layers["conv"].quantized and not decided.layers["relu"].quantized
    assert decided.layers["conv"].output_after == "relu"  # past the folded BatchNorm and the ReLU
    assert only_step(decided, "bn").action == "folded"
    assert only_step(decided, "relu").outputs == (Site("quantize", "relu_output_quantizer"),)
    assert list(decided.quantizers) == ["conv_input_quantizer", "relu_output_quantizer", "head_input_quantizer",
                                        "head_output_quantizer"]
    assert decided.quantizers["conv_input_quantizer"].signed
    assert not decided.quantizers["relu_output_quantizer"].signed
    # the sign rule follows pooling that moves values (max), not a global average: signed
    assert decided.quantizers["head_input_quantizer"].signed
    assert decided.quantizers["head_output_quantizer"].signed
    assert copy.get_layer("conv").batch_norm.name == "bn"


def test_residual_add_reads_quantized_branches_and_is_quantized_after_its_relu():
    inputs = keras.Input((8, 8, 4))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="conv_b")(a)
    x = L.Add(name="add")([a, b])
    x = L.ReLU(name="add_relu")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x), name="residual")
    decided, _ = planned_and_built(model)
    assert decided.layers["add"].output_after == "add_relu"
    assert only_step(decided, "add").inputs == (None, None)  # both branches already quantized
    assert not decided.quantizers["conv_a_output_quantizer"].signed
    assert decided.quantizers["conv_b_output_quantizer"].signed
    assert not decided.quantizers["add_relu_output_quantizer"].signed
    assert only_step(decided, "head").inputs == (None,)


def test_concat_of_a_relu_and_a_linear_branch_rounds_the_linear_one_on_its_grid():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 1, name="conv_a")(inputs)
    a = L.ReLU(name="relu_a")(a)
    b = L.Conv2D(4, 1, name="conv_b")(inputs)
    x = L.Concatenate(name="concat")([a, b])
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x), name="concat_model")
    decided, copy = planned_and_built(model)
    # the linear branch is rounded once, by the concat's quantizer; the ReLU keeps its unsigned
    # grid (the concat's signed one would keep ONNX Runtime from fusing the ReLU)
    assert decided.layers["conv_b"].on_concat_grid and decided.layers["conv_b"].output_after is None
    assert not decided.layers["relu_a"].on_concat_grid
    assert decided.layers["conv_a"].output_after == "relu_a"
    assert "conv_b_output_quantizer" not in decided.quantizers
    assert only_step(decided, "concat").inputs == (None, None)
    assert not decided.quantizers["relu_a_output_quantizer"].signed
    assert decided.quantizers["concat_output_quantizer"].signed
    concat_inputs = copy.get_layer("concat")._inbound_nodes[0].arguments.keras_tensors
    assert [t._keras_history.operation.name for t in concat_inputs] == ["relu_a_output_quantizer", "conv_b"]


def test_max_pooling_after_a_quantized_conv_passes_its_grid_through():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3, activation="relu", name="conv"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(2, 3, name="conv2"),
    ], name="pooled")
    decided, copy = planned_and_built(model)
    assert only_step(decided, "conv2").inputs == (Site("passthrough", "conv_output_quantizer"),)
    assert "conv2_input_quantizer" not in decided.quantizers
    assert not decided.quantizers["conv_output_quantizer"].signed
    assert len(copy.get_layer("conv_output_quantizer")._inbound_nodes) == 2


def test_average_pooling_output_is_requantized_on_its_inputs_grid():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3, activation="relu", name="conv"),
        L.AveragePooling2D(2, name="pool"),
        L.Conv2D(2, 3, name="conv2"),
    ], name="averaged")
    decided, _ = planned_and_built(model)
    assert only_step(decided, "conv2").inputs == (Site("requantize", "conv_output_quantizer"),)


def test_dense_with_swish_is_quantized_inside_the_wrapper_and_after_the_activation():
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="swish", name="dense"),
        L.Dense(4, name="out"),
    ], name="swishy")
    decided, copy = planned_and_built(model)
    assert decided.layers["dense"].output_bits == 8  # the wrapper quantizes before the swish
    assert decided.layers["out"].output_bits is None
    assert decided.layers["dense"].output_after == "dense"
    assert decided.quantizers["dense_output_quantizer"].signed  # swish dips below zero
    assert copy.get_layer("dense").output_bits == 8


def test_standalone_swish_reading_a_quantized_tensor_is_gated():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.Activation("swish", name="act")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x), name="gated")
    decided, copy = planned_and_built(model)
    step = only_step(decided, "act")
    assert step.action == "gated"
    assert (step.gate.sigmoid, step.gate.multiply) == ("act_sigmoid", "act_multiply")
    gate = decided.quantizers[step.gate.site.quantizer]
    assert gate.name == "act_gate_quantizer" and gate.settings["range_mode"] == "fixed" and not gate.signed
    assert decided.quantizers["act_output_quantizer"].signed
    assert {"act_sigmoid", "act_multiply"} <= {layer.name for layer in copy.layers}


def test_layers_that_stay_float_say_why():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.LayerNormalization(name="norm")(x)
    x = L.Conv2D(4, 3, name="kept_float")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x), name="floats")
    decided, copy = planned_and_built(model, skip_layers=["kept_float"])
    assert decided.layers["norm"].float_reason == "normalization layers stay float"
    assert decided.layers["kept_float"].float_reason == "skipped (skip_layers)"
    assert not decided.layers["kept_float"].quantized
    assert decided.layers["conv"].float_reason is None and decided.layers["head"].float_reason is None
    assert not isinstance(copy.get_layer("kept_float"), QuantizeWrapper)
    # the skipped conv reads the norm's float output; the head quantizes the skipped conv's
    assert only_step(decided, "kept_float").inputs == (None,)
    assert only_step(decided, "head").inputs == (Site("quantize", "head_input_quantizer"),)


def test_nested_model_has_a_plan_of_its_own():
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, activation="relu", name="inner_conv")(inner_in), name="inner")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(inner(inputs)), name="outer")
    decided, copy = planned_and_built(model)
    nested = decided.nested["inner"]
    assert list(nested.quantizers) == ["inner_conv_input_quantizer", "inner_conv_output_quantizer"]
    assert only_step(decided, "inner").inputs == (None,)
    assert_built_as_planned(nested, copy.get_layer("inner"))


@pytest.mark.parametrize("scheme", ["default", "tensorrt"])
def test_schemes_plan_what_they_build(scheme):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu6")(x)
    y = L.Conv2D(4, 1, activation="sigmoid", name="gate")(x)
    x = L.Multiply(name="scale")([x, y])
    x = L.ZeroPadding2D(name="pad")(x)
    model = keras.Model(inputs, L.DepthwiseConv2D(3, name="dw")(x), name=f"block_{scheme}")
    decided, _ = planned_and_built(model, scheme=scheme)
    if scheme == "tensorrt":
        assert all(spec.signed for spec in decided.quantizers.values())
        assert all(step.outputs == (None,) for step in decided.steps)
    else:
        assert decided.quantizers["gate_output_quantizer"].settings["range_mode"] == "fixed"  # the sigmoid grid
