"""Verified exports: the runtime runs what we exported, on sample inputs, next to Keras.

An export that computes something else than the Keras model it came from must never leave the
library without an error. ``to_onnx`` and ``to_tflite`` hand their result to
``verify_export``, which runs it in the runtime that deploys it (ONNX Runtime with all
optimizations, the TFLite interpreter with its default delegates) and compares every output
with the Keras model's inference output on the same inputs.

The bound (docs/DEPLOY.md, "Verified exports"): an output agrees when its correlation with the
Keras output is at least ``MIN_CORRELATION``, or when no element differs by more than
``MAX_STEPS`` steps of the grid the runtime dequantizes it from (for a float output:
``FLOAT_RTOL`` of the largest Keras value). Quantized models legitimately differ by a step
here and there (the runtimes sum int8 products exactly and requantize once; Keras computes in
float32), which keeps correlation far above the bound; a wrong export falls far below it.

When an output disagrees, the model is exported again with every quantized tensor (the output
of each activation quantizer) as an extra output, and Keras evaluates its graph teacher-forced:
each quantized tensor recomputed from the runtime's own upstream quantized tensors. The first
stretch of the graph whose result parts from the runtime's is named (``ExportMismatchError``);
nested models are compared inside (``_flatten``).
If every stretch agrees, the export computes the model's function and the end-to-end
difference is float32 rounding amplified by depth (deep untrained squeeze-excite networks show
it): that is a warning (``ExportMismatchWarning``), not an error.
"""

import dataclasses
import warnings

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq.deploy import _trace
from tensorflow_qdq.deploy._errors import ExportMismatchError, ExportMismatchWarning
from tensorflow_qdq.keras import _observer

MIN_CORRELATION = 0.99
MAX_STEPS = 2
FLOAT_RTOL = 1e-3
SAMPLES = 16  # rows of the sample inputs (data passed in is cut to this)
SEGMENT_FLIPS = 1e-3  # share of a stretch's elements allowed more than a step off (rounding flips)

MODES = ("raise", "warn")


def parse(verify, verify_data):
    """(mode, data) from the exporters' ``verify``/``verify_data`` arguments: mode is
    "raise", "warn" or None (no check); ``verify`` may itself be the data."""
    if verify is False:
        return None, None
    if verify is True or verify is None:
        return "raise", verify_data
    if isinstance(verify, str):
        if verify not in ("warn", "raise"):
            raise ValueError(f"verify={verify!r} is not one of True, False, 'warn', 'raise' or sample inputs")
        return verify, verify_data
    if verify_data is not None:
        raise ValueError("verify= is sample data and verify_data= is given too: pass the data once")
    return "raise", verify


@dataclasses.dataclass(frozen=True)
class Agreement:
    correlation: float  # nan where either side is constant
    max_difference: float
    step: float  # the runtime's output grid step, or None
    tolerance: float  # what max_difference is allowed without the correlation

    @property
    def ok(self):
        return self.max_difference <= self.tolerance or self.correlation >= MIN_CORRELATION

    def describe(self):
        corr = "undefined (constant output)" if np.isnan(self.correlation) else f"{self.correlation:.4f}"
        diff = f"max |difference| {self.max_difference:.4g}"
        if self.step:
            diff += f" ({self.max_difference / self.step:.1f} output steps)"
        return f"correlation {corr}, {diff}"


def agreement(expected, got, step=None):
    """How well a runtime output ``got`` matches the Keras output ``expected``."""
    k = np.asarray(expected, np.float64).reshape(-1)
    r = np.asarray(got, np.float64).reshape(-1)
    if k.shape != r.shape:
        return Agreement(float("nan"), float("inf"), step, 0.0)
    if not np.all(np.isfinite(r)):
        return Agreement(float("nan"), float("inf"), step, 0.0)
    scale = float(np.max(np.abs(k))) if k.size else 0.0
    tolerance = MAX_STEPS * step if step else FLOAT_RTOL * scale
    diff = float(np.max(np.abs(k - r))) if k.size else 0.0
    correlation = float("nan")
    if k.size > 1 and np.std(k) > 0 and np.std(r) > 0:
        correlation = float(np.corrcoef(k, r)[0, 1])
    return Agreement(correlation, diff, step, tolerance)


