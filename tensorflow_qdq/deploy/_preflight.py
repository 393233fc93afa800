"""Checks before an export: what would make the exported model wrong before it is traced.

``check_quantized`` is the one check that a model is a built Keras model with quantizers
(to_onnx, to_tflite and the TFLite conversion of a traced model all ask it). A NaN or Inf in a
weight, a folded BatchNorm or a quantizer's range would export without a word (the converters
copy constants as they are) and give NaN or garbage in the runtime; every such place is named
in one error.
"""

import keras
import numpy as np

from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper


def check_quantized(model, what):
    """Raises unless ``model`` is a built Keras model with tensorflow-qdq quantizers; returns its
    layers (nested ones included). ``what`` names the caller in the message (``"to_onnx"``)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}: model must be a Keras model from tensorflow_qdq.keras.quantize_model, "
                        f"got {type(model).__name__}")
    if not model.built:  # a subclassed model before its first call: no weights, no ranges yet
        raise ValueError(f"{what}: model {model.name!r} ({type(model).__name__}) was never called, so it has no "
                         "weights or ranges yet and its input shape is unknown: calibrate it (calibrate(model, x)) "
                         "or train it first")
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    if not any(isinstance(layer, (QuantizeAndDequantize, QuantizeWrapper, QuantizedMultiHeadAttention))
               for layer in layers):
        raise ValueError(f"{what}: model {model.name!r} has no quantizers, so there is nothing to run in integer "
                         "arithmetic; make it with tensorflow_qdq.keras.quantize_model (then calibrate or train)")
    return layers


def check_exportable(model, what):
    """Raises unless ``model`` has quantizers (``check_quantized``) and every weight, folded weight
    and constant range is finite; returns the model's layers (nested ones included)."""
    layers = check_quantized(model, what)
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
    if not isinstance(layer, QuantizeWrapper) or layer.batch_norm is None:
        return []
    weights, bias = layer.float_weights()
    found = [f"the folded {attr} of layer {layer.name!r}" for attr, w in weights.items() if _has_non_finite(w)]
    if bias is not None and _has_non_finite(bias):
        found.append(f"the folded bias of layer {layer.name!r}")
    return found


def _range_problems(layer):
    if not isinstance(layer, QuantizeAndDequantize) or layer.range_mode == "batch":
        return []
    lo, hi = layer.constant_range()
    if _has_non_finite(lo) or _has_non_finite(hi):
        return [f"the range of quantizer {layer.name!r}"]
    return []
