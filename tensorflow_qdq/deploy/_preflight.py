"""Checks before an export: what would make the exported model wrong before it is traced.

A NaN or Inf in a weight, a folded BatchNorm or a quantizer's range would export without a
word (the converters copy constants as they are) and give NaN or garbage in the runtime; every
such place is named in one error.
"""

import numpy as np

from tensorflow_qdq.deploy import _trace


def check_exportable(model, what):
    """Raises unless ``model`` has quantizers and every weight, folded weight and constant range
    is finite; returns the model's layers (nested ones included)."""
    layers = _trace.check_quantized(model, what)
    problems = [f"weight {w.path!r}" for w in model.weights if _has_non_finite(w)]
    for layer in layers:
        problems.extend(_folded_problems(layer))
        problems.extend(_range_problems(layer))
    if problems:
        raise ValueError(f"{what}: model {model.name!r} holds NaN or Inf values in {'; '.join(problems)}; an export "
                         "would carry them into the runtime. Fix or retrain those layers (a diverged QAT run, or a "
                         "BatchNorm with a negative moving variance) and export again")
    return layers


def _has_non_finite(values):
    array = np.asarray(values)
    return array.dtype.kind == "f" and not np.all(np.isfinite(array))


def _folded_problems(layer):
    from tensorflow_qdq.keras._wrapper import QuantizeWrapper

    if not isinstance(layer, QuantizeWrapper) or layer.batch_norm is None:
        return []
    weights, bias = layer.float_weights()
    found = [f"the folded {attr} of layer {layer.name!r}" for attr, w in weights.items() if _has_non_finite(w)]
    if bias is not None and _has_non_finite(bias):
        found.append(f"the folded bias of layer {layer.name!r}")
    return found


def _range_problems(layer):
    from tensorflow_qdq.keras._layer import QuantizeAndDequantize

    if not isinstance(layer, QuantizeAndDequantize) or layer.range_mode == "batch":
        return []
    lo, hi = layer.constant_range()
    if _has_non_finite(lo) or _has_non_finite(hi):
        return [f"the range of quantizer {layer.name!r}"]
    return []
