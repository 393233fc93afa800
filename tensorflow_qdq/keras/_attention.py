"""MultiHeadAttention with quantized projections.

Its four EinsumDense projections (query, key, value, output) get per-output-channel weight
quantization, and the attention context gets a tracked activation quantizer before the
output projection; ``quantize_model`` quantizes the layer's inputs in the graph. The two
attention products (scores and the weighted sum of values) stay float: no runtime we
export to runs them as integer kernels from QDQ graphs.
"""

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq._contract import check_num_bits
from tensorflow_qdq.keras import _target, _weights
from tensorflow_qdq.keras._layer import QuantizeAndDequantize

_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


@keras.saving.register_keras_serializable(package="tensorflow_qdq")
class QuantizedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with quantized projection weights and context."""

    def __init__(self, *args, weight_bits=8, activation_bits=8, activation_range="tracked", range_update="delayed",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits = check_num_bits(weight_bits, _weights.WEIGHT_SIGNED)
        self.activation_bits = check_num_bits(activation_bits, True)
        self.activation_range, self.range_update = activation_range, range_update
        self.context_quantizer = QuantizeAndDequantize(num_bits=self.activation_bits, range_mode=activation_range,
                                                       range_update=range_update, name="context_quantizer")

    @classmethod
    def from_float(cls, layer, weight_bits=8, activation_bits=8, activation_range="tracked", range_update="delayed"):
        return cls.from_config({**layer.get_config(), "weight_bits": weight_bits, "activation_bits": activation_bits,
                                "activation_range": activation_range, "range_update": range_update})

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self.context_quantizer.build((None,))

    def copy_float_weights(self, layer):
        for name in _PROJECTIONS:
            getattr(self, name).set_weights(getattr(layer, name).get_weights())

    def _quantized_kernel(self, dense):
        axes = _weights.weight_specs(dense)[0].channel_axes
        target = _target.current_target()
        if target is None:
            return _weights.quantize_weight(dense.kernel, axes, self.weight_bits)
        with tf.init_scope():
            kernel = np.asarray(dense.kernel, np.float32)
        return target.weight(kernel, tuple(a % kernel.ndim for a in axes), self.weight_bits, dense)

    def call(self, query, value, key=None, training=None, **kwargs):
        dense_layers = [getattr(self, name) for name in _PROJECTIONS]
        kernels = [self._quantized_kernel(dense) for dense in dense_layers]
        output_dense, context = self._output_dense, self.context_quantizer

        def output_projection(x, **call_kwargs):
            return output_dense(context(x, training=training), **call_kwargs)

        with _weights.swapped(dense_layers[0], {"kernel": kernels[0]}), \
                _weights.swapped(dense_layers[1], {"kernel": kernels[1]}), \
                _weights.swapped(dense_layers[2], {"kernel": kernels[2]}), \
                _weights.swapped(dense_layers[3], {"kernel": kernels[3]}), \
                _weights.swapped(self, {"_output_dense": output_projection}):
            return super().call(query, value, key=key, training=training, **kwargs)

    def get_config(self):
        return {**super().get_config(), "weight_bits": self.weight_bits, "activation_bits": self.activation_bits,
                "activation_range": self.activation_range, "range_update": self.range_update}
