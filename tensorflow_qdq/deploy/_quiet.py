"""Converter noise silenced inside our export calls only.

tf2onnx and the TFLite converter print TensorFlow deprecation notices, absl warnings, Python
``UserWarning``s and C++ log lines (straight to file descriptor 2) that say nothing about the
user's model. ``converter_output_hidden`` hides all of them for one block and restores every
setting after it; if the block fails, what the C++ side printed is written out again, since it
may explain the failure.
"""

import contextlib
import logging
import os
import sys
import tempfile
import warnings

_LOGGERS = ("tensorflow", "absl", "tf2onnx")


@contextlib.contextmanager
def converter_output_hidden():
    from tensorflow.python.util import deprecation

    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        stack.enter_context(deprecation.silence())
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        stack.callback(_restore_levels, levels)
        captured = stack.enter_context(_native_stderr_captured())
        try:
            yield
        except BaseException:
            captured.flush_to_stderr = True
            raise


def _restore_levels(levels):
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class _Captured:
    flush_to_stderr = False


@contextlib.contextmanager
def _native_stderr_captured():
    """File descriptor 2 points at a temporary file for the block: C++ logging writes there
    directly, past sys.stderr (whatever Python wrote before is flushed first)."""
    state = _Captured()
    fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no descriptor 2 (some embedded interpreters)
        yield state
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield state
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if state.flush_to_stderr:
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                if text:
                    sys.stderr.write(text)
