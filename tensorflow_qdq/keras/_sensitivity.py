"""sensitivity: how much each quantized layer costs, with only it quantized and with only it float.

A layer of a model from ``quantize_model`` is its quantized weights (a ``QuantizeWrapper``, or a
``QuantizedMultiHeadAttention``) together with its activation quantizers: the wrapper's own
(input, output, gate, intermediate), the quantizers its input comes from (walking up the graph
through layers without weights and with one input: a ZeroPadding2D, a Flatten) and those its
output goes to (walking down the same way: through a fused ReLU to the quantizer after it). A
quantizer between two quantized layers belongs to both: it is the output of one and the input of
the other. Quantizers no quantized layer reaches that way (after a merge whose output only
merges read, say) belong to no layer: they are quantized when "the rest" is, float when it is
not, and the report lists them.

The variants run on the model itself, not on rebuilt copies: ``bypassed`` makes chosen layers
compute with their float weights (``weight_bits`` set to None for the duration: the wrapper then
adds its float bias unrounded, as a float layer does) and chosen quantizers pass their input
through (an instance-level ``call`` that returns it), and restores both on exit, so the model is
left exactly as it was (its variables are never written).
"""

import contextlib
import dataclasses
import itertools
import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._bias_correction import _check_calibrated, _Hooks, _quantized_layers
from tensorflow_qdq.keras._calibrate import _batches, _check_batch, _first
from tensorflow_qdq.keras._graph import _all_layers, _rebuildable
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper

_INTERNAL_QUANTIZERS = ("input_quantizer", "output_quantizer", "gate_quantizer", "intermediate_quantizer",
                        "context_quantizer")


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """One quantized layer: the metric with only it quantized (everything else float) and with
    only it float (everything else quantized). quantizers: the activation quantizers that go
    with it (see the module docstring)."""

    name: str
    kind: str
    quantizers: tuple
    only_quantized: float
    only_float: float


class SensitivityReport(list):
    """``LayerSensitivity`` records, most sensitive first; ``print`` shows a table.

    metric: what the numbers are (``"SQNR dB"`` by default); higher_is_better: its direction;
    quantized / float: the metric of the whole model quantized and of the whole model float;
    unassigned: the quantizers no layer owns (quantized in "only float" variants, float in
    "only quantized" ones)."""

    def __init__(self, records, metric, higher_is_better, quantized, float_, unassigned):
        super().__init__(records)
        self.metric, self.higher_is_better = metric, higher_is_better
        self.quantized, self.float, self.unassigned = quantized, float_, tuple(unassigned)

    def __str__(self):
        header = ("layer", "kind", f"only this quantized ({self.metric})", f"only this float ({self.metric})",
                  "activation quantizers")
        rows = [header] + [(r.name, r.kind, _number(r.only_quantized), _number(r.only_float),
                            ", ".join(r.quantizers)) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"all quantized: {_number(self.quantized)}; all float: {_number(self.float)} ({self.metric}, "
                     f"{'higher' if self.higher_is_better else 'lower'} is better)")
        if self.unassigned:
            lines.append(f"quantizers of no layer (quantized with the rest): {', '.join(self.unassigned)}")
        return "\n".join(lines)


def _number(value):
    return f"{value:.4g}" if isinstance(value, numbers.Real) and math.isfinite(value) else str(value)


