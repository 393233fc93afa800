"""Dense and Conv layers whose kernel and output pass through QuantizeAndDequantize.

Each keeps the float layer's variables (kernel, bias) unchanged and adds two quantizers:
the kernel per output channel (last axis of the kernel, symmetric narrow range, range
measured from the kernel at every call) and the output per tensor with a tracked range.
"""

import keras
from keras import ops

from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import _add_along_channels

# Outputs of these activations are never negative: an unsigned grid doubles the resolution.
_NON_NEGATIVE = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid")


class _QuantizedMixin:
    """Adds the quantizers and the quantized call to a Dense/Conv subclass, which supplies
    ``_linear(inputs, kernel)`` (the layer's product before bias and activation)."""

    def __init__(self, *args, weight_bits=8, activation_bits=8, momentum=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.momentum = momentum
        activation = keras.activations.serialize(self.activation) if self.activation is not None else None
        self.kernel_quantizer = QuantizeAndDequantize(
            num_bits=weight_bits, axis=-1, narrow_range=True, range_mode="batch",
            dtype=self.dtype_policy, name="kernel_quantizer",
        )
        self.output_quantizer = QuantizeAndDequantize(
            num_bits=activation_bits, range_mode="tracked", momentum=momentum,
            signed=activation not in _NON_NEGATIVE, dtype=self.dtype_policy, name="output_quantizer",
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel_quantizer.build(self.kernel.shape)
        self.output_quantizer.build(self.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        outputs = self._linear(inputs, self.kernel_quantizer(self.kernel))
        if self.bias is not None:
            outputs = _add_along_channels(outputs, ops.cast(self._broadcast_bias(), outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return self.output_quantizer(outputs, training=training)

    def _broadcast_bias(self):
        if getattr(self, "data_format", "channels_last") == "channels_first":
            return ops.reshape(self.bias, (1, -1) + (1,) * self.rank)
        return self.bias

    def get_config(self):
        return {
            **super().get_config(),
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "momentum": self.momentum,
        }


@keras.saving.register_keras_serializable(package="tensorflow_qdq")
class QuantizedDense(_QuantizedMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a per-channel quantized kernel and a quantized output."""

    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)


def _quantized_conv(base):
    class QuantizedConv(_QuantizedMixin, base):
        def _linear(self, inputs, kernel):
            return self.convolution_op(inputs, kernel)

    QuantizedConv.__name__ = QuantizedConv.__qualname__ = f"Quantized{base.__name__}"
    QuantizedConv.__doc__ = (f"``keras.layers.{base.__name__}`` with a per-channel quantized kernel "
                             "and a quantized output.")
    # Registered after renaming: Keras keys the registration on the class name.
    return keras.saving.register_keras_serializable(package="tensorflow_qdq")(QuantizedConv)


QuantizedConv1D = _quantized_conv(keras.layers.Conv1D)
QuantizedConv2D = _quantized_conv(keras.layers.Conv2D)
QuantizedConv3D = _quantized_conv(keras.layers.Conv3D)

# The float layer types quantize_model replaces, exactly (subclasses may compute otherwise).
QUANTIZED = {
    keras.layers.Dense: QuantizedDense,
    keras.layers.Conv1D: QuantizedConv1D,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.Conv3D: QuantizedConv3D,
}
