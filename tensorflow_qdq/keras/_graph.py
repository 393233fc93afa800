"""Helpers over Keras functional graphs shared by quantize_model's inlining and rebuilding."""

import keras

_L = keras.layers


def _is_functional(model):
    # Functional models are instances of Keras' (private) Functional class.
    return isinstance(model, keras.Model) and any(c.__name__ == "Functional" for c in type(model).__mro__)


def _rebuildable(model):
    return isinstance(model, keras.Sequential) or _is_functional(model)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if _rebuildable(layer):
            yield from _all_layers(layer)


def _node_of(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


def _is_keras_tensor(value):
    return isinstance(value, keras.KerasTensor)


def _is_float(tensor):
    return _is_keras_tensor(tensor) and "float" in str(tensor.dtype)


def _unique(name, taken):
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _fresh_copy(layer):
    """A new instance of ``layer`` from its config (weights are set once it is built), or the
    layer itself where Keras cannot rebuild it (the rebuild warns about those)."""
    if isinstance(layer, _L.Lambda):
        return layer
    try:
        copy = layer.__class__.from_config(layer.get_config())
    except Exception:  # reported by _ModelRebuild._clone_layer, which tries again
        return layer
    copy.name = layer.name  # a config that renames (KerasHub's DepthwiseConvBlock appends "_0")
    return copy


class NodeMarks:
    """Where the node lists of some operations end now, to forget the nodes added after (a
    probe's symbolic call, a flat copy's calls)."""

    def __init__(self, operations=()):
        self.marks = {}
        for op in operations:
            self.remember(op)

    def remember(self, op):
        self.marks.setdefault(id(op), (op, len(op._inbound_nodes), len(op._outbound_nodes)))

    def forget(self):
        for op, inbound, outbound in self.marks.values():
            del op._inbound_nodes[inbound:]
            del op._outbound_nodes[outbound:]
