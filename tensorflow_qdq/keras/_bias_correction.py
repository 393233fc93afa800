"""correct_bias: empirical bias correction of a post-training quantized model.

Quantizing a layer's weights shifts the mean of its output: ``E[x W_q] - E[x W] = E[x] (W_q - W)``
is not zero per output channel, and the shift travels through the rest of the network (Nagel
et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction", section
4.2; the empirical variant, which AIMET calls "bias correction" with data). ``correct_bias``
measures that expected error on data and subtracts it from the layer's bias, layer by layer in
the order the model computes them, so a later layer's inputs come from the already corrected
earlier ones: each layer's inputs are those of the quantized model itself (what the layer sees
once deployed), and the error is ``linear(x_q, W_q) - linear(x_q, W)`` (the layer without its
bias and activation, with the quantized and with the float weights), averaged over every axis
but the output channels.

Where the correction lands, so that inference, ``.keras`` files, SavedModels and both exporters
carry it without anything new to save:

* a layer with its own bias and no folded BatchNorm: ``bias -= correction``;
* a folded BatchNorm (the folded bias is ``beta + (bias - moving_mean) * f``, with
  ``f = gamma / sqrt(moving_variance + eps)``): ``moving_mean += correction / f``. The moving
  mean is the BatchNorm's estimate of the mean of the conv's output; with quantized weights that
  mean moved, and this is where BatchNorm keeps it. QAT afterwards normalizes with batch
  statistics and re-estimates the moving mean from the quantized weights by itself, so the
  correction is neither undone by training (as a changed ``beta`` would be) nor counted twice.
  A channel with ``f = 0`` has all-zero folded weights and no error to correct.
* a layer without a bias (``use_bias=False`` and no BatchNorm folded into it) is not given one
  (that would change the layer's config and its weight list): it is reported with status
  ``"no bias"`` and the error that was measured, so it can be rebuilt with a bias if that
  error matters.

The correction is added to the float bias; the wrapper then rounds the bias onto the int32
grid of the integer runtimes as always (``_bias``), so the model and its exports add the same
number.
"""

import dataclasses
import itertools
import warnings

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq.keras import _weights
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._calibrate import _batches, _check_batch
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper


@dataclasses.dataclass(frozen=True)
class BiasCorrection:
    """One quantized layer's bias correction.

    status: ``"corrected"``; ``"no bias"`` (measured, not applied: the layer has no bias);
    ``"float weights"`` (the wrapper's ``weight_bits`` is None: nothing to correct);
    ``"not supported"``. where: what was changed (``"bias"``, or
    ``"moving_mean of folded BatchNorm '<name>'"``), or why nothing was. correction: the expected output error per
    channel that was subtracted (float64), or None.
    """

    name: str
    kind: str
    status: str
    where: str
    channels: int
    max_abs_correction: float
    mean_abs_correction: float
    correction: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)


