"""quantize_model: a quantization-aware copy of a Sequential or functional Keras model.

First every decision is planned from the float model's graph (``_plan.plan``: which layers are
wrapped and which BatchNorms fold into them, where the activation quantizers go and on which
grid, by the placement rules of ``_placement``); then the copy is rebuilt node by node as the
plan says (``_Rebuild``: ``keras.models.clone_model`` with a ``call_function``): weighted layers
become ``QuantizeWrapper`` (BatchNorm folded in), and the planned quantizers are made and
called. The float weights carry over; the original model is untouched.
"""

import numbers
import warnings

import keras

from tensorflow_qdq._contract import check_choice, check_num_bits
from tensorflow_qdq.keras import _placement, _plan, _report
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._graph import _all_layers, _is_keras_tensor, _rebuildable
from tensorflow_qdq.keras._inline import _Inliner
from tensorflow_qdq.keras._layer import RANGE_UPDATES, QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper

_L = keras.layers
# The range modes of activation quantizers (QuantizeAndDequantize's, less those with no constant range).
ACTIVATION_RANGES = ("tracked", "learned")


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
        activation_range=check_choice("activation_range", activation_range, ACTIVATION_RANGES),
        range_update=check_choice("range_update", range_update, RANGE_UPDATES),
        scheme=check_choice("scheme", scheme, _placement.SCHEMES),
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
        plan = _plan.plan(source, options, inliner.float_reasons)
        copy = _Rebuild(options).model(source, plan)
    finally:
        inliner.restore()
    copy._qdq_skip_layers = options["skip_layers"]  # for quantization_report(copy)
    copy._qdq_float_reasons = {**inliner.float_reasons,
                               **{name: reason for name, (_, reason) in plan.unquantizable.items()}}
    report = _report.layer_rows(copy)
    if strict:
        error = _strict_error(report, plan.unquantizable)
        if error is not None:
            raise error
    if verbose:
        print(_report.summary(report, model.name))
    return copy


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


def _strict_error(report, unquantizable):
    """One ValueError naming every layer that would stay float (strict=True)."""
    rows = {row.name: f"{row.name} ({row.kind}): {row.detail}" for row in report
            if row.status == "float" and row.has_kernel}
    for name, (kind, reason) in unquantizable.items():
        rows[name] = f"{name} ({kind}): {reason}"
    if not rows:
        return None
    return ValueError(f"quantize_model(strict=True): {len(rows)} layers would stay float: " + "; ".join(rows.values())
                      + ". Pass skip_layers=[...] to keep them float on purpose.")


class _Rebuild:
    """Builds the copy that a Plan describes (and the models nested in it): clones and wraps the
    layers, calls them, and makes and calls the planned quantizers. It decides nothing."""

    def __init__(self, options):
        self.options = options

    def model(self, model, plan):
        return _ModelRebuild(self, _plan.functional(model), plan).copy()


