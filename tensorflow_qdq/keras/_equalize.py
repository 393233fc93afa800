"""equalize: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.1), with BatchNorm folding and optional high-bias
absorption (section 4.2), on a float Sequential or functional Keras model.

For two weighted layers in a chain, ``y = f(W1 x + b1)``, ``z = W2 y + b2``, with ``f`` positively
homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``: ReLU, LeakyReLU, PReLU, linear), dividing layer 1's
output channel ``i`` (its weights and bias) by ``s_i`` and multiplying layer 2's input channel ``i``
by ``s_i`` leaves ``z`` unchanged. With ``r1_i`` the range (max |w|) of layer 1's output channel i
and ``r2_i`` that of layer 2's input channel i, ``s_i = sqrt(r1_i / r2_i)`` makes both
``sqrt(r1_i * r2_i)``: the paper's optimum of the summed per-channel precisions. Layers that sit in
two pairs (the depthwise conv of conv -> depthwise -> conv) are equalized by sweeping over the
pairs until the scales stop changing, as the paper does.

Nothing here decides silently: every layer with weights gets one report row (equalized with the
next layer, or why not), every BatchNormalization is folded or reported, and the function only
changes where an argument asks for it (``relu6_to_relu``, ``high_bias_absorption``).
"""

import dataclasses

import keras
import numpy as np

from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._graph import _all_layers, _rebuildable
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._plan import functional
from tensorflow_qdq.keras._weights import activation_name
from tensorflow_qdq.keras._wrapper import QuantizeWrapper

_L = keras.layers

# Weighted layers whose channels equalize scales (exact classes: a subclass may compute otherwise).
_CONVS = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SUPPORTED = _CONVS + _DEPTHWISE + (_L.Dense,)
# Layers between two weighted layers that commute with a positive per-channel scale (channels last).
_CHANNELWISE = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.AveragePooling1D, _L.AveragePooling2D,
    _L.AveragePooling3D, _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D, _L.Cropping3D,
    _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D,
)
# Identity in inference, and a product by a random factor per element in training: commute too.
_DROPOUTS = (_L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D, _L.GaussianDropout)
_HOMOGENEOUS = ("relu", "linear", "leaky_relu")  # activation names: f(x / s) = f(x) / s for s > 0


@dataclasses.dataclass(frozen=True)
class EqualizeRow:
    """One layer with weights of the model ``equalize`` read.

    status: ``"equalized"`` (its output channels were scaled against ``next_layer``'s input
    channels), ``"not equalized"`` (a Conv/Dense/DepthwiseConv whose output could not be: detail
    says why) or ``"unsupported"`` (a layer with weights equalize does not scale: a nested model,
    a subclass, a SeparableConv, ...; it is copied unchanged). ``through``: the layers between
    the two (a folded BatchNorm, the activation, pooling, padding).
    """

    layer: str
    kind: str
    status: str
    next_layer: str = None
    through: tuple = ()
    detail: str = ""


@dataclasses.dataclass
class EqualizeReport:
    """What ``equalize`` did. ``rows``: one EqualizeRow per layer with weights; ``folded``:
    (layer, BatchNorm) pairs folded; ``batch_norms_kept``: (BatchNorm, reason) left as they are;
    ``relu6_replaced``: the ReLU6 activations replaced by ReLU (``relu6_to_relu=True`` only);
    ``absorbed``: {(layer, next layer): sum of the bias moved} (``high_bias_absorption=True``);
    ``sweeps``: sweeps over the pairs until the scales converged. ``str(report)`` is the summary
    ``verbose=True`` prints."""

    model_name: str
    rows: list = dataclasses.field(default_factory=list)
    folded: list = dataclasses.field(default_factory=list)
    batch_norms_kept: list = dataclasses.field(default_factory=list)
    relu6_replaced: list = dataclasses.field(default_factory=list)
    absorbed: dict = dataclasses.field(default_factory=dict)
    sweeps: int = 0

    @property
    def equalized(self):
        return [row for row in self.rows if row.status == "equalized"]

    @property
    def not_equalized(self):
        return [row for row in self.rows if row.status != "equalized"]

    def __str__(self):
        lines = [f"equalize({self.model_name}): {len(self.equalized)} layer pairs equalized "
                 f"({self.sweeps} sweeps), {len(self.folded)} BatchNorms folded, "
                 f"{len(self.not_equalized)} layers with weights not equalized"
                 + (f", {len(self.relu6_replaced)} ReLU6 replaced by ReLU" if self.relu6_replaced else "")
                 + (f", high-bias absorption on {len(self.absorbed)} pairs" if self.absorbed else "")]
        for row in self.not_equalized:
            lines.append(f"  {row.layer} ({row.kind}): {row.status}: {row.detail}")
        for name, reason in self.batch_norms_kept:
            lines.append(f"  {name} (BatchNormalization): kept: {reason}")
        return "\n".join(lines)