def sensitivity(model, data, *, metric=None, float_model=None, higher_is_better=None, num_batches=None,
                batch_size=32, verbose=True):
    """Per-layer sensitivity of a (calibrated) model from ``quantize_model``; returns a
    ``SensitivityReport``: one ``LayerSensitivity`` per quantized layer, most sensitive first.

    For each quantized layer (its weights and its activation quantizers, see the module
    docstring) the metric is measured (a) with only that layer quantized, every other layer and
    quantizer float, and (b) with only that layer left float, everything else quantized. The
    model is run as it is with layers and quantizers temporarily bypassed; it is unchanged
    afterwards.

    Args:
      model: a calibrated (or trained) model from ``quantize_model``.
      data: inputs as ``calibrate`` takes them (an array, a list of arrays, a ``tf.data.Dataset``
        or an iterable of batches). For a ``metric`` that needs labels, give batches of ``(x, y)``
        (a Dataset or a list of tuples): the model gets ``x``, the metric the whole batch.
      metric: None: the SQNR in dB of the model's output against the float output,
        ``10 log10(sum(ref^2) / sum((out - ref)^2))`` over all of ``data``; or a callable
        ``metric(outputs, batch) -> float`` (an accuracy, a loss), averaged over the batches
        weighted by their rows.
      float_model: the float model whose outputs are the SQNR reference (default: ``model`` with
        every quantizer bypassed, which computes what the float model computes up to float
        rounding; not after ``correct_bias``, whose corrected biases stay: pass the float model
        then, which this function warns about).
      higher_is_better: the metric's direction (default True: SQNR, accuracy; pass False for a
        loss); the sorting puts first the layer whose "only quantized" metric is worst.
      num_batches: use this many batches (None: all).
      verbose: a progress bar (one step per variant).
    """
    if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) < 1):
        raise ValueError(f"num_batches={num_batches!r} must be None or a positive number of batches")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be None (output SQNR) or a callable metric(outputs, batch), got {metric!r}")
    if metric is None and higher_is_better is False:
        raise ValueError("the default metric (SQNR) is better when higher; higher_is_better=False applies to a "
                         "metric you pass")
    higher_is_better = True if higher_is_better is None else bool(higher_is_better)
    _check_calibrated(model, "sensitivity")
    batches = list(itertools.islice(_batches_with_labels(data, batch_size), num_batches))
    if not batches:
        raise ValueError("sensitivity: data holds no batch")
    inputs = [_first(b) for b in batches]
    for x in inputs:
        _check_batch(model, x)
    owners, unassigned = layer_quantizers(model)
    layers = list(owners)
    all_quantizers = _all_quantizers(model)
    progress = keras.utils.Progbar(2 * len(layers) + 2, unit_name="variant") if verbose else None
    step = [0]

    def advance():
        step[0] += 1
        if progress is not None:
            progress.update(step[0])

    if metric is None and float_model is None and getattr(model, "_qdq_bias_corrected", False):
        warnings.warn("sensitivity: correct_bias changed this model's biases, and with every quantizer bypassed "
                      "it keeps them, so it is not the float model; pass float_model= for the SQNR reference",
                      stacklevel=2)
    if metric is None:
        if float_model is not None:
            references = [_flat(float_model(x, training=False)) for x in inputs]
        else:
            with bypassed(layers, all_quantizers):
                references = [_flat(model(x, training=False)) for x in inputs]

        def measure():
            signal = noise = 0.0
            for x, ref in zip(inputs, references):
                out = _flat(model(x, training=False))
                signal += float(np.sum(np.square(ref)))
                noise += float(np.sum(np.square(out - ref)))
            return _sqnr(signal, noise)
        name = "SQNR dB"
    else:
        def measure():
            total = rows = 0.0
            for x, batch in zip(inputs, batches):
                n = len(tf.nest.flatten(x)[0])
                total += float(metric(model(x, training=False), batch)) * n
                rows += n
            return total / rows
        name = getattr(metric, "__name__", type(metric).__name__)

    whole = measure()
    advance()
    with bypassed(layers, all_quantizers):
        none = measure()
    advance()
    records = []
    for layer in layers:
        mine = owners[layer]
        others = [q for q in all_quantizers if all(q is not m for m in mine)]
        with bypassed([o for o in layers if o is not layer], others):
            only_quantized = measure()
        advance()
        with bypassed([layer], mine):
            only_float = measure()
        advance()
        records.append(LayerSensitivity(layer.name, _kind(layer), tuple(q.name for q in mine),
                                        only_quantized, only_float))
    def badness(value):  # a NaN counts as the worst value
        return math.inf if math.isnan(value) else (-value if higher_is_better else value)

    records.sort(key=lambda r: (-badness(r.only_quantized), badness(r.only_float)))
    return SensitivityReport(records, name, higher_is_better, whole, none, [q.name for q in unassigned])


def _sqnr(signal, noise):
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _flat(outputs):
    return np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in tf.nest.flatten(outputs)])


def _batches_with_labels(data, batch_size):
    """Like calibrate's batches, but an ``(x, y)`` batch stays whole (the metric may need y)."""
    from tensorflow_qdq.keras._calibrate import _arrays

    if _arrays(data) is not None:
        yield from _batches(data, batch_size)
        return
    yield from data


