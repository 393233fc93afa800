"""Which weights of a layer are quantized, along which output-channel axes, and how.

One table (``weight_specs``) says, for each family of Keras layers, the attributes that
hold its weights and the axes of each weight that index output channels; one function
(``quantize_weight``) quantizes a weight per output channel. The wrapper, the BatchNorm
fold and the exporters all read them, so a new layer family is one entry here.
"""

import contextlib

import keras
from keras import ops

from tensorflow_qdq import _api
from tensorflow_qdq._grid import WEIGHT_NARROW_RANGE, WEIGHT_SIGNED

# Weights are quantized on the weight grid (tensorflow_qdq._grid), with the range measured from
# the weight itself at every call.


class WeightSpec:
    """A weight attribute of a layer and the axes of that weight which index output channels."""

    def __init__(self, attr, channel_axes, folds_batch_norm=False):
        self.attr = attr
        self.channel_axes = tuple(channel_axes)
        self.folds_batch_norm = folds_batch_norm  # the weight a following BatchNorm scales

    def axes(self, rank):
        return tuple(a % rank for a in self.channel_axes)


def _einsum_channel_axes(layer):
    """EinsumDense: the kernel axes that also appear in the output are its output channels."""
    inputs_and_kernel, output = layer.equation.split("->")
    kernel = inputs_and_kernel.split(",")[1]
    return tuple(i for i, letter in enumerate(kernel) if letter in output)


def weight_specs(layer):
    """The quantized weights of ``layer`` (a list of WeightSpec), or None if it has none we know.

    Matched with isinstance, so subclasses of the built-in layers are covered as long as their
    ``call`` reads the same attributes (which is what the wrapper swaps).
    """
    L = keras.layers
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        # depthwise kernel (..., in, multiplier): each (in, m) pair is one intermediate channel
        return [WeightSpec("depthwise_kernel", (-2, -1)), WeightSpec("pointwise_kernel", (-1,), True)]
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return [WeightSpec("kernel", (-2, -1), True)]
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return [WeightSpec("kernel", (-2,), True)]  # kernel (..., out, in)
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense)):
        return [WeightSpec("kernel", (-1,), True)]
    if isinstance(layer, L.EinsumDense):
        return [WeightSpec("kernel", _einsum_channel_axes(layer))]
    if isinstance(layer, L.Embedding):
        return [WeightSpec("embeddings", (0,))]  # one scale per token row
    return None


def activation_name(layer):
    """The registered name of the layer's activation ("relu", "linear", ...), or None."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", None)


def output_channel_axis(layer):
    """The axis of the layer's output that indexes its channels (for the BatchNorm fold)."""
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def quantize_weight(weight, channel_axes, num_bits):
    """Fake-quantizes ``weight`` per output channel, the channels being the given axes.

    One channel axis goes to the op as its ``axis`` (it quantizes along any axis). Several
    (a depthwise kernel's (in, multiplier), an einsum kernel's output letters) are moved last
    and merged into one, so the op sees one channel axis; axes of size 1 among them do not
    count (a depthwise multiplier of 1 is the common case).
    """
    rank = len(weight.shape)
    axes = tuple(a % rank for a in channel_axes)
    wide = [a for a in axes if weight.shape[a] != 1]
    if len(wide) <= 1:
        axis = wide[0] if wide else axes[-1]
        zero = ops.zeros((int(weight.shape[axis]),), dtype=weight.dtype)
        return _quantize_channels(weight, zero, axis, num_bits)
    others = [a for a in range(rank) if a not in axes]
    perm = others + list(axes)
    moved = weight if perm == list(range(rank)) else ops.transpose(weight, perm)
    shape = ops.shape(moved)
    flat = ops.reshape(moved, (-1, _product(moved.shape[len(others):])))
    zero = ops.zeros((flat.shape[-1],), dtype=flat.dtype)
    moved = ops.reshape(_quantize_channels(flat, zero, 1, num_bits), shape)
    if perm == list(range(rank)):
        return moved
    inverse = [perm.index(a) for a in range(rank)]
    return ops.transpose(moved, inverse)


def _quantize_channels(weight, zero, axis, num_bits):
    """The weight grid (measured range, per slice along ``axis``) applied to ``weight``."""
    return _api.quantize_and_dequantize_v2(
        weight, zero, zero, signed_input=WEIGHT_SIGNED, num_bits=num_bits, range_given=False,
        narrow_range=WEIGHT_NARROW_RANGE, axis=axis,
    )


def _product(dims):
    out = 1
    for d in dims:
        out *= int(d)
    return out


def storage_name(layer, attr):
    """Keras keeps some weights behind a property (``Dense.kernel`` reads ``_kernel``)."""
    return "_" + attr if isinstance(getattr(type(layer), attr, None), property) else attr


@contextlib.contextmanager
def swapped(layer, values):
    """Temporarily replaces attributes of ``layer`` (weights, bias, activation) so that its own
    ``call`` computes with them. Set with object.__setattr__: Keras' tracking must not see the
    tensors, and the variables stay where they are."""
    saved = {}
    try:
        for attr, value in values.items():
            name = storage_name(layer, attr)
            saved[name] = layer.__dict__.get(name, _MISSING)
            object.__setattr__(layer, name, value)
        yield
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                object.__delattr__(layer, name)
            else:
                object.__setattr__(layer, name, value)


_MISSING = object()
