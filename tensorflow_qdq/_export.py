"""Portable models: SavedModels and TFLite flatbuffers that need no tensorflow_qdq.

``export(model_or_dir, out_dir)`` writes a SavedModel whose graphs hold only
TensorFlow built-ins, so a plain ``tf.saved_model.load`` (or TF Serving, or the
TFLite converter) can use it without our op library. See docs/XLA_EXPORT.md.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import meta_graph

from tensorflow_qdq import _export_rewrite

__all__ = ["export", "to_tflite"]

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


def to_tflite(model, *, integer=None, allow_float_ops=False, exact=False, optimizations=None, verify=True,
              verify_data=None, input_signature=None):
    """Converts ``model`` to a TFLite flatbuffer (bytes).

    Args:
      model: a Keras model (or, for ``integer=False``, a SavedModel directory or a ``tf.Module``).
      integer: True gives a full-integer model: int8 weights per channel, int8 activations
        with the ranges the quantizers hold (calibrated or learned in QAT), int32 biases
        (``tensorflow_qdq.deploy.tflite``). False gives a float model (with QUANTIZE/DEQUANTIZE
        pairs where the model quantizes): the model is exported as :func:`export` does and
        converted as it is. Default: True for a Keras model (one without quantizers raises:
        pass ``integer=False`` for a float model), False for a SavedModel directory or a
        ``tf.Module``.
      allow_float_ops: with ``integer=True``, accept ops that stay float (else ValueError
        naming them).
      exact, optimizations: for ``integer=False`` only: :func:`export`'s ``exact``, and the
        converter's ``optimizations``.
      verify, verify_data: for a Keras model, the TFLite interpreter runs the result on sample
        inputs and it must agree with the Keras model (see ``to_onnx`` and docs/DEPLOY.md,
        "Verified exports"): True raises ``tensorflow_qdq.deploy.ExportMismatchError``,
        ``"warn"`` warns, False skips; ``verify_data`` (or ``verify`` itself) gives the inputs.
      input_signature: with ``integer=True``, a ``tf.TensorSpec`` per model input (batch
        dimension None), for a subclassed model whose input shapes or dtypes Keras did not record.
    """
    from tensorflow_qdq.deploy import _verify

    mode, data = _verify.parse(verify, verify_data)
    is_directory = isinstance(model, (str, os.PathLike))
    is_keras = hasattr(model, "layers") and hasattr(model, "_flatten_layers")
    if integer is None:
        integer = is_keras
    if integer:
        if exact or optimizations is not None:
            raise ValueError("to_tflite: exact= and optimizations= apply to integer=False only; the integer route "
                             "sets the converter itself")
        if is_directory:
            raise ValueError("to_tflite(integer=True) needs the Keras model from quantize_model, not a SavedModel "
                             "directory: its quantizers say which ranges to use")
        from tensorflow_qdq.deploy import _preflight, _quiet, tflite

        _preflight.check_exportable(model, "to_tflite")

        def convert(keras_model, allow):
            with _quiet.converter_output_hidden():
                # the verifier's taps are functional models: the signature is the model's own
                signature = input_signature if keras_model is model else None
                return tflite.integer_tflite(keras_model, allow_float_ops=allow, input_signature=signature)

        flatbuffer = convert(model, allow_float_ops)
    else:
        from tensorflow_qdq.deploy import _quiet

        with _quiet.converter_output_hidden(), tempfile.TemporaryDirectory(prefix="qdq_tflite_") as tmp:
            portable = os.path.join(tmp, "portable")
            export(model, portable, exact=exact)
            converter = tf.lite.TFLiteConverter.from_saved_model(portable)
            if optimizations is not None:
                converter.optimizations = optimizations
            flatbuffer = converter.convert()
        convert = None
    if is_keras:
        _verify_tflite(model, flatbuffer, mode, data, None if convert is None else lambda tap: convert(tap, True),
                       input_signature)
    return flatbuffer


def _verify_tflite(model, flatbuffer, mode, data, reconvert, input_signature=None):
    from tensorflow_qdq.deploy import _sessions, _trace, _verify

    names = [spec.name for spec in _trace.input_signature(model, input_signature)]
    probe = None if reconvert is None else (lambda tap: _sessions.tflite_session(reconvert(tap), names))
    _verify.verify_export(model, _sessions.tflite_session(flatbuffer, names), what="to_tflite",
                          runtime="the TFLite interpreter", mode=mode, data=data, probe=probe)
