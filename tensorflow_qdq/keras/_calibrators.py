"""Calibrators: pick a quantizer's range from sample activations before training.

One calibrator serves one quantizer. ``observe`` streams batches through it and
``compute_range`` returns the ``(lo, hi)`` range (plain floats, ``lo <= 0 <= hi``) to give
the quantizer. NaN and +-inf entries are ignored. The module needs numpy only.

The grid is the one the op uses (``_contract.code_range``): signed codes
``-2^(b-1) .. 2^(b-1)-1`` (narrow range from ``-2^(b-1)+1``), unsigned ``0 .. 2^b-1``; a
symmetric range ``(-amax, amax)`` (unsigned ``(0, amax)``) has the step ``amax / qmax``
(``amax / 2^(b-1)`` for 1-bit signed, whose ``qmax`` is 0).

Methods (see ``make_calibrator``):

* ``"max"`` - the exact min/max of all data, widened to include 0.
* ``"percentile"`` - ``amax`` = the given percentile of ``|x|`` (unsigned: ``max(x, 0)``).
* ``"mse"`` - the ``amax`` that minimizes the mean squared quantization error.
* ``"entropy"`` - TensorRT's method: the ``amax`` whose quantized histogram has the least
  KL divergence from the clipped one.

The last three keep a histogram of ``|x|`` (unsigned: ``max(x, 0)``) with ``num_bins`` bins
over ``[0, R)``. ``R`` starts just above the first nonzero batch's maximum; a batch that reaches
it doubles ``R`` as often as needed, so every old bin falls inside one new bin and the merge is
exact. Memory is O(num_bins) whatever the number of batches; the price is resolution: the
bin width ``R / num_bins`` is below ``2 * max|x| / num_bins`` (exactly ``max|x| / num_bins``
when the first batch held the maximum), and results are accurate to about one bin width.
Every method returns ``(0.0, 0.0)`` for all-zero data.
"""

import numpy as np

from tensorflow_qdq._contract import check_num_bits, code_range

CALIBRATION_METHODS = ("max", "percentile", "mse", "entropy")

_DEFAULT_BINS = 2048


def _check_num_bins(num_bins):
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
        raise ValueError(f"num_bins={num_bins!r} is out of range: must be an int >= 2")
    return int(num_bins)


