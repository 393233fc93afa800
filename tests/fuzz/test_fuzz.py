"""CI budget of the fuzz suite: a fixed seed through the subprocess pool, a Hypothesis run
in-process, and checks that the harness itself works (the reference model agrees with
TensorFlow where TensorFlow is right; a dying worker is caught and reported)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings

from tests.helpers import reference as ref

from . import cases, execute, oracle, pool

CI_SEED = 20240601
CI_CASES = int(os.environ.get("QDQ_FUZZ_CI_CASES", "2500"))


def _describe(report):
    lines = [f"{report.cases} cases, seed {report.seed}"]
    for entry in (report.crashes + report.failures)[:10]:
        lines.append(f"{entry.get('kind', '')} {entry.get('how', entry.get('reason'))}: {entry['summary']}\n"
                     f"    error: {entry.get('error', '')[-400:]}\n    reproduce: {entry['reproducer']}")
    return "\n".join(lines)


def test_fixed_seed_budget_in_worker_processes():
    report = pool.run(CI_SEED, count=CI_CASES, workers=2, batch=CI_CASES // 2 + 1)
    assert report.cases == CI_CASES
    assert report.clean, _describe(report)
    # The mix must exercise both sides of the oracle and every op.
    assert report.passed_ok > CI_CASES // 5 and report.passed_error > CI_CASES // 5
    assert set(report.by_op) == set(cases.DEFAULT_OPS)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cases.hypothesis_cases(big_ok=False))
def test_hypothesis_cases_in_process(case):
    verdict = execute.run_case(case)
    assert verdict["status"] == "pass", (case.summary(), verdict)


def test_a_dying_worker_is_caught_with_its_reproducer(monkeypatch):
    monkeypatch.setenv("QDQ_FUZZ_CRASH_AT", "0,1")  # the worker aborts before those cases
    report = pool.run(99, count=3, workers=1)
    assert not report.clean
    assert [c["index"] for c in report.crashes] == [0, 1]
    crash = report.crashes[1]
    assert "SIGABRT" in crash["how"] and crash["reproducer"] == "python -m tests.fuzz --repro 99:1"
    assert crash["summary"] == cases.generate(99, 1).summary()
    assert report.cases == 3 and report.restarts == 2 and report.passed_ok + report.passed_error == 1


def test_cases_are_reproducible():
    for i in range(20):
        assert cases.fingerprint(cases.generate(5, i)) == cases.fingerprint(cases.generate(5, i))
    assert cases.fingerprint(cases.generate(5, 1)) != cases.fingerprint(cases.generate(5, 2))


def test_reference_worked_examples_from_spec():
    x = np.array([-1, -0.5, 0, 0.3, 0.8, 0.555, 0.50390625], np.float32)
    kw = dict(signed_input=True, num_bits=8, range_given=False, narrow_range=False, axis=-1, daz=False)
    got = ref.quantize(x, None, None, dtype="float32", round_mode="HALF_TO_EVEN", **kw)
    np.testing.assert_array_equal(got, np.float32([-1, -0.5, 0, 0.296875, 0.796875, 0.5546875, 0.5]))
    got = ref.quantize(x, None, None, dtype="float32", round_mode="HALF_UP", **kw)
    assert got[-1] == np.float32(0.5078125)
    lo, hi, scale, inv, degenerate = ref.slice_params(np.array([-10.0]), np.array([5.0]), -128, 127,
                                                       ref.Arith(np.float32, False))
    assert scale[0] == np.float32(12.8) and hi[0] == np.float32(9.921875) and not degenerate[0]
    got = ref.quantize(np.float32([-0.5, 0, 0.3, 0.8]), np.float32(0), np.float32(1), dtype="float32",
                       signed_input=False, num_bits=8, range_given=True, round_mode="HALF_TO_EVEN", narrow_range=False,
                       axis=-1, daz=False)
    np.testing.assert_array_equal(got, np.float32([0, 0, 76, 204]) * (np.float32(1) / np.float32(255)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_matches_tensorflow_where_tensorflow_is_right(dtype):
    """The oracle is checked against TF's own kernel on NaN-free, non-degenerate calls."""
    rng = np.random.default_rng(3)
    for trial in range(150):
        shape = tuple(rng.integers(1, 6, size=rng.integers(1, 4)))
        x = (rng.normal(size=shape) * 10.0 ** rng.uniform(-20, 20)).astype(dtype)
        axis = int(rng.integers(-1, len(shape)))
        signed = bool(rng.integers(2))
        bits = int(rng.integers(2, 17))
        round_mode = ["HALF_TO_EVEN", "HALF_UP"][trial % 2]
        given = trial % 3 == 0 and axis == -1
        peak = np.max(np.abs(x))
        lo, hi = (np.asarray(-peak * 0.5, dtype), np.asarray(peak * 0.7, dtype)) if given else (
            np.zeros((), dtype), np.zeros((), dtype))
        if not given and axis != -1:
            lo = hi = np.zeros(shape[axis], dtype)
        if not signed and not given:
            x = np.abs(x) + np.asarray(1, dtype)
        theirs = tf.raw_ops.QuantizeAndDequantizeV4(
            input=x, input_min=lo, input_max=hi, signed_input=signed, num_bits=bits, range_given=given,
            round_mode=round_mode, narrow_range=False, axis=axis).numpy()
        ours = ref.quantize(x, lo, hi, dtype=dtype, signed_input=signed, num_bits=bits, range_given=given,
                            round_mode=round_mode, narrow_range=False, axis=axis, daz=False)
        assert np.all(ref.same_or_nan(ours, theirs)), (trial, shape, axis, signed, bits, given)


def test_oracle_names_arguments():
    assert oracle.message_names("num_bits must be in [1, 61]", ["num_bits"])
    assert not oracle.message_names("something failed", ["num_bits", "axis"])
    # A graph error quotes the NodeDef, which lists every attribute: that part does not count.
    node = "Shape must be rank 1 but is rank 0 for '{{node Q}} = Q[axis=5, num_bits=8](a, b, c)' with input shapes: [3]"
    assert not oracle.message_names(node, ["axis"], graph=True)
    assert oracle.message_names("axis 5 is out of range for input of rank 1 for '{{node Q}} = Q[axis=5]'", ["axis"],
                                graph=True)
