"""Tests for the range calibrators in tensorflow_qdq/keras/_calibrators.py.

The module needs numpy only, so it is loaded from its file: importing it through the
``tensorflow_qdq.keras`` package would import TensorFlow and Keras (seconds) for nothing.
References are independent: numpy's min/max/percentile/histogram, and a brute-force search
that quantizes the raw data with the op's grid.
"""

import importlib.util
import math
import os

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH = os.path.join(_ROOT, "tensorflow_qdq", "keras", "_calibrators.py")
_SPEC = importlib.util.spec_from_file_location("_qdq_calibrators_under_test", _PATH)
cal = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cal)

HIST_METHODS = ("percentile", "mse", "entropy")


def fake_quant(x, lo, hi, signed, num_bits, narrow_range=False):
    """The op's grid, written from its definition: step from the sides with a nonzero code bound."""
    qmin, qmax = (-(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1) if signed else (0, 2**num_bits - 1)
    qmin += int(signed and narrow_range)
    inv = max([lo / qmin for _ in range(qmin != 0)] + [hi / qmax for _ in range(qmax != 0)])
    return np.clip(np.round(x / inv), qmin, qmax) * inv


def quant_mse(x, amax, signed, num_bits, narrow_range=False):
    lo = -amax if signed else 0.0
    return float(np.mean((x - fake_quant(x, lo, amax, signed, num_bits, narrow_range)) ** 2))


def feed(calibrator, batches):
    for b in batches:
        calibrator.observe(b)
    return calibrator.compute_range()


def growing_batches(rng, scales, n=5000, unsigned_shift=0.0):
    """Gaussian batches whose range grows, with NaN/+-inf sprinkled in (to be ignored)."""
    out = []
    for s in scales:
        b = rng.standard_normal(n) * s + unsigned_shift
        b[rng.choice(n, 3, replace=False)] = [np.nan, np.inf, -np.inf]
        out.append(b)
    return out


def finite(batches):
    x = np.concatenate([np.ravel(b) for b in batches])
    return x[np.isfinite(x)]


def magnitudes(x, signed):
    return np.abs(x) if signed else np.maximum(x, 0.0)


def assert_range(r, signed):
    lo, hi = r
    assert type(lo) is float and type(hi) is float
    assert lo <= 0.0 <= hi
    if signed:
        assert lo == -hi or hi == 0.0
    else:
        assert lo == 0.0


# -- max ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_max_is_exact_min_max_over_batches(signed):
    rng = np.random.default_rng(0)
    batches = growing_batches(rng, [1.0, 5.0, 0.5]) + [np.float32([[2.5, np.nan], [-np.inf, 7.25]]), np.array([])]
    r = feed(cal.make_calibrator("max", signed, 8), batches)
    x = finite(batches)
    assert r == (min(float(x.min()), 0.0), max(float(x.max()), 0.0))
    assert all(type(v) is float for v in r)


def test_max_includes_zero_and_takes_lists_and_scalars():
    c = cal.MaxCalibrator(True, 8)
    c.observe([[3.0, 1.0], [2.0, np.nan]])
    c.observe(1.5)
    assert c.compute_range() == (0.0, 3.0)
    c.observe(np.full((2, 3, 4), -2.0, np.float16))
    assert c.compute_range() == (-2.0, 3.0)


# -- zeros, errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", cal.CALIBRATION_METHODS)
@pytest.mark.parametrize("signed", [True, False])
def test_all_zero_data_gives_zero_range(method, signed):
    c = cal.make_calibrator(method, signed, 8)
    r = feed(c, [np.zeros(10), np.array([-0.0, np.nan, 0.0])])
    assert r == (0.0, 0.0) and all(type(v) is float and math.copysign(1.0, v) == 1.0 for v in r)


@pytest.mark.parametrize("method", cal.CALIBRATION_METHODS)
def test_nothing_finite_observed_raises(method):
    c = cal.make_calibrator(method, True, 8)
    with pytest.raises(RuntimeError, match=f"method='{method}'"):
        c.compute_range()
    c.observe(np.array([]))
    c.observe([np.nan, np.inf, -np.inf])
    with pytest.raises(RuntimeError, match=f"method='{method}'"):
        c.compute_range()
    c.observe([0.5, -1.0])
    assert 0.0 < c.compute_range()[1] <= 1.0


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="method='minmax'") as info:
        cal.make_calibrator("minmax", True, 8)
    assert all(m in str(info.value) for m in cal.CALIBRATION_METHODS)
    assert cal.CALIBRATION_METHODS == ("max", "percentile", "mse", "entropy")


