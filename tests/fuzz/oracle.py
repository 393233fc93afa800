"""What a case must do: the errors it must raise (and the words the message must contain),
or the outputs it must return, derived from SEMANTICS §2-§5 and the reference model alone.

``expect(case)`` returns a list of acceptable outcomes. Usually there is one; a call whose
validity or result hinges on denormals (read as zero on TensorFlow's threads, SEMANTICS §3.8)
gets one outcome per denormal mode.
"""

import dataclasses
from typing import List, Optional

import numpy as np

from tests.helpers import reference as ref

from .cases import API_OPS, KERAS_OPS, TAPE_OPS

# Substrings (lower case) that count as naming an argument. The framework names inputs by
# position in some messages ("input #1(zero-based) was expected to be a float tensor").
TOKENS = {
    "T": ("attr 't'", "parameter '", "'input'", "'t'"),
    "input": ("'input'", "input #", "of input", "input "),
    "input_min": ("input_min", "input #"),
    "input_max": ("input_max", "input #"),
    "gradients": ("gradients", "input #"),
    "num_bits": ("num_bits", "input #3"),
    "axis": ("axis",),
    "round_mode": ("round_mode",),
    "signed_input": ("signed_input",),
    "range_mode": ("range_mode",),
    "gradient": ("gradient",),
    "min_value": ("min_value",),
    # Keras lists the call's arguments ("inputs=tf.Tensor(shape=(2,), dtype=int64)") under
    # every error raised in call(); for an integer input that is the only place it is named.
    "inputs": ("inputs=tf.tensor",),
    "max_value": ("max_value",),
}
@dataclasses.dataclass
class Outcome:
    error: Optional[List[str]] = None  # argument names one of which the message must name
    outputs: Optional[list] = None  # arrays, when the call must succeed

    @property
    def ok(self):
        return self.error is None


def channel_axis(case):
    """(raw axis, wrapper ValueError?) after the Python wrappers' axis convention."""
    rank = None if case.mode == "function_dynamic" else len(case.shape)
    if case.op in API_OPS[:2] or case.op in TAPE_OPS or case.op in KERAS_OPS:
        if case.axis is None:
            return -1, False
        if case.axis >= 0:
            return case.axis, False
        if rank is None or case.axis < -rank:
            return case.axis, True
        return case.axis + rank, False
    return case.axis, False


def _has_round_mode(op):
    return op in ("V2", "V4") or op in API_OPS or op in TAPE_OPS


def _range_shape_problem(shape, axis, input_shape):
    """The kernels' min/max shape rule (SEMANTICS §4): one element per-tensor, [dim(axis)] per-channel."""
    if axis == -1:
        return len(shape) > 1 or int(np.prod(shape, dtype=np.int64)) != 1
    return len(shape) != 1 or shape[0] != input_shape[axis]


def _static_range_problem(min_shape, max_shape, axis, input_shape):
    """Graph-mode shape function: min/max rank 0 (per-tensor) or 1 and equal to dim(axis)."""
    want = 0 if axis == -1 else 1
    bad = set()
    if len(min_shape) != want:
        bad.add("input_min")
    if len(max_shape) != want or (len(min_shape) == len(max_shape) and min_shape != max_shape):
        bad.add("input_max")
    if axis != -1 and 0 <= axis < len(input_shape):
        for name, s in (("input_min", min_shape), ("input_max", max_shape)):
            if len(s) == 1 and s[0] != input_shape[axis]:
                bad.add(name)
    return bad


def _shape_of(v):
    return () if isinstance(v, float) else tuple(np.shape(v))


