"""Traces a quantization-aware Keras model for one runtime: constants in, runtime ops out."""

import contextlib
import sys

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tensorflow_qdq.keras import _observer, _placement, _target
from tensorflow_qdq.keras._graph import _is_functional
from tensorflow_qdq.keras._layer import QuantizeAndDequantize

# Elementwise affine preprocessing at a model input (see ``preprocessed_inputs``).
_AFFINE_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)
# Attributes that keep a function from being inlined: Keras 3 runs grouped convolutions (and
# channels-first 3-D ones) in a ``tf.function(jit_compile=True)``, which stays a PartitionedCall
# that no converter rule handles (tf2onnx: "PartitionedCall is not supported").
_NO_INLINE_ATTRS = ("_noinline", "_XlaMustCompile")


# -- the input signature --------------------------------------------------------------------


def input_signature(model, signature=None):
    """One ``tf.TensorSpec`` per model input, the batch dimension free.

    Functional and Sequential models have their ``inputs``; a subclassed model has the shapes of
    the first call that built it (``model(x)``, ``fit`` or ``calibrate``); ``signature`` (a
    TensorSpec or a list of them) overrides both."""
    if signature is not None:
        specs = [signature] if isinstance(signature, tf.TensorSpec) else list(signature)
        if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
            raise TypeError(f"input_signature must be a tf.TensorSpec or a list of them, got {signature!r}")
        return [tf.TensorSpec(s.shape, s.dtype, name=s.name or f"input_{i}") for i, s in enumerate(specs)]
    inputs = functional_inputs(model)
    if inputs is not None:
        return [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in inputs]
    shapes = called_shapes(model)
    if shapes is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model that was never called, so its input "
            "shape is unknown: call it on a batch first (model(x), or calibrate(model, x)), or pass "
            "input_signature=[tf.TensorSpec((None, ...), tf.float32)] (one spec per input)")
    dtype = tf.as_dtype(getattr(model, "input_dtype", None) or "float32")
    return [tf.TensorSpec((None,) + tuple(shape[1:]), dtype, name=name) for name, shape in shapes]


def functional_inputs(model):
    """A functional or built Sequential model's input tensors, else None (subclassed models)."""
    try:
        inputs = model.inputs
    except AttributeError:  # a subclassed keras.Model has no graph of inputs
        return None
    return list(inputs) if inputs else None


def called_shapes(model):
    """[(name, shape)] of a built subclassed model's inputs, from the shapes Keras recorded when
    the model was first called; None when it was never called."""
    recorded = getattr(model, "_build_shapes_dict", None)
    if not recorded:
        samples = _observer.remembered_samples(model)
        return None if samples is None else [(f"input_{i}", np.shape(a)) for i, a in enumerate(samples)]
    found = []
    for key, shape in recorded.items():
        name = key.removesuffix("_shape")
        if _is_shape(shape):
            found.append((name, tuple(shape)))
        else:  # one argument holding a list of inputs
            found.extend((f"{name}_{i}", tuple(s)) for i, s in enumerate(shape))
    return found


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(d is None or isinstance(d, int) for d in value)


def _calls_with_list(model, count):
    """Whether a model with several inputs takes them as one list (functional models and a
    subclassed ``call(self, inputs)``) rather than as separate arguments."""
    recorded = getattr(model, "_build_shapes_dict", None)
    if functional_inputs(model) is not None or not recorded:
        return True
    return len(recorded) == 1 and count > 1


# -- tracing ----------------------------------------------------------------------------------


