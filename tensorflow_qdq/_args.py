"""Argument preparation shared by the wrappers (``_api``, ``raw_ops``) and the composite."""

import operator

import tensorflow as tf

from tensorflow_qdq._contract import DEFAULTS


def op_attrs(**given):
    """The ops' attributes, defaults (the contract's, as registered in kernels/qdq_ops.cc) filled
    in; raw axis convention."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected op attribute {unknown[0]!r}; the ops take {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **given}


def tensors_like(first, *others, strict, names=None):
    """``first`` as a tensor, then ``others`` as tensors of its dtype.

    ``strict``: another dtype raises at conversion (the composite, whose arithmetic needs
    one dtype). Otherwise the dtype is a hint only (lists, NumPy and scalars take it) and
    a mismatch is left for the op to report, as TensorFlow's own ops do.
    """
    names = names or (None,) * (1 + len(others))
    first = tf.convert_to_tensor(first, name=names[0])
    dtype = {"dtype" if strict else "dtype_hint": first.dtype}
    return (first, *(tf.convert_to_tensor(t, name=n, **dtype) for t, n in zip(others, names[1:])))


def channel_axis(input, axis):  # noqa: A002 - TF's argument name
    """The tf.quantization axis convention to the ops': None -> per-tensor (-1); negative counts from the end."""
    if axis is None:
        return -1
    axis = operator.index(axis)
    if axis >= 0:
        return axis
    rank = input.shape.rank
    if rank is None:
        raise ValueError(f"axis={axis} is negative but the rank of input is unknown; pass a non-negative axis")
    if axis < -rank:
        raise ValueError(f"axis={axis} is out of range for input of rank {rank}: must be in [{-rank}, {rank})")
    return axis + rank
