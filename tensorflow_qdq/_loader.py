"""Loads the op library once, with errors that say what to do."""

import importlib
from pathlib import Path

import tensorflow as tf

_LIBRARY = Path(__file__).with_name("_qdq_ops.so")
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


class LibraryError(ImportError):
    """The op library is missing, or was built for another TensorFlow."""


def _build_info():
    try:
        return importlib.import_module("tensorflow_qdq._build_info")
    except ImportError:
        return None


def load():
    """Returns the loaded op module; raises LibraryError with the fix on failure."""
    if not _LIBRARY.exists():
        raise LibraryError(
            f"tensorflow-qdq's op library {_LIBRARY.name} is missing from {_LIBRARY.parent}. "
            f"Build it against your TensorFlow ({tf.__version__}) from the source tree with:\n    {REBUILD}"
        )
    info = _build_info()
    if info is not None and info.TF_VERSION != tf.__version__:
        raise LibraryError(
            f"tensorflow-qdq was built against TensorFlow {info.TF_VERSION} but TensorFlow "
            f"{tf.__version__} is running; custom ops only load into the TensorFlow they were "
            f"compiled for. Rebuild from the source tree with:\n    {REBUILD}"
        )
    try:
        return tf.load_op_library(str(_LIBRARY))
    except (tf.errors.NotFoundError, OSError) as exc:
        raise LibraryError(
            f"TensorFlow {tf.__version__} could not load {_LIBRARY} ({exc}). This usually means it was "
            f"built for another TensorFlow or Python. Rebuild from the source tree with:\n    {REBUILD}"
        ) from exc


ops = load()