def trace(model, target, signature=None):
    """A concrete function of ``model`` in inference mode whose quantizers emit ``target``'s ops
    (a ``keras._target.Target``; None traces the model as it is, its quantizers running their kernels).

    The target's forms (all for TFLite): ``unroll_recurrent`` traces recurrent layers unrolled;
    ``one_scale_per_tensor`` changes how Concatenate inputs are quantized to what the converter
    accepts (see ``_one_scale_per_tensor``); ``batch_norm_in_one_op`` traces a BatchNormalization
    that reads a quantized tensor as ``batch_norm_form`` gives it (see ``_batch_norms_in_one_op``);
    ``quantize_preprocessed_inputs`` quantizes a model input that feeds elementwise preprocessing
    layers with ``quantize_input`` (see ``preprocessed_inputs``), and ``affine_form`` gives their
    calls as one, in the form the converter quantizes."""
    forms = _forms(target)
    specs = input_signature(model, signature)
    as_list = _calls_with_list(model, len(specs))
    preprocessing = {}
    if forms.quantize_preprocessed_inputs:
        preprocessing = {i: found for i, found in preprocessed_inputs(model).items() if specs[i].dtype.is_floating}
    replaced = {}
    for index, (layers, _) in preprocessing.items():
        call = target.affine_form(layers, specs[index].shape)
        if call is not None:  # the chain as one op: the first layer computes it, the others pass
            replaced.update({layer: _identity for layer in layers[1:]})
            replaced[layers[0]] = call
    replaced = {**_concat_inputs_on_its_grid(model, target), **replaced}
    if forms.one_scale_per_tensor:
        replaced = {**_one_scale_per_tensor(model, target), **replaced}  # the preprocessing's form first
    if forms.batch_norm_in_one_op:
        replaced = {**_batch_norms_in_one_op(model, target), **replaced}

    def serve(*inputs):
        inputs = [target.quantize_input(x, *preprocessing[i]) if i in preprocessing else x
                  for i, x in enumerate(inputs)]
        if len(inputs) == 1:
            return model(inputs[0], training=False)
        return model(list(inputs), training=False) if as_list else model(*inputs, training=False)

    function = tf.function(serve, input_signature=specs, autograph=False)
    with (_target.tracing_for(target), _unrolled(model, forms.unroll_recurrent),
          _calls_replaced(replaced), _operations_scoped(model)):
        concrete = function.get_concrete_function()
    return function, concrete


def _forms(target):
    """Where the trace reads ``target``'s forms: the target, or for None the defaults (none)."""
    return _target.Target if target is None else target


def _identity(inputs):
    return inputs


# Layers that TFLite runs with one scale on input and output (MAX_POOL_2D, AVERAGE_POOL_2D,
# RESHAPE, PAD, TRANSPOSE, ...) or drops (dropouts): a quantized input gives a quantized output.
_SAME_SCALE_LAYERS = _placement.PASSTHROUGH_LAYERS + (
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)


def _one_scale_per_tensor(model, target):
    """{layer: replacement call} that give the TFLite converter a graph where a Concatenate's
    input is never requantized twice. Measured on TF 2.21, the converter fails ("'tfl.concatenation'
    op quantization parameters violate the same scale constraint") where a CONCATENATION reads

    * a FakeQuant that requantizes an already quantized tensor (an AveragePooling2D of a
      quantized tensor, then the Concatenate's input quantizer: DenseNet's transitions): it
      cannot requantize once more onto the output's scale. The input quantizer is left out
      (``_requantizing_concat_inputs``); the converter requantizes the tensor itself, once
      (Keras rounds to the input quantizer's grid and then to the output's: at most a step);
    * a FakeQuant of a tensor that other layers read unquantized (DenseNet's pooled stem: the
      MaxPooling2D output goes to a Concatenate through a passthrough of the ReLU's quantizer,
      and to a BatchNormalization as it is). The tensor is quantized at its source for all its
      readers (``_quantized_at_source``), as the runtime computes it anyway (an int8 op writes
      one tensor); for a passthrough the values are on the grid already.

    A Concatenate followed by a ReLU is rounded once, as Keras rounds it
    (``_concat_before_clamping_activation``)."""
    readers = _readers_index(model)
    found = _quantized_at_source(model, target, readers)
    found.update(_requantizing_concat_inputs(model, target, readers))
    for layer, call in _concat_before_clamping_activation(model, target, readers).items():
        found.setdefault(layer, call)
    return found


