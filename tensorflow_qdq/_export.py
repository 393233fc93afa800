"""Portable models: SavedModels that need no tensorflow_qdq.

``export(model_or_dir, out_dir)`` writes a SavedModel whose graphs hold only
TensorFlow built-ins, so a plain ``tf.saved_model.load`` (or TF Serving, or the
TFLite converter) can use it without our op library. See docs/XLA_EXPORT.md.
``to_tflite`` (``tensorflow_qdq.deploy.tflite``) converts models to TFLite, through this
export for a float model.
"""

import os
import shutil

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import meta_graph

from tensorflow_qdq import _export_rewrite

__all__ = ["export"]

_PB = "saved_model.pb"
_OUR_OPS = frozenset(_export_rewrite.OURS)


def _save_model(model, out_dir):
    """Writes a Keras model or a tf.Module as a SavedModel (with our ops still in it)."""
    if hasattr(model, "export") and hasattr(model, "layers"):  # Keras 3: the inference SavedModel
        model.export(out_dir, format="tf_saved_model", verbose=False)
    else:
        tf.saved_model.save(model, out_dir)


def _rewrite_saved_model(directory, exact):
    path = os.path.join(directory, _PB)
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    count = 0
    for meta in saved_model.meta_graphs:
        count += _export_rewrite.rewrite_graph_def(meta.graph_def, exact=exact)
        stripped = meta_graph.stripped_op_list_for_graph(meta.graph_def)
        meta.meta_info_def.stripped_op_list.CopyFrom(stripped)
        left = {op.name for op in stripped.op} & _OUR_OPS
        if left:  # pragma: no cover - every node and function is visited above
            raise RuntimeError(f"ops left after the rewrite: {sorted(left)}")
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())
    # The fingerprint hashes the old graph; it is optional, so drop it rather than lie.
    fingerprint = os.path.join(directory, "fingerprint.pb")
    if os.path.exists(fingerprint):
        os.remove(fingerprint)
    return count


def export(model, out_dir, *, exact=False):
    """Writes a SavedModel to ``out_dir`` that uses no ``Qdq>`` op.

    Args:
      model: a SavedModel directory, or a Keras model / ``tf.Module`` to save first
        (Keras models are saved with ``model.export``: a ``serve`` signature).
      out_dir: the new SavedModel directory (must not exist, or be empty).
      exact: False (default) uses TensorFlow's ``QuantizeAndDequantizeV2/V3/V4``
        where its kernel equals ours on inputs without NaN and with a non-degenerate
        range (float32/float64, per tensor or measured per channel), which the
        TFLite converter turns into QUANTIZE/DEQUANTIZE; the composite of standard
        ops elsewhere (per-channel given ranges, half, bfloat16). True uses the
        composite for every op, bit-identical to our kernels on every input.

    Returns:
      The number of ops that were replaced.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ValueError(f"out_dir={out_dir!r} exists and is not empty")
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if not os.path.exists(os.path.join(source, _PB)):
            raise ValueError(f"model={source!r} is not a SavedModel directory (no {_PB})")
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
    else:
        _save_model(model, out_dir)
    return _rewrite_saved_model(out_dir, exact)
