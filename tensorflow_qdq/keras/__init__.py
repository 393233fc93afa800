"""Keras 3 layers and quantization-aware training over tensorflow-qdq's ops.

``QuantizeAndDequantize`` is a fake-quantization layer (fixed, per-batch or tracked
ranges, per tensor or per channel). Importing this module registers the layers with
Keras' serialization, so ``keras.saving.load_model`` of a ``.keras`` file that holds them
needs ``import tensorflow_qdq.keras`` first.
"""

from tensorflow_qdq.keras._layer import QuantizeAndDequantize

__all__ = ["QuantizeAndDequantize"]