def _batch_norms_in_one_op(model, target):
    """{BatchNormalization: ``target.batch_norm_form`` of it} for each one that follows no
    foldable layer (DenseNet's BN -> ReLU -> conv after every concatenation) and reads a
    quantized tensor. TensorFlow computes it as a MUL then an ADD, and the tensor between them
    has no range, so both stay float; as one op (with the ReLU after it fused) it runs in int8
    wherever its output is quantized."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        args = layer._inbound_nodes[0].arguments.keras_tensors
        if len(args) == 1 and _quantized(args[0]):
            call = target.batch_norm_form(layer, args[0].shape)
            if call is not None:
                found[layer] = call
    return found


def _readers_index(model):
    """{id(tensor): [(reading layer, its node), ...]} over every call inside ``model``."""
    index = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for node in layer._inbound_nodes:
            for tensor in node.arguments.keras_tensors:
                index.setdefault(id(tensor), []).append((layer, node))
    return index


def _model_outputs(model):
    """The output tensors of a functional model (none for a subclassed one)."""
    try:
        return list(model.outputs or [])
    except AttributeError:
        return []


def _quantized_at_source(model, target, readers):
    """{layer: its call with a quantizer's FakeQuant on the output} for each layer (called
    once, one output, not a model output) whose output one activation quantizer reads beside
    layers that read it unquantized. Not where the layer keeps its input's scale and the
    quantizer is not a passthrough: its range would then differ from the layer's input's, which
    TFLite does not allow (``_requantizing_concat_inputs`` handles that case)."""
    outputs = {id(t) for t in _model_outputs(model)}
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (QuantizeAndDequantize, keras.Model)) or len(layer._inbound_nodes) != 1:
            continue
        tensors = layer._inbound_nodes[0].outputs
        if len(tensors) != 1 or id(tensors[0]) in outputs:
            continue
        users = readers.get(id(tensors[0]), [])
        quantizers = {user for user, _ in users if isinstance(user, QuantizeAndDequantize)}
        if len(quantizers) != 1 or len(quantizers) == len({user for user, _ in users}):
            continue  # no reader or several quantizers read it, or no reader reads it unquantized
        passthrough = all(_is_passthrough(node) for user, node in users if user in quantizers)
        if passthrough or not isinstance(layer, _SAME_SCALE_LAYERS):
            found[layer] = _quantized_output_call(layer, quantizers.pop(), target)
    return found


def _requantizing_concat_inputs(model, target, readers):
    """{quantizer: a call that passes its input through} for each quantizer (called once, not
    as a passthrough) that a Concatenate reads and whose input is already quantized. Its other
    readers (a conv that the pooled tensor also feeds) then read the tensor on its first grid,
    which the converter accepts, where a requantized tensor shared with the CONCATENATION
    fails too ("'tfl.average_pool_2d' op ... violate the same scale constraint")."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, QuantizeAndDequantize) or len(layer._inbound_nodes) != 1:
            continue
        node = layer._inbound_nodes[0]
        args = node.arguments.keras_tensors
        if _is_passthrough(node) or len(args) != 1 or len(node.outputs) != 1:
            continue
        users = readers.get(id(node.outputs[0]), [])
        if any(isinstance(user, keras.layers.Concatenate) for user, _ in users) and _quantized(args[0]):
            found[layer] = _left_out_call(layer, target)
    return found


# Activations that commute with rounding onto a grid that holds 0 (they clamp):
# relu(round(x)) == round(relu(x)), and likewise for relu6.
_CLAMPING_ACTIVATIONS = ("relu", "relu6")