class Calibrator:
    """Base class: streams batches through ``observe``, then ``compute_range``."""

    method = None

    def __init__(self, signed, num_bits, *, narrow_range=False):
        self.signed = bool(signed)
        self.num_bits = check_num_bits(num_bits, self.signed, not_int=ValueError)
        self.qmin, self.qmax = code_range(self.num_bits, self.signed, bool(narrow_range))
        self._seen = False

    def observe(self, x):
        """Adds a batch (any shape; NaN and +-inf entries are skipped)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if x.size:
            self._seen = True
            self._observe(x)

    def compute_range(self):
        """Returns ``(lo, hi)`` as Python floats with ``lo <= 0 <= hi``."""
        if not self._seen:
            raise RuntimeError(
                f"{type(self).__name__} (method={self.method!r}) has observed no finite values; "
                "call observe() with data first"
            )
        lo, hi = self._range()
        return float(lo), float(hi)

    def _step(self, amax):
        # The symmetric range's step: only a nonzero code bound sets it (1-bit signed has qmax 0).
        return amax / (self.qmax if self.qmax > 0 else -self.qmin)

    def _observe(self, x):
        raise NotImplementedError

    def _range(self):
        raise NotImplementedError


class MaxCalibrator(Calibrator):
    """``lo = min(min(x), 0)``, ``hi = max(max(x), 0)`` over all batches, exactly.

    Like the layer's tracked range, this does not depend on ``signed``: the unsigned grid only
    uses ``hi`` (the op clips negative inputs to 0).
    """

    method = "max"

    def __init__(self, signed, num_bits, *, narrow_range=False):
        super().__init__(signed, num_bits, narrow_range=narrow_range)
        self._lo = self._hi = 0.0

    def _observe(self, x):
        self._lo = min(self._lo, float(x.min()))
        self._hi = max(self._hi, float(x.max()))

    def _range(self):
        return self._lo, self._hi


class _HistogramCalibrator(Calibrator):
    """Keeps the streaming histogram of magnitudes; subclasses choose ``amax`` from it."""

    def __init__(self, signed, num_bits, num_bins=_DEFAULT_BINS, *, narrow_range=False):
        super().__init__(signed, num_bits, narrow_range=narrow_range)
        self.num_bins = _check_num_bins(num_bins)
        self._edge = 0.0  # R: the histogram covers [0, R), every magnitude seen lies below R
        self._max = 0.0  # exact largest magnitude, so no result exceeds the data
        self._zeros = 0  # exact zeros: any range represents them without error
        # Counts of values >= 0 and of negative values (signed only) by magnitude bin: the MSE
        # needs the sides apart because the negative side has one code more.
        self._pos = np.zeros(self.num_bins)
        self._neg = np.zeros(self.num_bins)

    def _observe(self, x):
        negative = x < 0 if self.signed else np.zeros(x.shape, bool)
        mag = np.abs(x) if self.signed else np.maximum(x, 0.0)
        self._zeros += int(np.count_nonzero(mag == 0))
        top = float(mag.max())
        if top > 0.0 and top >= self._edge:
            self._grow(top)
        self._max = max(self._max, top)
        n = self.num_bins
        if self._edge == 0.0:  # only zeros so far: they sit in bin 0 whatever R becomes
            self._pos[0] += mag.size
            return
        # mag / R < 1 stays finite even for a tiny R (the clip only guards rounding).
        idx = np.minimum((mag / self._edge * n).astype(np.int64), n - 1)
        self._pos += np.bincount(idx[~negative], minlength=n)
        self._neg += np.bincount(idx[negative], minlength=n)

    def _grow(self, top):
        # Bins are half-open, so R must exceed the maximum: a value equal to R would sit in the
        # last bin, not in the bin that R starts once R has grown, and break the nesting.
        if self._edge == 0.0:
            self._edge = float(np.nextafter(top, np.inf))
            return
        new = self._edge
        while new <= top:
            new *= 2.0
        new = min(new, np.finfo(np.float64).max)  # only near overflow is the merge inexact
        # With R' = R * 2^k old bin i lies inside new bin i >> k, which this computes exactly.
        where = np.floor(np.arange(self.num_bins) * (self._edge / new)).astype(np.int64)
        self._pos = np.bincount(where, weights=self._pos, minlength=self.num_bins)
        self._neg = np.bincount(where, weights=self._neg, minlength=self.num_bins)
        self._edge = new

    def _range(self):
        amax = min(self._amax(), self._max) if self._max > 0 else 0.0
        return (-amax if self.signed and amax > 0 else 0.0), amax  # no -0.0 for all-zero data

    def _amax(self):
        raise NotImplementedError


class PercentileCalibrator(_HistogramCalibrator):
    """``amax`` = the ``percentile`` (0 < p <= 100) of all observed magnitudes.

    The value is read from the histogram, interpolating linearly inside the bin where the
    cumulative count reaches ``p% * count``; it lies within one bin width of the order statistic
    there (``np.percentile`` interpolates between that order statistic and its neighbour).
    """

    method = "percentile"

    def __init__(self, signed, num_bits, percentile=99.99, num_bins=_DEFAULT_BINS, *, narrow_range=False):
        super().__init__(signed, num_bits, num_bins, narrow_range=narrow_range)
        number = isinstance(percentile, (int, float, np.number)) and not isinstance(percentile, bool)
        if not number or not 0 < percentile <= 100:
            raise ValueError(f"percentile={percentile!r} is out of range: must be a number in (0, 100]")
        self.percentile = float(percentile)

    def _amax(self):
        counts = self._pos + self._neg
        cdf = np.cumsum(counts)
        target = self.percentile / 100.0 * cdf[-1]
        i = min(int(np.searchsorted(cdf, target, side="left")), self.num_bins - 1)
        before = cdf[i] - counts[i]
        frac = (target - before) / counts[i] if counts[i] else 1.0
        return (i + min(max(frac, 0.0), 1.0)) * self._edge / self.num_bins


class MSECalibrator(_HistogramCalibrator):
    """``amax`` minimizing the mean squared error of quantizing the observed values.

    Candidates are the bin edges (and the exact maximum). Each bin's error is the exact mean of
    ``(x - Q(x))^2`` for ``x`` uniform over the bin, with ``Q`` the op's grid (clipped at
    ``qmax * step`` above and, signed, at ``-qmin * step`` below 0); exact zeros cost nothing.
    """

    method = "mse"

    def _amax(self):
        # Work in units of the bin width: the errors scale by w^2 alike (same argmin), and the
        # cubes below cannot overflow whatever the data's magnitude.
        n, w = self.num_bins, self._edge / self.num_bins
        pos, neg = self._pos.copy(), self._neg
        pos[0] -= self._zeros  # zeros quantize exactly; spreading them over bin 0 would bias small ranges
        cands = np.unique(np.minimum(np.arange(1.0, n + 1), self._max / w))
        sides = [(pos, self.qmax)] + ([(neg, -self.qmin)] if self.signed else [])
        errors = np.zeros(cands.size)
        for counts, top_code in sides:
            used = np.flatnonzero(counts)
            if used.size == 0:
                continue
            for start in range(0, cands.size, 256):  # chunks bound the temporary arrays
                step = self._step(cands[start : start + 256])[:, None]
                per_bin = (_clipped_error_integral(used + 1.0, step, top_code)
                           - _clipped_error_integral(used, step, top_code))
                errors[start : start + 256] += (per_bin * counts[used]).sum(axis=1)
        return float(cands[int(np.argmin(errors))]) * w


def _clipped_error_integral(x, step, top_code):
    """Integral over [0, x] of (t - Q(t))^2, Q rounding to multiples of ``step`` clipped at ``top_code``.

    Per code the unclipped integral of (t - Q(t))^2 is step^3 / 12, so with y = t / step and
    j = round(y) the antiderivative is step^3 * (j / 12 + (y - j)^3 / 3) (continuous at ties);
    past the clip T = top_code * step it grows by (t - T)^3 / 3.
    """
    clip = top_code * step
    y = np.minimum(x, clip) / step
    j = np.round(y)
    return step**3 * (j / 12.0 + (y - j) ** 3 / 3.0) + np.maximum(x - clip, 0.0) ** 3 / 3.0


class EntropyCalibrator(_HistogramCalibrator):
    """TensorRT's entropy calibration over the histogram of magnitudes.

    For each candidate count of kept bins ``i`` (from 2^(b-1) to ``num_bins``): ``P`` is the
    histogram's first ``i`` bins with every count beyond them added to bin ``i - 1`` (clipping);
    ``Q`` merges the first ``i`` bins (without the clipped counts, as TensorRT does) into
    ``min(levels, i)`` groups of about equal size (whole bins, sizes differing by at most one),
    then spreads each group's count evenly over the group's bins where ``P`` is nonzero. The
    ``i`` with the least KL(P || Q) gives ``amax = i * bin width``; ties keep the smaller ``i``.
    A candidate where ``P`` has mass that ``Q`` lacks (infinite KL) is skipped.

    ``levels`` is the number of codes for magnitudes: 2^(b-1) signed (one side's codes), 2^b
    unsigned. The search starts at ``i = 2^(b-1)`` bins, TensorRT's 128 for 8 bits, for both:
    far fewer bins make P and Q trivially alike. Unsigned candidates below ``levels`` bins lose
    nothing to rounding and pay for clipping only; starting them at ``levels`` instead would
    forbid any ``amax`` below ``levels / num_bins`` of the histogram range (1/8 for 8 bits),
    which data with far outliers needs. The smallest possible ``amax`` is thus
    ``2^(b-1) / num_bins`` of the range (1/16 for 8 bits and 2048 bins): raise ``num_bins`` for
    data whose outliers lie further out. Exact zeros are left out: they quantize exactly
    whatever the range, and a ReLU's spike at zero would swamp the KL.
    """

    method = "entropy"

    def _amax(self):
        n, w = self.num_bins, self._edge / self.num_bins
        counts = self._pos + self._neg
        counts[0] -= self._zeros
        if not counts.any():
            return 0.0
        half = 2 ** (self.num_bits - 1)
        levels = half if self.signed else 2 * half
        cum = np.concatenate([[0.0], np.cumsum(counts)])
        total = cum[-1]
        best_i, best_kl = n, np.inf
        for i in range(min(half, n), n + 1):
            p = counts[:i].copy()
            p[-1] += total - cum[i]  # the clipped values land on the top code
            groups = min(levels, i)  # fewer bins than codes: one bin per code, no rounding loss
            edges = np.arange(groups + 1) * i // groups
            nonzero = p > 0
            cnz = np.concatenate([[0], np.cumsum(nonzero)])
            mass = cum[edges[1:]] - cum[edges[:-1]]
            spread = mass / np.maximum(cnz[edges[1:]] - cnz[edges[:-1]], 1)
            q = np.repeat(spread, np.diff(edges))[nonzero]
            if q.sum() == 0 or not q.all():
                continue  # some P mass has no Q mass: infinite divergence
            p = p[nonzero] / total
            q = q / q.sum()
            kl = float(np.sum(p * np.log(p / q)))
            if kl < best_kl:
                best_i, best_kl = i, kl
        return best_i * w


_CLASSES = {
    "max": (MaxCalibrator, ()),
    "percentile": (PercentileCalibrator, ("percentile", "num_bins")),
    "mse": (MSECalibrator, ("num_bins",)),
    "entropy": (EntropyCalibrator, ("num_bins",)),
}


def make_calibrator(method, signed, num_bits, *, narrow_range=False, **options):
    """Returns a fresh calibrator for ``method`` (one of ``CALIBRATION_METHODS``) for the grid
    of ``signed``, ``num_bits`` and ``narrow_range``.

    Options: ``percentile`` (percentile only, default 99.99, in (0, 100]) and ``num_bins``
    (histogram methods, default 2048, >= 2).
    """
    if method not in CALIBRATION_METHODS:  # a tuple: unhashable values get the ValueError too
        raise ValueError(f"method={method!r} is not a calibration method; choose one of {CALIBRATION_METHODS}")
    cls, allowed = _CLASSES[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for method={method!r}; "
            f"it takes {list(allowed) if allowed else 'no options'}"
        )
    return cls(signed, num_bits, narrow_range=narrow_range, **options)
