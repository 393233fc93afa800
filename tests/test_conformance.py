"""Conformance: our V2/V3/V4 are bit-identical to TensorFlow's own kernels (float32/float64).

Thousands of random cases (tests/helpers/cases.py) across shapes, axes, num_bits, signedness,
narrow range, rounding mode, auto and given ranges and magnitudes 1e-30..1e30, in eager
and inside tf.function. Each test iterates over its batch and reports every mismatch.
Cases where TensorFlow is documented wrong (degenerate ranges, SEMANTICS §3.4) are excluded
here and covered by test_differences.py; so is rank-0 input to TF's V3 (TF rejects it), and
the rare auto range whose scale comes from a zero bound over data holding both +0.0 and -0.0
(the sign TF's reduction picks then depends on its SIMD width; docs/DIFFERENCES.md).
Per-channel given ranges, which TF's V2/V4 reject, are compared with TF's V3 (which
accepts them; HALF_TO_EVEN only) and with the float NumPy model (tests/helpers/reference.py).
"""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import gen_array_ops

import tensorflow_qdq as qdq
from tests.helpers import cases, compare

OPS = ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4")
DTYPES = (np.float32, np.float64)


def _tf_runs(case, op):
    """Whether TF's kernel is defined for this case (anything else is a documented FIX)."""
    if case.degenerate() or case.zero_sign_ambiguous():
        return False  # (docs/DIFFERENCES.md: the signs of zeros TF's reduction picks are not defined)
    if op.endswith("V3") and case.x.ndim == 0:
        return False  # TF's V3 rejects rank-0 input; ours accepts it (test_differences.py)
    if case.per_channel and case.range_given and not op.endswith("V3"):
        return False  # TF's V2/V4 reject every per-channel given range
    return True


def _check_batch(batch, name, run_ours, run_tf, ops=OPS):
    """Runs every case through every op; returns the list of mismatch descriptions."""
    bad, checked = [], 0
    for i, case in enumerate(batch):
        for op in ops:
            if not _tf_runs(case, op):
                continue
            ours, theirs = run_ours(op, case), run_tf(op, case)
            checked += 1
            if not compare.same_bits(ours, theirs):
                bad.append(f"#{i} {op} {case!r}: {compare.describe(ours, theirs)}")
    cases.record(name, checked)
    return bad, checked


def _eager(module):
    return lambda op, case: getattr(module.raw_ops, op)(**case.kwargs(op))


