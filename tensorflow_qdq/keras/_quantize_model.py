"""quantize_model: a quantization-aware copy of a Sequential or functional Keras model.

The copy is rebuilt node by node (``keras.models.clone_model`` with a ``call_function``):
weighted layers become ``QuantizeWrapper`` (BatchNorm folded in where one follows), and
activation quantizers are inserted on the tensors that the placement scheme names
(``_placement``). The float weights carry over; the original model is untouched.
"""

import collections
import inspect
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq._contract import check_num_bits
from tensorflow_qdq.keras import _placement, _report
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._layer import RANGE_UPDATES, QuantizeAndDequantize, _check_choice
from tensorflow_qdq.keras._weights import output_channel_axis, weight_specs
from tensorflow_qdq.keras._wrapper import QuantizeWrapper

_L = keras.layers


def quantize_model(
    model,
    weight_bits=8,
    activation_bits=8,
    *,
    momentum=0.99,
    activation_range="tracked",
    range_update="delayed",
    scheme="default",
    fold_batch_norm=True,
    freeze_bn_delay=None,
    skip_layers=(),
    strict=False,
    verbose=True,
):
    """Returns a copy of ``model`` ready for quantization-aware training (QAT).

    * Every layer with a kernel gets per-output-channel weight quantization (``weight_bits``,
      signed symmetric narrow range, measured from the weight at every call): Dense,
      EinsumDense, Conv1D/2D/3D (channels last or first), Conv*Transpose, DepthwiseConv1D/2D,
      SeparableConv1D/2D (both kernels), Embedding (one scale per row), the four projections
      of MultiHeadAttention, and subclasses of these layers.
    * A BatchNormalization that directly follows a Dense/Conv/DepthwiseConv/SeparableConv/
      ConvTranspose without activation is folded into it (``fold_batch_norm``): batch
      statistics while training, frozen after ``freeze_bn_delay`` steps, moving statistics
      in inference; exports hold a conv with a bias and no BatchNormalization.
    * Activation quantizers (``activation_bits``, per tensor, tracked moving-average ranges
      with ``momentum``) go where the ``scheme`` says (see ``_placement``): ``"default"``
      deploys to ONNX Runtime and TFLite (every weighted op with a quantized input and output,
      also before and after a non-fusable activation such as swish, sigmoid or hard_swish,
      and the activation layers and squeeze-excite products after them), ``"tensorrt"``
      follows TensorRT's Q/DQ rules. Run :func:`calibrate` before training to start them
      from data.

    A custom layer without weights or sublayers whose ``call`` is made of keras.ops on its
    inputs (InceptionResNetV2's ``x + y * scale``) is inlined: its ops become nodes of the
    copy's graph, placed like merges (report status ``"inlined"``). One that cannot be (its
    call takes ``training`` or a mask, uses tf.* ops, ...) stays float with the reason, and is
    not counted by ``strict`` (it holds no kernel).

    Layers it cannot quantize (recurrent and normalization layers, a BatchNormalization that
    cannot fold, custom layers whose weights no rule covers, ``Lambda`` layers, and
    ``skip_layers``) stay float and are listed with the reason by the summary it prints
    (``verbose``) and by :func:`quantization_report`; ``strict=True`` raises one
    ``ValueError`` naming all of them (``skip_layers`` excepted) instead.

    Args:
      model: a ``keras.Sequential`` (with a known input) or functional ``keras.Model``.
      weight_bits, activation_bits: bits of the grids (1..61).
      momentum: decay of the tracked activation ranges, in [0, 1).
      activation_range: ``"tracked"`` (moving averages of the batch ranges) or ``"learned"``
        (a trainable step per quantizer with LSQ's gradient; see ``QuantizeAndDequantize``).
      range_update: which range a tracked quantizer's training step quantizes with:
        ``"delayed"`` (default; the range from before the batch, updated from the same pass)
        or ``"immediate"`` (updated first); see ``QuantizeAndDequantize``.
      scheme: ``"default"`` or ``"tensorrt"``.
      fold_batch_norm: fold BatchNormalization into the layer before it.
      freeze_bn_delay: training steps after which folded BatchNorms use moving statistics.
      skip_layers: names of layers to leave float.
      strict: raise ``ValueError`` if any layer with a kernel, custom weighted layer or
        ``Lambda`` would stay float (one error listing them all).
      verbose: print the per-layer summary.
    """
    _check_rebuildable(model)
    options = dict(
        weight_bits=check_num_bits(weight_bits, True),
        activation_bits=check_num_bits(activation_bits, True),
        momentum=_check_momentum(momentum),
        activation_range=_check_activation_range(activation_range),
        range_update=_check_choice("range_update", range_update, RANGE_UPDATES),
        scheme=_placement.check_scheme(scheme),
        fold_batch_norm=bool(fold_batch_norm),
        freeze_bn_delay=freeze_bn_delay,
        skip_layers=frozenset(skip_layers),
    )
    unknown = options["skip_layers"] - {layer.name for layer in _all_layers(model)}
    if unknown:
        raise ValueError(f"skip_layers names layers that are not in {model.name!r}: {sorted(unknown)}")
    unquantizable = _unquantizable(model, options["skip_layers"])
    # Custom layers without weights whose call is keras.ops are inlined first (_Inliner); the
    # ones that cannot be are float, reported, and not counted by strict (they hold no kernel).
    inliner = _Inliner(options["skip_layers"])
    source = inliner.model(model) if inliner.needed(model) else model
    copy = _Rebuild(options).model(source)
    copy._qdq_skip_layers = options["skip_layers"]  # for quantization_report(copy)
    copy._qdq_float_reasons = {**inliner.float_reasons,
                               **{name: reason for name, (_, reason) in unquantizable.items()}}
    report = _report.quantization_report(copy)
    if strict:
        error = _strict_error(report, unquantizable)
        if error is not None:
            raise error
    if verbose:
        print(_report.summary(report, model.name))
    return copy