class BiasCorrectionReport(list):
    """The ``BiasCorrection`` records of ``correct_bias``, in the order the model computes the
    layers; ``print`` shows them as a table."""

    def __str__(self):
        header = ("layer", "kind", "status", "channels", "max |correction|", "mean |correction|", "where")
        rows = [header] + [
            (r.name, r.kind, r.status, str(r.channels) if r.channels else "",
             "" if r.correction is None else f"{r.max_abs_correction:.4g}",
             "" if r.correction is None else f"{r.mean_abs_correction:.4g}", r.where)
            for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        corrected = sum(r.status == "corrected" for r in self)
        lines.append(f"{corrected} of {len(self)} quantized layers corrected")
        return "\n".join(lines)


class _Stop(Exception):
    """Raised by the recording hook once the layer under correction has seen its input: the
    rest of the forward pass is not needed."""


def correct_bias(model, data, *, num_batches=None, batch_size=32, verbose=True):
    """Empirical bias correction (Nagel et al. 2019, section 4.2) of a model from
    ``quantize_model``, after ``calibrate``; returns a ``BiasCorrectionReport``.

    For every quantized layer with a bias (``QuantizeWrapper``), in the order the model computes
    them, the expected error that weight quantization adds to its output,
    ``E[linear(x_q, W_q) - linear(x_q, W)]`` per output channel, is measured on ``data`` with the
    layer's inputs ``x_q`` taken from the quantized model (already corrected up to that layer),
    and subtracted from the bias (a folded BatchNorm's ``moving_mean`` takes it; see the module
    docstring). The model is changed in place; inference, ``.keras`` files and the exporters
    carry the corrected biases.

    Args:
      model: a calibrated (or trained) model from ``quantize_model``.
      data: inputs as ``calibrate`` takes them: an array (a list of arrays for several inputs)
        split into ``batch_size`` batches, a ``tf.data.Dataset`` or an iterable of batches
        (``(x, y)`` tuples use ``x``).
      num_batches: use this many batches (None: all of ``data``).
      verbose: show a progress bar (one step per layer).
    """
    if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) < 1):
        raise ValueError(f"num_batches={num_batches!r} must be None or a positive number of batches")
    _check_calibrated(model, "correct_bias")
    if getattr(model, "_qdq_bias_corrected", False):
        warnings.warn("correct_bias already corrected this model's biases; running it again subtracts the "
                      "expected error a second time (start again from the float model to change the data)",
                      stacklevel=2)
    batches = list(itertools.islice(_batches(data, batch_size), num_batches))
    if not batches:
        raise ValueError("correct_bias: data holds no batch")
    for batch in batches:
        _check_batch(model, batch)
    order, calls = _call_order(model, batches[0])
    plan = [(layer, _eligibility(layer)) for layer in order]
    todo = [layer for layer, (status, _) in plan if status in ("corrected", "no bias")]
    progress = None
    if verbose and todo:
        progress = keras.utils.Progbar(len(todo), unit_name="layer", stateful_metrics=["max |correction|"])
    records = {}
    done = 0
    for layer, (status, detail) in plan:
        if status not in ("corrected", "no bias"):
            records[id(layer)] = BiasCorrection(layer.name, _kind(layer), status, detail, 0, 0.0, 0.0)
            continue
        error = _expected_error(model, layer, batches, stop=calls[id(layer)] == 1)
        where = _apply(layer, error) if status == "corrected" else ""
        magnitude = np.abs(error)
        records[id(layer)] = BiasCorrection(layer.name, _kind(layer), status, where, int(error.shape[0]),
                                            float(magnitude.max()), float(magnitude.mean()), error)
        done += 1
        if progress is not None:
            progress.update(done, values=[("max |correction|", float(magnitude.max()))])
    if any(r.status == "corrected" for r in records.values()):
        # sensitivity's default reference (every quantizer bypassed) keeps the corrected biases:
        # it warns when asked for it on such a model (not saved with the model)
        object.__setattr__(model, "_qdq_bias_corrected", True)
    return BiasCorrectionReport(records[id(layer)] for layer, _ in plan)


# ------------------------------------------------------------------------------- the pieces


def _kind(layer):
    return type(layer.layer).__name__ if isinstance(layer, QuantizeWrapper) else type(layer).__name__


def _check_calibrated(model, what):
    """Raises if an activation quantizer still holds the range it was built with."""
    fresh = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, QuantizeAndDequantize) or not layer.built:
            continue
        if layer.range_mode == "tracked" and not np.any(np.asarray(layer.tracked_updates) > 0):
            fresh.append(layer.name)
        elif layer.range_mode == "learned" and int(np.asarray(layer.step_initialized)) == 0:
            fresh.append(layer.name)
    if fresh:
        raise ValueError(f"{what}: the activation ranges of {', '.join(map(repr, fresh[:5]))}"
                         f"{' and others' if len(fresh) > 5 else ''} were never set from data; run "
                         "tensorflow_qdq.keras.calibrate(model, data) (or train) first")


def _quantized_layers(model):
    seen = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (QuantizeWrapper, QuantizedMultiHeadAttention)) and id(layer) not in seen:
            seen.add(id(layer))
            yield layer


class _Hooks:
    """Instance-level replacements of layers' ``call`` (Keras' ``__call__`` looks ``call`` up at
    each call), removed on exit whatever happens."""

    def __init__(self):
        self._saved = []

    def install(self, layer, call):
        self._saved.append((layer, layer.__dict__.get("call", _MISSING)))
        object.__setattr__(layer, "call", call)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for layer, value in reversed(self._saved):
            if value is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", value)
        self._saved.clear()
        return False