@pytest.mark.parametrize(
    "method, options, word",
    [
        ("max", {"num_bins": 16}, "num_bins"),
        ("mse", {"percentile": 99.0}, "percentile"),
        ("entropy", {"bins": 16}, "bins"),
        ("percentile", {"percentile": 0}, "percentile=0"),
        ("percentile", {"percentile": 101}, "percentile=101"),
        ("percentile", {"percentile": -5.0}, "percentile=-5.0"),
        ("percentile", {"percentile": float("nan")}, "percentile=nan"),
        ("percentile", {"percentile": True}, "percentile=True"),
        ("percentile", {"num_bins": 1}, "num_bins=1"),
        ("mse", {"num_bins": 0}, "num_bins=0"),
        ("entropy", {"num_bins": 2.5}, "num_bins=2.5"),
        ("entropy", {"num_bins": True}, "num_bins=True"),
    ],
)
def test_bad_options_raise(method, options, word):
    with pytest.raises(ValueError, match=word.replace(".", r"\.")):
        cal.make_calibrator(method, True, 8, **options)


@pytest.mark.parametrize("signed, num_bits", [(True, 0), (True, 62), (False, 63), (True, 8.0), (False, True)])
def test_bad_num_bits_raise(signed, num_bits):
    with pytest.raises(ValueError, match="num_bits"):
        cal.make_calibrator("max", signed, num_bits)


def test_option_limits_are_accepted():
    assert isinstance(cal.make_calibrator("percentile", True, 8, percentile=100, num_bins=2), cal.PercentileCalibrator)
    assert isinstance(cal.make_calibrator("entropy", False, 62, num_bins=2), cal.EntropyCalibrator)


# -- histogram ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("num_bins", [2048, 100])
def test_histogram_regrows_exactly(signed, num_bins):
    # White box: after growth the counts equal a fresh histogram over the final range.
    rng = np.random.default_rng(1)
    batches = growing_batches(rng, [0.3, 1.0, 4.0, 2.0, 40.0])
    c = cal.make_calibrator("percentile", signed, 8, num_bins=num_bins)
    feed(c, batches)
    mags = [magnitudes(b[np.isfinite(b)], signed) for b in batches]
    edge = float(np.nextafter(mags[0].max(), np.inf))  # half-open bins: R lies above the maximum
    while edge <= max(m.max() for m in mags):
        edge *= 2.0
    assert c._edge == edge > 4 * mags[0].max()  # the range grew, in powers of two
    expected, _ = np.histogram(np.concatenate(mags), bins=num_bins, range=(0.0, edge))
    np.testing.assert_array_equal(c._pos + c._neg, expected)


@pytest.mark.parametrize("method", HIST_METHODS)
@pytest.mark.parametrize("signed", [True, False])
def test_batching_does_not_matter_once_the_maximum_came_first(method, signed):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(20000)
    x[[0, 1]] = [9.0, -9.0]
    whole = cal.make_calibrator(method, signed, 6)
    split = cal.make_calibrator(method, signed, 6)
    assert feed(whole, [x]) == feed(split, np.array_split(x, 7))


# -- percentile -------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100])
@pytest.mark.parametrize("num_bins", [2048, 100])
def test_percentile_matches_numpy_within_a_bin(signed, p, num_bins):
    rng = np.random.default_rng(3)
    batches = growing_batches(rng, [0.25, 1.0, 3.0, 10.0], n=10000)
    r = feed(cal.make_calibrator("percentile", signed, 8, percentile=p, num_bins=num_bins), batches)
    assert_range(r, signed)
    mags = magnitudes(finite(batches), signed)
    width = 2.0 * mags.max() / num_bins  # the documented bound on the bin width
    amax = r[1]
    if p == 100:
        assert amax == mags.max()
    # The p-th percentile lies between two neighbouring order statistics (numpy interpolates
    # between them); the histogram answer must be within a bin of that bracket...
    lower = np.percentile(mags, p, method="lower")
    higher = np.percentile(mags, p, method="higher")
    assert lower - width <= amax <= higher + width
    # ...and within one bin width of np.percentile where the data is dense.
    if p <= 99:
        assert abs(amax - np.percentile(mags, p)) <= width


# -- mse ------------------------------------------------------------------------------------------


def brute_force_mse(x, signed, num_bits, n=500, narrow_range=False):
    top = float(magnitudes(x, signed).max())
    cands = np.linspace(top / n, top, n)
    errors = np.array([quant_mse(x, a, signed, num_bits, narrow_range) for a in cands])
    return float(cands[np.argmin(errors)]), float(errors.min())


