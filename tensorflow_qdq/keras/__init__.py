"""Keras 3 layers and quantization-aware training over tensorflow-qdq's ops.

``QuantizeAndDequantize`` is a fake-quantization layer (fixed, per-batch or tracked
ranges, per tensor or per channel); ``QuantizeWrapper`` quantizes a weighted layer's weights
per output channel (with an optional BatchNorm fold); ``quantize_model`` turns a Sequential or
functional model into a quantization-aware copy, ``calibrate`` sets its activation ranges
from data, and ``quantization_report`` lists what was quantized. Importing this module
registers the layers with Keras' serialization, so ``keras.saving.load_model`` of a
``.keras`` file that holds them needs ``import tensorflow_qdq.keras`` first.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"tensorflow_qdq.keras needs Keras' TensorFlow backend, but Keras runs on {_keras.backend.backend()!r}; "
        "set KERAS_BACKEND=tensorflow before importing keras"
    )

from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention  # noqa: E402
from tensorflow_qdq.keras._calibrate import calibrate  # noqa: E402
from tensorflow_qdq.keras._layer import QuantizeAndDequantize  # noqa: E402
from tensorflow_qdq.keras._placement import SCHEMES  # noqa: E402
from tensorflow_qdq.keras._quantize_model import quantize_model  # noqa: E402
from tensorflow_qdq.keras._quantized_layers import (  # noqa: E402
    QuantizedConv1D,
    QuantizedConv2D,
    QuantizedConv3D,
    QuantizedDense,
)
from tensorflow_qdq.keras._report import ReportRow, quantization_report, report_summary  # noqa: E402
from tensorflow_qdq.keras._wrapper import QuantizeWrapper  # noqa: E402

__all__ = [
    "QuantizeAndDequantize",
    "QuantizeWrapper",
    "QuantizedConv1D",
    "QuantizedConv2D",
    "QuantizedConv3D",
    "QuantizedDense",
    "QuantizedMultiHeadAttention",
    "ReportRow",
    "SCHEMES",
    "calibrate",
    "quantization_report",
    "quantize_model",
    "report_summary",
]
