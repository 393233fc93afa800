"""tensorflow-qdq: the quantize-and-dequantize op family as custom TensorFlow ops.

CPU (and CUDA) kernels for bfloat16, half, float32 and float64, bit-identical to
TensorFlow's kernels where those are right, with TensorFlow's bugs fixed where
they are not (see the README). Importing the package loads the op library and
registers the gradients.
"""

from tensorflow_qdq import _gradients  # noqa: F401 - registers gradients
from tensorflow_qdq import raw_ops
from tensorflow_qdq._api import quantize_and_dequantize, quantize_and_dequantize_v2, quantize_and_dequantize_v4
from tensorflow_qdq._loader import LibraryError

__version__ = "0.1.0"

__all__ = [
    "LibraryError",
    "quantize_and_dequantize",
    "quantize_and_dequantize_v2",
    "quantize_and_dequantize_v4",
    "raw_ops",
]
