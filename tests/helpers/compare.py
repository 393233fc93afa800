"""Bit-pattern comparison, the one the tests use: -0.0 vs +0.0 and NaN placement count as
differences.

NaN payloads are normalised (TensorFlow and we may produce different quiet-NaN
payloads, which no float arithmetic can observe); the sign of a NaN is ignored
for the same reason. Everything else must match bit for bit, except where a caller
passes ``sign_free``: elements whose zero's sign is unspecified (see
``cases.unsigned_zero_slices``), where +0.0 and -0.0 are equal too.
"""
import numpy as np

_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def as_numpy(t):
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def bits(a):
    """The array's bit patterns as unsigned integers, with every NaN mapped to one pattern."""
    a = np.ascontiguousarray(as_numpy(a))
    u = a.view(_UINT[a.dtype.itemsize]).copy()
    nan = np.isnan(a.astype(np.float64))
    u[nan] = np.iinfo(u.dtype).max
    return u


def mismatches(ours, theirs, sign_free=None):
    """Flat indices where the two arrays differ as bit patterns (shape must match); where the
    mask ``sign_free`` is set, a zero of either sign equals a zero of the other."""
    a, b = as_numpy(ours), as_numpy(theirs)
    if a.shape != b.shape or a.dtype != b.dtype:
        return np.array([-1])
    ua, ub = bits(a), bits(b)
    if sign_free is not None:
        zero = np.atleast_1d(np.asarray(sign_free) & (a == 0) & (b == 0))
        ua[zero] = ub[zero] = 0
    return np.flatnonzero(ua != ub)


def same_bits(ours, theirs, sign_free=None):
    return mismatches(ours, theirs, sign_free).size == 0


def describe(ours, theirs, limit=3, sign_free=None):
    """A short text naming the first differing elements."""
    a, b = as_numpy(ours), as_numpy(theirs)
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    idx = mismatches(a, b, sign_free)
    fa, fb = a.reshape(-1), b.reshape(-1)
    parts = [f"[{i}] {fa[i]!r} vs {fb[i]!r}" for i in idx[:limit]]
    return f"{idx.size} of {a.size} differ: " + ", ".join(parts)


def assert_same_bits(ours, theirs, what="", sign_free=None):
    assert same_bits(ours, theirs, sign_free), f"{what}: {describe(ours, theirs, sign_free=sign_free)}"
