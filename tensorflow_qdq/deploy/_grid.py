"""The integer grid of a quantizer, in NumPy: the exporters' copy of the op's range math.

For a range [lo, hi], ``num_bits``, ``signed`` and ``narrow_range`` the op quantizes
``x`` to ``round(x / step) * step`` with codes in [qmin, qmax] and zero at code 0
(docs/SEMANTICS: forward algorithm, step 4). Computed in float32 like the kernels.
"""

import numpy as np


def code_range(num_bits, signed, narrow_range):
    """(qmin, qmax) of the integer codes."""
    if signed:
        return -(2 ** (num_bits - 1)) + (1 if narrow_range else 0), 2 ** (num_bits - 1) - 1
    return 0, 2 ** num_bits - 1


def step(lo, hi, num_bits, signed, narrow_range):
    """The grid step (float32, elementwise over per-channel ranges); 0 where the range is
    degenerate (the op outputs 0 there)."""
    qmin, qmax = (np.float32(q) for q in code_range(num_bits, signed, narrow_range))
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    big = np.finfo(np.float32).max
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s_lo = np.where(qmin * lo > 0, qmin / lo, big)
        s_hi = np.where(qmax * hi > 0, qmax / hi, big)
        inv = np.where(s_lo < s_hi, lo / qmin, hi / qmax).astype(np.float32)
    return np.where((s_lo == big) & (s_hi == big), np.float32(0), inv).astype(np.float32)


def channel_amax(weight, channel_axes):
    """max |w| over everything but the channel axes, flattened in channel order."""
    others = tuple(a for a in range(weight.ndim) if a not in channel_axes)
    return np.max(np.abs(weight), axis=others).reshape(-1).astype(np.float32)
