"""quantize_model: a quantization-aware copy of a Sequential or functional Keras model.

The copy is rebuilt node by node (``keras.models.clone_model`` with a ``call_function``):
weighted layers become ``QuantizeWrapper`` (BatchNorm folded in where one follows), and
activation quantizers are inserted on the tensors that the placement scheme names
(``_placement``). The float weights carry over; the original model is untouched.
"""

import collections
import numbers
import warnings

import keras

from tensorflow_qdq._contract import check_num_bits
from tensorflow_qdq.keras import _placement, _report
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._graph import (
    _all_layers,
    _is_float,
    _is_keras_tensor,
    _node_of,
    _rebuildable,
    _single,
    _unique,
)
from tensorflow_qdq.keras._inline import _Inliner
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
    # Custom layers whose call is keras.ops and sublayers are inlined first (_inline); the ones
    # that cannot be run float as they are, reported (and named by strict where they hold weights).
    inliner = _Inliner(options["skip_layers"])
    try:
        source = inliner.inlined_model(model)
        unquantizable = _unquantizable(source, options["skip_layers"], inliner.float_reasons)
        copy = _Rebuild(options).model(source)
    finally:
        inliner.restore()
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


def _unquantizable(model, skip_layers, not_inlined):
    """{name: (layer, reason)} for the layers quantize_model cannot quantize and keeps float:
    Lambda layers (their function is opaque) and layers with weights that no rule covers (a
    custom LayerScale, a learned position embedding, a custom block that could not be inlined:
    ``not_inlined`` says why). Found all at once, so one report (or one strict error) names
    every one of them."""
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
            if layer.name in not_inlined:
                found[layer.name] = (layer, f"{not_inlined[layer.name]} (weights {names} float)")
            else:
                found[layer.name] = (layer, f"no quantization rule for its weights ({names}): it runs float; wrap "
                                            "its weighted sublayers with QuantizeWrapper to quantize them")
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
        quantize_after, tail_end = set(), {}  # tail_end: id(head) -> the layer its quantizer follows
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
            tail_end[id(layer)] = current
        on_concat_grid = _rounded_on_concat_grid(model, consumers, quantize_after, tail_end, skip)
        quantize_after -= on_concat_grid

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
            if _placement.is_passthrough(source) or isinstance(source, _L.Concatenate):
                # a concat of ReLU branches (Inception) is non-negative: the finer unsigned grid,
                # and its inputs' zero point (TFLite's built-in int8 requantization from an
                # unsigned grid to a signed one was a step off on 24% of the elements)
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

        def rounded_by_concat(tensor):
            """A Concatenate's input that the concat's output quantizer rounds (once)."""
            producer = tensor._keras_history.operation
            return id(original_of.get(id(producer), producer)) in on_concat_grid

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
                        lambda t: quantize(t, f"{source.name}_input_quantizer")
                        if _is_keras_tensor(t) and not rounded_by_concat(t) else t,
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


def _policy_of(tensor):
    """A quantizer runs in the dtype policy of the layer that made its tensor (under a mixed
    policy, float32 logits stay float32); the model input takes the global policy."""
    layer = tensor._keras_history.operation
    return None if isinstance(layer, _L.InputLayer) else getattr(layer, "dtype_policy", None)


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