def static_violations(case, axis):
    """Arguments the call breaks whatever the denormal mode (set of names)."""
    bad = set()
    floats = ref.FLOAT_DTYPES
    if case.dtype not in floats:
        bad.add("T")
    dtypes = [case.dtype, case.min_dtype, case.max_dtype] + ([case.grad_dtype] if case.op == "V4Grad" else [])
    if len(set(dtypes)) > 1:
        bad |= {"T", "input", "input_min", "input_max"} | ({"gradients"} if case.op == "V4Grad" else set())
    if case.op == "V3" and case.num_bits_dtype != "int32":
        bad.add("num_bits")
    raw_axis, wrapper_axis_error = channel_axis(case)
    if wrapper_axis_error:
        bad.add("axis")
    if _has_round_mode(case.op) and case.round_mode not in ("HALF_TO_EVEN", "HALF_UP"):
        bad.add("round_mode")
    if case.op != "V4Grad":
        nb = case.num_bits
        if not ref.INT32_MIN <= nb <= ref.INT32_MAX or not 1 <= nb <= ref.max_bits(case.signed_input):
            bad.add("num_bits")
        if case.op == "V3" and case.num_bits_shape != ():
            bad.add("num_bits")
    if wrapper_axis_error:
        return bad
    if case.op == "V4Grad" and tuple(np.shape(case.grad)) != tuple(case.shape):
        bad.add("gradients")  # checked before anything else
    rank = len(case.shape)
    if case.mode == "function_dynamic" and 0 <= raw_axis <= ref.INT32_MAX:
        # Unknown input rank: the shape function sees only the Python-float bounds' (scalar)
        # shapes, and blames them for a per-channel axis whether or not the axis fits.
        for name, v in (("input_min", case.min_value), ("input_max", case.max_value)):
            if isinstance(v, float):
                bad.add(name)
    if not ref.INT32_MIN <= raw_axis <= ref.INT32_MAX or raw_axis < -1 or raw_axis >= rank:
        bad.add("axis")
        return bad
    min_shape, max_shape = _shape_of(case.min_value), _shape_of(case.max_value)
    if case.mode == "function":  # static shapes: the shape function checks min/max always
        bad |= _static_range_problem(min_shape, max_shape, raw_axis, case.shape)
    checks_range_shape = case.op == "V4Grad" or case.range_given
    if checks_range_shape:
        if _range_shape_problem(min_shape, raw_axis, case.shape):
            bad.add("input_min")
        if _range_shape_problem(max_shape, raw_axis, case.shape):
            bad.add("input_max")
    return bad


def _forward(case, axis, daz):
    return ref.quantize(
        case.x, case.min_value, case.max_value, signed_input=case.signed_input, num_bits=case.num_bits,
        range_given=case.range_given, round_mode=case.round_mode, narrow_range=case.narrow_range, axis=axis,
        dtype=case.dtype, daz=daz,
    )


def _outputs(case, axis, daz, fold):
    dt = ref.NP_DTYPES[case.dtype]
    if case.op == "V4Grad":
        back = ref.masked_gradient(case.grad, case.x, case.min_value, case.max_value, axis=axis, dtype=case.dtype,
                                   daz=daz, fold_unit=fold)
        return [back, np.zeros(np.shape(case.min_value), dt), np.zeros(np.shape(case.max_value), dt)]
    if case.op == "tape_v2":
        return [np.asarray(case.grad, dt), _forward(case, axis, daz)]
    if case.op == "tape_v4":
        if case.range_given:
            lo, hi = case.min_value, case.max_value
        else:
            depth = 1 if axis == -1 else case.shape[axis]
            lo, hi = np.full(depth, -np.inf), np.full(depth, np.inf)
        grad = ref.masked_gradient(case.grad, case.x, np.asarray(lo, dt), np.asarray(hi, dt), axis=axis,
                                   dtype=case.dtype, daz=daz, fold_unit=fold)
        return [grad, _forward(case, axis, daz)]
    return [_forward(case, axis, daz)]


def _order_violation(case, axis, daz):
    """Given ranges: min[c] <= max[c] for every channel, as the kernel sees it."""
    if not case.range_given or case.op == "V4Grad":
        return set()
    lo = ref.as_double_for_check(case.min_value, case.dtype, daz)
    hi = ref.as_double_for_check(case.max_value, case.dtype, daz)
    return set() if np.all(lo <= hi) else {"input_min", "input_max"}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _keras_bound_problem(v):
    if v is None:
        return False
    vals = v if isinstance(v, list) else [v]
    return not vals or any(not np.isfinite(a) for a in vals)