def _kind(layer):
    return type(layer.layer).__name__ if isinstance(layer, QuantizeWrapper) else type(layer).__name__


def _all_quantizers(model):
    seen, out = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, QuantizeAndDequantize) and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


# ------------------------------------------------------------------ who owns which quantizer


def layer_quantizers(model):
    """({quantized layer: [its activation quantizers]}, [quantizers of no layer]), the layers in
    the order of ``model._flatten_layers`` (see the module docstring for the rule)."""
    owners = {layer: [] for layer in _quantized_layers(model)}

    def own(layer, quantizer):
        if quantizer is not None and all(quantizer is not q for q in owners[layer]):
            owners[layer].append(quantizer)

    for layer in owners:
        for attr in _INTERNAL_QUANTIZERS:
            own(layer, getattr(layer, attr, None))
    for graph in _graphs(model):
        nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]]
        members = {id(node) for node in nodes}
        children = {}
        for node in nodes:
            for parent in node.parent_nodes:
                if id(parent) in members:
                    children.setdefault(id(parent), []).append(node)
        for node in nodes:
            layer = node.operation
            if layer not in owners:
                continue
            for quantizer in _reached(node, lambda n: [p for p in n.parent_nodes if id(p) in members]):
                own(layer, quantizer)
            for quantizer in _reached(node, lambda n: children.get(id(n), [])):
                own(layer, quantizer)
    owned = {id(q) for quantizers in owners.values() for q in quantizers}
    unassigned = [q for q in _all_quantizers(model) if id(q) not in owned]
    return owners, unassigned


def _graphs(model):
    for candidate in [model, *(layer for layer in _all_layers(model) if _rebuildable(layer))]:
        graph = getattr(candidate, "_functional", None) if isinstance(candidate, keras.Sequential) else candidate
        if graph is not None and hasattr(graph, "_nodes_by_depth"):
            yield graph


def _reached(start, neighbours):
    """The quantizers first met walking from ``start`` through layers without weights that take
    one input (a ReLU, a padding, a pooling, a flatten)."""
    found, stack, seen = [], list(neighbours(start)), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        operation = node.operation
        if isinstance(operation, QuantizeAndDequantize):
            found.append(operation)
        elif _transparent(node):
            stack.extend(neighbours(node))
    return found


def _transparent(node):
    operation = node.operation
    if isinstance(operation, (keras.layers.InputLayer, keras.Model, QuantizeWrapper, QuantizedMultiHeadAttention)):
        return False
    if getattr(operation, "weights", None):
        return False
    return len(node.parent_nodes) == 1


# ------------------------------------------------------------------------- the bypass


@contextlib.contextmanager
def bypassed(layers=(), quantizers=()):
    """Within the block the given quantized layers compute with their float weights (and their
    own quantizers pass through), and the given activation quantizers pass their input through
    unchanged. Everything is restored on exit; no variable is written."""
    saved = []
    with _Hooks() as hooks:
        try:
            for layer in layers:
                if isinstance(layer, QuantizeWrapper):
                    saved.append((layer, "weight_bits", layer.weight_bits))
                    object.__setattr__(layer, "weight_bits", None)
                elif isinstance(layer, QuantizedMultiHeadAttention):
                    saved.append((layer, "_quantized_kernel", layer.__dict__.get("_quantized_kernel", _MISSING)))
                    object.__setattr__(layer, "_quantized_kernel", _float_kernel)
                else:
                    raise TypeError(f"bypassed: {layer.name!r} is not a quantized layer")
                for attr in _INTERNAL_QUANTIZERS:
                    quantizer = getattr(layer, attr, None)
                    if quantizer is not None:
                        hooks.install(quantizer, _passthrough)
            for quantizer in quantizers:
                hooks.install(quantizer, _passthrough)
            yield
        finally:
            for owner, attr, value in reversed(saved):
                if value is _MISSING:
                    object.__delattr__(owner, attr)
                else:
                    object.__setattr__(owner, attr, value)


_MISSING = object()


def _passthrough(inputs, *args, **kwargs):
    return tf.convert_to_tensor(inputs)


def _float_kernel(dense):
    return tf.convert_to_tensor(dense.kernel)