def mse_cases():
    rng = np.random.default_rng(4)
    gauss = growing_batches(rng, [0.5, 1.0, 2.0], n=6000)
    outliers = [rng.standard_normal(20000), np.array([30.0, -28.0, 25.0, -31.0])]
    relu = [np.maximum(rng.laplace(size=8000), 0.0) * s for s in (1.0, 3.0)]
    return [
        ("gauss8", gauss, True, 8),
        ("gauss4", gauss, True, 4),
        ("gauss2", gauss, True, 2),
        ("gauss1", gauss, True, 1),
        ("outliers4", outliers, True, 4),
        ("relu8", relu, False, 8),
        ("relu3", relu, False, 3),
        ("gauss_unsigned5", gauss, False, 5),
    ]


@pytest.mark.parametrize("name, batches, signed, num_bits", mse_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_mse_matches_brute_force(name, batches, signed, num_bits):
    r = feed(cal.make_calibrator("mse", signed, num_bits), batches)
    assert_range(r, signed)
    x = finite(batches)
    best_amax, best_err = brute_force_mse(x, signed, num_bits)
    width = 2.0 * magnitudes(x, signed).max() / 2048
    err = quant_mse(x, r[1], signed, num_bits)
    assert err <= 1.01 * best_err or abs(r[1] - best_amax) <= width, (r, best_amax, err, best_err)


def test_mse_follows_the_narrow_grid(num_bits=2):
    # A narrow signed grid has one code fewer below zero (2 bits: -1..1, not -2..1); the
    # search must clip negative values where that grid does, or it picks the wide grid's amax
    # (4% more error here).
    x = np.random.default_rng(9).laplace(size=20000)
    r = feed(cal.make_calibrator("mse", True, num_bits, narrow_range=True), [x])
    best_amax, best_err = brute_force_mse(x, True, num_bits, narrow_range=True)
    wide_amax, _ = brute_force_mse(x, True, num_bits)
    assert abs(best_amax - wide_amax) > 4 * 2.0 * np.abs(x).max() / 2048  # the grids' optima differ
    err = quant_mse(x, r[1], True, num_bits, narrow_range=True)
    assert err <= 1.01 * best_err, (r, best_amax, err, best_err)


def test_mse_clips_far_outliers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(20000)
    x[:4] = [30.0, -28.0, 25.0, -31.0]
    amax = feed(cal.make_calibrator("mse", True, 4), np.array_split(x, 3))[1]
    assert 1.5 < amax < 0.2 * 31.0
    assert quant_mse(x, amax, True, 4) < 0.2 * quant_mse(x, 31.0, True, 4)


def test_mse_with_many_bits_keeps_the_whole_range():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(5000)
    for signed, bits in ((True, 24), (False, 62)):
        amax = feed(cal.make_calibrator("mse", signed, bits), [x])[1]
        top = magnitudes(x, signed).max()
        assert top * (1 - 2 / 2048) <= amax <= top


# -- entropy ----------------------------------------------------------------------------------------


def gauss_with_outliers(seed, n=200000, k=10, value=40.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    x[rng.choice(n, k, replace=False)] = value * rng.choice([-1.0, 1.0], k)
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("signed", [True, False])
def test_entropy_clips_rare_outliers(seed, signed):
    x = gauss_with_outliers(seed)
    r = feed(cal.make_calibrator("entropy", signed, 8), np.array_split(x, 4))
    assert_range(r, signed)
    assert 3.0 < r[1] < 0.25 * 40.0


def test_entropy_is_deterministic_and_scale_and_sign_equivariant():
    x = gauss_with_outliers(2, n=100000)
    batches = np.array_split(x, 3)
    first = feed(cal.EntropyCalibrator(True, 8), batches)
    assert feed(cal.EntropyCalibrator(True, 8), batches) == first
    # Power-of-two scaling maps every bin onto a bin: the answer scales exactly.
    assert feed(cal.EntropyCalibrator(True, 8), [4.0 * b for b in batches]) == (4.0 * first[0], 4.0 * first[1])
    # Signed calibration sees magnitudes only.
    assert feed(cal.EntropyCalibrator(True, 8), [-b for b in batches]) == first


def test_entropy_monotone_sanity():
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal(200000)
    amaxes = [feed(cal.EntropyCalibrator(True, b), [gauss])[1] for b in (2, 4, 6, 8)]
    assert all(a < b for a, b in zip(amaxes, amaxes[1:])), amaxes  # more codes: clip less
    assert 1.0 < amaxes[0] and amaxes[-1] < gauss.max()
    # A heavier tail at the same standard deviation needs a wider range.
    laplace = rng.laplace(size=200000) / math.sqrt(2.0)
    assert feed(cal.EntropyCalibrator(True, 8), [laplace])[1] > 1.3 * amaxes[-1]
    # ReLU data calibrated unsigned: zeros are ignored, so this matches the positive half alone.
    relu = np.maximum(gauss, 0.0)
    positive = gauss[gauss > 0]
    assert feed(cal.EntropyCalibrator(False, 8), [relu]) == feed(cal.EntropyCalibrator(False, 8), [positive])
