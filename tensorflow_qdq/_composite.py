"""SEMANTICS §3 and §5 as a composite of standard TensorFlow ops.

XLA cannot compile a custom op, and a plain TensorFlow cannot load one, so inside
``jit_compile`` (see ``_dispatch``) and in exported models (see ``export``) the ops
are replaced by this composite. It repeats the kernel's arithmetic operation by
operation in the compute type (float32 for half/bfloat16), so its results are
bit-identical to the kernels'. Two compiler rewrites would break that and are
kept out on purpose:

* XLA (and Grappler) turn ``x / constant`` into ``x * (1 / constant)``, which is
  not correctly rounded: every division by ``qmin``/``qmax`` therefore gets a
  divisor that is not a compile-time constant (``_divide``).
* ``minimum``/``maximum`` differ in how they treat NaN between back ends: the
  clamp and the NaN-ignoring reductions are spelled with comparisons and selects.

Checks that need data (given ``min <= max``; V3's num_bits tensor) cannot raise
inside a compiled function: an invalid slice comes out all-NaN instead.
"""

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _args, _contract
from tensorflow_qdq._contract import MAX_BITS, MIN_BITS, check_num_bits, check_round_mode, code_range

# ---------------------------------------------------------------- validation (static)


def check_axis(axis, rank):
    if axis < -1:
        raise ValueError(f"axis={axis} is out of range: must be -1 (per-tensor) or a dimension of input")
    if rank is not None and axis >= rank:
        raise ValueError(f"axis={axis} is out of range for input of rank {rank}: must be in [-1, {rank})")


def _check_range_shapes(input_min, input_max, axis, input_shape, grad=False):
    """The static shape rules of the ops' shape functions (kernels/qdq_ops.cc), at trace time:
    per tensor, scalars (V4Grad: rank <= 1 with one element); per channel, vectors of
    dim(input, axis) values. Checked whether or not the range is given, as TF does."""
    for name, t in (("input_min", input_min), ("input_max", input_max)):
        shape = t.shape
        if shape.rank is None:
            continue
        if axis == -1:
            one = shape.rank == 0 or (grad and shape.rank == 1 and shape[0] in (None, 1))
            if not one:
                raise ValueError(f"{name} must be a scalar for per-tensor quantization (axis=-1), got shape {shape}")
        else:
            depth = input_shape[axis] if input_shape.rank is not None else None
            if shape.rank != 1 or (depth is not None and shape[0] is not None and shape[0] != depth):
                raise ValueError(f"{name} must be a vector of dim(input, axis={axis}) = {depth} values for "
                                 f"per-channel quantization, got shape {shape}")


# ---------------------------------------------------------------- arithmetic helpers


def compute_dtype(dtype):
    return tf.as_dtype(_contract.compute_dtype(tf.as_dtype(dtype).name))


def _divide(numerator, constant):
    """``numerator / constant`` correctly rounded, even under XLA and Grappler.

    Both rewrite a division by a constant into a multiplication by its reciprocal.
    Negating numerator and divisor together where the numerator is negative gives
    the same quotient bit for bit, and makes the divisor depend on data.
    """
    flip = numerator < 0
    return tf.where(flip, -numerator, numerator) / tf.where(flip, -constant, constant)


def _int_range(num_bits, signed_input, narrow_range, ctype):
    """(qmin, qmax, valid) in the compute type; num_bits is an int or an int32 tensor."""
    if isinstance(num_bits, (int, np.integer)):
        num_bits = int(num_bits)
        check_num_bits(num_bits, signed_input)
        qmin, qmax = code_range(num_bits, signed_input, narrow_range)
        np_type = ctype.as_numpy_dtype
        # int64 -> compute type, round to nearest (exact for the grid ends of float64).
        return tf.constant(np.int64(qmin).astype(np_type)), tf.constant(np.int64(qmax).astype(np_type)), None
    bits = tf.cast(tf.reshape(num_bits, []), tf.int64)
    one = tf.constant(1, tf.int64)
    limit = MAX_BITS[bool(signed_input)]
    valid = (bits >= MIN_BITS) & (bits <= limit)
    safe = tf.where(valid, bits, tf.constant(8, tf.int64))
    if signed_input:
        half = tf.bitwise.left_shift(one, safe - 1)
        qmin, qmax = -half + int(narrow_range), half - 1
    else:
        qmin, qmax = tf.zeros([], tf.int64), tf.bitwise.left_shift(one, safe) - 1
    return tf.cast(qmin, ctype), tf.cast(qmax, ctype), valid