_MISSING = object()


def _call_order(model, batch):
    """The quantized layers in the order one inference pass calls them, and how many times each
    is called per pass (a layer shared by several call sites is called more than once)."""
    order, calls = [], {}

    def recorder(layer):
        def call(*args, **kwargs):
            if id(layer) not in calls:
                order.append(layer)
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            return type(layer).call(layer, *args, **kwargs)
        return call

    with _Hooks() as hooks:
        for layer in _quantized_layers(model):
            hooks.install(layer, recorder(layer))
        model(batch, training=False)
    return order, calls


def _eligibility(layer):
    """(status, detail) of a layer before measuring: whether its bias can be corrected."""
    if isinstance(layer, QuantizedMultiHeadAttention):
        return "not supported", "MultiHeadAttention (biases of its projections are not corrected)"
    if layer.weight_bits is None:
        return "float weights", ""
    spec = next((s for s in layer.specs if s.folds_batch_norm), None)
    if spec is None:
        return "not supported", f"{type(layer.layer).__name__} (no per-channel bias to correct)"
    _, bias = layer.float_weights()
    if bias is None:
        return "no bias", ""
    if len(bias.shape) != 1:
        return "not supported", f"bias of shape {tuple(bias.shape)} (one value per output channel expected)"
    return "corrected", ""


def _expected_error(model, layer, batches, stop):
    """E[linear(x_q, W_q) - linear(x_q, W)] per output channel (float64) over ``batches``, with
    ``x_q`` what ``layer`` receives in the quantized model's inference pass."""
    total, count = None, 0

    def measure(inputs, *args, training=None, **kwargs):
        nonlocal total, count
        error = _output_error(layer, inputs)
        axis = _weights.output_channel_axis(layer.layer) % error.ndim
        moved = np.moveaxis(error, axis, -1).reshape(-1, error.shape[axis])
        total = moved.sum(axis=0) if total is None else total + moved.sum(axis=0)
        count += moved.shape[0]
        if stop:
            raise _Stop()
        return type(layer).call(layer, inputs, *args, training=training, **kwargs)

    with _Hooks() as hooks:
        hooks.install(layer, measure)
        for batch in batches:
            try:
                model(batch, training=False)
            except _Stop:
                pass
    if total is None:
        raise ValueError(f"correct_bias: layer {layer.name!r} was not called by the model's forward pass")
    return total / count


def _output_error(layer, inputs):
    """linear(x, W_q) - linear(x, W) for one batch, float64 NumPy; the layer's own input
    quantizer applied first where it has one. For a plain linear layer it is computed as
    linear(x, W_q - W) (exact in the difference, no cancellation of two large outputs); a
    separable conv quantizes between its two convolutions, so there both outputs are computed."""
    x = inputs
    if layer.input_quantizer is not None:
        x = layer.input_quantizer(x, training=False)
    factor = layer._fold_factor() if layer.batch_norm is not None else None
    float_weights = layer._folded_weights(factor)
    quantized = {spec.attr: _weights.quantize_weight(float_weights[spec.attr], spec.channel_axes, layer.weight_bits)
                 for spec in layer.specs}
    if layer.intermediate_quantizer is not None:
        y_q = layer._linear(x, quantized, False)
        y_f = layer._linear(x, float_weights, False)
        return np.asarray(y_q, np.float64) - np.asarray(y_f, np.float64)
    difference = {attr: tf.subtract(quantized[attr], float_weights[attr]) for attr in quantized}
    return np.asarray(layer._linear(x, difference, False), np.float64)


def _apply(layer, error):
    """Subtracts ``error`` from the layer's (folded) bias; returns where it went."""
    bn = layer.batch_norm
    if bn is None:
        bias = layer.layer.bias
        bias.assign((np.asarray(bias, np.float64) - error).astype(bias.dtype))
        return "bias"
    factor = np.asarray(layer._fold_factor(), np.float64)
    shift = np.divide(error, factor, out=np.zeros_like(error), where=factor != 0)
    bn.moving_mean.assign((np.asarray(bn.moving_mean, np.float64) + shift).astype(bn.moving_mean.dtype))
    return f"moving_mean of folded BatchNorm {bn.name!r}"
