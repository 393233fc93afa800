"""Bit-pattern comparison: -0.0 vs +0.0 and NaN placement count as differences.

NaN payloads are normalised (TensorFlow and we may produce different quiet-NaN
payloads, which no float arithmetic can observe); the sign of a NaN is ignored
for the same reason. Everything else must match bit for bit.
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


def mismatches(ours, theirs):
    """Flat indices where the two arrays differ as bit patterns (shape must match)."""
    a, b = as_numpy(ours), as_numpy(theirs)
    if a.shape != b.shape or a.dtype != b.dtype:
        return np.array([-1])
    return np.flatnonzero(bits(a) != bits(b))


def same_bits(ours, theirs):
    return mismatches(ours, theirs).size == 0


def describe(ours, theirs, limit=3):
    """A short text naming the first differing elements."""
    a, b = as_numpy(ours), as_numpy(theirs)
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    idx = mismatches(a, b)
    fa, fb = a.reshape(-1), b.reshape(-1)
    parts = [f"[{i}] {fa[i]!r} vs {fb[i]!r}" for i in idx[:limit]]
    return f"{idx.size} of {a.size} differ: " + ", ".join(parts)


def assert_same_bits(ours, theirs, what=""):
    assert same_bits(ours, theirs), f"{what}: {describe(ours, theirs)}"