def _signed_zero(v):
    """copysign(0, v) for non-NaN v (NaN stays NaN), without bitcasts."""
    zero = tf.zeros_like(v)
    negative = (v < 0) | (tf.math.reciprocal(v) < 0)  # 1/-0 = -inf catches -0
    return tf.where(tf.math.is_nan(v), v, tf.where(negative, -zero, zero))


def _degenerate_value(v, inv, round_mode):
    """FIX (SEMANTICS §3.4), as cc/qdq_math.h: a zero with the sign TF's own zero would have,
    round(v * T_MAX) * inv where that is a zero (v = +-0), else copysign(0, v) * inv;
    without the multiply where inv is not finite (1-bit signed: hi / 0). NaN stays NaN."""
    r = tf.where(tf.equal(v, 0), _round(v, round_mode), _signed_zero(v))
    finite_inv = tf.abs(inv) <= tf.constant(inv.dtype.max, inv.dtype)  # no IsFinite in TFLite
    out = tf.where(finite_inv, r * inv, r)
    return tf.where(tf.math.is_nan(v), v, out)


def _nan_ignoring_min_max(x, reduce_axes):
    inf = tf.constant(np.inf, x.dtype)
    nan = tf.math.is_nan(x)
    lo = tf.reduce_min(tf.where(nan, inf, x), axis=reduce_axes)
    hi = tf.reduce_max(tf.where(nan, -inf, x), axis=reduce_axes)
    return lo, hi


def _channel_view(x, axis):
    """x as [outer, depth, inner] (SEMANTICS §3.2); works for unknown static shapes."""
    shape = tf.shape(x, out_type=tf.int64)
    outer = tf.reduce_prod(shape[:axis])
    inner = tf.reduce_prod(shape[axis + 1 :])
    return tf.reshape(x, tf.stack([outer, shape[axis], inner]))


# ---------------------------------------------------------------- forward


def range_params(lo, hi, qmin, qmax):
    """TensorFlow's ComputeQuantizationRange in the compute type (cc/qdq_math.h)."""
    tmax = tf.constant(lo.dtype.max, lo.dtype)
    lo_usable = qmin * lo > 0
    hi_usable = qmax * hi > 0
    scale_lo = tf.where(lo_usable, qmin / lo, tmax)
    scale_hi = tf.where(hi_usable, qmax / hi, tmax)
    use_lo = scale_lo < scale_hi  # strict, as TF: ties keep the max side
    inv_lo = _divide(lo, qmin)
    inv_hi = _divide(hi, qmax)
    scale = tf.where(use_lo, scale_lo, scale_hi)
    inv = tf.where(use_lo, inv_lo, inv_hi)
    new_lo = tf.where(use_lo, lo, qmin * inv)
    new_hi = tf.where(use_lo, qmax * inv, hi)
    degenerate = tf.logical_not(lo_usable) & tf.logical_not(hi_usable)
    return new_lo, new_hi, scale, inv, degenerate


def _half_up(y):
    """TF's HALF_UP, ``floor(fl(y + 0.5))`` in y's type, with no add applied to y.

    XLA's CPU back end contracts ``v * scale + 0.5`` into one fused multiply-add,
    which skips the rounding of the product that the kernels perform. So the
    result is built from ``floor(y)`` and comparisons only, artifacts included:
    ``fl(y + 0.5)`` is exact except (a) y = pred(0.5), which rounds up to 1, and
    (b) odd integers with 2^(p-1) <= |y| < 2^p (p = mantissa bits), which tie to
    the even y + 1; from 2^p on, y is returned. y in [-0.5, 0.5) gives +0.
    """
    dtype = y.dtype
    p = np.finfo(dtype.as_numpy_dtype).nmant + 1
    half = tf.constant(0.5, dtype)
    one = tf.constant(1.0, dtype)
    fy = tf.math.floor(y)
    small = fy + tf.where(y >= fy + half, one, tf.zeros_like(one))  # |y| < 2^(p-1): fy +- 0.5 and fy + 1 exact
    y_half = y * half
    odd = tf.math.floor(y_half) != y_half
    big = tf.where(odd & (tf.abs(y) < 2.0**p), fy + one, fy)  # |y| >= 2^(p-1): y is an integer
    out = tf.where(tf.abs(y) < 2.0 ** (p - 1), small, big)
    pred_half = tf.constant(np.nextafter(dtype.as_numpy_dtype(0.5), dtype.as_numpy_dtype(0)), dtype)
    out = tf.where(y == pred_half, one, out)
    return tf.where(y == 0, tf.zeros_like(y), out)