def equalize(model, *, high_bias_absorption=False, relu6_to_relu=False, verbose=True):
    """Cross-layer equalization: returns ``(equalized_model, report)``.

    ``equalized_model`` is a new float functional model (a Sequential comes back functional) that
    computes the same function as ``model`` within float32 rounding; ``model`` is untouched. Every
    BatchNormalization over the output channels of a Conv/Dense/DepthwiseConv without activation
    (and whose output nothing else reads) is folded into that layer first, so the returned model
    has no such BatchNorm (it has a bias instead). Then each pair of such layers connected through
    positively homogeneous layers only (ReLU without a cap, LeakyReLU, PReLU, linear, pooling,
    padding, cropping, upsampling, dropout, a Flatten before a Dense), whose intermediate tensors
    nothing else reads, gets per-channel scales ``s_i = sqrt(r1_i / r2_i)`` (r: max |w| of the
    channel), swept over all pairs until they converge. The result is an ordinary float model:
    ``quantize_model`` and ``calibrate`` work on it as on any other.

    ReLU6 is not positively homogeneous (``min(x / s, 6) != min(x, 6) / s``): by default a pair
    with a ReLU6 between is not equalized (reported). ``relu6_to_relu=True`` replaces the ReLU6
    of each pair it then equalizes by a ReLU, as AIMET does for MobileNetV2: this changes the
    function wherever a pre-activation exceeded 6 (the report lists the replaced layers).

    ``high_bias_absorption=True`` (paper section 4.2): for an equalized pair with a ReLU (or
    LeakyReLU) between and a folded BatchNorm on the first layer, ``c = max(0, beta - 3 |gamma|)``
    per channel (beta, gamma: the BatchNorm's, after the fold and the scaling) is subtracted
    from the first layer's bias and ``W2 c`` added to the second's. Exact only where the
    pre-activation is at least ``c`` (the paper's assumption of a Gaussian pre-activation puts
    99.87% of it there) and, for a second layer that is a convolution wider than 1x1 with
    padding (or a ZeroPadding between), away from the padded border (a padded zero stands for
    ``relu(y)`` = 0 before, for ``relu(y) - c`` after). Without it the function is preserved.

    Args:
      model: a ``keras.Sequential`` (with a known input) or functional ``keras.Model``. Nested
        models are equalized inside (their rows prefixed ``name/``), not across their borders.
      high_bias_absorption: move bias through ReLU as described above.
      relu6_to_relu: replace ReLU6 by ReLU where that lets a pair be equalized.
      verbose: print the report's summary.
    """
    if not _rebuildable(model):
        raise ValueError(f"equalize needs a keras.Sequential or functional keras.Model, got {type(model).__name__}")
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(f"equalize: Sequential model {model.name!r} has no input shape yet; "
                         "start it with keras.Input(shape) or build it first")
    quantized = [layer.name for layer in _all_layers(model)
                 if isinstance(layer, (QuantizeWrapper, QuantizeAndDequantize, QuantizedMultiHeadAttention))]
    if quantized:
        raise ValueError(f"equalize takes a float model, but {model.name!r} is quantized already (layers "
                         f"{quantized[:3]}{' ...' if len(quantized) > 3 else ''}): equalize the float model, then "
                         "quantize_model the result")
    equalized, report = _Equalizer(functional(model), bool(high_bias_absorption), bool(relu6_to_relu)).run()
    if verbose:
        print(report)
    return equalized, report