def verify_export(model, run, *, what, runtime, mode, data, probe=None):
    """Compares ``run`` (see ``_sessions``) with ``model`` on sample inputs; raises
    ``ExportMismatchError`` (``mode="raise"``) or warns (``"warn"``) when an output parts
    from Keras past the bound. ``probe(keras_model) -> run`` exports another model the same
    way, to find the first quantized tensor where they part."""
    if mode is None:
        return
    inputs = sample_inputs(model, data)
    expected = keras_outputs(model, inputs)
    bad = [i for i, k in enumerate(expected) if not np.all(np.isfinite(k))]
    if bad:
        _report(mode, f"{what}: the Keras model itself outputs NaN or Inf on the sample inputs (output {bad[0]}), "
                      "so its export cannot be verified; check the model's weights and ranges, or pass "
                      "verify_data= with inputs it handles")
        return
    got, steps = run(inputs)
    results = [agreement(k, r, s) for k, r, s in zip(expected, got, steps)]
    failing = [(i, a) for i, a in enumerate(results) if not a.ok]
    if len(got) != len(expected):
        failing = failing or [(len(got), Agreement(float("nan"), float("inf"), None, 0.0))]
    if not failing:
        return
    index, result = failing[0]
    message = (f"{what}: {runtime}'s output {index} disagrees with the Keras model on {_rows(inputs)} sample inputs: "
               f"{result.describe()}; the bound is correlation >= {MIN_CORRELATION} or every element within "
               f"{_bound_text(result)}.")
    if probe is None or not getattr(model, "_nodes_by_depth", None):
        _report(mode, message + _ADVICE)
        return
    try:
        parted = _first_parting_segment(model, probe, inputs)
    except Exception as exc:  # the diagnosis must not hide the finding it explains
        _report(mode, f"{message} (Comparing segment by segment failed too: {type(exc).__name__}: {exc}.){_ADVICE}")
        return
    if parted is not None:
        _report(mode, f"{message} {parted}{_ADVICE}")
        return
    # Every segment computes what Keras computes from the same quantized tensors: the end-to-end
    # difference is float rounding (a value one step off here and there) grown by depth.
    warnings.warn(f"{message} Segment by segment the export agrees with Keras (each stretch between two "
                  "activation quantizers, fed the runtime's own quantized tensors, reproduces the next one within "
                  "a step): the difference is float32 rounding that the model's depth amplifies, as another float32 "
                  "evaluation of the Keras model (e.g. XLA-compiled) shows too. Exported.",
                  ExportMismatchWarning, stacklevel=3)


_ADVICE = (" The exported model computes something else than the Keras model: please report it with the model. "
           "verify='warn' exports it anyway, verify=False skips the check.")


def _bound_text(result):
    return f"{MAX_STEPS} output steps" if result.step else f"{FLOAT_RTOL:g} of the largest output value"


def _report(mode, message):
    if mode == "warn":
        warnings.warn(message, ExportMismatchWarning, stacklevel=3)
    else:
        raise ExportMismatchError(message)


def _rows(inputs):
    return len(inputs[0]) if inputs else 0


# ---------------------------------------------------------------------------- sample inputs


def sample_inputs(model, data=None):
    """A list of arrays, one per model input, of at most ``SAMPLES`` rows: from ``data`` (an
    array, a list of arrays, or an iterable of batches, ``(x, y)`` tuples allowed), else the
    batches ``calibrate`` remembered, else drawn from the input spec."""
    if data is None:
        data = _observer.remembered_samples(model)
    if data is not None:
        return _take(model, data)
    return _drawn(model)


def _as_list(batch):
    if isinstance(batch, dict):
        return list(batch.values())
    return list(batch) if isinstance(batch, (list, tuple)) else [batch]


def _take(model, data):
    count = len(_trace.input_signature(model))
    if isinstance(data, (list, tuple)) and len(data) == count and all(hasattr(d, "shape") for d in data):
        return [np.asarray(d)[:SAMPLES] for d in data]
    if hasattr(data, "shape"):
        return [np.asarray(data)[:SAMPLES]]
    parts = [[] for _ in range(count)]
    rows = 0
    for batch in data:  # a dataset or iterable of batches
        if isinstance(batch, tuple) and len(batch) in (2, 3) and count == 1:
            batch = batch[0]
        elif isinstance(batch, tuple) and count > 1 and len(batch) in (2, 3) and isinstance(batch[0], (list, tuple)):
            batch = batch[0]
        for part, array in zip(parts, _as_list(batch)):
            part.append(np.asarray(array))
        rows += len(parts[0][-1])
        if rows >= SAMPLES:
            break
    if not parts[0]:
        raise ValueError("verify_data holds no batch")
    return [np.concatenate(p)[:SAMPLES] for p in parts]


def _drawn(model):
    """Inputs drawn from the model's input spec (seeded): a float input uniform over the range
    of the quantizer that reads it (the range calibration or training gave it), else standard
    normal; an integer input uniform over the vocabulary of the Embedding that reads it."""
    rng = np.random.default_rng(0)
    arrays = []
    # A subclassed model has no input tensors: its signature's specs (no layer reads a spec).
    for tensor in _trace.functional_inputs(model) or _trace.input_signature(model):
        shape = (SAMPLES,) + tuple(8 if d is None else int(d) for d in tensor.shape[1:])
        readers = [layer for layer, _ in _trace.readers_of(model, tensor)]
        dtype = tf.as_dtype(tensor.dtype).name
        if "int" in dtype:
            vocab = min((r.input_dim for r in readers if isinstance(r, keras.layers.Embedding)), default=2)
            arrays.append(rng.integers(0, vocab, shape).astype(dtype))
            continue
        span = _quantizer_span(readers)
        if span is None:
            values = rng.standard_normal(shape)
        else:
            values = rng.uniform(span[0], span[1], shape)
        arrays.append(values.astype(dtype))
    return arrays


