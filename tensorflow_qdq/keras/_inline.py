"""Inlining custom layers: their call's keras.ops (and sublayers) become nodes of the graph."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq.keras._graph import (
    NodeMarks,
    _all_layers,
    _fresh_copy,
    _is_float,
    _is_keras_tensor,
    _node_of,
    _rebuildable,
    _single,
    _unique,
)

_L = keras.layers


# ---------------------------------------------------------------------------- inlining
#
# A custom layer is one opaque node to the placement: nothing can quantize the tensors between
# the ops of its call, and runtimes run them in float (InceptionResNetV2's CustomScaleLayer,
# ``inputs[0] + inputs[1] * scale``: TFLite has no range between the MUL and the ADD), and the
# weighted layers it calls stay float (KerasHub's inverted-residual blocks and transformer
# encoders, a user's Conv-BN-ReLU block). Keras 3 records keras.ops and layer calls applied to
# KerasTensors as nodes of a functional graph, so running the layer's ``call`` on the symbolic
# tensors puts its ops and its sublayers into the graph, where quantize_model treats them as
# any other node: weighted sublayers are wrapped (BatchNorm folded), add/multiply are quantized
# like merges. Custom sublayers are inlined in turn (quantize_model repeats the pass).

# Modules whose layer classes are Keras' own or this library's: they keep their own rules.
_BUILTIN_LAYER_MODULES = ("keras.src.layers.", "keras.src.models.", "keras.layers", "tensorflow_qdq.")
_MAX_DEPTH = 16  # nesting of custom layers inlined (one pass per level)


def _is_custom(layer):
    """A layer class of the user's (or a model library's) own, with no built-in layer class
    between it and keras.layers.Layer (a Dense subclass keeps Dense's rules)."""
    if not isinstance(layer, keras.layers.Layer) or _rebuildable(layer) or isinstance(layer, _L.Lambda):
        return False
    for cls in type(layer).__mro__:
        if cls is keras.layers.Layer:
            return True
        if cls.__module__.startswith(_BUILTIN_LAYER_MODULES):
            return False
    return False


def _sublayers(layer):
    return layer._flatten_layers(include_self=False, recursive=True)


def _own_variables(layer):
    """The variables a layer holds itself, not through a sublayer (a LayerScale's gamma)."""
    held = {id(v) for sub in _sublayers(layer) for v in sub.variables}
    return [v for v in layer.variables if id(v) not in held]


def _inline_candidate(layer):
    """A custom layer whose variables all belong to sublayers (one with weights of its own
    keeps its float rule: _unquantizable): a graph node cannot own a weight."""
    return _is_custom(layer) and not _own_variables(layer)


def _static_blocker(layer):
    """Why the candidate's call cannot be inlined from what the layer declares, or None."""
    if type(layer).__call__ is not keras.layers.Layer.__call__:
        return "it overrides __call__"
    parameters = inspect.signature(layer.call).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return "its call takes **kwargs (Keras may pass it arguments a graph cannot record)"
    if "mask" in parameters or type(layer).compute_mask is not keras.layers.Layer.compute_mask:
        return "it takes or computes a Keras mask"
    return None


class _Inliner:
    """Makes a functional copy of a model in which every inlinable custom layer is replaced by
    the nodes of its call (nested models too): keras.ops, and the layers it calls. The other
    layers are fresh copies with the same weights; quantize_model then rebuilds this copy as it
    rebuilds any model (with fresh copies of the sublayers too) and calls ``restore``. One pass
    inlines one level of nesting (``inlined_model`` repeats it)."""

    def __init__(self, skip_layers):
        self.skip = skip_layers
        self.float_reasons = {}  # {name: why a custom layer was not inlined}
        # The sublayers of inlined layers are the original model's objects: the inlined graph
        # calls (and renames) them, and restore() takes back those nodes and names once the
        # quantized copy is built (it holds fresh copies of them).
        self.saved = {}  # {id: (sublayer, name, inbound nodes, outbound nodes)} as before inlining
        self.inlined_marks = None

    def restore(self):
        """The original model's sublayers as they were (names, nodes), where nothing but the
        inlining added to them (a layer the rebuild had to share keeps its nodes)."""
        after = {id(layer): (n_in, n_out) for layer, n_in, n_out in (self.inlined_marks or NodeMarks()).marks.values()}
        for key, (layer, name, n_in, n_out) in self.saved.items():
            layer.name = name
            if after.get(key) == (len(layer._inbound_nodes), len(layer._outbound_nodes)):
                del layer._inbound_nodes[n_in:]
                del layer._outbound_nodes[n_out:]

    def needed(self, model):
        return any(_inline_candidate(layer) and layer.name not in self.skip and layer.name not in self.float_reasons
                   for layer in _all_layers(model))

    def inlined_model(self, model):
        """``model`` with its custom layers inlined, level by level, or ``model`` itself."""
        for _ in range(_MAX_DEPTH):
            if not self.needed(model):
                break
            model = self.model(model)
        self.inlined_marks = NodeMarks([layer for layer, *_ in self.saved.values()])
        return model

    def model(self, model):
        if isinstance(model, keras.Sequential):
            model = keras.Model(_single(model.inputs), _single(model.outputs), name=model.name)
        taken = {op.name for op in model.operations}  # names the inlined ops must not take
        outputs = {id(t._keras_history.operation) for t in model.outputs}
        inlined, source_of, fallback = {}, {}, {}

        def wanted(layer):
            return _inline_candidate(layer) and layer.name not in self.skip and layer.name not in self.float_reasons

        def clone(layer):
            if _rebuildable(layer):
                new = self.model(layer)
            elif wanted(layer):
                new = layer  # its call is run (never the layer itself) or a copy made on a fallback
            else:
                new = _fresh_copy(layer)
            source_of[id(new)] = layer
            return new

        def call(layer, *args, **kwargs):
            source = source_of[id(layer)]
            if layer is source and wanted(source):
                result = self._inline(source, args, kwargs, id(source) in outputs, taken)
                if not isinstance(result, str):
                    out, ops = result
                    # a layer called more than once is inlined at every call: one row, all its ops
                    inlined[source.name] = (type(source).__name__, inlined.get(source.name, ("", []))[1] + ops)
                    return out
                self.float_reasons[source.name] = f"custom layer not inlined: {result}; it runs float as it is"
                if id(source) not in fallback:  # one copy for all the calls of a shared layer
                    fallback[id(source)] = _fresh_copy(source)
                layer = fallback[id(source)]
            out = layer(*args, **kwargs)
            if layer is not source and getattr(source, "weights", None) and not _rebuildable(source):
                layer.set_weights(source.get_weights())
            return out

        copy = keras.models.clone_model(model, clone_function=clone, call_function=call)
        if model.compiled:  # as clone_model does for the model itself
            copy.compile_from_config(model.get_compile_config())
        copy._qdq_inlined = {**getattr(model, "_qdq_inlined", {}), **inlined}  # for quantization_report
        return copy

    def _inline(self, layer, args, kwargs, is_model_output, taken):
        """(outputs, [(node name, node kind)]) of the layer's call run on the symbolic tensors,
        or the reason it cannot be inlined."""
        blocker = _static_blocker(layer)
        if blocker:
            return blocker
        for sub in _sublayers(layer):  # the user's own objects: restore() gives them back as they were
            self.saved.setdefault(id(sub), (sub, sub.name, len(sub._inbound_nodes), len(sub._outbound_nodes)))
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if _is_keras_tensor(t)]
        if any(_is_float(t) and t.dtype != layer.compute_dtype for t in inputs):
            return f"Keras would cast its inputs to its dtype policy's {layer.compute_dtype}"
        if layer.supports_masking and any(getattr(t, "_keras_mask", None) is not None for t in inputs):
            return "its inputs carry a Keras mask, which an inlined graph would not pass on"
        traced = _symbolic_call(layer, args, kwargs)
        if isinstance(traced, str):
            return traced
        out, got = traced
        want = keras.tree.flatten(layer.compute_output_spec(*args, **kwargs))
        if (len(got) != len(want) or not all(_is_keras_tensor(t) for t in got)
                or any(tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype for g, w in zip(got, want))):
            def specs(tensors):
                return [(tuple(t.shape), t.dtype) if _is_keras_tensor(t) else type(t).__name__ for t in tensors]

            return f"its call on symbolic tensors gives {specs(got)}, not the layer's outputs {specs(want)}"
        ops = _ops_between(inputs, got, _sublayers(layer))
        if isinstance(ops, str):
            return ops
        branches = _branches_on_training(layer, args, kwargs, inputs, ops)
        if branches:
            return branches
        mismatch = _computes_unlike(layer, args, kwargs, inputs, got)
        if mismatch:
            return mismatch
        if is_model_output and not (len(got) == 1 and ops and got[0]._keras_history.operation is ops[-1]):
            return "it gives a model output that no single op of its call produces (the output's name would change)"
        # Names: the node giving the (single) output takes the layer's name (the model's output
        # names, and the quantizer after it, stay what they were); the others are named after
        # the layer (a sublayer keeps its own name after it), so reports and exports say where
        # they came from.
        last = got[0]._keras_history.operation if len(got) == 1 else None
        for op in ops:
            if op is last and (layer.name, "output") not in taken:  # the layer leaves: its name is free
                op.name = layer.name
                taken.add((layer.name, "output"))  # not for a second call of the same layer
            elif isinstance(op, keras.layers.Layer):  # KerasHub's blocks name theirs after themselves already
                op.name = _unique(op.name if op.name.startswith(layer.name) else f"{layer.name}_{op.name}", taken)
            else:
                op.name = _unique(f"{layer.name}_{type(op).__name__.lower()}", taken)
        return out, [(op.name, type(op).__name__) for op in ops]


