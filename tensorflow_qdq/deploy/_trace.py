"""Traces a quantization-aware Keras model for one runtime: constants in, runtime ops out."""

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tensorflow_qdq.keras import _deploy
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper


def check_quantized(model, what):
    """Raises unless ``model`` is a Keras model with tensorflow-qdq quantizers."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}: model must be a Keras model from tensorflow_qdq.keras.quantize_model, "
                        f"got {type(model).__name__}")
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    if not any(isinstance(layer, (QuantizeAndDequantize, QuantizeWrapper, QuantizedMultiHeadAttention))
               for layer in layers):
        raise ValueError(f"{what}: model {model.name!r} has no quantizers, so there is nothing to run in integer "
                         "arithmetic; make it with tensorflow_qdq.keras.quantize_model (then calibrate or train)")
    return layers


def input_signature(model):
    return [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def trace(model, target):
    """A concrete function of ``model`` in inference mode whose quantizers emit ``target``'s ops."""
    signature = input_signature(model)

    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    function = tf.function(serve, input_signature=signature, autograph=False)
    with _deploy.tracing_for(target):
        concrete = function.get_concrete_function()
    return function, concrete


def frozen(model, target):
    """``trace`` with every variable and captured tensor made a constant: converters see the whole
    model in one graph (tf2onnx turns captured tensors it cannot resolve, e.g. a
    Normalization layer's mean, into extra graph inputs)."""
    return convert_variables_to_constants_v2(trace(model, target)[1])