def _concat_before_clamping_activation(model, target, readers):
    """{Concatenate: its call with a FakeQuant on its output} for each Concatenate (called once)
    whose output only a ReLU/ReLU6 reads, whose output in turn only an activation quantizer reads.

    quantize_model treats the ReLU as fused into the concat (NASNet's last cell: concat -> ReLU ->
    global pooling), so Keras rounds once, after the ReLU. TFLite's CONCATENATION fuses no
    activation: the converter gives the concat output, which has no range, a scale from its
    inputs' ranges (NASNetMobile: the widest input's, 0.0669) and the RELU then requantizes onto
    the quantizer's grid (0.0292), two roundings: 1% of the elements two steps off. With the
    quantizer's own FakeQuant on the concat output (the ReLU commutes with it) the converter
    requantizes each input straight onto that grid, once, and the RELU after it changes nothing."""
    outputs = {id(t) for t in _model_outputs(model)}
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.Concatenate) or len(layer._inbound_nodes) != 1:
            continue
        tensors = layer._inbound_nodes[0].outputs
        users = readers.get(id(tensors[0]), []) if len(tensors) == 1 else []
        if len(users) != 1 or not isinstance(users[0][0], (keras.layers.ReLU, keras.layers.Activation)):
            continue  # (a concat read straight by its quantizer is rounded once already)
        quantizer = _quantizer_after(tensors[0], readers, outputs)  # nobody reads the ReLU unrounded
        if quantizer is not None:
            found[layer] = _quantized_output_call(layer, quantizer, target)
    return found


def _concat_inputs_on_its_grid(model, target):
    """{layer: its call with the concat's quantizer on its output} for each layer whose output
    only a Concatenate reads, unquantized, and whose concat is quantized (on its output, or after
    a ReLU/ReLU6 that only the quantizer reads). quantize_model leaves such a layer's output to
    the concat's quantizer (keras/_plan: ``_rounded_on_concat_grid``): one rounding,
    as TFLite computes it. The runtimes need a range on the layer's output to run the layer and
    the concat in integers; the concat's own is exact there (the concat only moves values onto
    it, and a ReLU after it commutes with the rounding)."""
    readers = _readers_index(model)
    outputs = {id(t) for t in _model_outputs(model)}
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.Concatenate) or len(layer._inbound_nodes) != 1:
            continue
        node = layer._inbound_nodes[0]
        quantizer = _quantizer_after(node.outputs[0], readers, outputs)
        if quantizer is None:
            continue
        for tensor in node.arguments.keras_tensors:
            producer = tensor._keras_history.operation
            if (_quantized(tensor) or not isinstance(producer, keras.layers.Layer)
                    or isinstance(producer, (keras.layers.InputLayer, keras.Model))
                    or len(producer._inbound_nodes) != 1 or len(producer._inbound_nodes[0].outputs) != 1
                    or len(readers.get(id(tensor), [])) != 1 or id(tensor) in outputs):
                continue
            found[producer] = _quantized_output_call(producer, quantizer, target)
    return found


def _quantizer_after(tensor, readers, outputs):
    """The activation quantizer that alone reads ``tensor`` (not as a passthrough), directly or
    after a ReLU/ReLU6 that only it reads; else None."""
    users = readers.get(id(tensor), [])
    if len(users) != 1 or id(tensor) in outputs:
        return None
    user, node = users[0]
    if isinstance(user, (keras.layers.ReLU, keras.layers.Activation)):
        if _placement.activation_of(user) not in _CLAMPING_ACTIVATIONS or len(node.outputs) != 1:
            return None
        return _quantizer_after(node.outputs[0], readers, outputs)
    if isinstance(user, QuantizeAndDequantize) and not _is_passthrough(node):
        return user
    return None


def _is_passthrough(node):
    return bool(node.arguments.kwargs.get("passthrough"))


def _quantized(tensor):
    """Whether ``tensor`` is an activation quantizer's output, moved by same-scale layers only."""
    while True:
        layer, node_index, _ = tensor._keras_history
        if isinstance(layer, QuantizeAndDequantize):
            return True
        if not isinstance(layer, _SAME_SCALE_LAYERS):
            return False
        args = layer._inbound_nodes[node_index].arguments.keras_tensors
        if len(args) != 1:
            return False
        tensor = args[0]