def _round(y, round_mode):
    if round_mode == "HALF_UP":
        return _half_up(y)
    return tf.math.rint(y)  # IEEE ties-to-even, -0.5 -> -0.0


def forward(input, input_min, input_max, **attrs):  # noqa: A002
    """The quantize-dequantize output of SEMANTICS §3; ``attrs`` as ``_args.op_attrs`` (axis -1 is per-tensor)."""
    x, input_min, input_max = _args.tensors_like(input, input_min, input_max, strict=True)
    dtype = x.dtype
    attrs = _args.op_attrs(**attrs)
    signed_input, num_bits, range_given = attrs["signed_input"], attrs["num_bits"], attrs["range_given"]
    round_mode, narrow_range, axis = attrs["round_mode"], attrs["narrow_range"], attrs["axis"]
    check_round_mode(round_mode)
    check_axis(axis, x.shape.rank)
    _check_range_shapes(input_min, input_max, axis, x.shape)
    ctype = compute_dtype(dtype)
    qmin, qmax, bits_valid = _int_range(num_bits, signed_input, narrow_range, ctype)

    xc = tf.cast(x, ctype)
    per_channel = axis != -1
    if per_channel:
        xc = _channel_view(xc, axis)
    if range_given:
        lo = tf.cast(input_min, ctype)
        hi = tf.cast(input_max, ctype)
        lo, hi = (tf.reshape(t, [1, -1, 1] if per_channel else []) for t in (lo, hi))
        valid = lo <= hi  # NaN fails; the kernels raise, a compiled graph cannot
    else:
        lo, hi = _nan_ignoring_min_max(xc, [0, 2] if per_channel else None)
        if per_channel:
            lo, hi = tf.reshape(lo, [1, -1, 1]), tf.reshape(hi, [1, -1, 1])
        valid = None
    if bits_valid is not None:
        valid = bits_valid if valid is None else (valid & bits_valid)

    new_lo, new_hi, scale, inv, degenerate = range_params(lo, hi, qmin, qmax)
    v = xc
    if range_given:  # TF's operand order: min(hi, x) then max(lo, v); a NaN x stays NaN
        v = tf.where(new_hi < v, new_hi, v)
        v = tf.where(v < new_lo, new_lo, v)
    out = _round(v * scale, round_mode) * inv
    out = tf.where(degenerate, _degenerate_value(v, inv, round_mode), out)
    if valid is not None:
        out = tf.where(valid, out, tf.constant(np.nan, ctype))
    if per_channel:
        out = tf.reshape(out, tf.shape(x))
    return tf.cast(out, dtype)


# ---------------------------------------------------------------- gradients (SEMANTICS §5)


def masked_gradient(gradients, input, input_min, input_max, axis=-1):  # noqa: A002
    """V4Grad's input_backprop: ``gradients * (lo <= x <= hi)``, a multiply so -g*0 is -0.0."""
    g, x, lo, hi = _args.tensors_like(gradients, input, input_min, input_max, strict=True)
    check_axis(axis, x.shape.rank)
    _check_range_shapes(lo, hi, axis, x.shape, grad=True)
    ctype = compute_dtype(g.dtype)
    xc, gc = tf.cast(x, ctype), tf.cast(g, ctype)
    if axis != -1:
        xc, gc = _channel_view(xc, axis), _channel_view(gc, axis)
        lo, hi = (tf.reshape(t, [1, -1, 1]) for t in (lo, hi))
    else:
        lo, hi = tf.reshape(lo, []), tf.reshape(hi, [])
    lo, hi = tf.cast(lo, ctype), tf.cast(hi, ctype)
    mask = tf.where((xc >= lo) & (xc <= hi), tf.ones_like(xc), tf.zeros_like(xc))
    return tf.cast(tf.reshape(gc * mask, tf.shape(g)), g.dtype)


