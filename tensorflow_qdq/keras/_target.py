"""The export interface: while a model is traced for a runtime, quantizers emit that runtime's ops.

During training and in Keras inference, quantizers run tensorflow-qdq's kernels. The ONNX
and TFLite exporters (``tensorflow_qdq.deploy``) instead trace the model once with a
:class:`Target` installed here (``tracing_for``): each quantizer and quantized layer then asks
``current_target()`` for the ops that runtime turns into integer kernels, with every range and
weight frozen to a constant (read in eager mode through ``tf.init_scope``).

A target declares two things. What quantizers call (``weight``, ``activation``: every target
implements them), and the forms of the trace its converter needs (the boolean attributes, all
False by default, with the methods a form calls): ``deploy/_trace.py`` reads them while it
traces and freezes the model.
"""

import abc
import contextlib
import threading

_state = threading.local()


class Target(abc.ABC):
    """What an export runtime (``deploy.onnx.OnnxTarget``, ``deploy.tflite.TFLiteTarget``) gives
    the trace. Subclass it and implement ``weight`` and ``activation``: the forms default to off and
    their methods to no change."""

    # -- what quantizers call --------------------------------------------------------------

    @abc.abstractmethod
    def weight(self, weight, channel_axes, num_bits, layer):
        """The tensor a quantized layer uses for ``weight`` (a NumPy array, the folded float weight)
        quantized symmetrically to ``num_bits`` with one range per index of ``channel_axes``; ``layer``
        is the float layer (for messages)."""

    @abc.abstractmethod
    def activation(self, x, quantizer, lo, hi):
        """``x`` quantized as activation ``quantizer`` (a ``QuantizeAndDequantize``) quantizes it,
        over its constant range ``[lo, hi]``, in the ops the runtime reads as a quantized tensor."""

    # -- forms of the trace (see deploy/_trace.py) ------------------------------------------

    unroll_recurrent = False
    """Recurrent layers traced unrolled: the runtime's converter cannot convert Keras 3's while
    loop with a free batch size (TFLite: "TensorListReserve requires element_shape to be static")."""

    matmul_for_tensordot = False
    """A Dense on an input of rank > 2 (``tf.tensordot``) rewritten as one ``BatchMatMulV2``: the
    converter then fuses it and its bias into one integer matmul (TFLite's FULLY_CONNECTED)."""

    unsplat_biases = False
    """Uniform bias constants moved by one ulp: the converter (TFLite, TF 2.21) quantizes a bias
    whose values are all equal with the first output channel's scale only."""

    one_scale_per_tensor = False
    """The runtime gives a tensor one scale for every reader and a Concatenate one scale on all its
    inputs (TFLite: "quantization parameters violate the same scale constraint"): quantizers that
    would requantize a Concatenate input are left out (their ``check`` is still called) and shared
    tensors are quantized at their source."""

    hard_sigmoid_on_grid = False
    """``relu6(x + 3)`` inside a quantized hard sigmoid gets a range of its own, on six times the
    output's grid, so the runtime (TFLite: no int8 hard sigmoid) runs its ADD and MUL in integers."""

    quantize_preprocessed_inputs = False
    """The runtime needs a quantized input on every op, the elementwise preprocessing layers
    (Rescaling, Normalization) at a model input included: the trace quantizes such an input with
    ``quantize_input`` and calls the layers as ``affine_form`` gives them."""

    batch_norm_in_one_op = False
    """A BatchNormalization that reads a quantized tensor (and follows no foldable layer) is traced
    as ``batch_norm_form`` gives it: computed as MUL then ADD, the tensor between them has no range
    and both stay float."""

    def check(self, quantizer):
        """Records why ``quantizer`` could not be exported, where the trace leaves it out
        (``one_scale_per_tensor``); the default records nothing."""
        return None

    def quantize_input(self, x, layers, quantizer):
        """Model input ``x``, read by the preprocessing ``layers`` whose output ``quantizer``
        quantizes, in the form the runtime reads as quantized (``quantize_preprocessed_inputs``);
        the default leaves it as it is."""
        return x

    def affine_form(self, layers, shape):
        """A call computing the elementwise affine ``layers`` on an input of ``shape`` as one op the
        runtime quantizes, or None to call them as they are (``quantize_preprocessed_inputs``)."""
        return None

    def batch_norm_form(self, layer, shape):
        """A call computing BatchNormalization ``layer`` on an input of ``shape`` as one op the runtime
        quantizes, or None to call it as it is (``batch_norm_in_one_op``)."""
        return None


def current_target():
    """The export target installed by ``tracing_for``, or None outside an export trace."""
    return getattr(_state, "target", None)


@contextlib.contextmanager
def tracing_for(target):
    """Installs ``target`` (a :class:`Target`, or None) for the duration of a block, restoring the
    previous one."""
    previous = current_target()
    _state.target = target
    try:
        yield target
    finally:
        _state.target = previous
