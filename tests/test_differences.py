"""Every FIX row of docs/SEMANTICS.md / the README's "Differences from TensorFlow" table (rows 1-8), and the
smaller deliberate differences listed in docs/DIFFERENCES.md: each test shows our behaviour
and, where TensorFlow runs at all, that TensorFlow's differs. Inputs that abort TensorFlow
run in a child process (tests/helpers/qdq_worker.py)."""
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import cases, compare, qdq_worker, reference

F = np.float32


def _run(module, op, **kw):
    return getattr(module.raw_ops, op)(**kw).numpy()


# Row 1 (half/bfloat16 kernels): tests/test_half_bfloat16.py (built-in NotFoundError, ours bit-identical
# to cast(builtin_float32(cast_float32(x)))). The XLA comparison needs jit_compile, tested here.
def test_row1_narrow_types_compute_in_float32_unlike_xla():
    x = np.array([0.0, 0.5, 1.0], np.float16)
    kw = dict(input_min=np.float16(0), input_max=np.float16(1), signed_input=False, num_bits=16, range_given=True)
    ours = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, **kw).numpy()
    np.testing.assert_array_equal(ours, x)
    try:
        xla = tf.function(lambda t: tf.raw_ops.QuantizeAndDequantizeV4(input=t, **kw), jit_compile=True)(x).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnimplementedError):
        pytest.skip("this TensorFlow build cannot JIT-compile on CPU; the non-XLA half is in test_half_bfloat16.py")
    assert not np.array_equal(xla, ours), "TF's XLA path no longer overflows in half: update the docs"


