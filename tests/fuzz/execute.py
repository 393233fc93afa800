"""Runs one case through TensorFlow and judges it against the oracle (in-process).

``run_case`` never lets a Python exception escape: it returns a verdict dict. A crash of the
process (abort, segfault) is what the worker/pool machinery around it catches.
"""

import numpy as np
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import reference as ref

from . import oracle

ALLOWED_ERRORS = (tf.errors.InvalidArgumentError, ValueError, TypeError)
_FUNCTIONS = {}
_MAX_FUNCTIONS = 256
_ARG = "<tensor argument>"


def _tf_dtype(name):
    return {"float16": tf.float16, "string": tf.string}.get(name, None) or tf.as_dtype(name)


def _tensor(value, dtype):
    if isinstance(value, float):
        return value
    return tf.constant(value, dtype=_tf_dtype(dtype))


def _num_bits_tensor(case):
    value = np.full(case.num_bits_shape, case.num_bits, np.int64)
    if case.num_bits_dtype == "int32":
        return tf.constant(value.astype(np.int32))
    return tf.constant(value.astype(case.num_bits_dtype))


def _keras_call(case, x):
    """Builds the Keras layer of a case and calls it (eagerly, or inside a tf.function)."""
    from tensorflow_qdq.keras import QuantizeAndDequantize

    k = case.keras
    layer = QuantizeAndDequantize(
        num_bits=k["num_bits"], axis=case.axis, range_mode=k["range_mode"], min_value=k["min_value"],
        max_value=k["max_value"], signed=case.signed_input, narrow_range=case.narrow_range,
        round_mode=case.round_mode, gradient=k["gradient"], dtype=k["layer_dtype"])
    if case.mode == "eager":
        return [layer(x)]
    return [tf.function(lambda t: layer(t))(x)]