def _left_out_call(quantizer, target):
    def call(inputs, *args, **kwargs):
        target.check(quantizer)  # still named if it could not be exported anyway (8 bits, per tensor)
        return inputs

    return call


def _quantized_output_call(layer, quantizer, target):
    def call(*args, **kwargs):
        lo, hi = quantizer.constant_range()
        return target.activation(type(layer).call(layer, *args, **kwargs), quantizer, lo, hi)

    return call


@contextlib.contextmanager
def _calls_replaced(replacements):
    """Layers traced with another (equivalent) call: the form a converter quantizes."""
    saved = {layer: layer.__dict__.get("call") for layer in replacements}
    for layer, call in replacements.items():
        object.__setattr__(layer, "call", call)  # past Keras's attribute tracking: a plain function
    try:
        yield
    finally:
        for layer, previous in saved.items():
            if previous is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


@contextlib.contextmanager
def _operations_scoped(model):
    """Graph nodes that are keras.ops rather than layers (``x + y`` on Keras tensors, the ops of a
    custom layer quantize_model inlined) traced in a name scope of their own name, as a layer's
    call is: Keras opens none for them, so their runtime ops would be ``functional_1/Mul``, not
    attributable to a node (``quantization_report(runtime=...)`` reads the scopes). The scope is
    entered twice, as Keras enters a layer's (to build it, then to call it), so that both are
    numbered alike in the trace (``functional_1/conv_1/...``, ``functional_1/block_multiply_1/...``)."""
    operations = [op for m in model._flatten_layers(include_self=True, recursive=True)
                  if isinstance(m, keras.Model) for op in getattr(m, "operations", ())
                  if not isinstance(op, keras.layers.Layer)]
    saved = {op: op.__dict__.get("call") for op in operations}
    for op in operations:
        object.__setattr__(op, "call", _scoped_call(op, op.call))
    try:
        yield
    finally:
        for op, previous in saved.items():
            if previous is None:
                object.__delattr__(op, "call")
            else:
                object.__setattr__(op, "call", previous)


def _scoped_call(op, call):
    def scoped(*args, **kwargs):
        with tf.name_scope(op.name):  # taken, as a layer's build takes its scope name
            pass
        with tf.name_scope(op.name):
            return call(*args, **kwargs)

    return scoped


@contextlib.contextmanager
def _unrolled(model, unroll):
    """Recurrent layers traced in a portable form: never through cuDNN (Keras 3's LSTM/GRU take
    it when a GPU is present; no converter reads CudnnRNN ops), and unrolled when ``unroll``:
    the TFLite converter rejects Keras 3's while loop ("TensorListReserve requires element_shape
    to be static": its element shape holds the free batch size), while the unrolled steps are
    plain ops that take any batch size."""
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, keras.layers.RNN)]
    saved = [(layer, layer.unroll, getattr(layer, "use_cudnn", None)) for layer in layers]
    for layer in layers:
        layer.unroll = layer.unroll or unroll
        if hasattr(layer, "use_cudnn"):
            layer.use_cudnn = False
    try:
        yield
    except ValueError as exc:
        if unroll and layers and "unroll" in str(exc).lower():
            raise ValueError(
                f"the recurrent layers {', '.join(repr(layer.name) for layer in layers)} need a fixed sequence "
                "length to convert to TFLite (the converter cannot convert Keras 3's recurrent while loop with a "
                "free batch size, so they are unrolled): give the model input a fixed length, e.g. "
                "keras.Input((timesteps, features))") from exc
        raise
    finally:
        for layer, was_unrolled, use_cudnn in saved:
            layer.unroll = was_unrolled
            if use_cudnn is not None:
                layer.use_cudnn = use_cudnn