def keras_violations(case):
    """The layer's constructor and build checks, then the op's dtype check (names)."""
    k = case.keras
    bad = set()
    if k["range_mode"] not in ("fixed", "batch", "tracked"):
        bad.add("range_mode")
    if case.round_mode not in ("HALF_TO_EVEN", "HALF_UP"):
        bad.add("round_mode")
    if k["gradient"] not in ("masked", "straight_through"):
        bad.add("gradient")
    nb = k["num_bits"]
    if not _is_int(nb) or not 1 <= nb <= ref.max_bits(case.signed_input):
        bad.add("num_bits")
    if case.axis is not None and not _is_int(case.axis):
        bad.add("axis")
    lo, hi = k["min_value"], k["max_value"]
    if _keras_bound_problem(lo):
        bad.add("min_value")
    if _keras_bound_problem(hi):
        bad.add("max_value")
    if bad:
        return bad
    given = (lo is not None, hi is not None)
    mode = k["range_mode"]
    if (mode == "batch" and any(given)) or (mode == "fixed" and not all(given)) or (
            mode == "tracked" and any(given) and not all(given)):
        return {"min_value"}
    if all(given):
        if isinstance(lo, list) != isinstance(hi, list) or (isinstance(lo, list) and len(lo) != len(hi)):
            return {"min_value"}
        if isinstance(lo, list) and case.axis is None:
            return {"min_value"}
        if any(a > b for a, b in zip(np.ravel(lo), np.ravel(hi))):
            return {"min_value"}
    rank = len(case.shape)
    if case.axis is not None and not -rank <= case.axis < rank:
        return {"axis"}
    if isinstance(lo, list) and len(lo) != case.shape[case.axis]:
        return {"min_value"}
    if case.dtype not in ref.FLOAT_DTYPES:
        return {"T", "inputs"}
    return set()


def _keras_range(case, axis):
    """The given range the layer passes to the op (fixed, or tracked start values), as arrays."""
    k = case.keras
    dt = ref.NP_DTYPES[case.dtype]
    lo, hi = k["min_value"], k["max_value"]
    if k["range_mode"] == "tracked":
        if lo is None:
            lo, hi = (-6.0 if case.signed_input else 0.0), 6.0
        lo, hi = np.float32(lo), np.float32(hi)  # float32 variables, cast to the input dtype
    depth = None if axis == -1 else case.shape[axis]
    out = []
    for v in (lo, hi):
        a = np.asarray(v, np.float64 if k["range_mode"] == "fixed" else np.float32).astype(dt)
        if depth is not None and a.ndim == 0:
            a = np.full(depth, a, dt)
        out.append(a)
    return out


def expect_keras(case) -> List[Outcome]:
    bad = keras_violations(case)
    if bad:
        return [Outcome(error=sorted(bad))]
    axis = -1 if case.axis is None else case.axis % len(case.shape)
    outcomes = []
    if case.keras["range_mode"] == "batch":
        for daz in (False, True):
            outcomes.append(Outcome(outputs=[ref.quantize(
                case.x, signed_input=case.signed_input, num_bits=case.keras["num_bits"], range_given=False,
                round_mode=case.round_mode, narrow_range=case.narrow_range, axis=axis, dtype=case.dtype,
                daz=daz)]))
        return outcomes
    lo, hi = _keras_range(case, axis)
    for daz in (False, True):
        if not np.all(ref.as_double_for_check(lo, case.dtype, daz) <= ref.as_double_for_check(hi, case.dtype, daz)):
            outcomes.append(Outcome(error=["input_min", "input_max"]))
            continue
        outcomes.append(Outcome(outputs=[ref.quantize(
            case.x, lo, hi, signed_input=case.signed_input, num_bits=case.keras["num_bits"], range_given=True,
            round_mode=case.round_mode, narrow_range=case.narrow_range, axis=axis, dtype=case.dtype, daz=daz)]))
    return outcomes


def expect(case) -> List[Outcome]:
    if case.op == "keras":
        return expect_keras(case)
    axis, _ = channel_axis(case)
    bad = static_violations(case, axis)
    if bad:
        return [Outcome(error=sorted(bad))]
    outcomes = []
    modes = [(False, False), (True, False)]
    if case.op in ("V4Grad", "tape_v4"):
        modes.append((True, True))
    for daz, fold in modes:
        order = _order_violation(case, axis, daz)
        if order:
            outcomes.append(Outcome(error=sorted(order)))
        else:
            outcomes.append(Outcome(outputs=_outputs(case, axis, daz, fold)))
    return outcomes


def message_names(message, names, graph=False):
    """Whether an error message names one of the arguments (graph or eager)."""
    text = message.lower()
    # A graph error quotes the NodeDef ("for '{{node ...}} = Op[axis=5, num_bits=8, ...](a, b)'"),
    # which names every attribute: only the text before it counts.
    text = text.split(" for '{{node")[0]
    return any(tok in text for name in names for tok in TOKENS.get(name, (name,)))
