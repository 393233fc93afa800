"""The plan of quantize_model: every decision about a model's quantized copy, as plain data.

``plan(model, options)`` reads the float model's graph (it clones and calls nothing) and says,
node by node in the order the rebuild visits them, what the copy does: which layers are wrapped
and which BatchNorm each one folds, where the activation quantizers go and with which grid
(signed or unsigned, tracked or the fixed sigmoid grid), which tensors a quantizer already passes
through (padding, max pooling) or rounds again (average pooling), which inputs a concatenation
rounds on its own grid, and which layers stay float and why. ``_quantize_model._Rebuild`` then
builds exactly that. The placement rules themselves are in ``_placement``.

The planner follows the tensors of the copy to be: a tensor that a quantizer writes (a new one, an
owner passing it through, or a quantizer the model holds) is on that quantizer's grid, and the
rules that depend on what reads or writes a tensor (is it on a grid already, can it be negative)
are asked of those planned tensors, as the rebuild would ask them of its KerasTensors.
"""

import collections
import dataclasses
import numbers
from typing import Dict, Optional, Tuple

import keras

from tensorflow_qdq.keras import _placement
from tensorflow_qdq.keras._graph import _all_layers, _rebuildable, _single, _unique
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._weights import output_channel_axis, weight_specs

_L = keras.layers


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
    """An activation quantizer the copy gets: its name, what it quantizes (``tensor``: the layer or
    keras.ops node whose output it reads, or the swish gate ``<layer>_sigmoid``) and the keyword
    arguments of its ``QuantizeAndDequantize`` (num_bits, signed, range_mode, ...)."""

    name: str
    tensor: str
    settings: Dict[str, object]

    @property
    def signed(self):
        return self.settings["signed"]

    @property
    def num_bits(self):
        return self.settings["num_bits"]


@dataclasses.dataclass(frozen=True)
class Site:
    """What the copy does to one tensor: ``"quantize"`` (the quantizer ``quantizer`` of the plan,
    made at its first use), ``"passthrough"`` (the tensor is on ``quantizer``'s grid already: that
    quantizer is called on it with ``passthrough=True``) or ``"requantize"`` (an average of
    ``quantizer``'s grid, rounded onto it again: ``requantize=True``)."""

    kind: str
    quantizer: str


@dataclasses.dataclass(frozen=True)
class Gate:
    """Swish as ``x * q(sigmoid(x))``: the names of the sigmoid and product layers the copy adds,
    and the site of the gate."""

    sigmoid: str
    site: Site
    multiply: str


