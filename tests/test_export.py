"""tensorflow_qdq.export: SavedModels that load and run in a TensorFlow without our library.

The exported models are run in a fresh Python process that never imports
tensorflow_qdq (and checks that the Qdq> ops are not registered there); their
outputs are compared with the original model's outputs from this process.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers.cases import (
    DTYPES,
    per_channel_case,
    per_tensor_case,
    random_attrs,
    unsigned_zero_slices,
)
from tests.helpers.compare import assert_same_bits

_RUNNER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    original, exported, data, out = sys.argv[1:5]
    # NumPy files cannot hold bfloat16: those travel as float32 (exact) and are cast back.
    inputs = [tf.cast(tf.constant(a), k.split(".")[1]) for k, a in np.load(data, allow_pickle=False).items()]
    try:
        tf.saved_model.load(original)
        print("ORIGINAL LOADED")
    except Exception as exc:  # noqa: BLE001 - any failure proves the point
        print("ORIGINAL FAILED:", type(exc).__name__, str(exc).splitlines()[0][:200])
    results = {}
    for name in exported.split(","):
        model = tf.saved_model.load(name)
        for i, t in enumerate(model.f(inputs)):
            t = tf.cast(t, tf.float32) if t.dtype == tf.bfloat16 else t
            results[f"{os.path.basename(name)}/{i}"] = t.numpy()
    np.savez(out, **results)
    assert "tensorflow_qdq" not in sys.modules
    assert op_def_registry.get("Qdq>QuantizeAndDequantizeV4") is None
    print("FRESH PROCESS OK")
    """
).replace("import sys\n", "import os\nimport sys\n", 1)


def _cases(seed):
    """(kind, axis, attrs, arrays) for every dtype: per tensor and per channel, V2/V3/V4/V4Grad."""
    rng = np.random.default_rng(seed)
    cases = []
    for dtype in DTYPES:
        for i in range(10):
            kind = ("v2", "v3", "v4", "v4", "v4grad")[i % 5]
            attrs = random_attrs(rng, dtype)
            if kind in ("v3", "v4grad"):
                attrs["num_bits"] = min(attrs["num_bits"], 30)
            if i < 5:
                x, lo, hi = per_tensor_case(rng, dtype, (3, int(rng.integers(1, 30))), attrs)
                axis = -1
            else:
                x, lo, hi, axis = per_channel_case(rng, dtype, 16, 12, i % 3, attrs)
            cases.append((kind, axis, attrs, [x, lo, hi]))
    # Two per-tensor float32 cases where TensorFlow's kernel and ours differ (SEMANTICS §3.3-3.4).
    auto = dict(num_bits=8, narrow_range=False, round_mode="HALF_TO_EVEN", range_given=False)
    zero = np.float32(0)
    cases.append(("v4", -1, dict(auto, signed_input=False), [np.float32([[-1.0, -2.0, -0.5]]), zero, zero]))
    cases.append(("v2", -1, dict(auto, signed_input=True), [np.float32([[1.0, -2.0, 0.7, np.nan]]), zero, zero]))
    return cases


def _apply(case, x, lo, hi, ops=qdq.raw_ops):
    """One case through `ops`: ours (qdq.raw_ops) or TensorFlow's kernels (tf.raw_ops)."""
    kind, axis, attrs, _ = case
    if kind == "v4grad":
        g = tf.reverse(x, [0]) if x.shape.rank else x  # any gradient values
        return ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi, axis=axis)[0]
    if kind == "v3":
        return ops.QuantizeAndDequantizeV3(
            input=x, input_min=lo, input_max=hi, num_bits=attrs["num_bits"], signed_input=attrs["signed_input"],
            range_given=attrs["range_given"], narrow_range=attrs["narrow_range"], axis=axis)
    op = ops.QuantizeAndDequantizeV2 if kind == "v2" else ops.QuantizeAndDequantizeV4
    return op(input=x, input_min=lo, input_max=hi, axis=axis, **attrs)


def _maps_to_builtin(case):
    kind, axis, attrs, arrays = case
    if arrays[0].dtype not in (np.float32, np.float64):
        return False
    return kind == "v4grad" or axis == -1


def _slices(a, axis):
    a = np.asarray(a, np.float64)
    return [a] if axis == -1 else [np.take(a, c, axis=axis) for c in range(a.shape[axis])]


