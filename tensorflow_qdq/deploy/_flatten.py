"""A functional model with nested functional models, copied as one graph.

Verification compares the runtime's quantized tensors with Keras' stretch by stretch, but a
nested model (a keras.applications or KerasHub backbone called as one layer) is one node of its
parent: every quantizer inside it is out of reach, and a disagreement inside it would be named
after the first quantizer behind it. ``flat_copy`` gives a copy in which the nested models'
layers are called on the parent's tensors, so every quantized tensor is a tensor of one graph.
The layers are copies with the same weights (the user's model gains no nodes; a traced copy
has one call per layer, as the exporters expect); a nested layer is named in messages with its
model's name as a prefix, as ``quantization_report`` writes it (``backbone/conv``).
"""

import keras

from tensorflow_qdq.keras._graph import NodeMarks, _is_functional


def flat_copy(model):
    """The copy, or None when ``model`` nests no functional model (or a layer cannot be copied
    from its config: then the caller keeps to the top level)."""
    if not any(_is_functional(op) for op in model.operations):
        return None
    copies, marks = {}, NodeMarks()
    try:
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
        outputs = _run(model, inputs if len(inputs) > 1 else inputs[0], "", copies, marks)
        flat = keras.Model(inputs, outputs, name=f"{model.name}_flat")
        for copy, source in copies.values():
            copy.set_weights(source.get_weights())
    except Exception:  # noqa: BLE001 - a layer without a working config: verify at the top level
        return None
    finally:
        marks.forget()
    return flat


def _run(model, inputs, prefix, copies, marks):
    """``model``'s graph on ``inputs`` with copies of its layers (nested models run inline)."""

    def operation(op):
        if not isinstance(op, keras.layers.Layer) or _is_functional(op):
            marks.remember(op)  # a keras.ops node is called as it is; its new nodes are forgotten
            return op
        if id(op) not in copies:
            copy = op.__class__.from_config(op.get_config())
            copy.name = prefix.replace("/", "_") + op.name  # Keras names take no "/"
            copy._qdq_report_name = prefix + op.name  # what messages call it (report_name)
            copies[id(op)] = (copy, op)
        return copies[id(op)][0]

    def call(op, *args, **kwargs):
        if _is_functional(op):
            nested = args[0] if len(args) == 1 else list(args)
            return _run(op, nested, f"{prefix}{op.name}/", copies, marks)
        return op(*args, **kwargs)

    return model._run_through_graph(inputs, operation_fn=operation, call_fn=call)


def report_name(layer):
    """A layer's name as quantization_report writes it (``backbone/conv`` inside a flat copy)."""
    return getattr(layer, "_qdq_report_name", layer.name)
