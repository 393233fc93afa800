"""Where quantizers go: the placement schemes of ``quantize_model``.

A runtime runs an op in integer arithmetic when every tensor it reads and writes carries a
quantization range. Schemes are rules over the layer graph that say which tensors get an
activation quantizer (one per tensor, shared by all its consumers):

``"default"`` (deploys to ONNX Runtime and TFLite):
  * the inputs of weighted layers (the model input included) and of merge layers (Add,
    Subtract, Multiply, Average, Maximum, Minimum, Concatenate): ONNX Runtime forms QLinearConv,
    QGemm, QLinearAdd, QLinearConcat, QLinearMul only with a DequantizeLinear on each input;
  * the outputs of weighted and merge layers, taken after the activation that runtimes fuse
    into them (a following ReLU/ReLU6, or a BatchNormalization that is folded): both runtimes
    need a quantized output to keep the op in int8, and ONNX Runtime drops a ReLU/Clip whose
    following quantizer already clips at 0 (and 6). Before an activation they do not fuse
    (swish, sigmoid, hard_swish after the conv or its folded BatchNorm) the output is
    quantized there, and after that activation as well;
  * the outputs of standalone activation layers (not softmax) that read a quantized tensor,
    with swish's sigmoid gate quantized too (TFLite's int8 LOGISTIC/HARD_SWISH/MUL, ONNX
    Runtime's QLinearSigmoid/QLinearMul need both sides quantized);
  * keras.ops add/subtract/multiply/divide nodes of a functional graph are placed like merges
    (custom layers without weights whose call is keras.ops are inlined into such nodes first:
    ``quantize_model``'s ``_Inliner``);
  * a pad or reshape in front of a quantized input reads the quantized tensor (the quantizer
    goes before it).
``"tensorrt"``:
  * TensorRT's explicit-quantization rules (and NVIDIA's TensorFlow toolkit): quantizers on
    the inputs of weighted layers and on the inputs of Add only; TensorRT propagates scales
    through the rest and fuses the outputs itself.

  * every activation quantizer is signed (TensorRT runs int8 activations, never uint8).

Under ``"default"``, a quantizer whose tensor can never be negative (after ReLU/ReLU6/sigmoid/
softmax, through pooling or reshaping) uses an unsigned grid: twice the resolution, and exact
for ReLU.
"""

import keras

from tensorflow_qdq.keras import _weights

SCHEMES = ("default", "tensorrt")

_L = keras.layers
MERGE_LAYERS = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum, _L.Concatenate)
# Layers that move values without computing new ones: a quantized input stays on its grid.
PASSTHROUGH_LAYERS = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.Reshape, _L.Flatten, _L.Permute,
    _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D, _L.GaussianDropout,
    _L.AlphaDropout, _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D,
    _L.Cropping3D, _L.UpSampling1D, _L.RepeatVector, _L.Identity, _L.ActivityRegularization,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
)
# Passthrough layers whose every output value is one of their input's values or a zero, so an
# input on a quantizer's grid gives an output on it (dropouts scale in training: not here).
GRID_KEEPING_LAYERS = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D, _L.Reshape, _L.Flatten, _L.Permute,
    _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D, _L.Cropping3D,
    _L.UpSampling1D, _L.RepeatVector, _L.Identity, _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D,
)
# Activations whose output is never negative (an unsigned grid is exact).
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "softmax", "hard_sigmoid", "exponential")
# Activations that ONNX Runtime and TFLite fuse into the op before them.
FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")
# Standalone activation layers. One that reads a quantized tensor gets its output quantized as
# well (default scheme): TFLite has int8 LOGISTIC, HARD_SWISH, TANH, LEAKY_RELU, ELU, and ONNX
# Runtime QLinearSigmoid/QLinearLeakyRelu, which need a range on both sides; without one the
# op and everything reading it (the squeeze-excite pooling and Multiply) stay float.
ACTIVATION_LAYERS = (_L.Activation, _L.ReLU, _L.LeakyReLU, _L.ELU)
# Activations that TensorFlow computes as x * sigmoid(x): the gate between the two ops needs a
# range of its own, or TFLite keeps LOGISTIC and MUL float.
GATED_ACTIVATIONS = ("silu", "swish")
# keras.ops arithmetic on KerasTensors in a functional graph (MobileNetV3's hard sigmoid is
# ``ReLU(6.)(x + 3.) * (1. / 6.)``): nodes that are operations, not layers. Placed like merges.
_ARITHMETIC_OPS = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide")
# Layers that are never quantized, each with the reason the report gives.
FLOAT_REASONS = {
    _L.LSTM: "recurrent kernels are not quantized (LSTM)",
    _L.GRU: "recurrent kernels are not quantized (GRU)",
    _L.SimpleRNN: "recurrent kernels are not quantized (SimpleRNN)",
    _L.RNN: "recurrent cells are not quantized",
    _L.Bidirectional: "recurrent kernels are not quantized (Bidirectional)",
    _L.BatchNormalization: "BatchNormalization that does not follow a foldable layer is not folded: it runs "
                           "between quantizers as its own op (TFLite: an int8 depthwise conv)",
    _L.LayerNormalization: "normalization layers stay float",
    _L.GroupNormalization: "normalization layers stay float",
    _L.Normalization: "preprocessing stays float",
}


