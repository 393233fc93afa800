"""The export hook: while a model is traced for a runtime, quantizers emit that runtime's ops.

During training and in Keras inference, quantizers run tensorflow-qdq's kernels. The ONNX
and TFLite exporters instead trace the model once with a *target* installed here: each
quantizer then asks the target for the ops that runtime turns into integer kernels, with
every range and weight frozen to a constant (read in eager mode through ``tf.init_scope``).
"""

import contextlib
import threading
import weakref

import numpy as np

_state = threading.local()


def current_target():
    """The export target installed by ``tracing_for``, or None outside an export trace."""
    return getattr(_state, "target", None)


@contextlib.contextmanager
def _installed(key, value):
    """Sets one thread-local switch for the duration of a block, restoring the previous one."""
    previous = getattr(_state, key, None)
    setattr(_state, key, value)
    try:
        yield value
    finally:
        setattr(_state, key, previous)


def tracing_for(target):
    return _installed("target", target)


def calibration_observer():
    """While ``calibrate`` runs the model: a function ``observe(quantizer, tensor)``; else None.
    Activation quantizers then hand their input to it and pass the data through unquantized."""
    return getattr(_state, "observer", None)


def calibration_pass(observe):
    return _installed("observer", observe)


# The first rows calibrate saw, per model: the exporters' default sample inputs for verifying
# an export (kept beside the model, not in it, so saving and cloning are unaffected).
_SAMPLE_ROWS = 16
_samples = weakref.WeakKeyDictionary()


def remember_samples(model, batch):
    """Keeps up to ``_SAMPLE_ROWS`` rows of ``batch`` (an array or a list, one per input)."""
    arrays = [np.asarray(b) for b in (batch if isinstance(batch, (list, tuple)) else [batch])]
    kept = _samples.get(model)
    if kept is not None:
        if len(kept[0]) >= _SAMPLE_ROWS:
            return
        arrays = [np.concatenate([k, a]) for k, a in zip(kept, arrays)]
    _samples[model] = [a[:_SAMPLE_ROWS] for a in arrays]


def remembered_samples(model):
    """The rows ``calibrate`` kept for ``model`` (a list of arrays), or None."""
    return _samples.get(model)