def _symbolic_call(layer, args, kwargs):
    """(outputs, flat outputs) of ``layer.call`` run on the symbolic tensors, or why not."""
    try:
        out = layer.call(*args, **kwargs)
    except Exception as exc:  # tf.* ops, Python control flow on values: not symbolic
        first = str(exc).strip().split("\n")[0].split(". ")[0][:200]  # the message's first sentence
        return f"its call does not run on symbolic Keras tensors ({type(exc).__name__}: {first})"
    return out, keras.tree.flatten(out)


def _branches_on_training(layer, args, kwargs, inputs, ops):
    """Why the call computes other ops with training=True than the inlined (inference) ones,
    or None. In the graph ``training`` reaches each sublayer at run time (a Dropout or
    BatchNormalization behaves as in the layer); Python code that branches on it cannot.
    The probe's nodes are forgotten at once (a sublayer called twice could not be folded)."""
    if "training" not in inspect.signature(layer.call).parameters:
        return None
    marks = NodeMarks(_sublayers(layer))
    try:
        traced = _symbolic_call(layer, args, {**kwargs, "training": True})
        training_ops = traced if isinstance(traced, str) else _ops_between(inputs, traced[1], _sublayers(layer))
    finally:
        marks.forget()
    if isinstance(training_ops, str) or [type(op).__name__ for op in training_ops] != [type(op).__name__ for op in ops]:
        return "its call computes other ops with training=True (Python code that branches on `training`)"
    return None