def _check_activation_range(activation_range):
    if activation_range not in ("tracked", "learned"):
        raise ValueError(f"activation_range={activation_range!r} is not one of 'tracked', 'learned'")
    return activation_range


def _check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum!r} is out of range: must be a number in [0, 1)")
    return float(momentum)


def _is_functional(model):
    # Functional models are instances of Keras' (private) Functional class.
    return isinstance(model, keras.Model) and any(c.__name__ == "Functional" for c in type(model).__mro__)


def _rebuildable(model):
    return isinstance(model, keras.Sequential) or _is_functional(model)


def _check_rebuildable(model):
    if not _rebuildable(model):
        raise ValueError(
            f"quantize_model needs a keras.Sequential or functional keras.Model, got {type(model).__name__}; "
            "for a subclassed model, wrap its layers with tensorflow_qdq.keras.QuantizeWrapper (and place "
            "QuantizeAndDequantize layers) in its definition"
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(f"quantize_model: Sequential model {model.name!r} has no input shape yet; "
                         "start it with keras.Input(shape) or build it first")


def _unquantizable(model, skip_layers):
    """{name: (layer, reason)} for the layers quantize_model cannot quantize and keeps float:
    Lambda layers (their function is opaque) and layers with weights that no rule covers (a
    custom LayerScale, a learned position embedding). Found all at once, so one report (or one
    strict error) names every one of them."""
    found = {}
    for layer in _all_layers(model):
        if layer.name in skip_layers or _rebuildable(layer):
            continue
        if isinstance(layer, _L.Lambda):
            found[layer.name] = (layer, "Lambda layer: quantize_model cannot see inside its function, so it runs "
                                        "float (a layer it calls is not quantized); replace it with a layer to "
                                        "quantize what it computes")
        elif (layer.weights and weight_specs(layer) is None
              and not isinstance(layer, (_L.MultiHeadAttention, QuantizeAndDequantize, *_placement.FLOAT_REASONS))):
            names = ", ".join(sorted({w.path.split("/")[-1] for w in layer.weights}))
            found[layer.name] = (layer, f"no quantization rule for its weights ({names}): it runs float; wrap its "
                                        "weighted sublayers with QuantizeWrapper to quantize them")
    return found


def _strict_error(report, unquantizable):
    """One ValueError naming every layer that would stay float (strict=True)."""
    rows = {row.name: f"{row.name} ({row.kind}): {row.detail}" for row in report
            if row.status == "float" and row.has_kernel}
    for name, (layer, reason) in unquantizable.items():
        rows[name] = f"{name} ({type(layer).__name__}): {reason}"
    if not rows:
        return None
    return ValueError(f"quantize_model(strict=True): {len(rows)} layers would stay float: " + "; ".join(rows.values())
                      + ". Pass skip_layers=[...] to keep them float on purpose.")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if _rebuildable(layer):
            yield from _all_layers(layer)


def _graph(model):
    """{id(layer): [consumer layers of its output]} over the model's own nodes."""
    consumers = collections.defaultdict(list)
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.arguments.keras_tensors:
                producer = tensor._keras_history.operation
                consumers[id(producer)].append(node.operation)
    return consumers


class _Rebuild:
    """One rebuild of a model (and of the models nested in it)."""

    def __init__(self, options):
        self.options = options

    def model(self, model):
        if isinstance(model, keras.Sequential):
            # one tensor in and out, not lists (the exported signature takes a plain tensor)
            model = keras.Model(_single(model.inputs), _single(model.outputs), name=model.name)
        consumers = _graph(model)
        skip = self.options["skip_layers"]
        scheme = self.options["scheme"]

        def quantized(layer):
            return _placement.is_weighted(layer) and layer.name not in skip

        # BatchNorm folds: a foldable layer whose only consumer is a BatchNormalization.
        folds = {}
        for layer in model.layers:
            users = consumers.get(id(layer), [])
            if (self.options["fold_batch_norm"] and quantized(layer) and len(users) == 1
                    and isinstance(users[0], _L.BatchNormalization) and users[0].name not in skip
                    and _foldable(layer, users[0])):
                folds[id(layer)] = users[0]
        absorbed = {id(bn) for bn in folds.values()}

        def head(layer):
            """Whether the layer's output is quantized, before any fused tail moves it on."""
            if layer.name in skip or id(layer) in absorbed or not (
                    quantized(layer) or _placement.is_merge(layer) or _placement.is_unfolded_norm(layer)):
                return False
            return _placement.quantizes_output(layer, scheme)

        # The output quantizer moves past a fused tail (a folded BatchNorm, ReLU, ReLU6).
        # model.operations: keras.ops arithmetic nodes (not layers) are placed like merges.
        quantize_after = set()
        for layer in model.operations:
            if not head(layer):
                continue
            current = layer
            while True:
                users = consumers.get(id(current), [])
                fused = len(users) == 1 and (id(users[0]) in absorbed or _placement.is_fusable_activation(users[0]))
                if not fused or users[0].name in skip:
                    break
                current = users[0]
            users = consumers.get(id(current), [])
            if users and all(isinstance(user, QuantizeAndDequantize) for user in users):
                continue  # the model quantizes this output itself
            quantize_after.add(id(current))

        original_of, clone_of = {}, {}
        memo = {}  # id(tensor in the copy) -> its quantized version

        def clone(layer):
            new = self._clone_layer(layer, folds.get(id(layer)), quantized(layer))
            original_of[id(new)] = layer
            clone_of[id(layer)] = new
            return new

        def non_negative(tensor):
            layer = tensor._keras_history.operation
            if isinstance(layer, QuantizeAndDequantize):
                return not layer.signed
            source = original_of.get(id(layer), layer)  # layers made here (a swish's gate) are their own source
            if _placement.is_passthrough(source):
                args = _node_of(tensor).arguments.keras_tensors
                return bool(args) and all(non_negative(t) for t in args)
            if _placement.scales_without_sign_change(source):  # x * (1/6) after a ReLU6
                node = _node_of(tensor)
                constants = [a for a in node.arguments.args if not _is_keras_tensor(a)]
                return (all(non_negative(t) for t in node.arguments.keras_tensors)
                        and all(isinstance(c, numbers.Real) and c > 0 for c in constants))
            if id(source) in absorbed or isinstance(source, _L.BatchNormalization):
                return False
            return _placement.is_non_negative(source)

        def grid_owner(tensor):
            """The quantizer whose output reaches ``tensor`` through grid-keeping layers only
            (padding, max pooling, reshapes), or None."""
            while True:
                layer = tensor._keras_history.operation
                if isinstance(layer, QuantizeAndDequantize):
                    return layer
                source = original_of.get(id(layer))
                args = _node_of(tensor).arguments.keras_tensors
                if source is None or not _placement.keeps_grid(source) or len(args) != 1:
                    return None
                tensor = args[0]

        def averaged_owner(tensor):
            """The quantizer whose grid an AveragePooling output averages, or None."""
            source = original_of.get(id(tensor._keras_history.operation))
            args = _node_of(tensor).arguments.keras_tensors
            if not _placement.averages_on_grid(source) or len(args) != 1:
                return None
            return grid_owner(args[0])

        def quantize(tensor, name):
            if id(tensor) in memo or not _is_float(tensor):
                return memo.get(id(tensor), tensor)
            if isinstance(tensor._keras_history.operation, QuantizeAndDequantize):
                return tensor  # the model quantizes it already
            owner = grid_owner(tensor)
            if owner is not None:
                # Already on owner's grid: a second quantizer would add a range, a pass over
                # the tensor in training and a rescale at run time; the owner passes it through
                # and gives the export its scale again.
                out = owner(tensor, passthrough=True)
                memo[id(tensor)] = memo[id(out)] = out
                return out
            owner = averaged_owner(tensor)
            if owner is not None:
                # An average of owner's grid values, rounded onto that grid again: what the
                # runtimes' int8 average pooling computes (TFLite keeps the input's scale).
                out = owner(tensor, requantize=True)
                memo[id(tensor)] = memo[id(out)] = out
                return out
            bits = self.options["activation_bits"]
            producer = tensor._keras_history.operation
            if scheme == "default" and _placement.activation_of(original_of.get(id(producer), producer)) == "sigmoid":
                grid = _placement.sigmoid_grid(bits)  # the grid TFLite's LOGISTIC writes
            else:
                grid = dict(range_mode=self.options["activation_range"], momentum=self.options["momentum"],
                            range_update=self.options["range_update"],
                            # TensorRT has int8 activations only; elsewhere a non-negative tensor gets
                            # the finer unsigned grid
                            signed=scheme == "tensorrt" or not non_negative(tensor))
            quantizer = QuantizeAndDequantize(num_bits=bits, name=_unique(name, model_names),
                                              dtype=_policy_of(tensor), **grid)
            out = quantizer(tensor)
            memo[id(tensor)] = memo[id(out)] = out
            return out

        model_names = {layer.name for layer in _all_layers(model)}

        def feeds_quantized_inputs(layer):
            """Whether everything reading ``layer``'s output quantizes it, directly or through
            more grid-keeping layers (in the original graph)."""
            users = consumers.get(id(layer), [])
            return bool(users) and all(
                user.name not in skip and (_placement.quantizes_inputs(user, scheme)
                                           or (_placement.keeps_grid(user) and feeds_quantized_inputs(user)))
                for user in users)

        def reads_quantized(args, kwargs):
            tensors = [t for t in keras.tree.flatten((args, kwargs)) if _is_float(t)]
            return bool(tensors) and all(grid_owner(t) is not None for t in tensors)

        def activate(layer, source, x):
            """A standalone activation reading a quantized tensor: its output quantized too, and
            swish computed as x * sigmoid(x) with the gate quantized (TFLite runs LOGISTIC and
            MUL in int8 only with a range between them)."""
            if _placement.activation_of(source) not in _placement.GATED_ACTIVATIONS:
                out = layer(x)
            else:
                gate = _L.Activation("sigmoid", name=_unique(f"{source.name}_sigmoid", model_names),
                                     dtype=source.dtype_policy)(x)
                gate = quantize(gate, f"{source.name}_gate_quantizer")
                out = _L.Multiply(name=_unique(f"{source.name}_multiply", model_names),
                                  dtype=source.dtype_policy)([x, gate])
            return quantize(out, f"{source.name}_output_quantizer")

        def call(layer, *args, **kwargs):
            source = original_of[id(layer)]
            if id(source) in absorbed:
                out = args[0]  # folded into the layer before it; its output quantizer stays
            elif (_placement.quantizes_activation_output(source, scheme) and source.name not in skip
                  and len(args) == 1 and not kwargs and reads_quantized(args, kwargs)):
                out = activate(layer, source, args[0])
            else:
                # A pad or reshape in front of a quantized input reads the quantized tensor instead:
                # one range either way, the op runs on integers too, and a preprocessing layer
                # before it (Rescaling) stays next to its quantizer, where the exporters fold it.
                early = _placement.keeps_grid(source) and feeds_quantized_inputs(source)
                if (_placement.quantizes_inputs(source, scheme) or early) and source.name not in skip:
                    args, kwargs = keras.tree.map_structure(
                        lambda t: quantize(t, f"{source.name}_input_quantizer") if _is_keras_tensor(t) else t,
                        (args, kwargs))
                out = layer(*args, **kwargs)
            if id(source) in quantize_after:
                out = keras.tree.map_structure(lambda t: quantize(t, f"{source.name}_output_quantizer"), out)
            return out

        copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
        self._copy_weights(model, clone_of, folds, absorbed)
        copy._qdq_inlined = getattr(model, "_qdq_inlined", {})  # custom layers _Inliner inlined
        return copy

    def _clone_layer(self, layer, batch_norm, quantized):
        if _rebuildable(layer):
            return self.model(layer)
        if isinstance(layer, _L.Lambda):
            return layer  # no weights to copy, and Keras will not rebuild a Python lambda from its config
        try:
            fresh = layer.__class__.from_config(layer.get_config())
        except Exception as exc:  # a layer class whose get_config() does not rebuild it
            if quantized:
                raise ValueError(f"quantize_model: layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt "
                                 f"from its own get_config(): {exc}") from exc
            # Float layers are used as they are: the copy shares this one with the original model.
            warnings.warn(f"quantize_model: layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt from its "
                          f"own get_config() ({type(exc).__name__}), so the quantized copy shares it with the "
                          "original model: training the copy also trains it there", stacklevel=4)
            return layer
        if not quantized:
            return fresh
        bits = self.options["weight_bits"]
        if isinstance(layer, _L.MultiHeadAttention):
            return QuantizedMultiHeadAttention.from_float(fresh, weight_bits=bits,
                                                          activation_bits=self.options["activation_bits"],
                                                          activation_range=self.options["activation_range"],
                                                          range_update=self.options["range_update"])
        unfused = (self.options["scheme"] == "default"
                   and _placement.activation_of(layer) not in (None, *_placement.FUSABLE_ACTIVATIONS))
        return QuantizeWrapper(
            fresh, weight_bits=bits, batch_norm=None if batch_norm is None else batch_norm.get_config(),
            freeze_bn_delay=self.options["freeze_bn_delay"], name=layer.name,
            output_bits=self.options["activation_bits"] if unfused and not isinstance(layer, _L.Embedding) else None,
            momentum=self.options["momentum"], activation_range=self.options["activation_range"],
            range_update=self.options["range_update"],
        )

    @staticmethod
    def _copy_weights(source, clone_of, folds, absorbed):
        """Float weights layer by layer; quantizer variables keep their start values."""
        for layer in source.layers:
            twin = clone_of.get(id(layer))
            if twin is None or not layer.weights or _rebuildable(layer) or id(layer) in absorbed:
                continue  # nested models copied their weights when they were rebuilt
            if isinstance(twin, QuantizeWrapper):
                twin.layer.set_weights(layer.get_weights())
                if twin.batch_norm is not None:
                    twin.batch_norm.set_weights(folds[id(layer)].get_weights())
            elif isinstance(twin, QuantizedMultiHeadAttention):
                twin.copy_float_weights(layer)
            else:
                twin.set_weights(layer.get_weights())


def _node_of(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


def _policy_of(tensor):
    """A quantizer runs in the dtype policy of the layer that made its tensor (under a mixed
    policy, float32 logits stay float32); the model input takes the global policy."""
    layer = tensor._keras_history.operation
    return None if isinstance(layer, _L.InputLayer) else getattr(layer, "dtype_policy", None)


def _is_keras_tensor(value):
    return isinstance(value, keras.KerasTensor)


def _is_float(tensor):
    return _is_keras_tensor(tensor) and "float" in str(tensor.dtype)


def _unique(name, taken):
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


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


# ---------------------------------------------------------------------------- inlining
#
# A custom layer without weights whose call is made of keras.ops (InceptionResNetV2's
# CustomScaleLayer: ``inputs[0] + inputs[1] * scale``) is one opaque node to the placement, so
# nothing can quantize the tensor between its ops and runtimes run them in float (TFLite has no
# range between the MUL and the ADD). Keras 3 records keras.ops applied to KerasTensors as
# operation nodes of a functional graph, so calling the layer's ``call`` on the symbolic tensors
# puts its ops into the graph, where the placement quantizes them like merges.

# Modules whose layer classes are Keras' own or this library's: they keep their own rules.
_BUILTIN_LAYER_MODULES = ("keras.src.layers.", "keras.src.models.", "keras.layers", "tensorflow_qdq.")


def _is_custom(layer):
    """A layer class of the user's (or a model library's) own, with no built-in layer class
    between it and keras.layers.Layer (a Dense subclass keeps Dense's rules)."""
    if not isinstance(layer, keras.layers.Layer) or _rebuildable(layer) or isinstance(layer, _L.Lambda):
        return False
    for cls in type(layer).__mro__:
        if cls is keras.layers.Layer:
            return True
        if cls.__module__.startswith(_BUILTIN_LAYER_MODULES):
            return False
    return False


def _inline_candidate(layer):
    """A custom layer without variables (one with weights keeps its float rule: _unquantizable)."""
    return _is_custom(layer) and not layer.variables


def _static_blocker(layer):
    """Why the candidate's call cannot be inlined from what the layer declares, or None."""
    if layer._flatten_layers(include_self=False, recursive=False):
        return "it has sublayers, which inlining would share with the original model"
    if type(layer).__call__ is not keras.layers.Layer.__call__:
        return "it overrides __call__"
    parameters = inspect.signature(layer.call).parameters
    if "training" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        # Keras passes `training` at run time; an inlined graph would fix one behaviour
        return "its call takes `training` (it may compute differently in training)"
    if "mask" in parameters or layer.supports_masking:
        return "it takes or computes a mask"
    return None


class _Inliner:
    """Makes a functional copy of a model in which every inlinable custom layer is replaced by
    the keras.ops nodes of its call (nested models too). The other layers are fresh copies
    with the same weights, so the original model gains no nodes; quantize_model then rebuilds
    this copy as it rebuilds any model."""

    def __init__(self, skip_layers):
        self.skip = skip_layers
        self.float_reasons = {}  # {name: why a custom layer without weights was not inlined}

    def needed(self, model):
        return any(_inline_candidate(layer) and layer.name not in self.skip for layer in _all_layers(model))

    def model(self, model):
        if isinstance(model, keras.Sequential):
            model = keras.Model(_single(model.inputs), _single(model.outputs), name=model.name)
        taken = {op.name for op in model.operations}  # names the inlined ops must not take
        outputs = {id(t._keras_history.operation) for t in model.outputs}
        inlined, source_of, fallback = {}, {}, {}

        def clone(layer):
            if _rebuildable(layer):
                new = self.model(layer)
            elif _inline_candidate(layer) and layer.name not in self.skip:
                new = layer  # its call is run (never the layer itself) or a copy made on a fallback
            else:
                new = _fresh_copy(layer)
            source_of[id(new)] = layer
            return new

        def call(layer, *args, **kwargs):
            source = source_of[id(layer)]
            if layer is source and _inline_candidate(source) and source.name not in self.skip:
                result = self._inline(source, args, kwargs, id(source) in outputs, taken)
                if not isinstance(result, str):
                    out, ops = result
                    # a layer called more than once is inlined at every call: one row, all its ops
                    inlined[source.name] = (type(source).__name__, inlined.get(source.name, ("", []))[1] + ops)
                    return out
                self.float_reasons[source.name] = f"custom layer not inlined: {result}; it runs float as it is"
                if id(source) not in fallback:  # one copy for all the calls of a shared layer
                    fallback[id(source)] = _fresh_copy(source)
                layer = fallback[id(source)]
            out = layer(*args, **kwargs)
            if layer is not source and source.weights and not _rebuildable(source):
                layer.set_weights(source.get_weights())
            return out

        copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
        if model.compiled:  # as clone_model does for the model itself
            copy.compile_from_config(model.get_compile_config())
        copy._qdq_inlined = inlined  # for quantization_report
        return copy

    @staticmethod
    def _inline(layer, args, kwargs, is_model_output, taken):
        """(outputs, [(op name, op kind)]) of the layer's call run on the symbolic tensors, or
        the reason it cannot be inlined."""
        blocker = _static_blocker(layer)
        if blocker:
            return blocker
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if _is_keras_tensor(t)]
        if any(_is_float(t) and t.dtype != layer.compute_dtype for t in inputs):
            return f"Keras would cast its inputs to its dtype policy's {layer.compute_dtype}"
        try:
            expected = layer.compute_output_spec(*args, **kwargs)
            out = layer.call(*args, **kwargs)
        except Exception as exc:  # tf.* ops, Python control flow on values: not symbolic
            first = str(exc).strip().split("\n")[0].split(". ")[0][:200]  # the message's first sentence
            return f"its call does not run on symbolic Keras tensors ({type(exc).__name__}: {first})"
        got, want = keras.tree.flatten(out), keras.tree.flatten(expected)
        if (len(got) != len(want) or not all(_is_keras_tensor(t) for t in got)
                or any(tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype for g, w in zip(got, want))):
            def specs(tensors):
                return [(tuple(t.shape), t.dtype) if _is_keras_tensor(t) else type(t).__name__ for t in tensors]

            return f"its call on symbolic tensors gives {specs(got)}, not the layer's outputs {specs(want)}"
        ops = _ops_between(inputs, got)
        if isinstance(ops, str):
            return ops
        mismatch = _computes_unlike(layer, args, kwargs, inputs, got)
        if mismatch:
            return mismatch
        if is_model_output and not (len(got) == 1 and ops and got[0]._keras_history.operation is ops[-1]):
            return "it gives a model output that no single op of its call produces (the output's name would change)"
        # Names: the op giving the (single) output takes the layer's name (the model's output
        # names, and the quantizer after it, stay what they were); the others are named after
        # the layer, so reports and exports say where they came from.
        last = got[0]._keras_history.operation if len(got) == 1 else None
        for op in ops:
            if op is last and (layer.name, "output") not in taken:  # the layer leaves: its name is free
                op.name = layer.name
                taken.add((layer.name, "output"))  # not for a second call of the same layer
            else:
                op.name = _unique(f"{layer.name}_{type(op).__name__.lower()}", taken)
        return out, [(op.name, type(op).__name__) for op in ops]


def _computes_unlike(layer, args, kwargs, inputs, outputs):
    """Why the inlined ops do not compute what the layer computes, or None: both are run on the
    same random inputs, the layer eagerly and traced (as predict and the exporters run it).
    Python code in a call can depend on more than its inputs (tf.executing_eagerly(), random
    numbers, state), which a symbolic call records once."""
    try:
        values = [keras.random.normal(_concrete_shape(t), dtype=t.dtype, seed=i) if _is_float(t)
                  else keras.ops.ones(_concrete_shape(t), dtype=t.dtype) for i, t in enumerate(inputs)]
        inlined = keras.tree.flatten(keras.Function(inputs, outputs)(values))
        it = iter(values)
        filled = keras.tree.map_structure(lambda a: next(it) if _is_keras_tensor(a) else a, (args, kwargs))
        eager = keras.tree.flatten(layer(*filled[0], **filled[1]))
        logger, level = tf.get_logger(), tf.get_logger().level
        logger.setLevel("ERROR")  # one trace per inlined layer on purpose: no "retracing" warning for it
        try:
            traced = keras.tree.flatten(tf.function(lambda a, k: layer(*a, **k))(*filled))
        finally:
            logger.setLevel(level)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not inline
        return f"its call could not be compared with its inlined ops ({type(exc).__name__})"
    for reference, how in ((eager, "eagerly"), (traced, "traced")):
        for want, got in zip(reference, inlined):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            tolerance = 1e-5 if "float16" not in str(layer.compute_dtype) else 1e-2
            if want.shape != got.shape or not np.allclose(want, got, rtol=tolerance, atol=tolerance, equal_nan=True):
                return (f"run {how} it computes other values than its call on symbolic tensors records (Python "
                        "code that depends on more than its inputs)")
    return None


def _concrete_shape(tensor):
    return tuple(2 if d is None else d for d in tensor.shape)


def _ops_between(inputs, outputs):
    """The operations (keras.ops nodes, in call order) that a call created from ``inputs`` to
    ``outputs``, or why they are not keras.ops on its inputs only."""
    known = {id(t) for t in inputs}
    found, seen = [], set()

    def visit(tensor):
        if id(tensor) in known or id(tensor) in seen:
            return None
        seen.add(id(tensor))
        history = getattr(tensor, "_keras_history", None)
        if history is None or isinstance(history.operation, (keras.layers.Layer, _L.InputLayer)):
            return "its call reads a tensor that is not one of its inputs, or calls a layer"
        for arg in _node_of(tensor).arguments.keras_tensors:
            reason = visit(arg)
            if reason:
                return reason
        if history.operation not in found:
            found.append(history.operation)
        return None

    for tensor in outputs:
        reason = visit(tensor)
        if reason:
            return reason
    return found


def _fresh_copy(layer):
    """A new instance of ``layer`` from its config (weights are set once it is built), or the
    layer itself where Keras cannot rebuild it (the rebuild warns about those)."""
    if isinstance(layer, _L.Lambda):
        return layer
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception:  # reported by _Rebuild._clone_layer, which tries again
        return layer