def _quantizer_span(readers):
    from tensorflow_qdq.keras._layer import QuantizeAndDequantize

    for layer in readers:
        if isinstance(layer, QuantizeAndDequantize) and layer.range_mode != "batch":
            lo, hi = layer.constant_range()
            lo, hi = float(np.min(lo)), float(np.max(hi))
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                return lo, hi
    return None


def keras_outputs(model, inputs):
    """The Keras model's inference outputs, flattened in the order the traced function has them."""
    out = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return [np.asarray(t) for t in keras.tree.flatten(out)]


# ---------------------------------------------------------------------------- locating


def _first_parting_segment(model, probe, inputs):
    """Exports ``model`` once more with every quantized tensor (an activation quantizer's output)
    as an extra output, then evaluates the Keras graph layer by layer *teacher-forced*: each
    quantized tensor is recomputed by Keras from the runtime's own upstream quantized tensors
    and compared with the runtime's, and the runtime's value is carried on. Rounding differences
    then cannot accumulate, and a stretch of the graph that the runtime computes differently
    shows at once. Returns a text naming the first quantizer (and the layer feeding it) where
    they part, or None when every stretch agrees."""
    from keras.src.models.functional import operation_fn

    from tensorflow_qdq.deploy import _flatten

    model = _flatten.flat_copy(model) or model  # the quantizers of nested models within reach
    sites = _quantized_tensors(model)
    outputs = keras.tree.flatten(model.outputs)
    tap = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs,
                      [tensor for _, _, tensor in sites] + list(outputs))
    got, steps = probe(tap)(inputs)
    runtime = {id(tensor): value for (_, _, tensor), value in zip(sites, got)}
    site_of = {id(tensor): (quantizer, source) for quantizer, source, tensor in sites}
    values = {id(t): tf.convert_to_tensor(x) for t, x in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(values)
            computed = keras.tree.flatten(operation_fn(node.operation, training=False)(*args, **kwargs))
            for tensor, value in zip(node.outputs, computed):
                values[id(tensor)] = value
                if id(tensor) not in site_of:
                    continue
                quantizer, source = site_of[id(tensor)]
                found = _segment_agreement(np.asarray(value), runtime[id(tensor)], _grid_step(quantizer))
                if found is not None:
                    after = ("" if source is None else
                             f", after layer {_flatten.report_name(source)!r} ({type(source).__name__})")
                    return (f"Fed the runtime's own quantized tensors, Keras and the runtime first part at the output "
                            f"of quantizer {_flatten.report_name(quantizer)!r}{after}: {found}.")
                values[id(tensor)] = tf.convert_to_tensor(runtime[id(tensor)])  # carry the runtime's on
    for i, (tensor, value, step) in enumerate(zip(outputs, got[len(sites):], steps[len(sites):])):
        found = agreement(np.asarray(values[id(tensor)]), value, step)
        if not found.ok:
            return (f"Fed the runtime's own quantized tensors, Keras and the runtime part after the last activation "
                    f"quantizer, in the layers that lead to output {i}: {found.describe()}.")
    return None


def _grid_step(quantizer):
    from tensorflow_qdq import _grid

    lo, hi = quantizer.constant_range()
    return float(np.max(_grid.step(lo, hi, quantizer.num_bits, quantizer.signed, quantizer.narrow_range)))


def _segment_agreement(expected, got, step):
    """None when one stretch of the graph agrees: all but ``SEGMENT_FLIPS`` of its elements
    within one grid step. The few others are rounding flips: a float32 sum on the other side of
    a rounding boundary, whose step a steep op inside the stretch (a sigmoid after a quantizer
    inside the layer) may widen to several steps of the next grid. A stretch computed wrongly
    parts on a large share of its elements. Else a description."""
    k = np.asarray(expected, np.float64).reshape(-1)
    r = np.asarray(got, np.float64).reshape(-1)
    if k.shape != r.shape:
        return f"shapes {k.shape} and {r.shape} differ"
    diff = np.abs(k - r) / max(step, np.finfo(np.float32).tiny)
    if np.all(np.isfinite(diff)) and np.mean(diff > 1.5) <= SEGMENT_FLIPS:
        return None
    far = float(np.mean(~(diff <= 1.5))) if diff.size else 0.0
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    return f"{far:.2%} of the elements more than one step apart, the worst {worst:.0f} steps"


def _quantized_tensors(model):
    """(quantizer, the layer that feeds it, its output tensor) for each activation quantizer
    call at the model's top level, in graph order (inputs first)."""
    from tensorflow_qdq.keras._layer import QuantizeAndDequantize

    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not nodes_by_depth:
        return []
    sites = []
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            layer = node.operation
            if not isinstance(layer, QuantizeAndDequantize):
                continue
            args = node.arguments.keras_tensors
            source = args[0]._keras_history.operation if args else None
            if isinstance(source, keras.layers.InputLayer):
                source = None
            sites.extend((layer, source, t) for t in node.outputs)
    return sites