def qdq(input, input_min, input_max, *, masked, **attrs):  # noqa: A002
    """The forward composite with SEMANTICS §5's gradient: masked (V4) or identity (V2/V3).

    Used inside XLA; the gradient is made of the same standard ops, so it compiles too.
    """
    x, input_min, input_max = _args.tensors_like(input, input_min, input_max, strict=True)
    axis = attrs.get("axis", -1)

    @tf.custom_gradient
    def _op(x, lo, hi):
        y = forward(x, lo, hi, **attrs)

        def grad(dy):
            if not masked:
                return dy, None, None
            if attrs.get("range_given", False):
                backprop = masked_gradient(dy, x, lo, hi, axis)
            else:  # FIX: the measured range contains every non-NaN element
                backprop = masked_gradient(dy, x, -np.inf, np.inf)
            return backprop, tf.zeros_like(lo), tf.zeros_like(hi)

        return y, grad

    return _op(x, input_min, input_max)


def v4_grad(gradients, input, input_min, input_max, axis=-1):  # noqa: A002
    """The composite V4Grad with its own gradient (w.r.t. gradients: masked; the rest: zeros)."""
    g, x, lo, hi = _args.tensors_like(gradients, input, input_min, input_max, strict=True)

    @tf.custom_gradient
    def _op(g, x, lo, hi):
        backprop = masked_gradient(g, x, lo, hi, axis)

        def grad(d_backprop, d_min, d_max):
            del d_min, d_max
            return masked_gradient(d_backprop, x, lo, hi, axis), tf.zeros_like(x), tf.zeros_like(lo), tf.zeros_like(hi)

        return (backprop, tf.zeros_like(lo), tf.zeros_like(hi)), grad

    return _op(g, x, lo, hi)


# ---------------------------------------------------------------- learned ranges (LSQ)


def lsq_step_derivative(input, input_min, input_max, *, signed_input=True, num_bits=8,  # noqa: A002
                        round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1):
    """d(output)/d(step) per element, times LSQ's 1/sqrt(n * Qp), shaped as ``_channel_view``
    (per channel) or as input (cc/qdq_math.h ``lsq_step_derivative``, in the compute type)."""
    x, lo, hi = _args.tensors_like(input, input_min, input_max, strict=True)
    check_round_mode(round_mode)
    check_axis(axis, x.shape.rank)
    _check_range_shapes(lo, hi, axis, x.shape, grad=True)
    ctype = compute_dtype(x.dtype)
    qmin, qmax, _ = _int_range(num_bits, signed_input, narrow_range, ctype)
    xc = tf.cast(x, ctype)
    if axis != -1:
        xc = _channel_view(xc, axis)
        lo, hi = (tf.reshape(t, [1, -1, 1]) for t in (lo, hi))
        depth = tf.cast(tf.shape(xc)[1], tf.float64)
    else:
        lo, hi = tf.reshape(lo, []), tf.reshape(hi, [])
        depth = tf.constant(1.0, tf.float64)
    lo, hi = tf.cast(lo, ctype), tf.cast(hi, ctype)
    new_lo, new_hi, scale, _, degenerate = range_params(lo, hi, qmin, qmax)
    v = tf.where(new_hi < xc, new_hi, xc)
    v = tf.where(v < new_lo, new_lo, v)
    y = v * scale
    d = _round(y, round_mode) - y
    d = tf.where(xc > hi, qmax * tf.ones_like(d), d)
    d = tf.where(xc < lo, qmin * tf.ones_like(d), d)
    d = tf.where(degenerate | tf.math.is_nan(xc), tf.zeros_like(d), d)
    n = tf.cast(tf.size(xc, out_type=tf.int64), tf.float64) / depth
    qp = tf.maximum(tf.cast(qmax, tf.float64), 1.0)
    return tf.cast(d, tf.float64) * tf.math.rsqrt(n * qp)


def lsq_gradient(gradients, input, input_min, input_max, **attrs):  # noqa: A002
    """The composite LsqGrad: (input_backprop, step_backprop). The input gradient is V4Grad's,
    bit for bit; the step gradient sums in float64 as the kernels do (in another order)."""
    g, x, lo, hi = _args.tensors_like(gradients, input, input_min, input_max, strict=True)
    axis = attrs.get("axis", -1)
    backprop = masked_gradient(g, x, lo, hi, axis)
    d = lsq_step_derivative(x, lo, hi, **attrs)
    gc = tf.cast(g, compute_dtype(g.dtype))
    if axis != -1:
        gc = _channel_view(gc, axis)
    step = tf.reduce_sum(tf.cast(gc, tf.float64) * d, axis=[0, 2] if axis != -1 else None)
    return backprop, tf.cast(tf.cast(step, compute_dtype(g.dtype)), g.dtype)
