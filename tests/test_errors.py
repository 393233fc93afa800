"""Every check of SEMANTICS §4 and every TensorFlow security advisory listed there.

All calls run in one child process (tests/helpers/qdq_worker.py), so an abort or a crash
fails its case instead of killing the run. Each case runs in eager mode, inside
tf.function with static shapes (the shape functions run at trace and may raise
ValueError) and inside tf.function with unknown shapes (the kernels' own checks run).
Each must raise InvalidArgumentError (ValueError at trace time; TypeError for dtype
mismatches caught by the Python wrapper) with a message naming the argument.
"""
import re

import numpy as np
import pytest

from tests.helpers import qdq_worker as worker

T = worker.tensor
V2, V3, V4, GRAD = ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4",
                    "QuantizeAndDequantizeV4Grad")
FORWARD = (V2, V3, V4)
MODES = ("eager", "function", "graph")
X = np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 4  # rank 2, dims (3, 4)


def _forward(op, x=X, lo=-1.0, hi=1.0, num_bits=8, dtype="float32", lo_dtype=None, **attrs):
    kw = dict(input=T(x, dtype), input_min=T(lo, lo_dtype or dtype), input_max=T(hi, lo_dtype or dtype), **attrs)
    if op == V3:
        kw["num_bits"] = num_bits if isinstance(num_bits, dict) else T(num_bits, "int32")
        kw.setdefault("range_given", True)
    else:
        kw["num_bits"] = num_bits
        kw.setdefault("range_given", True)
    return kw


def _grad(x=X, g=None, lo=-1.0, hi=1.0, axis=-1):
    return dict(gradients=T(np.ones_like(x) if g is None else g), input=T(x), input_min=T(lo), input_max=T(hi),
                axis=axis)


# (name, op, kwargs, words the message must contain (any of), modes)
CASES = []


def _add(name, op, kwargs, words, modes=MODES):
    CASES.append((name, op, kwargs, tuple(words), modes))


for _op in FORWARD:
    _add(f"{_op}-num_bits-0", _op, _forward(_op, num_bits=0), ["num_bits"])
    _add(f"{_op}-num_bits-negative", _op, _forward(_op, num_bits=-1), ["num_bits"])
    _add(f"{_op}-num_bits-62-signed", _op, _forward(_op, num_bits=62), ["num_bits"])
    _add(f"{_op}-num_bits-63-unsigned", _op, _forward(_op, num_bits=63, signed_input=False), ["num_bits"])
    _add(f"{_op}-num_bits-int32-max", _op, _forward(_op, num_bits=2**31 - 1), ["num_bits"])
    _add(f"{_op}-axis--2", _op, _forward(_op, axis=-2), ["axis"])
    _add(f"{_op}-axis--100", _op, _forward(_op, axis=-100), ["axis"])
    _add(f"{_op}-axis-int32-min", _op, _forward(_op, axis=-2**31), ["axis"])
    _add(f"{_op}-axis-rank", _op, _forward(_op, lo=[-1.0] * 3, hi=[1.0] * 3, axis=2), ["axis"])
    _add(f"{_op}-axis-int32-max", _op, _forward(_op, lo=[-1.0] * 3, hi=[1.0] * 3, axis=2**31 - 1), ["axis"])
    _add(f"{_op}-axis-0-rank-0", _op, _forward(_op, x=1.0, lo=[-1.0], hi=[1.0], axis=0), ["axis"])
    for _given in (True, False):
        _add(f"{_op}-axis-rank-auto={not _given}", _op,
             _forward(_op, lo=[-1.0] * 3, hi=[1.0] * 3, axis=2, range_given=_given), ["axis"])
    _add(f"{_op}-per-tensor-min-shape-2", _op, _forward(_op, lo=[-1.0, -2.0]), ["input_min"])
    _add(f"{_op}-per-tensor-max-shape-2", _op, _forward(_op, hi=[1.0, 2.0]), ["input_max"])
    _add(f"{_op}-per-tensor-min-empty", _op, _forward(_op, lo=np.zeros(0)), ["input_min"])
    _add(f"{_op}-per-tensor-min-rank-2", _op, _forward(_op, lo=[[-1.0]]), ["input_min"])
    _add(f"{_op}-per-tensor-min-gt-max", _op, _forward(_op, lo=2.0, hi=1.0), ["input_min"])
    _add(f"{_op}-per-tensor-min-nan", _op, _forward(_op, lo=float("nan")), ["input_min"])
    _add(f"{_op}-per-tensor-max-nan", _op, _forward(_op, hi=float("nan")), ["input_max", "input_min"])
    _add(f"{_op}-per-channel-min-size", _op, _forward(_op, lo=[-1.0] * 4, hi=[1.0] * 3, axis=0), ["input_min"])
    _add(f"{_op}-per-channel-max-size", _op, _forward(_op, lo=[-1.0] * 3, hi=[1.0] * 2, axis=0), ["input_max"])
    _add(f"{_op}-per-channel-min-scalar", _op, _forward(_op, lo=-1.0, hi=[1.0] * 3, axis=0), ["input_min"])
    _add(f"{_op}-per-channel-min-rank-2", _op, _forward(_op, lo=[[-1.0] * 3], hi=[1.0] * 3, axis=0),
         ["input_min"])
    _add(f"{_op}-per-channel-min-gt-max", _op, _forward(_op, lo=[-1.0, 2.0, -1.0], hi=[1.0] * 3, axis=0),
         ["input_min"])
    _add(f"{_op}-per-channel-min-nan", _op, _forward(_op, lo=[-1.0, np.nan, -1.0], hi=[1.0] * 3, axis=0),
         ["input_min"])
    _add(f"{_op}-int32-input", _op, _forward(_op, dtype="int32", lo=-1, hi=1), ["T", "input"])
    _add(f"{_op}-mixed-dtypes", _op, _forward(_op, lo_dtype="float64"), ["input_min", "T", "input"],
         modes=("function", "graph"))  # eager converts NumPy arguments to the input dtype, like TF
    # auto: the values of input_min/input_max are ignored, their static shapes are not (as in TF)
    _add(f"{_op}-auto-per-tensor-min-shape-3", _op, _forward(_op, lo=[0.0] * 3, range_given=False),
         ["input_min"], modes=("function",))
    _add(f"{_op}-auto-per-channel-max-size", _op, _forward(_op, lo=[0.0] * 3, hi=[0.0] * 2, axis=0,
                                                           range_given=False), ["input_max"], modes=("function",))