def _computes_unlike(layer, args, kwargs, inputs, outputs):
    """Why the inlined ops do not compute what the layer computes, or None: both are run on the
    same random inputs, the layer eagerly and traced (as predict and the exporters run it).
    Python code in a call can depend on more than its inputs (tf.executing_eagerly(), random
    numbers, state), which a symbolic call records once."""
    try:
        values = [keras.random.normal(_concrete_shape(t), dtype=t.dtype, seed=i) if _is_float(t)
                  else keras.ops.ones(_concrete_shape(t), dtype=t.dtype) for i, t in enumerate(inputs)]
        inlined = keras.tree.flatten(keras.Function(inputs, outputs)(values))
        it = iter(values)
        filled = keras.tree.map_structure(lambda a: next(it) if _is_keras_tensor(a) else a, (args, kwargs))
        eager = keras.tree.flatten(layer(*filled[0], **filled[1]))
        logger, level = tf.get_logger(), tf.get_logger().level
        logger.setLevel("ERROR")  # one trace per inlined layer on purpose: no "retracing" warning for it
        try:
            traced = keras.tree.flatten(tf.function(lambda a, k: layer(*a, **k))(*filled))
        finally:
            logger.setLevel(level)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not inline
        return f"its call could not be compared with its inlined ops ({type(exc).__name__})"
    for reference, how in ((eager, "eagerly"), (traced, "traced")):
        for want, got in zip(reference, inlined):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            tolerance = 1e-5 if "float16" not in str(layer.compute_dtype) else 1e-2
            if want.shape != got.shape or not np.allclose(want, got, rtol=tolerance, atol=tolerance, equal_nan=True):
                return (f"run {how} it computes other values than its call on symbolic tensors records (Python "
                        "code that depends on more than its inputs)")
    return None


def _concrete_shape(tensor):
    return tuple(2 if d is None else d for d in tensor.shape)


def _ops_between(inputs, outputs, sublayers=()):
    """The operations (keras.ops nodes and calls of ``sublayers``, in call order) that a call
    created from ``inputs`` to ``outputs``, or why they are not those on its inputs only."""
    known, own = {id(t) for t in inputs}, {id(layer) for layer in sublayers}
    found, seen = [], set()

    def visit(tensor):
        if id(tensor) in known or id(tensor) in seen:
            return None
        seen.add(id(tensor))
        history = getattr(tensor, "_keras_history", None)
        if history is None or isinstance(history.operation, _L.InputLayer) or (
                isinstance(history.operation, keras.layers.Layer) and id(history.operation) not in own):
            return "its call reads a tensor that is not one of its inputs, or calls a layer that is not its own"
        for arg in _node_of(tensor).arguments.keras_tensors:
            reason = visit(arg)
            if reason:
                return reason
        if history.operation not in found:
            found.append(history.operation)
        return None

    for tensor in outputs:
        reason = visit(tensor)
        if reason:
            return reason
    return found