def is_weighted(layer):
    return _weights.weight_specs(layer) is not None or isinstance(layer, _L.MultiHeadAttention)


def is_merge(layer):
    return isinstance(layer, MERGE_LAYERS) or is_arithmetic(layer)



def is_arithmetic(operation):
    """A keras.ops add/subtract/multiply/divide node of a functional graph (not a layer)."""
    kind = type(operation)
    return kind.__module__ == "keras.src.ops.numpy" and kind.__name__ in _ARITHMETIC_OPS


def scales_without_sign_change(layer):
    """A product or quotient: non-negative when its tensors are and its constants positive."""
    return isinstance(layer, _L.Multiply) or (is_arithmetic(layer) and type(layer).__name__ in (
        "Multiply", "Divide", "TrueDivide"))


def sigmoid_grid(num_bits):
    """The fixed unsigned grid of step 2^-bits on [0, 1): what TFLite's int8 LOGISTIC writes
    (scale 1/256, zero point -128). A tracked range there would make the converter add a
    requantization after LOGISTIC, a second rounding that Keras does not do."""
    return dict(range_mode="fixed", signed=False, min_value=0.0, max_value=(2.0 ** num_bits - 1) / 2.0 ** num_bits)


def quantizes_activation_output(layer, scheme):
    """Whether a standalone activation layer that reads a quantized tensor gets its output
    quantized. Not softmax: TFLite gives SOFTMAX its fixed output grid by itself."""
    return (scheme == "default" and isinstance(layer, ACTIVATION_LAYERS)
            and activation_of(layer) not in ("softmax", "linear"))


def activation_of(layer):
    """The activation a layer applies last: its ``activation`` argument, or what an
    Activation/ReLU layer computes ("relu6" for ReLU(max_value=6)); None if unknown."""
    if isinstance(layer, _L.ReLU):
        plain = float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        if not plain:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if isinstance(layer, _L.Activation):
        return _weights.activation_name(layer)
    return _weights.activation_name(layer)


def is_fusable_activation(layer):
    return isinstance(layer, (_L.ReLU, _L.Activation)) and activation_of(layer) in FUSABLE_ACTIVATIONS


def is_non_negative(layer):
    """Whether every output value of ``layer`` is >= 0 whatever its input."""
    if isinstance(layer, (_L.ReLU, _L.Activation)) or is_weighted(layer):
        return activation_of(layer) in NON_NEGATIVE_ACTIVATIONS
    return False


def averages_on_grid(layer):
    """An average pooling (not global: TFLite's MEAN may rescale): its int8 form keeps the
    input's scale, so its output is quantized again on its input's grid (``requantize``)."""
    return isinstance(layer, (_L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D))


def is_passthrough(layer):
    return isinstance(layer, PASSTHROUGH_LAYERS)


def keeps_grid(layer):
    return isinstance(layer, GRID_KEEPING_LAYERS)


def is_unfolded_norm(layer):
    """A BatchNormalization that quantize_model did not fold (DenseNet's pre-activation ones):
    under "default" its output (after a fused ReLU) is quantized, so TFLite runs it as one int8
    depthwise conv (deploy/_trace) instead of float MUL and ADD; its input is quantized like a
    weighted layer's (after an AveragePooling: on the pooled quantizer's own grid, ``requantize``,
    which TFLite's int8 pooling keeps)."""
    return isinstance(layer, _L.BatchNormalization)


def quantizes_inputs(layer, scheme):
    if isinstance(layer, _L.Embedding):
        return False  # integer token ids
    if scheme == "tensorrt":
        return is_weighted(layer) or isinstance(layer, _L.Add)
    return is_weighted(layer) or is_merge(layer) or is_unfolded_norm(layer)


def quantizes_output(layer, scheme):
    """Whether the output of ``layer`` (or of its fused tail) gets a quantizer."""
    if scheme == "tensorrt" or isinstance(layer, _L.Embedding):
        return False
    if not (is_weighted(layer) or is_merge(layer) or is_unfolded_norm(layer)):
        return False
    # Softmax: TFLite gives its output a fixed grid by itself (and ONNX Runtime keeps it float).
    return activation_of(layer) != "softmax"