def preprocessed_inputs(model):
    """{input index: (layers, quantizer)} for each model input read only by a chain of Rescaling
    or Normalization layers whose output only an activation quantizer reads. The preprocessing
    ops then have a float input; a runtime that needs quantized inputs on every op (TFLite) gets
    the model input quantized on the grid that the quantizer's grid maps back to."""
    inputs = functional_inputs(model)
    if inputs is None:
        return {}
    found = {}
    for index, tensor in enumerate(inputs):
        chain = []
        readers = readers_of(model, tensor)
        # One reader at each step, called once (a shared layer is traced with one call only).
        while (len(readers) == 1 and isinstance(readers[0][0], _AFFINE_PREPROCESSING)
               and len(readers[0][0]._inbound_nodes) == 1):
            layer, node = readers[0]
            chain.append(layer)
            readers = [r for out in node.outputs for r in readers_of(model, out)]
        quantizers = _reading_quantizers(readers)
        if chain and quantizers:
            found[index] = (tuple(chain), quantizers[0])
    return found


def _reading_quantizers(readers):
    """The activation quantizers that read a tensor, given its readers ((layer, node) pairs): the
    readers themselves, or those of a nested single-input functional model called once on it
    (``Rescaling`` -> a KerasHub or keras.applications backbone); [] if any other layer reads it."""
    found = []
    for layer, node in readers:
        if isinstance(layer, QuantizeAndDequantize):
            found.append(layer)
        elif (_is_functional(layer) and len(layer.inputs) == 1
              and len(layer._inbound_nodes) == 1 and len(node.arguments.keras_tensors) == 1):
            inner = _reading_quantizers(readers_of(layer, layer.inputs[0]))
            if not inner:
                return []
            found.extend(inner)
        else:
            return []
    return found


def readers_of(model, tensor):
    """(layer, node) for every call of a layer of ``model`` on ``tensor`` (none for a spec)."""
    return [(layer, node) for layer in getattr(model, "layers", []) for node in layer._inbound_nodes
            if any(t is tensor for t in node.arguments.keras_tensors)]


def affine_map(layers, shape):
    """(a, b) with ``layers(x) == a * x + b`` elementwise (the layers applied in turn), read by
    calling them on 0 and 1 (broadcastable to an input of ``shape``, free dimensions as 1)."""
    probe = (1,) + tuple(1 if d is None else int(d) for d in shape[1:])

    def apply(x):
        for layer in layers:
            x = layer(x)
        return np.asarray(x, np.float64)

    with tf.init_scope():
        b = apply(tf.zeros(probe))
        a = apply(tf.ones(probe)) - b
    return a, b


# -- freezing ---------------------------------------------------------------------------------


def frozen(model, target, signature=None):
    """``trace`` with every variable and captured tensor made a constant: converters see the whole
    model in one graph (tf2onnx turns captured tensors it cannot resolve, e.g. a
    Normalization layer's mean, into extra graph inputs).

    Control flow stays functional (a ``While`` op: tf2onnx's loop rules read recurrent layers in
    that form, not lowered to Enter/Exit/Merge), and functions Keras marks as not to be inlined
    (XLA-compiled grouped convolutions) are inlined, so no call op is left for a converter."""
    if "tf2onnx" in sys.modules:  # an ONNX export (to_onnx imports tf2onnx first): our rules
        from tensorflow_qdq.deploy import _tf2onnx_handlers

        _tf2onnx_handlers.register()
    forms = _forms(target)
    concrete = trace(model, target, signature)[1]
    function = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def = function.graph.as_graph_def()
    changed = _allow_inlining(graph_def)
    if changed:
        graph_def = _inline_functions(graph_def, function)
    if forms.matmul_for_tensordot:
        changed = _tensordot_as_matmul(graph_def) or changed
    if forms.unsplat_biases:
        changed = _unsplat_biases(graph_def) or changed
    if forms.hard_sigmoid_on_grid:
        changed = _hard_sigmoid_on_grid(graph_def) or changed
    return _function_of(graph_def, function) if changed else function


