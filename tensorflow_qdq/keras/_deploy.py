"""The export hook: while a model is traced for a runtime, quantizers emit that runtime's ops.

During training and in Keras inference, quantizers run tensorflow-qdq's kernels. The ONNX
and TFLite exporters instead trace the model once with a *target* installed here: each
quantizer then asks the target for the ops that runtime turns into integer kernels, with
every range and weight frozen to a constant (read in eager mode through ``tf.init_scope``).
"""

import contextlib
import threading

_state = threading.local()


def current_target():
    """The export target installed by ``tracing_for``, or None outside an export trace."""
    return getattr(_state, "target", None)


@contextlib.contextmanager
def tracing_for(target):
    previous = current_target()
    _state.target = target
    try:
        yield target
    finally:
        _state.target = previous


def calibration_observer():
    """While ``calibrate`` runs the model: a function ``observe(quantizer, tensor)``; else None.
    Activation quantizers then hand their input to it and pass the data through unquantized."""
    return getattr(_state, "observer", None)


@contextlib.contextmanager
def calibration_pass(observe):
    previous = calibration_observer()
    _state.observer = observe
    try:
        yield
    finally:
        _state.observer = previous
