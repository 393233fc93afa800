"""Keras 3 layers and quantization-aware training over tensorflow-qdq's ops.

``QuantizeAndDequantize`` is a fake-quantization layer (fixed, per-batch or tracked
ranges, per tensor or per channel); ``quantize_model`` turns a Sequential or functional
model into a quantization-aware copy built from ``QuantizedDense``/``QuantizedConv*``.
Importing this module registers the layers with Keras' serialization, so
``keras.saving.load_model`` of a ``.keras`` file that holds them needs
``import tensorflow_qdq.keras`` first.
"""

from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._quantize_model import quantize_model
from tensorflow_qdq.keras._quantized_layers import QuantizedConv1D, QuantizedConv2D, QuantizedConv3D, QuantizedDense

__all__ = [
    "QuantizeAndDequantize",
    "QuantizedConv1D",
    "QuantizedConv2D",
    "QuantizedConv3D",
    "QuantizedDense",
    "quantize_model",
]