class _ModelRebuild:
    """One model level of a rebuild: its clones and quantizers, made as its Plan's steps say."""

    def __init__(self, rebuild, model, plan):
        self.rebuild, self.options, self.model, self.plan = rebuild, rebuild.options, model, plan
        self.steps = iter(plan.steps)  # in the order clone_model calls the nodes
        self.original_of, self.clone_of = {}, {}
        self.quantizers = {}  # name -> a QuantizeAndDequantize of the copy
        self.done = {}  # id(tensor of the copy) -> its quantized version

    def copy(self):
        copy = keras.models.clone_model(self.model, clone_function=self.clone, call_function=self.call)
        self._copy_weights()
        copy._qdq_inlined = getattr(self.model, "_qdq_inlined", {})  # custom layers _Inliner inlined
        return copy

    def clone(self, layer):
        new = self._clone_layer(layer, self.plan.layers[layer.name])
        self.original_of[id(new)] = layer
        self.clone_of[id(layer)] = new
        if isinstance(new, QuantizeAndDequantize):
            self.quantizers[layer.name] = new  # a quantizer the model holds: it may pass tensors through
        return new

    def call(self, layer, *args, **kwargs):
        step = next(self.steps)
        source = self.original_of[id(layer)]
        if step.operation != source.name:
            raise RuntimeError(f"quantize_model: the rebuild reached {source.name!r} where the plan has "
                               f"{step.operation!r}")
        if step.action == "folded":
            out = args[0]  # folded into the layer before it; its output quantizer stays
        elif step.action == "activate":
            out = layer(args[0])
        elif step.action == "gated":
            out = self._gated(source, args[0], step.gate)
        else:
            args, kwargs = self._each_tensor((args, kwargs), step.inputs)
            out = layer(*args, **kwargs)
        return self._each_tensor(out, step.outputs)

    def _each_tensor(self, structure, sites):
        """``structure`` with each KerasTensor quantized as its site (in flattening order) says."""
        if not any(sites):
            return structure
        sites = iter(sites)
        return keras.tree.map_structure(lambda t: self._apply(next(sites), t) if _is_keras_tensor(t) else t,
                                        structure)

    def _gated(self, source, x, gate):
        """Swish as x * q(sigmoid(x)), the gate quantized as planned."""
        sigmoid = _L.Activation("sigmoid", name=gate.sigmoid, dtype=source.dtype_policy)(x)
        sigmoid = self._apply(gate.site, sigmoid)
        return _L.Multiply(name=gate.multiply, dtype=source.dtype_policy)([x, sigmoid])

    def _apply(self, site, tensor):
        """The tensor quantized as ``site`` says (once per tensor, however many readers ask)."""
        if site is None:
            return tensor
        if id(tensor) not in self.done:
            if site.kind == "quantize":
                out = self._quantizer(site.quantizer, tensor)(tensor)
            else:  # "passthrough" or "requantize" by the quantizer whose grid the tensor is on
                out = self.quantizers[site.quantizer](tensor, **{site.kind: True})
            self.done[id(tensor)] = out
        return self.done[id(tensor)]

    def _quantizer(self, name, tensor):
        spec = self.plan.quantizers[name]
        quantizer = QuantizeAndDequantize(name=name, dtype=_policy_of(tensor), **spec.settings)
        self.quantizers[name] = quantizer
        return quantizer

    def _clone_layer(self, layer, decided):
        if _rebuildable(layer):
            return self.rebuild.model(layer, self.plan.nested[layer.name])
        if isinstance(layer, _L.Lambda):
            return layer  # no weights to copy, and Keras will not rebuild a Python lambda from its config
        try:
            fresh = layer.__class__.from_config(layer.get_config())
        except Exception as exc:  # a layer class whose get_config() does not rebuild it
            if decided.quantized:
                raise ValueError(f"quantize_model: layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt "
                                 f"from its own get_config(): {exc}") from exc
            # Float layers are used as they are: the copy shares this one with the original model.
            warnings.warn(f"quantize_model: layer {layer.name!r} ({type(layer).__name__}) cannot be rebuilt from its "
                          f"own get_config() ({type(exc).__name__}), so the quantized copy shares it with the "
                          "original model: training the copy also trains it there", stacklevel=4)
            return layer
        return self._quantized(fresh, decided) if decided.quantized else fresh

    def _quantized(self, fresh, decided):
        options = self.options
        if isinstance(fresh, _L.MultiHeadAttention):
            return QuantizedMultiHeadAttention.from_float(fresh, weight_bits=options["weight_bits"],
                                                          activation_bits=options["activation_bits"],
                                                          activation_range=options["activation_range"],
                                                          range_update=options["range_update"])
        batch_norm = None if decided.fold is None else self.model.get_layer(decided.fold).get_config()
        return QuantizeWrapper(
            fresh, weight_bits=options["weight_bits"], batch_norm=batch_norm,
            freeze_bn_delay=options["freeze_bn_delay"], name=decided.name, output_bits=decided.output_bits,
            momentum=options["momentum"], activation_range=options["activation_range"],
            range_update=options["range_update"],
        )

    def _copy_weights(self):
        """Float weights layer by layer; quantizer variables keep their start values."""
        for layer in self.model.layers:
            twin = self.clone_of.get(id(layer))
            if (twin is None or not layer.weights or _rebuildable(layer)
                    or self.plan.layers[layer.name].folded_into is not None):
                continue  # nested models copied their weights when they were rebuilt
            if isinstance(twin, QuantizeWrapper):
                twin.layer.set_weights(layer.get_weights())
                if twin.batch_norm is not None:
                    twin.batch_norm.set_weights(self.model.get_layer(self.plan.layers[layer.name].fold).get_weights())
            elif isinstance(twin, QuantizedMultiHeadAttention):
                twin.copy_float_weights(layer)
            else:
                twin.set_weights(layer.get_weights())


def _policy_of(tensor):
    """A quantizer runs in the dtype policy of the layer that made its tensor (under a mixed
    policy, float32 logits stay float32); the model input takes the global policy."""
    layer = tensor._keras_history.operation
    return None if isinstance(layer, _L.InputLayer) else getattr(layer, "dtype_policy", None)