@pytest.mark.parametrize("op", ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"])
def test_row2_per_channel_given_works_where_tf_rejects(op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(F)
    lo, hi = np.array([-1.0, -0.5, -2.0], F), np.array([1.0, 0.25, 0.5], F)
    kw = dict(input=x, input_min=lo, input_max=hi, range_given=True, axis=1, num_bits=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scalar"):
        _run(tf, op, **kw)
    ours = _run(qdq, op, **kw)
    compare.assert_same_bits(ours, reference.quantize(x, lo, hi, range_given=True, axis=1, num_bits=4), "model")
    v3 = tf.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=lo, input_max=hi, num_bits=4, axis=1)
    compare.assert_same_bits(ours, v3, "TF V3")


def test_row2_per_channel_min_above_max_is_an_error_where_tf_v3_returns_garbage():
    x = np.ones((2, 3), F)
    kw = dict(input=x, input_min=np.array([-1.0, 2.0, -1.0], F), input_max=np.array([1.0, 1.0, 1.0], F), axis=1)
    tf.raw_ops.QuantizeAndDequantizeV3(num_bits=8, **kw)  # TF accepts the inverted range silently
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_min must be <= input_max.*channel 1"):
        qdq.raw_ops.QuantizeAndDequantizeV3(num_bits=8, **kw)


def test_row3_auto_range_gradient_passes_every_non_nan_element():
    x = tf.constant([-1.0, -0.5, 0.0, 0.3, np.nan, 0.8])
    g = tf.ones_like(x)

    def grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x, 0.0, 0.0)
        return tape.gradient(y, x, output_gradients=g).numpy()

    np.testing.assert_array_equal(grad(qdq.quantize_and_dequantize_v2), [1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(grad(tf.quantization.quantize_and_dequantize_v2), [0, 0, 1, 0, 0, 0])


def test_row4_second_order_gradient_is_defined():
    x = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0])

    def second(fn):
        g = tf.ones_like(x)
        with tf.GradientTape() as outer:
            outer.watch(g)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = fn(x, -1.0, 1.0, range_given=True)
            dx = inner.gradient(y, x, output_gradients=g)
        return outer.gradient(dx, g)

    np.testing.assert_array_equal(second(qdq.quantize_and_dequantize_v2).numpy(), [0, 1, 1, 1, 0])
    with pytest.raises((TypeError, LookupError)):
        second(tf.quantization.quantize_and_dequantize_v2)


def test_row5_nan_is_ignored_by_the_auto_range():
    clean = np.array([-1.0, -0.5, 0.0, 0.3, 0.8], F)
    want = _run(tf, "QuantizeAndDequantizeV2", input=clean, input_min=F(0), input_max=F(0))
    results = {}
    for pos in range(clean.size + 1):
        x = np.insert(clean, pos, np.nan)
        ours = _run(qdq, "QuantizeAndDequantizeV2", input=x, input_min=F(0), input_max=F(0))
        compare.assert_same_bits(ours, np.insert(want, pos, np.nan), f"NaN at {pos}")
        results[pos] = compare.bits(_run(tf, "QuantizeAndDequantizeV2", input=x, input_min=F(0),
                                         input_max=F(0))).tobytes()
    assert len(set(results.values())) > 1, "TF's result no longer depends on where the NaN sits: update the docs"
    all_nan = np.full(4, np.nan, F)
    assert np.all(np.isnan(_run(qdq, "QuantizeAndDequantizeV2", input=all_nan, input_min=F(0), input_max=F(0))))


def _degenerate_batch(seed, count, dtype):
    """Random cases whose range is degenerate in at least one slice (SEMANTICS §3.4)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        c = cases.random_case(rng, dtype)
        kind = rng.integers(0, 3)
        if kind == 0:  # unsigned, data (or given range) <= 0
            c.signed_input = False
            c.x = -np.abs(c.x)
            if c.range_given:
                c.input_min, c.input_max = -np.abs(c.input_max) * 2, -np.abs(c.input_max)
        elif kind == 1:  # 1-bit signed, data (or range) >= 0
            c.signed_input, c.num_bits, c.narrow_range = True, 1, False
            c.x = np.abs(c.x)
            if c.range_given:
                c.input_min, c.input_max = np.abs(c.input_min), np.abs(c.input_min) * 2
        else:  # 1-bit signed narrow: qmin = qmax = 0
            c.signed_input, c.num_bits, c.narrow_range = True, 1, True
        c.x = c.x.astype(dtype)
        c.input_min, c.input_max = np.asarray(c.input_min, dtype), np.asarray(c.input_max, dtype)
        if c.degenerate() and c.x.size and (c.range_given or not np.any(c.x == 0)):
            out.append(c)  # (auto data with zeros: TF's ±0 max depends on its reduction order)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_row6_degenerate_ranges_give_zeros(dtype):
    """Every non-NaN output of a degenerate slice is a zero; where TF returns a zero too, ours has
    the same bits; and TF returns NaN, inf or garbage in many of these cases."""
    bad, tf_wrong = [], 0
    batch = _degenerate_batch(90, 300, dtype)
    for i, c in enumerate(batch):
        op = "QuantizeAndDequantizeV2" if not (c.per_channel and c.range_given) else "QuantizeAndDequantizeV3"
        ours = _run(qdq, op, **c.kwargs(op))
        if op.endswith("V3"):
            c.round_mode = "HALF_TO_EVEN"
        model = c.reference()
        theirs = _run(tf, op, **c.kwargs(op)) if c.x.ndim or not op.endswith("V3") else model
        degenerate_slices = [reference.degenerate(lo, hi, c.signed_input, c.num_bits, c.narrow_range, dtype)
                             for lo, hi in c.slices()]
        if not compare.same_bits(ours, model):
            bad.append(f"#{i} vs model {c!r}: {compare.describe(ours, model)}")
        if all(degenerate_slices):
            if np.any((ours != 0) & ~np.isnan(ours)):
                bad.append(f"#{i} non-zero output {c!r}: {ours.reshape(-1)[:6]}")
            tf_zero = (theirs == 0) & ~np.isnan(c.x)
            if not compare.same_bits(ours[tf_zero], theirs[tf_zero]):
                bad.append(f"#{i} sign differs where TF gives a zero {c!r}: "
                           f"{compare.describe(ours[tf_zero], theirs[tf_zero])}")
            tf_wrong += int(np.any(~tf_zero & ~np.isnan(c.x)))
    cases.record(f"degenerate ranges {np.dtype(dtype).name}", len(batch))
    assert not bad, "\n".join(bad[:20])
    assert tf_wrong > len(batch) // 4, f"TF was wrong in only {tf_wrong} of {len(batch)} cases: update the docs"


def test_row6_examples():
    x = np.array([3.0, 1.0, 0.5, 0.0, -0.0], F)
    kw = dict(input=x, input_min=F(0), input_max=F(0), num_bits=1)  # 1-bit signed, data >= 0
    theirs = _run(tf, "QuantizeAndDequantizeV2", **kw)
    assert not np.all(np.isfinite(theirs))
    compare.assert_same_bits(_run(qdq, "QuantizeAndDequantizeV2", **kw), np.array([0, 0, 0, 0, -0.0], F), "1-bit")
    kw = dict(input=np.array([-3.0, -1.0, -0.5], F), input_min=F(-2), input_max=F(-1), signed_input=False,
              range_given=True)  # unsigned, negative given range: TF returns +0, so do we
    compare.assert_same_bits(_run(qdq, "QuantizeAndDequantizeV2", **kw), _run(tf, "QuantizeAndDequantizeV2", **kw),
                             "unsigned negative range")


def _v3_abort_calls(lib):
    T = qdq_worker.tensor
    x = np.arange(12, dtype=F).reshape(3, 4)
    base = dict(input=T(x), num_bits=T(8, "int32"), range_given=True)
    return [
        qdq_worker.call(f"{lib}-axis--2", "QuantizeAndDequantizeV3",
                        dict(base, input_min=T(0.0), input_max=T(1.0), axis=-2), lib=lib),
        qdq_worker.call(f"{lib}-min-vector", "QuantizeAndDequantizeV3",
                        dict(base, input_min=T([0.0, 0.0]), input_max=T([1.0, 1.0]), axis=-1), lib=lib),
    ]


def test_row7_inputs_that_abort_tf_v3_are_errors():
    # Ours first: they share the first child process with TF's first (aborting) call.
    results = qdq_worker.run_calls(_v3_abort_calls("qdq") + _v3_abort_calls("tf"))
    for name, word in (("axis--2", "axis"), ("min-vector", "input_min")):
        theirs, ours = results[f"tf-{name}"], results[f"qdq-{name}"]
        assert ours["outcome"] == "error" and ours["type"] == "InvalidArgumentError", ours
        assert word in ours["message"], ours["message"]
        assert theirs["outcome"] == "crash", f"TF's V3 no longer aborts on {name}: update the docs ({theirs})"
    # Row 7's advisories: tests/test_errors.py::test_security_advisory_regression.


def test_row8_wrapper_axis_and_lists():
    x = tf.ones((2, 3, 4))
    lo, hi = tf.zeros(2), tf.ones(2)
    with pytest.raises(ValueError, match="axis=-4"):
        qdq.quantize_and_dequantize(x, lo, hi, range_given=True, axis=-4)
    # TF wraps -4 to 2 silently: per-channel along the last axis.
    x = tf.random.stateless_normal((2, 3, 4), seed=[1, 2])
    lo4, hi4 = tf.zeros(4), tf.zeros(4)
    wrapped = tf.quantization.quantize_and_dequantize(x, lo4, hi4, axis=-4)
    compare.assert_same_bits(wrapped, tf.quantization.quantize_and_dequantize(x, lo4, hi4, axis=2), "TF wraps")
    with pytest.raises(ValueError, match="axis=-4"):
        qdq.quantize_and_dequantize(x, lo4, hi4, axis=-4)
    out = qdq.quantize_and_dequantize([-1.0, 0.3, 0.8], [0.0], [0.0])
    np.testing.assert_array_equal(out.numpy(), np.array([-1.0, 0.296875, 0.796875], F))
    # Lists (or NumPy arrays) with a negative axis: TF reads input.shape before converting.
    rows = [[-1.0, 0.3], [0.8, 0.5]]
    with pytest.raises(AttributeError):
        tf.quantization.quantize_and_dequantize_v2(rows, [0.0, 0.0], [0.0, 0.0], axis=-1)
    compare.assert_same_bits(qdq.quantize_and_dequantize_v2(rows, [0.0, 0.0], [0.0, 0.0], axis=-1),
                             tf.quantization.quantize_and_dequantize_v2(tf.constant(rows), tf.zeros(2), tf.zeros(2),
                                                                        axis=1), "lists")
    with pytest.raises(ValueError, match="rank"):
        tf.function(lambda t: qdq.quantize_and_dequantize(t, 0.0, 0.0, axis=-1),
                    input_signature=[tf.TensorSpec(None, tf.float32)]).get_concrete_function()


def test_rank0_input_to_v3_is_accepted_unlike_tf():
    kw = dict(input=F(0.3), input_min=F(-1), input_max=F(1), num_bits=8)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.raw_ops.QuantizeAndDequantizeV3(**kw)
    v2 = tf.raw_ops.QuantizeAndDequantizeV2(input=F(0.3), input_min=F(-1), input_max=F(1), range_given=True)
    compare.assert_same_bits(qdq.raw_ops.QuantizeAndDequantizeV3(**kw), v2, "rank-0 V3")


@pytest.mark.parametrize("op", ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"])
def test_one_element_vector_range_is_accepted_in_eager(op):
    """Per-tensor given ranges may be shaped [1] in eager (as TF's V3 allows; TF's V2/V4 reject it)."""
    x = np.array([-1.0, -0.5, 0.0, 0.3], F)
    kw = dict(input=x, input_min=np.array([-1.0], F), input_max=np.array([1.0], F), range_given=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scalar"):
        _run(tf, op, **kw)
    want = _run(tf, op, **dict(kw, input_min=F(-1), input_max=F(1)))
    compare.assert_same_bits(_run(qdq, op, **kw), want, "[1]-shaped range")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "half"])
def test_row6_degenerate_channels_in_wide_rows(dtype):
    """Per-channel along the last axis with many channels (the vectorised row loops), half of
    them degenerate (unsigned with a negative given range: TF returns +0 there, and so must we)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 67)).astype(dtype)
    x[:, ::5] = 0.0
    x[:, 1::7] = -0.0
    lo = np.where(np.arange(67) % 2 == 0, -2.0, 0.0).astype(dtype)
    hi = np.where(np.arange(67) % 2 == 0, -1.0, 1.5).astype(dtype)
    bad = []
    for mode in ("HALF_TO_EVEN", "HALF_UP"):
        c = cases.Case(x=x, input_min=lo, input_max=hi, signed_input=False, range_given=True, round_mode=mode,
                       axis=1)
        for op in ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4"):
            ours = _run(qdq, op, **c.kwargs(op))
            want = c.reference() if not op.endswith("V3") else \
                cases.Case(**{**c.__dict__, "round_mode": "HALF_TO_EVEN"}).reference()
            if not compare.same_bits(ours, want):
                bad.append(f"{op} {mode} vs model: {compare.describe(ours, want)}")
            if op.endswith("V3") and dtype != np.float16:
                theirs = _run(tf, op, **c.kwargs(op))
                if not compare.same_bits(ours, theirs):
                    bad.append(f"{op} vs TF: {compare.describe(ours, theirs)}")
    assert not bad, "\n".join(bad)