class _Layer:
    """A supported layer's kernel and bias in float64, and how its channels index them: a Conv or
    Dense kernel is (..., in, out), a depthwise kernel (..., in, multiplier) whose output channel
    is ``in * multiplier + m``; a grouped conv's input channel ``gi * in + j`` feeds the outputs of
    group ``gi``; a Dense after a Flatten (channels last) reads channel ``c`` in rows ``p * C + c``."""

    def __init__(self, layer):
        self.layer = layer
        self.kernel = np.asarray(layer.kernel.numpy(), np.float64)
        self.depthwise = isinstance(layer, _DEPTHWISE)
        out = self.kernel.shape[-2] * self.kernel.shape[-1] if self.depthwise else self.kernel.shape[-1]
        self.out_channels = out
        self.bias = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(out))
        self.needs_bias = False  # set when a fold or an absorption gives a layer without bias one
        self.groups = getattr(layer, "groups", 1) if isinstance(layer, _CONVS) else 1

    # output side: one row per output channel
    def out_view(self):
        return self.kernel.reshape(-1, self.out_channels).T

    def scale_out(self, factor):
        """Output channel i times factor[i] (kernel and bias)."""
        self.kernel = (self.out_view() * factor[:, None]).T.reshape(self.kernel.shape)
        self.bias = self.bias * factor

    # input side: one row per input channel (of the tensor it reads before a Flatten, if any)
    def _in_shape(self, channels):
        shape = self.kernel.shape
        if self.depthwise:  # (..., C, M)
            return (-1, shape[-2], shape[-1]), "kcm"
        if isinstance(self.layer, _L.Dense):  # (P * C, O): a flattened input is position-major
            return (shape[0] // channels, channels, shape[-1]), "kcm"
        g = self.groups  # (..., C / g, O): input channel gi * C/g + j feeds outputs of group gi
        return (-1, shape[-2], g, shape[-1] // g), "kjgo"

    def in_view(self, channels):
        shape, form = self._in_shape(channels)
        w = self.kernel.reshape(shape)
        if form == "kcm":
            return w.transpose(1, 0, 2).reshape(shape[1], -1)
        return w.transpose(2, 1, 0, 3).reshape(shape[1] * shape[2], -1)

    def scale_in(self, factor):
        channels = factor.shape[0]
        shape, form = self._in_shape(channels)
        w = self.kernel.reshape(shape)
        if form == "kcm":
            w = w * factor[None, :, None]
        else:
            w = w * factor.reshape(shape[2], shape[1]).T[None, :, :, None]
        self.kernel = w.reshape(self.kernel.shape)

    def input_contribution(self, values):
        """What a constant input ``values`` (per input channel) adds to each output (for bias absorption)."""
        shape, form = self._in_shape(values.shape[0])
        w = self.kernel.reshape(shape)
        if form == "kcm":
            if self.depthwise:
                return np.einsum("kcm,c->cm", w, values).reshape(-1)
            return np.einsum("kco,c->o", w, values)
        return np.einsum("kjgo,gj->go", w, values.reshape(shape[2], shape[1])).reshape(-1)

    def reads(self, channels, flattened):
        """Whether the kernel reads ``channels`` input channels (``flattened``: through a Flatten,
        as rows ``p * channels + c`` of a Dense kernel)."""
        shape = self.kernel.shape
        if self.depthwise:
            return shape[-2] == channels
        if isinstance(self.layer, _L.Dense):
            return shape[0] % channels == 0 if flattened else shape[0] == channels
        return shape[-2] * self.groups == channels


@dataclasses.dataclass
class _Pair:
    first: str
    second: str
    through: tuple
    channels: int
    relu_between: bool  # a ReLU-like activation (absorption applies); else linear
    padded: bool
    scales: np.ndarray = None


def _kind(op):
    return type(op).__name__


def _relu_kind(op):
    """How an activation op scales: "relu", "linear", "relu6", or None (not homogeneous / not one)."""
    if type(op) is _L.ReLU:
        if float(op.threshold) != 0.0:
            return None
        if op.max_value is None:
            return "relu"
        return "relu6" if float(op.max_value) == 6.0 and float(op.negative_slope) == 0.0 else None
    if type(op) in (_L.LeakyReLU, _L.PReLU):
        return "relu"
    if type(op) is _L.Activation:
        name = activation_name(op)
        return {"relu": "relu", "leaky_relu": "relu", "linear": "linear", "relu6": "relu6"}.get(name)
    return None


class _Equalizer:
    def __init__(self, model, absorb, relu6_to_relu):
        self.model, self.absorb, self.relu6_to_relu = model, absorb, relu6_to_relu
        self.report = EqualizeReport(model.name)
        self.nodes_of, self.readers = {}, {}
        for nodes in model._nodes_by_depth.values():
            for node in nodes:
                if node.operation is None or node.is_input:
                    continue
                self.nodes_of.setdefault(id(node.operation), []).append(node)
                for tensor in node.arguments.keras_tensors:
                    self.readers.setdefault(id(tensor), []).append(node)
        self.outputs = {id(t) for t in model.outputs}
        self.layers = {}  # name -> _Layer (supported layers' float64 weights)
        self.folded_bns = set()  # ids of the BatchNorms folded
        self.bn_stats = {}  # layer name -> (beta, |gamma|) of the folded BatchNorm (per output channel)
        self.replace_relu6 = set()  # ids of ops (ReLU6 layers, or layers with activation relu6) to make ReLU
        self.pairs = []

    # -- graph --

    def _single_node(self, op):
        nodes = self.nodes_of.get(id(op), [])
        return nodes[0] if len(nodes) == 1 else None

    def _readers_of(self, tensor):
        return self.readers.get(id(tensor), [])

    def _supported_reason(self, layer):
        """None if equalize scales this layer's channels, else why not."""
        if type(layer) not in _SUPPORTED:
            if isinstance(layer, _SUPPORTED):
                base = type(layer).__mro__[1].__name__
                return f"a subclass of {base} (its call may compute otherwise): copied unchanged"
            if _rebuildable(layer):
                return "a nested model: equalized inside, not across its border"
            return "no equalization rule for this layer's weights: copied unchanged"
        names = sorted({w.path.split("/")[-1] for w in layer.weights} - {"kernel", "bias"})
        if names:
            return f"weights other than kernel and bias ({', '.join(names)}): copied unchanged"
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return "channels_first is not supported: copied unchanged"
        if len(self.nodes_of.get(id(layer), [])) != 1:
            return f"called {len(self.nodes_of.get(id(layer), []))} times in the model (shared weights)"
        if len(self._single_node(layer).outputs) != 1:
            return "more than one output"
        return None

    # -- BatchNorm folding --

    def _fold_reason(self, layer, bn):
        """None if ``bn`` folds into ``layer`` (the only reader of its output), else why not."""
        reason = self._supported_reason(layer)
        if reason is not None:
            return f"follows {layer.name!r} ({_kind(layer)}), which equalize does not fold into: {reason}"
        if activation_name(layer) not in (None, "linear"):
            return f"follows {layer.name!r}, which applies {activation_name(layer)} before it"
        output = self._single_node(layer).outputs[0]
        if len(self._readers_of(output)) != 1:
            return f"the output of {layer.name!r} has other readers"
        if id(output) in self.outputs:
            return f"the output of {layer.name!r} is a model output"
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        rank = len(output.shape)
        if len(axis) != 1 or axis[0] % rank != rank - 1:
            return f"normalizes axis {bn.axis}, not the channel axis"
        if len(self.nodes_of.get(id(bn), [])) != 1:
            return "called more than once"
        return None

    def _fold_all(self):
        for nodes in self.model._nodes_by_depth.values():
            for node in nodes:
                bn = node.operation
                if type(bn) is not _L.BatchNormalization:
                    continue
                args = node.arguments.keras_tensors
                layer = args[0]._keras_history.operation if len(args) == 1 else None
                reason = (self._fold_reason(layer, bn) if layer is not None
                          else "reads more than one tensor")
                if reason is not None:
                    self.report.batch_norms_kept.append((bn.name, reason))
                    continue
                self._fold(layer, bn)

    def _fold(self, layer, bn):
        weights = self._weights(layer)
        gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(weights.out_channels)
        beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(weights.out_channels)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        factor = gamma / np.sqrt(var + bn.epsilon)
        weights.bias = weights.bias - mean
        weights.scale_out(factor)
        weights.bias = weights.bias + beta
        weights.needs_bias = True
        self.bn_stats[layer.name] = (beta, np.abs(gamma))
        self.folded_bns.add(id(bn))
        self.report.folded.append((layer.name, bn.name))

    def _weights(self, layer):
        if layer.name not in self.layers:
            self.layers[layer.name] = _Layer(layer)
        return self.layers[layer.name]

    # -- chains --

    def _chain(self, layer):
        """(_Pair, None) for the layer's output and the next weighted layer, or (None, reason)."""
        through, relu, padded, relu6 = [], False, False, []
        own = activation_name(layer)
        if own == "relu6":
            if not self.relu6_to_relu:
                return None, ("applies relu6, which is not positively homogeneous (min(x/s, 6) != min(x, 6)/s); "
                              "relu6_to_relu=True replaces it by relu")
            relu6.append(layer)
            relu = True
        elif own not in _HOMOGENEOUS:
            return None, f"applies {own}, which is not positively homogeneous"
        else:
            relu = own != "linear"
        node = self._single_node(layer)
        tensor, flatten_channels = node.outputs[0], None
        channels = self._weights(layer).out_channels
        while True:
            if id(tensor) in self.outputs:
                return None, f"its output{' (after ' + through[-1] + ')' if through else ''} is a model output"
            readers = self._readers_of(tensor)
            if len(readers) != 1:
                names = ", ".join(repr(r.operation.name) for r in readers)
                where = f" after {through[-1]!r}" if through else ""
                return None, (f"its output{where} has {len(readers)} readers ({names}): scaling it would change "
                              "what the others read" if readers else f"its output{where} is not read")
            op = readers[0].operation
            if id(op) in self.folded_bns:
                through.append(op.name)
            elif type(op) in _SUPPORTED:
                reason = self._supported_reason(op)
                if reason is not None:
                    return None, f"the next layer {op.name!r} ({_kind(op)}) is not equalized: {reason}"
                if len(readers[0].arguments.keras_tensors) != 1:
                    return None, f"the next layer {op.name!r} reads more than one tensor"
                second = self._weights(op)
                if flatten_channels is not None and not isinstance(op, _L.Dense):
                    return None, f"a Flatten reaches {op.name!r} ({_kind(op)}): only a Dense keeps the channel mapping"
                if not second.reads(channels, flatten_channels is not None):
                    return None, f"{op.name!r} has an input channel layout equalize does not follow"
                padded = padded or (getattr(op, "padding", "valid") != "valid"
                                    and any(k > 1 for k in getattr(op, "kernel_size", (1,))))
                for item in relu6:
                    self.replace_relu6.add(id(item))
                if relu6:
                    self.report.relu6_replaced.extend(item.name for item in relu6)
                return _Pair(layer.name, op.name, tuple(through), channels, relu, padded), None
            elif _relu_kind(op) in ("relu", "linear") or (_relu_kind(op) == "relu6" and self.relu6_to_relu):
                if _relu_kind(op) == "relu6":
                    relu6.append(op)
                relu = relu or _relu_kind(op) != "linear"
                through.append(op.name)
            elif _relu_kind(op) == "relu6" or (type(op) is _L.ReLU and op.max_value is not None):
                what = f"ReLU with max_value {op.max_value}" if type(op) is _L.ReLU else "Activation relu6"
                return None, (f"reaches {op.name!r} ({what}), which is not positively homogeneous"
                              + ("; relu6_to_relu=True replaces a ReLU6 by ReLU" if _relu_kind(op) == "relu6" else ""))
            elif type(op) in _CHANNELWISE + _DROPOUTS or type(op) is _L.Identity:
                if getattr(op, "data_format", "channels_last") != "channels_last":
                    return None, f"reaches {op.name!r} ({_kind(op)}) with channels_first"
                if flatten_channels is not None and type(op) in _CHANNELWISE:
                    return None, f"reaches {op.name!r} ({_kind(op)}) after a Flatten"
                padded = padded or "Padding" in _kind(op)
                through.append(op.name)
            elif type(op) is _L.Flatten and flatten_channels is None:
                if getattr(op, "data_format", "channels_last") != "channels_last":
                    return None, f"reaches {op.name!r} (Flatten) with channels_first"
                flatten_channels = channels
                through.append(op.name)
            elif isinstance(op, (_L.Add, _L.Subtract, _L.Concatenate, _L.Multiply, _L.Average, _L.Maximum,
                                 _L.Minimum)) or not isinstance(op, _L.Layer):
                return None, (f"reaches {op.name!r} ({_kind(op)}): a merge or an op on several tensors "
                              "(a residual add, a concatenation) would need the same scales on all its inputs")
            elif type(op) is _L.BatchNormalization:
                return None, f"reaches {op.name!r} (BatchNormalization), which is not folded"
            elif _rebuildable(op):
                return None, f"reaches the nested model {op.name!r} (equalized inside, not across its border)"
            else:
                name = activation_name(op) if isinstance(op, _L.Activation) else None
                what = f"{_kind(op)}" + (f" {name}" if name else "")
                return None, f"reaches {op.name!r} ({what}), which does not commute with a per-channel scale"
            node = readers[0]
            if len(node.outputs) != 1:
                return None, f"reaches {op.name!r}, which has several outputs"
            tensor = node.outputs[0]

    def _find_pairs(self):
        for op in self.model.layers:
            # a BatchNormalization is folded or listed as kept; a PReLU's slopes are not scaled;
            # nested models get their rows when they are equalized (_rebuild)
            if not op.weights or type(op) in (_L.BatchNormalization, _L.PReLU) or _rebuildable(op):
                continue
            reason = self._supported_reason(op)
            if reason is not None:
                status = "not equalized" if type(op) in _SUPPORTED else "unsupported"
                self.report.rows.append(EqualizeRow(op.name, _kind(op), status, detail=reason))
                continue
            pair, reason = self._chain(op)
            if pair is None:
                self.report.rows.append(EqualizeRow(op.name, _kind(op), "not equalized", detail=reason))
            else:
                self.pairs.append(pair)

    # -- scales --

    def _equalize(self, max_sweeps=500, tolerance=1e-9):
        for pair in self.pairs:
            pair.scales = np.ones(pair.channels)
        for sweep in range(1, max_sweeps + 1):
            largest = 0.0
            for pair in self.pairs:
                first, second = self.layers[pair.first], self.layers[pair.second]
                r1 = np.abs(first.out_view()).max(axis=1)
                r2 = np.abs(second.in_view(pair.channels)).max(axis=1)
                ok = (r1 > 0) & (r2 > 0) & np.isfinite(r1) & np.isfinite(r2)
                s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
                first.scale_out(1.0 / s)
                second.scale_in(s)
                pair.scales = pair.scales * s
                if pair.first in self.bn_stats:
                    beta, gamma = self.bn_stats[pair.first]
                    self.bn_stats[pair.first] = (beta / s, gamma / s)
                largest = max(largest, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
            self.report.sweeps = sweep
            if largest < tolerance:
                return True
        return False

    def _absorb(self):
        for pair in self.pairs:
            if not pair.relu_between or pair.first not in self.bn_stats:
                continue
            beta, gamma = self.bn_stats[pair.first]
            c = np.maximum(0.0, beta - 3.0 * gamma)
            if not np.any(c > 0):
                continue
            first, second = self.layers[pair.first], self.layers[pair.second]
            first.bias = first.bias - c
            second.bias = second.bias + second.input_contribution(c)
            second.needs_bias = True
            self.report.absorbed[(pair.first, pair.second)] = float(c.sum())

    def _rows(self, converged):
        for pair in self.pairs:
            detail = (f"with {pair.second!r}" + (f" through {', '.join(pair.through)}" if pair.through else "")
                      + f": {pair.channels} channels, scales {pair.scales.min():.3g}..{pair.scales.max():.3g}")
            if not converged:
                detail += " (the sweeps did not converge)"
            if pair.padded and (pair.first, pair.second) in self.report.absorbed:
                detail += "; bias absorbed before a padded convolution (inexact at the border)"
            self.report.rows.append(EqualizeRow(pair.first, _kind(self.model.get_layer(pair.first)), "equalized",
                                                pair.second, pair.through, detail))

    # -- the copy --

    def run(self):
        self._fold_all()
        self._find_pairs()
        converged = self._equalize()
        if self.absorb:
            self._absorb()
        self._rows(converged)
        copy = self._rebuild()
        return copy, self.report

    def _rebuild(self):
        clones, nested_reports = {}, {}

        def clone(op):
            if id(op) in clones:
                return clones[id(op)]
            if not isinstance(op, _L.Layer):
                new = op  # a keras.ops node: no state
            elif _rebuildable(op):
                new, nested = _Equalizer(functional(op), self.absorb, self.relu6_to_relu).run()
                nested_reports[op.name] = nested
            elif isinstance(op, _L.Lambda):
                new = op
            else:
                config = op.get_config()
                if id(op) in self.replace_relu6:
                    if type(op) is _L.ReLU:
                        config["max_value"] = None
                    else:
                        config["activation"] = "relu"
                if op.name in self.layers and self.layers[op.name].needs_bias:
                    config["use_bias"] = True
                try:
                    new = op.__class__.from_config(config)
                except Exception as exc:  # noqa: BLE001 - reported, and the layer is shared instead
                    if op.name in self.layers:  # its weights were to change: sharing it would not do
                        raise ValueError(f"equalize: layer {op.name!r} ({_kind(op)}) cannot be rebuilt from its "
                                         f"own get_config(): {exc}") from exc
                    self.report.rows.append(EqualizeRow(op.name, _kind(op), "unsupported",
                                                        detail=f"cannot be rebuilt from its config ({exc}): the copy "
                                                               "shares this layer with the original"))
                    new = op
            clones[id(op)] = new
            return new

        def call(layer, *args, **kwargs):
            if id(layer) in folded_clones:
                return args[0]  # a folded BatchNorm's clone is never called: its input goes on
            return layer(*args, **kwargs)

        originals = {}
        for nodes in self.model._nodes_by_depth.values():
            for node in nodes:
                if node.operation is not None:
                    originals[id(node.operation)] = node.operation
        folded_clones = set()
        for op_id in self.folded_bns:
            folded_clones.add(id(clone(originals[op_id])))
        copy = keras.models.clone_model(self.model, clone_function=clone, call_function=call)
        for op_id, op in originals.items():
            new = clones.get(op_id)
            if (new is None or new is op or _rebuildable(op) or id(op) in self.folded_bns
                    or not isinstance(op, _L.Layer)):
                continue
            if op.name in self.layers:
                weights = self.layers[op.name]
                new.kernel.assign(weights.kernel.astype(new.kernel.dtype))
                if new.use_bias:
                    new.bias.assign(weights.bias.astype(new.bias.dtype))
            elif op.weights:
                new.set_weights(op.get_weights())
        for name, nested in nested_reports.items():
            self.report.rows.append(EqualizeRow(name, _kind(self.model.get_layer(name)), "unsupported",
                                                detail="a nested model: equalized inside (its rows are "
                                                       f"prefixed {name}/), not across its border"))
            for row in nested.rows:
                self.report.rows.append(dataclasses.replace(
                    row, layer=f"{name}/{row.layer}", next_layer=row.next_layer and f"{name}/{row.next_layer}",
                    through=tuple(f"{name}/{t}" for t in row.through)))
            self.report.folded.extend((f"{name}/{a}", f"{name}/{b}") for a, b in nested.folded)
            self.report.batch_norms_kept.extend((f"{name}/{a}", r) for a, r in nested.batch_norms_kept)
            self.report.relu6_replaced.extend(f"{name}/{a}" for a in nested.relu6_replaced)
            self.report.absorbed.update({(f"{name}/{a}", f"{name}/{b}"): v for (a, b), v in nested.absorbed.items()})
        # in the model's layer order, a nested model's rows after its own
        order = {layer.name: i for i, layer in enumerate(self.model.layers)}
        self.report.rows.sort(key=lambda row: (order.get(row.layer.split("/")[0], len(order)), "/" in row.layer))
        return copy
