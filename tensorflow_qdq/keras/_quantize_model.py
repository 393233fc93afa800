"""quantize_model: a quantization-aware copy of a Sequential or functional Keras model."""

import numbers

import keras

from tensorflow_qdq.keras._layer import _check_num_bits
from tensorflow_qdq.keras._quantized_layers import QUANTIZED


def quantize_model(model, weight_bits=8, activation_bits=8, momentum=0.99):
    """Returns a copy of ``model`` ready for quantization-aware training.

    Every ``Dense``, ``Conv1D``, ``Conv2D`` and ``Conv3D`` layer becomes its ``Quantized*``
    counterpart: the kernel is quantized per output channel (``weight_bits``, symmetric narrow
    range, measured from the kernel at each call) and the layer's output (after its
    activation) per tensor with a tracked moving-average range (``activation_bits``; an
    unsigned grid after ReLU/sigmoid/softmax). Gradients use the masked (V4) rule. Other
    layers are copied as they are. The float weights carry over; the copy is not compiled.
    Nested Sequential/functional models are quantized too.

    Args:
      model: a ``keras.Sequential`` or functional ``keras.Model`` (subclassed models cannot
        be rebuilt layer by layer).
      weight_bits, activation_bits: bits of the weight and activation grids (1..61).
      momentum: decay of the tracked activation ranges, in [0, 1).
    """
    if not _rebuildable(model):
        raise ValueError(
            f"quantize_model needs a keras.Sequential or functional keras.Model, got {type(model).__name__}; "
            "for a subclassed model, use tensorflow_qdq.keras.QuantizedDense/QuantizedConv2D/... in its definition"
        )
    options = dict(
        weight_bits=_check_num_bits(weight_bits, True),
        activation_bits=_check_num_bits(activation_bits, True),
        momentum=_check_momentum(momentum),
    )
    copy = _clone(model, options)
    _copy_weights(model, copy)
    return copy


def _check_momentum(momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum!r} is out of range: must be a number in [0, 1)")
    return float(momentum)


def _rebuildable(model):
    # Functional models are instances of Keras' (private) Functional class.
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and any(c.__name__ == "Functional" for c in type(model).__mro__)
    )


def _clone(model, options):
    def clone_layer(layer):
        if _rebuildable(layer):
            return _clone(layer, options)
        quantized = QUANTIZED.get(type(layer))
        if quantized is None:
            return layer.__class__.from_config(layer.get_config())
        return quantized.from_config({**layer.get_config(), **options})

    return keras.models.clone_model(model, clone_function=clone_layer)


def _copy_weights(source, target):
    """Float weights layer by layer (clone_model keeps the order and the names of layers that
    hold weights); quantizer variables keep their start values."""
    if len(source.layers) != len(target.layers):
        raise RuntimeError(f"the copy of {source.name} has {len(target.layers)} layers, not {len(source.layers)}")
    for layer, twin in zip(source.layers, target.layers):
        if not layer.weights:
            continue
        if twin.name != layer.name:
            raise RuntimeError(f"the copy of layer {layer.name} is named {twin.name}")
        if _rebuildable(layer):
            _copy_weights(layer, twin)
        elif type(layer) in QUANTIZED:
            twin.kernel.assign(layer.kernel)
            if layer.bias is not None:
                twin.bias.assign(layer.bias)
        else:
            twin.set_weights(layer.get_weights())