def _call(case, x, lo, hi, g, nb):
    """The op call of a case, as a function of its tensors (attributes closed over)."""
    op = case.op
    attrs = dict(signed_input=case.signed_input, range_given=case.range_given, narrow_range=case.narrow_range,
                 axis=case.axis)
    if op == "V4Grad":
        return list(qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi,
                                                            axis=case.axis))
    if op == "V3":
        return [qdq.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=lo, input_max=hi, num_bits=nb, **attrs)]
    attrs.update(num_bits=case.num_bits, round_mode=case.round_mode)
    if op in ("V2", "V4"):
        fn = qdq.raw_ops.QuantizeAndDequantizeV2 if op == "V2" else qdq.raw_ops.QuantizeAndDequantizeV4
        return [fn(input=x, input_min=lo, input_max=hi, **attrs)]
    api = {
        "api_qdq": qdq.quantize_and_dequantize,
        "api_qdq_v2": qdq.quantize_and_dequantize_v2,
        "api_qdq_v4": qdq.quantize_and_dequantize_v4,
        "tape_v2": qdq.quantize_and_dequantize,
        "tape_v4": qdq.quantize_and_dequantize_v2,
    }[op]
    if op.startswith("tape"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = api(x, lo, hi, **attrs)
        # The forward output is returned too: in a graph an unused op would be pruned.
        return [tape.gradient(y, x, output_gradients=g), y]
    return [api(x, lo, hi, **attrs)]


def _body(case, slots):
    def body(*tensors):
        it = iter(tensors)
        return _call(case, *[next(it) if s is _ARG else s for s in slots])

    return body


def _function_for(case, slots, arg_dtypes):
    """A tf.function for the case's attributes; cached so similar cases reuse the trace.

    `slots` holds, per op argument, _ARG (passed as a tensor argument) or a constant (a
    Python float bound, or an absent gradient) closed over as a user would write it."""
    dynamic = case.mode == "function_dynamic"
    key = (case.op, case.axis, case.num_bits, case.signed_input, case.range_given, case.narrow_range,
           case.round_mode, dynamic, tuple(slots), arg_dtypes)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        if len(_FUNCTIONS) >= _MAX_FUNCTIONS:
            _FUNCTIONS.clear()

        signature = [tf.TensorSpec(None, _tf_dtype(d)) for d in arg_dtypes] if dynamic else None
        fn = tf.function(_body(case, tuple(slots)), input_signature=signature)
        _FUNCTIONS[key] = fn
    return fn


def invoke(case):
    """Calls the op for a case; returns (outputs as NumPy arrays, the input tensor)."""
    x = _tensor(case.x, case.dtype)
    if case.op == "keras":
        return [o.numpy() for o in _keras_call(case, x)], x
    lo = _tensor(case.min_value, case.min_dtype)
    hi = _tensor(case.max_value, case.max_dtype)
    g = _tensor(case.grad, case.grad_dtype) if case.grad is not None else None
    nb = _num_bits_tensor(case) if case.op == "V3" else None
    if case.mode == "eager":
        outs = _call(case, x, lo, hi, g, nb)
    else:
        args, dtypes, slots = [], [], []
        for t, d in ((x, case.dtype), (lo, case.min_dtype), (hi, case.max_dtype), (g, case.grad_dtype),
                     (nb, case.num_bits_dtype)):
            if t is None or isinstance(t, float):
                slots.append(t)
            else:
                slots.append(_ARG)
                args.append(t)
                dtypes.append(d)
        outs = _function_for(case, slots, tuple(dtypes))(*args)
    return [None if o is None else o.numpy() for o in outs], x


def judge(case, outputs=None, error=None, input_after=None):
    """Verdict of one finished call: dict(status='pass'|'fail', ...)."""
    outcomes = oracle.expect(case)
    graph = case.mode != "eager"
    if error is not None:
        errs = [o for o in outcomes if not o.ok]
        if not isinstance(error, ALLOWED_ERRORS):
            return _fail("unexpected exception type", error, outcomes)
        if not errs:
            return _fail("raised but the reference says the call is valid", error, outcomes)
        names = sorted({n for o in errs for n in o.error})
        if not oracle.message_names(str(error), names, graph):
            return _fail(f"error message names none of {names}", error, outcomes)
        return {"status": "pass", "kind": "error"}
    oks = [o for o in outcomes if o.ok]
    if not oks:
        return {"status": "fail", "reason": f"returned but the reference expects an error naming {outcomes[0].error}"}
    if input_after is not None and case.dtype in ref.FLOAT_DTYPES:
        if not np.all(ref.same_or_nan(input_after, np.asarray(case.x))):
            return {"status": "fail", "reason": "the op modified its input tensor"}
    if len(outputs) != len(oks[0].outputs):
        return {"status": "fail", "reason": f"{len(outputs)} outputs, expected {len(oks[0].outputs)}"}
    for k, got in enumerate(outputs):
        wants = [o.outputs[k] for o in oks]
        want = wants[0]
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            return {"status": "fail", "reason": f"output {k}: got {_desc(got)}, expected {_desc(want)}"}
        good = np.zeros(got.shape, bool)
        for w in wants:
            good |= ref.same_or_nan(got, w)
        if not good.all():
            idx = np.argwhere(~good)[0]
            where = tuple(int(i) for i in idx)
            return {"status": "fail", "reason": f"output {k} differs at {where}: got {got[where]!r}, "
                    f"expected {[w[where] for w in wants]!r} ({int((~good).sum())} elements differ)"}
    relaxed = any(not np.all(ref.same_or_nan(a, b)) for o in oks[1:] for a, b in zip(oks[0].outputs, o.outputs))
    return {"status": "pass", "kind": "ok", "denormal_modes": bool(relaxed)}


def _desc(a):
    return "None" if a is None else f"{a.dtype}{list(a.shape)}"


def _fail(reason, error, outcomes):
    return {"status": "fail", "reason": reason, "error": f"{type(error).__name__}: {str(error)[-600:]}",
            "expected": [o.error if not o.ok else "ok" for o in outcomes]}


def run_case(case):
    try:
        outputs, x = invoke(case)
    except Exception as exc:  # noqa: BLE001 - every exception is judged
        try:
            return judge(case, error=exc)
        except Exception as bug:  # noqa: BLE001
            return {"status": "fail", "reason": f"oracle error {type(bug).__name__}: {bug}"}
    try:
        after = x.numpy() if hasattr(x, "numpy") else None
        return judge(case, outputs=outputs, input_after=after)
    except Exception as bug:  # noqa: BLE001
        return {"status": "fail", "reason": f"oracle error {type(bug).__name__}: {bug}"}