def _assert_none(bad, checked, minimum):
    assert checked >= minimum, f"only {checked} comparisons ran"
    assert not bad, f"{len(bad)} of {checked} comparisons differ:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_per_tensor_eager(dtype):
    batch = cases.random_cases(100 + np.dtype(dtype).itemsize, 1000, dtype, per_channel=False)
    bad, checked = _check_batch(batch, f"per-tensor eager {np.dtype(dtype).name}", _eager(qdq), _eager(tf))
    _assert_none(bad, checked, 2000)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_per_channel_auto_eager(dtype):
    batch = cases.random_cases(200 + np.dtype(dtype).itemsize, 600, dtype, per_channel=True, range_given=False)
    bad, checked = _check_batch(batch, f"per-channel auto eager {np.dtype(dtype).name}", _eager(qdq), _eager(tf))
    _assert_none(bad, checked, 1000)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_per_channel_given_against_tf_v3(dtype):
    """TF's V3 accepts per-channel given ranges: our V2, V3 and V4 (HALF_TO_EVEN) equal it."""
    batch = cases.random_cases(300 + np.dtype(dtype).itemsize, 600, dtype, per_channel=True, range_given=True)
    for case in batch:
        case.round_mode = "HALF_TO_EVEN"
    v3 = "QuantizeAndDequantizeV3"

    def tf_v3(op, case):
        return tf.raw_ops.QuantizeAndDequantizeV3(**case.kwargs(v3))

    bad, checked = [], 0
    for op in OPS:
        b, n = _check_batch(batch, f"per-channel given vs TF V3 {np.dtype(dtype).name}",
                            _eager(qdq), tf_v3, ops=(op,)) if op.endswith("V3") else \
            _check_batch([c for c in batch if not c.degenerate()],
                         f"per-channel given vs TF V3 {np.dtype(dtype).name}",
                         lambda _op, c, op=op: getattr(qdq.raw_ops, op)(**c.kwargs(op)), tf_v3, ops=(v3,))
        bad += b
        checked += n
    _assert_none(bad, checked, 1000)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_per_channel_given_against_model(dtype):
    """Both rounding modes, per-channel given ranges, against the float NumPy model."""
    batch = cases.random_cases(400 + np.dtype(dtype).itemsize, 400, dtype, per_channel=True, range_given=True)
    bad = []
    for i, case in enumerate(batch):
        want = case.reference()
        for op in OPS:
            got = getattr(qdq.raw_ops, op)(**case.kwargs(op))
            ref = want if not op.endswith("V3") or case.round_mode == "HALF_TO_EVEN" else \
                cases.Case(**{**case.__dict__, "round_mode": "HALF_TO_EVEN"}).reference()
            if not compare.same_bits(got, ref):
                bad.append(f"#{i} {op} {case!r}: {compare.describe(got, ref)}")
    cases.record(f"per-channel given vs model {np.dtype(dtype).name}", 3 * len(batch))
    _assert_none(bad, 3 * len(batch), 1000)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_model_matches_tf(dtype):
    """The NumPy model itself agrees with TF wherever TF is right (so it is a fair judge)."""
    batch = cases.random_cases(500 + np.dtype(dtype).itemsize, 300, dtype)
    op = "QuantizeAndDequantizeV2"
    bad, checked = _check_batch(batch, f"model vs TF {np.dtype(dtype).name}", lambda _op, c: c.reference(),
                                _eager(tf), ops=(op,))
    _assert_none(bad, checked, 150)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_large_tensors_use_many_shards(dtype):
    """Tensors big enough for the thread pool to split them (per-tensor and per-channel)."""
    rng = np.random.default_rng(600 + np.dtype(dtype).itemsize)
    batch = [cases.random_case(rng, dtype, big=True, per_channel=bool(i % 2)) for i in range(8)]
    bad, checked = _check_batch(batch, f"large eager {np.dtype(dtype).name}", _eager(qdq), _eager(tf))
    _assert_none(bad, checked, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_inside_tf_function(dtype):
    """The same comparison inside one traced graph per batch (graph-mode kernels, shape functions)."""
    batch = cases.random_cases(700 + np.dtype(dtype).itemsize, 200, dtype)
    pairs = [(i, op, c) for i, c in enumerate(batch) for op in OPS if _tf_runs(c, op)]
    # Per-channel given: our V2/V4 against TF's V3 in the same graph.
    cross = [(i, op, c) for i, c in enumerate(batch) if c.per_channel and c.range_given and not c.degenerate()
             and c.round_mode == "HALF_TO_EVEN" for op in ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4")]

    @tf.function
    def run():
        ours = [getattr(qdq.raw_ops, op)(**c.kwargs(op)) for _, op, c in pairs]
        theirs = [getattr(tf.raw_ops, op)(**c.kwargs(op)) for _, op, c in pairs]
        ours += [getattr(qdq.raw_ops, op)(**c.kwargs(op)) for _, op, c in cross]
        theirs += [tf.raw_ops.QuantizeAndDequantizeV3(**c.kwargs("QuantizeAndDequantizeV3")) for _, _, c in cross]
        return ours, theirs

    ours, theirs = run()
    bad = [f"#{i} {op} {c!r}: {compare.describe(a, b)}"
           for (i, op, c), a, b in zip(pairs + cross, ours, theirs) if not compare.same_bits(a, b)]
    cases.record(f"tf.function {np.dtype(dtype).name}", len(ours))
    _assert_none(bad, len(ours), 350)


WRAPPERS = (("quantize_and_dequantize", tf.quantization.quantize_and_dequantize),
            ("quantize_and_dequantize_v2", tf.quantization.quantize_and_dequantize_v2),
            # TF 2.21 exports no public quantize_and_dequantize_v4: its generated op wrapper.
            ("quantize_and_dequantize_v4", getattr(tf, "quantize_and_dequantize_v4", None)
             or gen_array_ops.quantize_and_dequantize_v4))


def test_python_wrappers_match_tf_wrappers():
    """The tf.quantization-style functions (wrapper axis convention: None per-tensor, negative
    counts from the end; v4 keeps the raw convention) equal TF's functions of the same name."""
    batch = [c for c in cases.random_cases(800, 200, np.float32) if not c.degenerate()
             and not (c.per_channel and c.range_given)]
    rng = np.random.default_rng(801)
    bad, n = [], 0
    for i, c in enumerate(batch):
        for name, theirs_fn in WRAPPERS:
            if name.endswith("v4"):
                axis = c.axis
            elif c.per_channel:
                axis = c.axis - c.x.ndim if rng.random() < 0.5 else c.axis  # negative counts from the end
            else:
                axis = None
            kw = dict(signed_input=c.signed_input, num_bits=c.num_bits, range_given=c.range_given,
                      round_mode=c.round_mode, narrow_range=c.narrow_range, axis=axis)
            ours = getattr(qdq, name)(c.x, c.input_min, c.input_max, **kw)
            # (TF's wrappers need tensors: they read input.shape.ndims)
            theirs = theirs_fn(tf.constant(c.x), tf.constant(c.input_min), tf.constant(c.input_max), **kw)
            n += 1
            if not compare.same_bits(ours, theirs):
                bad.append(f"#{i} {name} axis={axis} {c!r}: {compare.describe(ours, theirs)}")
    cases.record("Python wrappers vs TF's", n)
    _assert_none(bad, n, 300)


def test_spec_worked_examples():
    """SEMANTICS §3's worked examples, on ours, on TF and on the model."""
    f = np.float32
    x = np.array([-11.0, -10.0, 0.05, 5.0, 9.921875, 20.0], f)
    examples = [
        (dict(input=x, input_min=f(-10), input_max=f(5), range_given=True), None),
        (dict(input=x, input_min=f(-10), input_max=f(10), range_given=True), None),
        (dict(input=np.array([-1, -0.5, 0, 0.3, 0.8, 0.555, 0.50390625], f), input_min=f(0), input_max=f(0)),
         [-1, -0.5, 0, 0.296875, 0.796875, 0.5546875, 0.5]),
        (dict(input=np.array([-1, -0.5, 0, 0.3, 0.8, 0.555, 0.50390625], f), input_min=f(0), input_max=f(0),
              round_mode="HALF_UP"), [-1, -0.5, 0, 0.296875, 0.796875, 0.5546875, 0.5078125]),
        (dict(input=np.array([-0.5, 0, 0.3, 0.8], f), input_min=f(0), input_max=f(1), range_given=True,
              signed_input=False), np.array([0, 0, 76, 204], f) * (f(1) / f(255))),  # grid * inv_scale
    ]
    for kw, want in examples:
        ours = qdq.raw_ops.QuantizeAndDequantizeV2(**kw)
        compare.assert_same_bits(ours, tf.raw_ops.QuantizeAndDequantizeV2(**kw), f"TF {kw}")
        model_kw = {k: v for k, v in kw.items() if k not in ("input", "input_min", "input_max")}
        compare.assert_same_bits(ours, cases.reference.quantize(kw["input"], kw["input_min"], kw["input_max"],
                                                                **model_kw), f"model {kw}")
        if want is not None:
            compare.assert_same_bits(ours, np.asarray(want, f), f"SEMANTICS {kw}")
    # Given [-10, 5]: scale 12.8, hi becomes 9.921875; given [-10, 10]: lo becomes -10.07874.
    out = qdq.raw_ops.QuantizeAndDequantizeV2(**examples[0][0]).numpy()
    assert out.max() == f(9.921875) and out[0] == f(-10)
    out = qdq.raw_ops.QuantizeAndDequantizeV2(**examples[1][0]).numpy()
    assert out[0] == f(-10.07874) and out[-1] == f(10)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_many_more_cases(dtype, seed):
    """`pytest -m slow`: ten times the default batch, per-tensor and per-channel, auto and given."""
    batch = cases.random_cases(10_000 + 100 * seed + np.dtype(dtype).itemsize, 2000, dtype)
    bad, checked = _check_batch(batch, f"slow batch {np.dtype(dtype).name}", _eager(qdq), _eager(tf))
    _assert_none(bad, checked, 3000)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_portable_loops_match_tf_too(dtype):
    """The same comparison with the portable (non-SIMD) CPU loops forced, so CI machines with and
    without AVX2 run code that was checked against TF (tensorflow_qdq._isa, the one switch)."""
    from tensorflow_qdq import _isa

    with _isa.using("baseline") as chosen:
        assert chosen == "baseline"
        batch = cases.random_cases(900 + np.dtype(dtype).itemsize, 250, dtype)
        rng = np.random.default_rng(901)
        batch += [cases.random_case(rng, dtype, big=True, per_channel=bool(i % 2)) for i in range(4)]
        bad, checked = _check_batch(batch, f"portable loops {np.dtype(dtype).name}", _eager(qdq), _eager(tf))
    _assert_none(bad, checked, 400)