@dataclasses.dataclass(frozen=True)
class Step:
    """One node of the float model, as the copy computes it.

    ``action``: ``"call"`` (the cloned operation called on its inputs, each quantized as
    ``inputs`` says), ``"folded"`` (a folded BatchNorm: its input passes on), ``"activate"`` (a
    standalone activation reading a quantized tensor) or ``"gated"`` (a swish reading one:
    ``gate``). ``inputs``: one Site or None per tensor argument (``node.arguments.keras_tensors``
    order); ``outputs``: one Site or None per output tensor."""

    operation: str
    action: str
    inputs: Tuple[Optional[Site], ...]
    outputs: Tuple[Optional[Site], ...]
    gate: Optional[Gate] = None


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The per-layer decisions. ``quantized``: its weights are quantized (QuantizeWrapper, or
    QuantizedMultiHeadAttention); ``fold``: the BatchNormalization folded into it; ``folded_into``:
    for that BatchNorm, the layer it folds into; ``output_bits``: bits of the quantizer a wrapper
    puts before an activation that runtimes do not fuse; ``output_after``: the layer after which
    its output is quantized (itself, or the end of a fused tail: folded BatchNorm, ReLU, ReLU6);
    ``on_concat_grid``: its output is left to the quantizer of the Concatenate reading it;
    ``float_reason``: why a layer with weights stays float (the report's words)."""

    name: str
    kind: str
    quantized: bool = False
    fold: Optional[str] = None
    folded_into: Optional[str] = None
    output_bits: Optional[int] = None
    output_after: Optional[str] = None
    on_concat_grid: bool = False
    float_reason: Optional[str] = None


@dataclasses.dataclass
class Plan:
    """Everything quantize_model decides about one (possibly nested) model."""

    model: str
    layers: Dict[str, LayerPlan]
    quantizers: Dict[str, QuantizerSpec]  # in the order the copy makes them
    steps: Tuple[Step, ...]  # in the order the rebuild calls the nodes
    nested: Dict[str, "Plan"]
    unquantizable: Dict[str, Tuple[str, str]]  # name -> (class name, reason): float, named by strict

    def steps_of(self, name):
        return [step for step in self.steps if step.operation == name]

    def sites(self):
        """Every (operation, "input"/"output", Site) of the plan, in order."""
        for step in self.steps:
            for where, sites in (("input", step.inputs), ("output", step.outputs)):
                yield from ((step.operation, where, site) for site in sites if site is not None)


def plan(model, options, not_inlined=None):
    """The Plan of ``quantize_model(model, **options)`` (options as checked by quantize_model:
    weight_bits, activation_bits, momentum, activation_range, range_update, scheme,
    fold_batch_norm, freeze_bn_delay, skip_layers as a frozenset). ``not_inlined``: {name:
    reason} of the custom layers that could not be inlined (they run float)."""
    unquantizable = _unquantizable(model, options["skip_layers"], not_inlined or {})
    reasons = {**(not_inlined or {}), **{name: reason for name, (_, reason) in unquantizable.items()}}
    found = _Planner(functional(model), options, reasons).plan()
    found.unquantizable = unquantizable
    return found


def functional(model):
    """A Sequential as a functional model over the same layers (one tensor in and out, not lists:
    the exported signature takes a plain tensor); other models as they are."""
    if isinstance(model, keras.Sequential):
        return keras.Model(_single(model.inputs), _single(model.outputs), name=model.name)
    return model


def consumers_of(model):
    """{id(operation): [operations reading its output]} over the model's own nodes."""
    consumers = collections.defaultdict(list)
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.arguments.keras_tensors:
                consumers[id(tensor._keras_history.operation)].append(node.operation)
    return consumers


def nodes_in_call_order(model):
    """The model's nodes in the order ``clone_model`` calls them (Function._run_through_graph;
    every node of a model's graph is computed from its inputs, so none is skipped)."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation and not node.is_input:
                yield node


class _Tensor:
    """A tensor of the copy to be: made by ``source`` (an operation of the float model, the model
    input's layer, or a gate layer the copy adds: ``_SIGMOID``, ``_PRODUCT``) from ``args``, or
    written by the quantizer ``quantizer``."""

    def __init__(self, source, args=(), *, label=None, float_dtype=True, quantizer=None, positive_constants=False,
                 original=True):
        self.source, self.args, self.label, self.float_dtype = source, list(args), label, float_dtype
        self.quantizer, self.positive_constants, self.original = quantizer, positive_constants, original


_SIGMOID, _PRODUCT = "sigmoid gate", "gate product"  # the layers a gated activation adds


class _Planner:
    """Plans one model level (nested models get planners of their own)."""

    def __init__(self, model, options, float_reasons):
        self.model, self.options, self.float_reasons = model, options, float_reasons
        self.skip, self.scheme = options["skip_layers"], options["scheme"]
        self.consumers = consumers_of(model)
        self.folds = self._folds()
        self.folded_into = {id(bn): layer for layer, bn in self.folds.values()}
        self.absorbed = set(self.folded_into)
        self.quantize_after, self.tail_end = self._output_sites()
        self.on_concat_grid = _rounded_on_concat_grid(model, self.consumers, self.quantize_after, self.tail_end,
                                                      self.skip)
        self.quantize_after -= self.on_concat_grid
        self.taken = {layer.name for layer in _all_layers(model)}
        self.quantizers, self.signed, self.memo, self.copy_of = {}, {}, {}, {}

    def plan(self):
        self._inputs()
        steps = tuple(self._step(node) for node in nodes_in_call_order(self.model))
        nested = {layer.name: _Planner(functional(layer), self.options, self.float_reasons).plan()
                  for layer in self.model.layers if _rebuildable(layer)}
        return Plan(self.model.name, self._layer_plans(), self.quantizers, steps, nested, {})

    # -- which layers are quantized, folded, and where their outputs are quantized --

    def quantized(self, layer):
        return _placement.is_weighted(layer) and layer.name not in self.skip

    def _folds(self):
        """{id(layer): (layer, BatchNorm)}: a foldable layer whose only consumer is a BatchNormalization."""
        folds = {}
        if not self.options["fold_batch_norm"]:
            return folds
        for layer in self.model.layers:
            users = self.consumers.get(id(layer), [])
            if (self.quantized(layer) and len(users) == 1 and isinstance(users[0], _L.BatchNormalization)
                    and users[0].name not in self.skip and _foldable(layer, users[0])):
                folds[id(layer)] = (layer, users[0])
        return folds

    def _head(self, layer):
        """Whether the layer's output is quantized, before any fused tail moves it on."""
        if layer.name in self.skip or id(layer) in self.absorbed or not (
                self.quantized(layer) or _placement.is_merge(layer) or _placement.is_unfolded_norm(layer)):
            return False
        return _placement.quantizes_output(layer, self.scheme)

    def _tail_of(self, layer):
        """The last layer of ``layer``'s fused tail (a folded BatchNorm, ReLU, ReLU6), or itself."""
        current = layer
        while True:
            users = self.consumers.get(id(current), [])
            fused = len(users) == 1 and (id(users[0]) in self.absorbed or _placement.is_fusable_activation(users[0]))
            if not fused or users[0].name in self.skip:
                return current
            current = users[0]

    def _output_sites(self):
        """({id(layer)} whose output gets a quantizer, {id(head): the layer its quantizer follows}).
        model.operations: keras.ops arithmetic nodes (not layers) are placed like merges."""
        quantize_after, tail_end = set(), {}
        for layer in self.model.operations:
            if not self._head(layer):
                continue
            end = self._tail_of(layer)
            users = self.consumers.get(id(end), [])
            if users and all(isinstance(user, QuantizeAndDequantize) for user in users):
                continue  # the model quantizes this output itself
            quantize_after.add(id(end))
            tail_end[id(layer)] = end
        return quantize_after, tail_end

    def feeds_quantized_inputs(self, layer):
        """Whether everything reading ``layer``'s output quantizes it, directly or through more
        grid-keeping layers (in the float graph)."""
        users = self.consumers.get(id(layer), [])
        return bool(users) and all(
            user.name not in self.skip and (_placement.quantizes_inputs(user, self.scheme)
                                            or (_placement.keeps_grid(user) and self.feeds_quantized_inputs(user)))
            for user in users)

    # -- the nodes, as the copy computes them --

    def _inputs(self):
        for tensor in self.model.inputs:  # the copy makes Input layers named after these tensors
            self.copy_of[id(tensor)] = _Tensor(tensor._keras_history.operation, original=False,
                                               label=tensor.name, float_dtype=_is_float(tensor))

    def _step(self, node):
        source = node.operation
        args = [self.copy_of[id(t)] for t in node.arguments.keras_tensors]
        if id(source) in self.absorbed:  # folded into the layer before it; its output quantizer stays
            action, inputs, gate, sites, outs = "folded", (None,) * len(args), None, [None], [args[0]]
        elif self._activates(source, node, args):
            action, gate, site, out = self._activate(source, args[0])
            inputs, sites, outs = (None,) * len(args), [site], [out]
        else:
            action, gate, (inputs, outs) = "call", None, self._call(source, node, args)
            sites = [None] * len(outs)
        if id(source) in self.quantize_after:
            for i, tensor in enumerate(outs):
                site, outs[i] = self.quantize(tensor, f"{source.name}_output_quantizer")
                sites[i] = sites[i] or site
        for original, planned in zip(node.outputs, outs):
            self.copy_of[id(original)] = planned
        return Step(source.name, action, tuple(inputs), tuple(sites), gate)

    def _activates(self, source, node, args):
        """A standalone activation whose only argument is a tensor on a quantizer's grid."""
        if not (_placement.quantizes_activation_output(source, self.scheme) and source.name not in self.skip
                and len(node.arguments.args) == 1 and not node.arguments.kwargs):
            return False
        tensors = [t for t in args if t.float_dtype]
        return bool(tensors) and all(self.grid_owner(t) is not None for t in tensors)

    def _activate(self, source, x):
        """(action, gate, site, output) of a standalone activation reading a quantized tensor: its
        output quantized too, and swish computed as x * sigmoid(x) with the gate quantized (TFLite
        runs LOGISTIC and MUL in int8 only with a range between them)."""
        if _placement.activation_of(source) not in _placement.GATED_ACTIVATIONS:
            site, out = self.quantize(_Tensor(source, [x], label=source.name), f"{source.name}_output_quantizer")
            return "activate", None, site, out
        sigmoid = _unique(f"{source.name}_sigmoid", self.taken)
        gate_site, gate = self.quantize(_Tensor(_SIGMOID, [x], original=False, label=sigmoid),
                                        f"{source.name}_gate_quantizer")
        multiply = _unique(f"{source.name}_multiply", self.taken)
        site, out = self.quantize(_Tensor(_PRODUCT, [x, gate], original=False, label=multiply),
                                  f"{source.name}_output_quantizer")
        return "gated", Gate(sigmoid, gate_site, multiply), site, out

    def _call(self, source, node, args):
        """(input sites, outputs) of an operation called on its (quantized) inputs."""
        # A pad or reshape in front of a quantized input reads the quantized tensor instead: one
        # range either way, the op runs on integers too, and a preprocessing layer before it
        # (Rescaling) stays next to its quantizer, where the exporters fold it.
        early = _placement.keeps_grid(source) and self.feeds_quantized_inputs(source)
        sites = [None] * len(args)
        if (_placement.quantizes_inputs(source, self.scheme) or early) and source.name not in self.skip:
            for i, tensor in enumerate(args):
                if not self._rounded_by_concat(tensor):
                    sites[i], args[i] = self.quantize(tensor, f"{source.name}_input_quantizer")
        constants = [a for a in node.arguments.args if not isinstance(a, keras.KerasTensor)]
        positive = all(isinstance(c, numbers.Real) and c > 0 for c in constants)
        held = source.name if isinstance(source, QuantizeAndDequantize) else None  # a quantizer the model holds
        if held is not None:
            self.signed[held] = source.signed
        outs = [_Tensor(source, args, float_dtype=_is_float(tensor), positive_constants=positive, quantizer=held,
                        label=source.name) for tensor in node.outputs]
        return sites, outs

    def _rounded_by_concat(self, tensor):
        """A Concatenate's input that the concat's output quantizer rounds (once)."""
        return tensor.quantizer is None and id(tensor.source) in self.on_concat_grid

    # -- the quantizers --

    def quantize(self, tensor, name):
        """(Site or None, the tensor its readers get) for quantizing ``tensor``; one quantizer per
        tensor however many readers ask, named after the first."""
        if id(tensor) in self.memo:
            return self.memo[id(tensor)][1:]
        if not tensor.float_dtype or tensor.quantizer is not None:
            return None, tensor  # integer, or on a quantizer's grid already
        site = self._owner_site(tensor) or self._new_quantizer(tensor, name)
        out = _Tensor(None, [tensor], quantizer=site.quantizer, original=False, label=site.quantizer)
        self.memo[id(tensor)] = (tensor, site, out)
        return site, out

    def _owner_site(self, tensor):
        """A tensor on a quantizer's grid already (through padding, max pooling, reshapes): a
        second quantizer would add a range, a pass over the tensor in training and a rescale at
        run time; the owner passes it through and gives the export its scale again. An average
        of owner's grid values is rounded onto that grid again: what the runtimes' int8 average
        pooling computes (TFLite keeps the input's scale)."""
        owner = self.grid_owner(tensor)
        if owner is not None:
            return Site("passthrough", owner)
        owner = self.averaged_owner(tensor)
        return None if owner is None else Site("requantize", owner)

    def _new_quantizer(self, tensor, name):
        bits = self.options["activation_bits"]
        if self.scheme == "default" and self._activation(tensor) == "sigmoid":
            grid = _placement.sigmoid_grid(bits)  # the grid TFLite's LOGISTIC writes
        else:
            grid = dict(range_mode=self.options["activation_range"], momentum=self.options["momentum"],
                        range_update=self.options["range_update"],
                        # TensorRT has int8 activations only; elsewhere a non-negative tensor gets
                        # the finer unsigned grid
                        signed=self.scheme == "tensorrt" or not self.non_negative(tensor))
        spec = QuantizerSpec(_unique(name, self.taken), tensor.label, dict(num_bits=bits, **grid))
        self.quantizers[spec.name] = spec
        self.signed[spec.name] = spec.signed
        return Site("quantize", spec.name)

    @staticmethod
    def _activation(tensor):
        if tensor.source is _SIGMOID:
            return "sigmoid"
        return None if tensor.source is _PRODUCT else _placement.activation_of(tensor.source)

    def grid_owner(self, tensor):
        """The quantizer whose output reaches ``tensor`` through grid-keeping layers only
        (padding, max pooling, reshapes), or None."""
        while tensor.quantizer is None:
            if not tensor.original or not _placement.keeps_grid(tensor.source) or len(tensor.args) != 1:
                return None
            tensor = tensor.args[0]
        return tensor.quantizer

    def averaged_owner(self, tensor):
        """The quantizer whose grid an AveragePooling output averages, or None."""
        if (tensor.quantizer is not None or not tensor.original or not _placement.averages_on_grid(tensor.source)
                or len(tensor.args) != 1):
            return None
        return self.grid_owner(tensor.args[0])

    def non_negative(self, tensor):
        if tensor.quantizer is not None:
            return not self.signed[tensor.quantizer]
        source = tensor.source
        if source is _SIGMOID or source is _PRODUCT:  # a product layer's list argument is no positive constant
            return source is _SIGMOID
        if _placement.is_passthrough(source) or isinstance(source, _L.Concatenate):
            # a concat of ReLU branches (Inception) is non-negative: the finer unsigned grid,
            # and its inputs' zero point (TFLite's built-in int8 requantization from an
            # unsigned grid to a signed one was a step off on 24% of the elements)
            return bool(tensor.args) and all(self.non_negative(t) for t in tensor.args)
        if _placement.scales_without_sign_change(source):  # x * (1/6) after a ReLU6
            return all(self.non_negative(t) for t in tensor.args) and tensor.positive_constants
        if id(source) in self.absorbed or isinstance(source, _L.BatchNormalization):
            return False
        return _placement.is_non_negative(source)

    # -- the per-layer decisions --

    def _layer_plans(self):
        return {op.name: self._layer_plan(op) for op in self.model.operations}

    def _layer_plan(self, op):
        _, fold = self.folds.get(id(op), (None, None))
        folded_into = self.folded_into.get(id(op))
        end = self.tail_end.get(id(op))
        return LayerPlan(
            op.name, type(op).__name__, quantized=self.quantized(op), fold=None if fold is None else fold.name,
            folded_into=None if folded_into is None else folded_into.name, output_bits=self._output_bits(op),
            output_after=end.name if end is not None and id(end) in self.quantize_after else None,
            on_concat_grid=id(op) in self.on_concat_grid, float_reason=self._float_reason(op))

    def _output_bits(self, layer):
        """Bits of the quantizer a wrapper puts before an activation runtimes do not fuse (swish,
        sigmoid, gelu after the conv): the output is quantized there and after the activation."""
        if not self.quantized(layer) or isinstance(layer, (_L.MultiHeadAttention, _L.Embedding)):
            return None
        unfused = (self.scheme == "default"
                   and _placement.activation_of(layer) not in (None, *_placement.FUSABLE_ACTIVATIONS))
        return self.options["activation_bits"] if unfused else None

    def _float_reason(self, op):
        """Why a layer with weights stays float, in quantization_report's words; None otherwise."""
        if op.name in self.float_reasons:
            return self.float_reasons[op.name]
        if (not getattr(op, "weights", None) or self.quantized(op) or id(op) in self.absorbed or _rebuildable(op)
                or isinstance(op, QuantizeAndDequantize)):
            return None
        if op.name in self.skip:
            return "skipped (skip_layers)"
        return next((text for cls, text in _placement.FLOAT_REASONS.items() if isinstance(op, cls)),
                    "no quantization rule for this layer")


def _is_float(tensor):
    return "float" in str(tensor.dtype)


def _unquantizable(model, skip_layers, not_inlined):
    """{name: (class name, reason)} for the layers quantize_model cannot quantize and keeps float:
    Lambda layers (their function is opaque) and layers with weights that no rule covers (a
    custom LayerScale, a learned position embedding, a custom block that could not be inlined:
    ``not_inlined`` says why). Found all at once, so one report (or one strict error) names
    every one of them."""
    found = {}
    for layer in _all_layers(model):
        if layer.name in skip_layers or _rebuildable(layer):
            continue
        kind = type(layer).__name__
        if isinstance(layer, _L.Lambda):
            found[layer.name] = (kind, "Lambda layer: quantize_model cannot see inside its function, so it runs "
                                       "float (a layer it calls is not quantized); replace it with a layer to "
                                       "quantize what it computes")
        elif (layer.weights and weight_specs(layer) is None
              and not isinstance(layer, (_L.MultiHeadAttention, QuantizeAndDequantize, *_placement.FLOAT_REASONS))):
            names = ", ".join(sorted({w.path.split("/")[-1] for w in layer.weights}))
            if layer.name in not_inlined:
                found[layer.name] = (kind, f"{not_inlined[layer.name]} (weights {names} float)")
            else:
                found[layer.name] = (kind, f"no quantization rule for its weights ({names}): it runs float; wrap "
                                           "its weighted sublayers with QuantizeWrapper to quantize them")
    return found
def _rounded_on_concat_grid(model, consumers, quantize_after, tail_end, skip):
    """{id(layer)} of the layers whose output quantizer is left to the Concatenate that alone
    reads their output: the concat's output quantizer rounds it, once. TFLite's converter writes
    such a layer's int8 output straight onto the concat's scale (one rounding), where a quantizer
    of its own would round twice in Keras and ONNX Runtime (DenseNet: one step on 2.4% of a conv's
    elements in TFLite). The exporters give the layer's output the concat's range
    (deploy/_trace: ``_concat_inputs_on_its_grid``), so every runtime computes the layer in
    integers and rounds as Keras does. Only layers (not keras.ops nodes), called once, not model
    outputs, whose concat is quantized on its output or after a ReLU/ReLU6 (which commute with
    rounding onto a grid that holds 0)."""
    outputs = {id(t._keras_history.operation) for t in model.outputs}
    found = set()
    for layer in model.layers:
        users = consumers.get(id(layer), [])
        if (id(layer) not in quantize_after or id(layer) in outputs or len(layer._inbound_nodes) != 1
                or len(users) != 1 or not isinstance(users[0], _L.Concatenate) or users[0].name in skip
                or len(users[0]._inbound_nodes) != 1):
            continue
        concat = users[0]
        end = tail_end.get(id(concat))
        if end is None or id(end) not in quantize_after:
            continue
        if end is not concat and _placement.activation_of(end) not in ("relu", "relu6"):
            continue
        # A ReLU output on a signed concat grid: ONNX Runtime cannot drop the ReLU into its
        # QLinearConv (the zero point is not the grid's minimum), so the conv would run in float
        # (InceptionV3: 54% integer). It keeps its own unsigned quantizer then.
        inputs = concat._inbound_nodes[0].arguments.keras_tensors
        if _placement.is_non_negative(layer) and not all(_non_negative_in_original(t) for t in inputs):
            continue
        found.add(id(layer))
    return found


def _non_negative_in_original(tensor):
    """Whether a tensor of the original graph is >= 0 by construction (a ReLU's output, moved by
    grid-keeping layers)."""
    layer, node_index, _ = tensor._keras_history
    if _placement.is_non_negative(layer):
        return True
    args = layer._inbound_nodes[node_index].arguments.keras_tensors if layer._inbound_nodes else []
    return _placement.is_passthrough(layer) and len(args) == 1 and _non_negative_in_original(args[0])


def _foldable(layer, batch_norm):
    """A BatchNorm over the layer's output channels, after a layer without activation."""
    if not any(spec.folds_batch_norm for spec in weight_specs(layer) or ()):
        return False
    if _placement.activation_of(layer) not in (None, "linear"):
        return False
    axis = batch_norm.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    try:
        rank = len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return False
    return len(axes) == 1 and axes[0] % rank == output_channel_axis(layer) % rank
