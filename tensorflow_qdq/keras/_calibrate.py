"""calibrate: activation ranges from data, for QAT's start or for post-training quantization."""

import sys

import numpy as np
import tensorflow as tf

from tensorflow_qdq._contract import check_choice
from tensorflow_qdq.keras import _observer
from tensorflow_qdq.keras._calibrators import CALIBRATION_METHODS, make_calibrator
from tensorflow_qdq.keras._layer import QuantizeAndDequantize


def calibrate(model, data, method="max", num_batches=None, *, batch_size=32, verbose=True, **options):
    """Sets every tracked or learned activation range of ``model`` from ``data``; returns
    {quantizer name: (lo, hi)} (a learned range stores the step of that range).

    The model runs in inference mode with its activation quantizers passing data through
    unquantized (as ModelOpt and PyTorch calibrate): each quantizer observes the float tensor it
    will quantize, and its calibrator picks the range. Weight quantizers are unaffected. Use it
    before quantization-aware training (ranges start from data instead of [-6, 6]) or alone for
    post-training quantization: calibrate, then export.

    Args:
      model: a model from ``quantize_model`` (or any model with ``QuantizeAndDequantize`` layers
        whose ``range_mode`` is ``"tracked"`` or ``"learned"``).
      data: a NumPy array or tensor of inputs (a list of them for a model with several
        inputs), split into ``batch_size`` batches; or a ``tf.data.Dataset`` or any iterable of
        batches; a batch may be an ``(x, y)`` or
        ``(x, y, sample_weight)`` tuple, of which ``x`` is used.
      method: ``"max"`` (min/max of everything seen), ``"percentile"`` (``percentile=99.99`` of
        |x|), ``"mse"`` (range minimizing the quantization error) or ``"entropy"`` (TensorRT's
        KL-divergence method).
      num_batches: stop after this many batches (None: all of ``data``).
      verbose: show a progress bar.
      **options: the method's options (``percentile``, ``num_bins``).
    """
    every = list(_quantizers(model))
    quantizers = [layer for layer in every if layer.range_mode in ("tracked", "learned")]
    if not quantizers:
        if every:  # e.g. a subclassed model's own QuantizeAndDequantize() layers: range_mode="batch"
            modes = sorted({layer.range_mode for layer in every})
            raise ValueError(f"calibrate: the quantizers of model {model.name!r} have range_mode "
                             f"{', '.join(map(repr, modes))}, which calibration does not set; create them with "
                             "QuantizeAndDequantize(range_mode='tracked') (or 'learned') to calibrate them")
        raise ValueError(f"calibrate: model {model.name!r} has no QuantizeAndDequantize layer with a tracked or "
                         "learned range; make it with tensorflow_qdq.keras.quantize_model first")
    check_choice("method", method, CALIBRATION_METHODS)
    if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) < 1):
        raise ValueError(f"num_batches={num_batches!r} must be None or a positive number of batches")
    calibrators = {id(q): make_calibrator(method, q.signed, q.num_bits, narrow_range=q.narrow_range, **options)
                   for q in quantizers}

    def observe(quantizer, tensor):
        calibrator = calibrators.get(id(quantizer))
        if calibrator is not None:
            calibrator.observe(np.asarray(tensor, np.float32))

    batches = _batches(data, batch_size)
    total = num_batches if num_batches is not None else _length(data, batch_size)
    seen = 0
    with _observer.calibration_pass(observe):
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            _check_batch(model, batch)
            if not model.built:
                # Built with the observers off: Keras then records the input shapes (the
                # exporters read them from a subclassed model); with them on, its symbolic build
                # trace fails on the observers and no shape is recorded.
                with _observer.calibration_pass(None):
                    model(batch, training=False)
            _observer.remember_samples(model, batch)  # the exporters verify on these rows
            model(batch, training=False)  # eager: each quantizer hands over its float input
            seen += 1
            if verbose:
                _progress(seen, total, method)
    if verbose:
        sys.stdout.write("\n")
    if seen == 0:
        raise ValueError("calibrate: data holds no batch")
    ranges = {}
    for quantizer in quantizers:
        lo, hi = calibrators[id(quantizer)].compute_range()
        quantizer.set_range(lo, hi)
        ranges[quantizer.name] = (lo, hi)
    return ranges


def _quantizers(model):
    seen = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, QuantizeAndDequantize) and id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def _first(batch):
    return batch[0] if isinstance(batch, tuple) else batch


def _arrays(data):
    """A NumPy array or tensor, or a list/tuple of them (one per model input), else None."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        return data
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (np.ndarray, tf.Tensor)) for d in data):
        return list(data)
    return None


def _batches(data, batch_size):
    arrays = _arrays(data)
    if arrays is not None:
        n = len(tf.nest.flatten(arrays)[0])
        for start in range(0, n, batch_size):
            yield tf.nest.map_structure(lambda a: a[start:start + batch_size], arrays)
        return
    for batch in data:
        yield _first(batch)


def _length(data, batch_size):
    arrays = _arrays(data)
    if arrays is not None:
        return -(-len(tf.nest.flatten(arrays)[0]) // batch_size)
    if isinstance(data, tf.data.Dataset):
        n = int(data.cardinality())
        return n if n >= 0 else None
    try:
        return len(data)
    except TypeError:
        return None


def _check_batch(model, batch):
    """A batch of the wrong shape gets an error naming the expected shape, not a deep Keras trace."""
    expected = _input_shapes(model)
    if expected is None:  # a subclassed model not yet called: the first batch builds it
        return
    got = [tuple(np.shape(b)) for b in tf.nest.flatten(batch)]
    if len(expected) != len(got) or any(
        len(e) != len(g) or any(a is not None and a != b for a, b in zip(e[1:], g[1:])) for e, g in zip(expected, got)
    ):
        raise ValueError(f"calibrate: a batch of shape {got if len(got) > 1 else got[0]} does not fit the model's "
                         f"input {expected if len(expected) > 1 else expected[0]} (None = any size)")


def _input_shapes(model):
    """The input shapes a model takes (the batch size free), or None when they are unknown: a
    subclassed model has no ``inputs``, only the shapes Keras recorded at its first call."""
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if inputs:
        return [tuple(t.shape) for t in inputs]
    recorded = getattr(model, "_build_shapes_dict", None)
    if not recorded:
        return None
    shapes = []
    for shape in recorded.values():
        nested = isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple))
        if nested:  # one argument holding a list of inputs
            shapes.extend(tuple(s) for s in shape)
        else:
            shapes.append(tuple(shape))
    return [(None,) + s[1:] for s in shapes]


def _progress(done, total, method):
    width = 30
    if total:
        filled = int(width * min(done, total) / total)
        bar = "=" * filled + "." * (width - filled)
        sys.stdout.write(f"\rcalibrate ({method}) {done}/{total} [{bar}]")
    else:
        sys.stdout.write(f"\rcalibrate ({method}) {done} batches")
    sys.stdout.flush()
