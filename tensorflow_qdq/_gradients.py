"""Gradient registrations for the Qdq> ops (SEMANTICS §5). Imported once by the package."""

import tensorflow as tf

from tensorflow_qdq import _composite
from tensorflow_qdq._loader import ops as _ops


def _masked(grad, x, lo, hi, axis):
    return _ops.qdq_quantize_and_dequantize_v4_grad(grad, x, lo, hi, axis=axis)


def _unbounded(x, axis):
    """Bounds that pass every non-NaN element: the range an auto forward pass measured
    always contains every non-NaN element of its slice, so this mask equals it."""
    if axis == -1:
        shape = []
    else:
        shape = tf.shape(x)[axis : axis + 1]
    inf = tf.constant(float("inf"), dtype=x.dtype)
    return tf.fill(shape, -inf), tf.fill(shape, inf)


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeV2")
def _v2_grad(op, grad):
    del op
    return [grad, None, None]


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeV3")
def _v3_grad(op, grad):
    del op
    return [grad, None, None, None]


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeV4")
def _v4_grad(op, grad):
    x, lo, hi = op.inputs
    axis = op.get_attr("axis")
    if op.get_attr("range_given"):
        backprop, dmin, dmax = _masked(grad, x, lo, hi, axis)
        return [backprop, dmin, dmax]
    # FIX: TensorFlow masks with the ignored input_min/input_max here; we mask
    # with the range the forward pass measured.
    auto_lo, auto_hi = _unbounded(x, axis)
    backprop = _masked(grad, x, auto_lo, auto_hi, axis)[0]
    return [backprop, tf.zeros_like(lo), tf.zeros_like(hi)]


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeV4Grad")
def _v4_grad_grad(op, dbackprop, dmin, dmax):
    """Second order: backprop = g * mask is linear in g, with mask piecewise constant."""
    del dmin, dmax
    g, x, lo, hi = op.inputs
    if dbackprop is None:
        dbackprop = tf.zeros_like(g)
    masked = _masked(dbackprop, x, lo, hi, op.get_attr("axis"))[0]
    return [masked, tf.zeros_like(x), tf.zeros_like(lo), tf.zeros_like(hi)]


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeLsqGrad")
def _lsq_grad_grad(op, dbackprop, dstep):
    """Second order: both outputs are linear in the incoming gradient g, with the mask and
    the step derivative piecewise constant in x and the range."""
    g, x, lo, hi = op.inputs
    attrs = {k: op.get_attr(k) for k in ("signed_input", "num_bits", "round_mode", "narrow_range", "axis")}
    if isinstance(attrs["round_mode"], bytes):
        attrs["round_mode"] = attrs["round_mode"].decode()
    dg = tf.zeros_like(g) if dbackprop is None else _masked(dbackprop, x, lo, hi, attrs["axis"])[0]
    if dstep is not None:
        d = _composite.lsq_step_derivative(x, lo, hi, **attrs)
        axis = attrs["axis"]
        ds = tf.cast(dstep, tf.float64)
        ds = tf.reshape(ds, [1, -1, 1]) if axis != -1 else tf.reshape(ds, [])
        dg += tf.cast(tf.reshape(d * ds, tf.shape(g)), g.dtype)
    return [dg, tf.zeros_like(x), tf.zeros_like(lo), tf.zeros_like(hi)]


@tf.RegisterGradient("Qdq>QuantizeAndDequantizeTracked")
def _tracked_grad(op, grad, *range_grads):
    """V4's gradient, masked with the range the op quantized with (its new range, or delayed,
    the old one where the slice had one; cast to T as the quantize pass saw it); the tracked
    range and count get none (they are observed)."""
    del range_grads
    x = op.inputs[0]
    lo, hi = (tf.cast(t, x.dtype) for t in op.outputs[4:6])  # used_min, used_max
    return [_masked(grad, x, lo, hi, op.get_attr("axis"))[0], None, None, None]
