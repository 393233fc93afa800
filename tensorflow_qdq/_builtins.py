"""Drop-ins for TensorFlow's own entry points: route the tf.quantization functions to our
kernels, and load SavedModels that hold our ops."""

import threading

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tensorflow_qdq import _api
from tensorflow_qdq._loader import LibraryError

__all__ = ["load_saved_model", "qdq_ops_in_saved_model", "restore_builtins", "use_for_builtins"]

# (namespace path, attribute, our replacement). TensorFlow 2.21 exports no
# tf.quantize_and_dequantize_v4 (only tf.raw_ops.QuantizeAndDequantizeV4), so that entry is
# routed only in TensorFlow versions that have it.
_ROUTES = (
    ("quantization", "quantize_and_dequantize", _api.quantize_and_dequantize),
    ("quantization", "quantize_and_dequantize_v2", _api.quantize_and_dequantize_v2),
    ("compat.v1.quantization", "quantize_and_dequantize", _api.quantize_and_dequantize),
    ("compat.v1.quantization", "quantize_and_dequantize_v2", _api.quantize_and_dequantize_v2),
    ("", "quantize_and_dequantize_v4", _api.quantize_and_dequantize_v4),
    ("compat.v1", "quantize_and_dequantize_v4", _api.quantize_and_dequantize_v4),
)
_LOCK = threading.Lock()
_ORIGINALS = {}  # (namespace, attribute) -> TensorFlow's function, recorded on first routing


def _namespace(path):
    module = tf
    for part in filter(None, path.split(".")):
        module = getattr(module, part)
    return module


def _present_routes():
    for path, attribute, ours in _ROUTES:
        namespace = _namespace(path)
        if hasattr(namespace, attribute):
            yield namespace, (path, attribute), ours


class _Patched:
    """Routes on creation; as a context manager, restores on exit what was there before."""

    def __init__(self):
        with _LOCK:
            self._previous = {}
            for namespace, key, ours in _present_routes():
                current = getattr(namespace, key[1])
                _ORIGINALS.setdefault(key, current)
                self._previous[key] = (namespace, current)
                setattr(namespace, key[1], ours)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.restore()

    def restore(self):
        """Puts back the functions that were in place when this routing began."""
        with _LOCK:
            for (_, attribute), (namespace, current) in self._previous.items():
                setattr(namespace, attribute, current)


def use_for_builtins():
    """Routes TensorFlow's quantize-and-dequantize functions to tensorflow-qdq's kernels.

    ``tf.quantization.quantize_and_dequantize`` and ``tf.quantization.quantize_and_dequantize_v2``
    (and their ``tf.compat.v1`` aliases, and ``tf.quantize_and_dequantize_v4`` in TensorFlow
    versions that export it - 2.21 does not) are replaced by this package's functions of the
    same signatures, so unmodified code that calls them runs on our kernels: bit-identical
    results for float32/float64, plus half/bfloat16 support and the fixes in the README.

    Use it as a context manager (TensorFlow's functions come back on exit) or call it once
    (routing stays until ``restore_builtins()`` or the returned object's ``restore()``)::

        with tensorflow_qdq.use_for_builtins():
            y = model(x)          # model code calling tf.quantization.* runs on our ops

    Routing acts when the function is looked up: graphs traced inside keep our ops, and code
    that saved a reference to TensorFlow's function beforehand keeps calling it.
    The replacement is process-wide (all threads).
    """
    return _Patched()


def restore_builtins():
    """Undoes every ``use_for_builtins()``: TensorFlow's own functions are back in place."""
    with _LOCK:
        for (path, attribute), original in _ORIGINALS.items():
            setattr(_namespace(path), attribute, original)


def qdq_ops_in_saved_model(export_dir):
    """The tensorflow-qdq op types (``Qdq>...``) a SavedModel uses, read from its
    ``saved_model.pb`` without loading the model."""
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(tf.io.gfile.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(op for op in ops if op.startswith("Qdq>"))


def load_saved_model(export_dir, tags=None, options=None):
    """``tf.saved_model.load`` for SavedModels that use tensorflow-qdq's ops.

    Importing ``tensorflow_qdq`` is what registers the ops; this helper loads with them in
    place and turns TensorFlow's "Op type not registered 'Qdq>...'" (a SavedModel made by a
    newer tensorflow-qdq, with ops this build lacks) into an error that says so.
    """
    try:
        return tf.saved_model.load(export_dir, tags=tags, options=options)
    except RuntimeError as exc:
        if "Op type not registered 'Qdq>" not in str(exc):
            raise
        from tensorflow_qdq._version import __version__

        raise LibraryError(
            f"{export_dir} uses tensorflow-qdq ops {qdq_ops_in_saved_model(export_dir)} that this "
            f"tensorflow-qdq {__version__} does not register; it was saved by another version. "
            "Install a tensorflow-qdq that has them, or re-export the model with this one."
        ) from exc