for _op in (V2, V4):
    _add(f"{_op}-round_mode", _op, _forward(_op, round_mode="HALF_DOWN"), ["round_mode"])
_add("V3-num_bits-vector", V3, _forward(V3, num_bits=T([8], "int32")), ["num_bits"])
_add("V3-num_bits-matrix", V3, _forward(V3, num_bits=T([[8, 8]], "int32")), ["num_bits"])
_add("V3-num_bits-empty", V3, _forward(V3, num_bits=T(np.zeros(0), "int32")), ["num_bits"])
_add("V3-num_bits-float", V3, _forward(V3, num_bits=T(8.0, "float32")), ["num_bits"], modes=("function", "graph"))

_add("V4Grad-gradients-shape", GRAD, _grad(g=np.ones((4, 3), np.float32)), ["gradients"])
_add("V4Grad-min-rank-2", GRAD, _grad(lo=[[-1.0]], hi=[[1.0]]), ["input_min"])
_add("V4Grad-per-tensor-min-shape-2", GRAD, _grad(lo=[-1.0, -1.0]), ["input_min"])
_add("V4Grad-per-tensor-max-shape-2", GRAD, _grad(hi=[1.0, 1.0]), ["input_max"])
_add("V4Grad-per-channel-min-size", GRAD, _grad(lo=[-1.0] * 2, hi=[1.0] * 3, axis=0), ["input_min"])
_add("V4Grad-per-channel-max-size", GRAD, _grad(lo=[-1.0] * 3, hi=[1.0] * 4, axis=0), ["input_max"])
_add("V4Grad-per-channel-min-rank-2", GRAD, _grad(lo=[[-1.0] * 3], hi=[[1.0] * 3], axis=0), ["input_min"])
_add("V4Grad-axis--2", GRAD, _grad(axis=-2), ["axis"])
_add("V4Grad-axis--100", GRAD, _grad(axis=-100), ["axis"])
_add("V4Grad-axis-rank", GRAD, _grad(lo=[-1.0] * 3, hi=[1.0] * 3, axis=2), ["axis"])
_add("V4Grad-axis-int32-max", GRAD, _grad(lo=[-1.0] * 3, hi=[1.0] * 3, axis=2**31 - 1), ["axis"])
_add("V4Grad-axis-0-rank-0", GRAD, _grad(x=np.float32(1.0), lo=[-1.0], hi=[1.0], axis=0), ["axis"])