def _nan_or_degenerate(x_slice, attrs, lo=None, hi=None):
    """SEMANTICS §3.3-3.4: the slices where TensorFlow's kernel and ours may legitimately differ."""
    if np.isnan(x_slice).any():
        return True
    b = attrs["num_bits"]
    qmin = -(2 ** (b - 1)) + int(attrs["narrow_range"]) if attrs["signed_input"] else 0
    qmax = 2 ** (b - 1) - 1 if attrs["signed_input"] else 2**b - 1
    if lo is None:
        if x_slice.size == 0:
            return False
        lo, hi = np.nanmin(x_slice), np.nanmax(x_slice)
    return not (qmin * lo > 0) and not (qmax * hi > 0)


class _Model(tf.Module):
    def __init__(self, cases):
        super().__init__()
        self.cases = cases
        self.f = tf.function(self._run)

    def _run(self, inputs):
        outs = []
        for i, case in enumerate(self.cases):
            outs.append(_apply(case, *inputs[3 * i : 3 * i + 3]))
        return outs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cases = _cases(77)
    arrays = [a for case in cases for a in case[3]]
    inputs = [tf.constant(a) for a in arrays]
    model = _Model(cases)
    expected = [t.numpy() for t in model.f(inputs)]
    original = str(tmp / "original")
    tf.saved_model.save(model, original)
    counts = {mode: qdq.export(original, str(tmp / mode), exact=(mode == "exact")) for mode in ("default", "exact")}
    data = str(tmp / "inputs.npz")
    np.savez(data, **{f"a{i:03d}.{tf.as_dtype(a.dtype).name}": a.astype(np.float32) if a.dtype.itemsize == 2 and
                      tf.as_dtype(a.dtype) == tf.bfloat16 else a for i, a in enumerate(arrays)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, original, f"{tmp}/default,{tmp}/exact", data, str(tmp / "out.npz")],
        cwd=str(tmp), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = {k: v.astype(expected[int(k.split("/")[1])].dtype) for k, v in np.load(tmp / "out.npz").items()}
    return cases, inputs, expected, results, counts, proc.stdout


def test_fresh_process_cannot_load_original_but_loads_exports(exported):
    *_, counts, stdout = exported
    assert "ORIGINAL FAILED" in stdout and "FRESH PROCESS OK" in stdout, stdout
    assert counts == {"default": 42, "exact": 42}


def test_exact_export_is_bit_identical_on_every_input(exported):
    cases, _, expected, results, _, _ = exported
    for i, (case, e) in enumerate(zip(cases, expected)):
        sign_free = None if case[0] == "v4grad" else unsigned_zero_slices(case[3][0], case[1], case[2])
        assert_same_bits(results[f"exact/{i}"], e, f"case {i} {case[:3]}", sign_free)


def test_default_export_bit_identical_except_nan_or_degenerate_slices(exported):
    """Built-in cases compute TensorFlow's kernel exactly; that equals ours except on
    slices holding NaN or with a degenerate range (SEMANTICS §3.3-3.4, README differences)."""
    cases, inputs, expected, results, _, _ = exported
    differing = builtin_cases = 0
    for i, (case, e) in enumerate(zip(cases, expected)):
        got = results[f"default/{i}"]
        if not _maps_to_builtin(case):
            sign_free = None if case[0] == "v4grad" else unsigned_zero_slices(case[3][0], case[1], case[2])
            assert_same_bits(got, e, f"composite case {i} {case[:3]}", sign_free)
            continue
        builtin_cases += 1
        assert_same_bits(got, _apply(case, *inputs[3 * i : 3 * i + 3], ops=tf.raw_ops).numpy(), f"built-in case {i}")
        kind, axis, attrs, (x, lo, hi) = case
        if kind == "v4grad":  # same mask semantics as ours
            assert_same_bits(got, e, f"V4Grad case {i}")
            continue
        for c, (xs, gs, es) in enumerate(zip(_slices(x, axis), _slices(got, axis), _slices(e, axis))):
            if not np.array_equal(gs, es, equal_nan=True):
                bounds = (None, None)
                if attrs["range_given"]:
                    bounds = (lo, hi) if axis == -1 else (lo[c], hi[c])
                assert _nan_or_degenerate(xs, attrs, *bounds), f"case {i} slice {c} differs: {case[:3]}"
                differing += 1
    assert builtin_cases >= 10 and differing >= 2  # the two cases built to differ do
    print(f"{builtin_cases} built-in cases, {differing} NaN/degenerate slices differ from our kernels")


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="not a SavedModel"):
        qdq.export(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="out_dir"):
        qdq.export(str(tmp_path), str(tmp_path / "full"))
