"""What ``calibrate`` installs while it runs a model, and the sample rows it keeps.

While ``calibrate`` runs the model, activation quantizers hand their float input to the
observer installed here (``calibration_pass``) and pass the data through unquantized. The
first rows calibrate saw are kept per model: the exporters' default sample inputs for
verifying an export (``deploy/_verify.py``).
"""

import contextlib
import threading
import weakref

import numpy as np

_state = threading.local()


def calibration_observer():
    """While ``calibrate`` runs the model: a function ``observe(quantizer, tensor)``; else None.
    Activation quantizers then hand their input to it and pass the data through unquantized."""
    return getattr(_state, "observer", None)


@contextlib.contextmanager
def calibration_pass(observe):
    """Installs ``observe`` (or None) for the duration of a block, restoring the previous one."""
    previous = calibration_observer()
    _state.observer = observe
    try:
        yield observe
    finally:
        _state.observer = previous


# The first rows calibrate saw, per model: kept beside the model, not in it, so saving and
# cloning are unaffected.
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