def _allow_inlining(graph_def):
    """Drops the attributes that keep functions from being inlined; returns whether any was."""
    changed = False
    for function in graph_def.library.function:
        for key in _NO_INLINE_ATTRS:
            if key in function.attr:
                del function.attr[key]
                changed = True
    for node in _all_nodes(graph_def):
        if node.op.endswith("PartitionedCall") and "_XlaMustCompile" in node.attr:
            del node.attr["_XlaMustCompile"]
            changed = True
    return changed


def _all_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _inline_functions(graph_def, function):
    """Grappler's function inlining alone (no constant folding: it would fold the weight
    quantizers into float constants)."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.optimizers[:] = ["function"]
    with tf.Graph().as_default():  # exporting a meta graph needs graph mode
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(t.name for t in list(function.inputs) + list(function.outputs))
    meta_graph.collection_def["train_op"].CopyFrom(fetches)
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _function_of(graph_def, function):
    """A concrete function over ``graph_def`` with ``function``'s inputs and outputs (same
    tensor names)."""
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    return wrapped.prune([graph.get_tensor_by_name(t.name) for t in function.inputs],
                         [graph.get_tensor_by_name(t.name) for t in function.outputs])


# -- Dense on inputs of rank > 2 ------------------------------------------------------------------


def _tensordot_as_matmul(graph_def):
    """Rewrites each ``tf.tensordot(x, w, [[-1], [0]])`` (Keras's Dense on an input of rank > 2:
    Transpose, Reshape to 2-D, MatMul, Reshape back) as one ``BatchMatMulV2(x, w)``: the TFLite
    converter fuses that and the following bias into one int8 FULLY_CONNECTED, while after the
    tensordot's reshape the bias stays a float ADD (and the MatMul float: its output has no
    range). Returns whether any was rewritten."""
    nodes = {n.name: n for n in graph_def.node}
    changed = False
    for node in list(graph_def.node):
        x, w = _tensordot_operands(node, nodes)
        if x is None:
            continue
        dtype = node.attr["T"].type
        node.op = "BatchMatMulV2"
        del node.input[:]
        node.input.extend([x, w])
        for key in list(node.attr):
            del node.attr[key]
        node.attr["T"].type = dtype
        node.attr["adj_x"].b = False
        node.attr["adj_y"].b = False
        changed = True
    return changed


def _tensordot_operands(node, nodes):
    """(x, w) when ``node`` is the final Reshape of a tensordot over x's last axis and w's first,
    with the transpose the identity; else (None, None)."""
    if node.op != "Reshape":
        return None, None
    matmul = nodes.get(_source(node.input[0]))
    if matmul is None or matmul.op != "MatMul" or matmul.attr["transpose_a"].b or matmul.attr["transpose_b"].b:
        return None, None
    flat = nodes.get(_source(matmul.input[0]))
    if flat is None or flat.op != "Reshape":
        return None, None
    transpose = nodes.get(_source(flat.input[0]))
    if transpose is None or transpose.op != "Transpose":
        return None, None
    perm = _constant_value(transpose.input[1], nodes)
    if perm is None or list(perm) != list(range(len(perm))) or len(perm) < 3:
        return None, None
    return transpose.input[0], matmul.input[1]


def _source(name):
    return name.lstrip("^").split(":")[0]


def _constant_value(name, nodes):
    """The value of a Const, or of a ConcatV2 of Consts (how tf.tensordot builds its
    permutation), else None."""
    node = nodes.get(_source(name))
    if node is None:
        return None
    if node.op == "Const":
        return tf.make_ndarray(node.attr["value"].tensor)
    if node.op == "ConcatV2":
        parts = [_constant_value(i, nodes) for i in node.input[:-1]]
        if any(p is None for p in parts):
            return None
        return np.concatenate([np.reshape(p, [-1]) for p in parts])
    return None


# -- uniform biases -------------------------------------------------------------------------------

_BIAS_OPS = ("BiasAdd", "Add", "AddV2")


def _unsplat_biases(graph_def):
    """Moves one value of each uniform bias constant (all values equal, not zero) by one float32
    ulp. The TFLite converter (TF 2.21) quantizes a bias whose values are all equal to int32 with
    the scale of the first output channel only (every channel gets the same code), so with
    per-channel weight scales every other channel's bias is wrong (a Dense initialized with
    ``bias_initializer="ones"``: outputs off by many steps). One ulp is ~1e-7 of the value, far
    below the int32 bias step. Returns whether any constant was changed."""
    nodes = {n.name: n for n in graph_def.node}
    changed = False
    for node in graph_def.node:
        if node.op not in _BIAS_OPS:
            continue
        for name in node.input[:2]:
            const = nodes.get(_source(name))
            if const is None or const.op != "Const":
                continue
            value = tf.make_ndarray(const.attr["value"].tensor)
            if value.dtype != np.float32 or value.size < 2 or value.flat[0] == 0 or np.any(value != value.flat[0]):
                continue
            value = value.copy()
            value.flat[0] = np.nextafter(value.flat[0], np.float32(np.inf))
            const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
            changed = True
    return changed


# -- hard sigmoid between quantizers ---------------------------------------------------------------


def _hard_sigmoid_on_grid(graph_def):
    """Gives ``relu6(x + 3)`` inside each hard sigmoid (``relu6(x + 3) / 6``, Keras' form) whose
    input and output are quantized a FakeQuant of its own, on six times the output quantizer's
    grid: TFLite then runs ADD (RELU6 fused) and MUL in int8 (it has no int8 hard sigmoid, and
    without a range between them both stayed float). The grids line up, so the ADD's int8
    output code is the output's code (``round((x + 3) / (6 s)) == round(hard_sigmoid(x) / s)``)
    and the MUL by 1/6 only relabels it: one rounding, as in Keras. Returns whether any was."""
    nodes = {n.name: n for n in graph_def.node}
    readers = {}
    for node in graph_def.node:
        for name in node.input:
            readers.setdefault(_source(name), []).append(node)
    changed = False
    for quant in list(graph_def.node):
        if quant.op != "FakeQuantWithMinMaxVars":
            continue
        div = nodes.get(_source(quant.input[0]))
        if div is None or div.op not in ("RealDiv", "Mul") or len(readers.get(div.name, [])) != 1:
            continue
        constant = _constant_value(div.input[1], nodes)
        relu6 = nodes.get(_source(div.input[0]))
        if (constant is None or np.size(constant) != 1
                or not np.isclose(float(np.reshape(constant, [])), 6.0 if div.op == "RealDiv" else 1 / 6)
                or relu6 is None or relu6.op != "Relu6" or len(readers.get(relu6.name, [])) != 1):
            continue
        add = nodes.get(_source(relu6.input[0]))
        if add is None or add.op not in ("AddV2", "Add") or not any(
                np.size(c) == 1 and float(np.reshape(c, [])) == 3.0
                for c in (_constant_value(i, nodes) for i in add.input[:2]) if c is not None):
            continue
        lo, hi = (_constant_value(i, nodes) for i in quant.input[1:3])
        if lo is None or hi is None or not float(hi) > float(lo):
            continue
        grid = graph_def.node.add()
        grid.name = f"{relu6.name}/on_grid"
        grid.op = "FakeQuantWithMinMaxArgs"
        grid.input.append(relu6.name)
        grid.attr["min"].f = 6.0 * float(lo)
        grid.attr["max"].f = 6.0 * float(hi)
        grid.attr["num_bits"].i = quant.attr["num_bits"].i
        grid.attr["narrow_range"].b = quant.attr["narrow_range"].b
        div.input[0] = grid.name
        changed = True
    return changed