# TensorFlow's security advisories for this op family (SEMANTICS §4) -> the case that reproduces each.
ADVISORIES = {
    "CVE-2020-15265": [f"{V2}-axis-rank", f"{V2}-axis-rank-auto=True", f"{V4}-axis-rank"],  # axis >= rank
    "CVE-2021-29553": [f"{V3}-axis-rank", f"{V3}-axis-int32-max"],  # V3 axis out of bounds
    "CVE-2021-29544": ["V4Grad-min-rank-2", "V4Grad-per-channel-min-rank-2"],  # rank-2 min/max for V4Grad
    "CVE-2021-29610": [f"{V2}-per-channel-min-size", f"{V2}-per-channel-max-size"],  # min/max size unchecked
    "CVE-2021-37645": ["V4Grad-axis--100", f"{V2}-axis--100", f"{V4}-axis--100"],  # axis < -1 overflow
    "CVE-2021-41205": ["V4Grad-per-channel-min-size", "V4Grad-per-tensor-min-shape-2"],  # V4Grad min/max shape
    "CVE-2022-29192": [f"{V3}-axis-int32-max", f"{V2}-axis-int32-max", "V4Grad-axis-int32-max"],  # axis 0x7fffffff
    "CVE-2022-36026": ["V3-num_bits-vector", "V3-num_bits-matrix", "V3-num_bits-empty"],  # non-scalar num_bits
    "CVE-2022-41910": [f"{V2}-per-tensor-min-shape-2", f"{V3}-per-tensor-min-shape-2",
                       f"{V4}-per-tensor-min-shape-2"],  # non-scalar min with axis=-1
}

_ALLOWED = {"eager": {"InvalidArgumentError", "TypeError"},
            "function": {"InvalidArgumentError", "ValueError", "TypeError"},
            "graph": {"InvalidArgumentError", "ValueError", "TypeError"}}


@pytest.fixture(scope="module")
def results():
    calls = [worker.call(f"{name}/{mode}", op, kwargs, mode=mode)
             for name, op, kwargs, _, modes in CASES for mode in modes]
    return worker.run_calls(calls)


def _core(message):
    """The error text without the Python/graph traceback that TF prepends (it quotes source
    lines, which could name any argument)."""
    found = list(re.finditer(r"\b\w+(Error|Exception): ", message))
    if found:
        message = message[found[-1].end():]
    return "\n".join(line for line in message.splitlines() if line and not line[0].isspace())


def _problems(results, name):
    _, _, _, words, modes = next(c for c in CASES if c[0] == name)
    out = []
    for mode in modes:
        r = results[f"{name}/{mode}"]
        if r["outcome"] == "crash":
            out.append(f"{name}/{mode}: CRASHED (exit {r['returncode']}): {r['message'][-300:]}")
        elif r["outcome"] == "ok":
            out.append(f"{name}/{mode}: no error, returned {str(r['values'])[:120]}")
        elif r["type"] not in _ALLOWED[mode]:
            out.append(f"{name}/{mode}: {r['type']} (want one of {sorted(_ALLOWED[mode])}): {r['message'][:300]}")
        elif not any(w in _core(r["message"]) for w in words):
            out.append(f"{name}/{mode}: message does not name {' or '.join(words)}: {r['message'][:300]}")
    return out


def test_every_bad_input_is_an_error_naming_the_argument(results):
    bad = [p for name, *_ in CASES for p in _problems(results, name)]
    assert len(results) >= 250
    assert not bad, f"{len(bad)} of {len(results)} calls misbehave:\n" + "\n".join(bad)


@pytest.mark.parametrize("advisory", sorted(ADVISORIES))
def test_security_advisory_regression(results, advisory):
    bad = [p for name in ADVISORIES[advisory] for p in _problems(results, name)]
    assert not bad, "\n".join(bad)


def test_messages_name_the_bound(results):
    """The message says what the bound is, not only which argument broke it."""
    expect = {f"{V2}-num_bits-62-signed/eager": ["61"], f"{V2}-num_bits-63-unsigned/eager": ["62"],
              f"{V4}-axis-rank/eager": ["rank 2"], f"{V2}-per-channel-min-size/eager": ["3"],
              f"{V2}-per-tensor-min-gt-max/eager": ["input_max"], "V4Grad-gradients-shape/eager": ["[3,4]"]}
    bad = [f"{k}: {results[k].get('message', '')[:300]} lacks {w}" for k, ws in expect.items() for w in ws
           if w not in results[k].get("message", "")]
    assert not bad, "\n".join(bad)
