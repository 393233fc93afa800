"""Passes over the tf2onnx output that give ONNX Runtime's QDQ fusion the form it expects.

* ``fold_weight_layout``: tf2onnx puts Reshape/Transpose/Unsqueeze/Squeeze between a
  weight's DequantizeLinear and its Conv/ConvTranspose/MatMul/Gemm (depthwise kernels, NHWC ->
  NCHW, Conv1D's added axis, an attention projection's kernel flattened to a matrix); ONNX
  Runtime fuses only a DequantizeLinear that feeds the op directly. The codes are moved into
  the final layout when every output channel still has one scale, else left as they are.
* ``quantize_on_grid_weights``: a float weight that already lies on a symmetric per-channel
  grid (a SavedModel whose weight quantizers were exported as built-in ops and then folded)
  gets its codes and a per-channel DequantizeLinear; left float, ONNX Runtime would quantize it
  per tensor by itself and lose precision.
* ``store_weight_codes``: a QuantizeLinear of a constant (a weight) becomes its integer codes,
  so the file holds int8 weights and nothing quantizes them at run time.
* ``quantize_biases``: a Conv/Gemm whose input and weight are dequantized gets its bias as
  int32 codes with scale ``x_scale * w_scale`` (zero point 0): ONNX's QDQ bias convention,
  needed by QGemm without an output quantizer, and what every integer runtime computes.
* ``layout_before_narrow_quantize``: a 4-bit activation's Reshape/Transpose moves before its
  QuantizeLinear (equal for a per-tensor grid): ONNX Runtime has no 4-bit Reshape/Transpose.
* ``fold_bias_through_squeeze``: Conv -> Squeeze -> Add(per-channel constant) (Conv1D's
  BiasAdd after its added axis is removed) becomes Conv with that bias -> Squeeze: ONNX
  Runtime fuses a bias only as the Conv's third input.
* ``dequantize_after_layout``: DequantizeLinear -> Pad(zeros)/Unsqueeze/Reshape/... -> Conv
  becomes the layout ops on the codes (padding with the zero point) -> DequantizeLinear -> Conv:
  Keras' causal Conv1D pads its input, and ONNX Runtime fuses only a DequantizeLinear that feeds
  the op directly.
* ``layout_after_quantize``: Conv -> Squeeze (Conv1D) -> Relu -> QuantizeLinear becomes
  Conv -> Relu -> QuantizeLinear -> Squeeze: ONNX Runtime fuses a Conv/MatMul into an integer
  kernel only when its output reaches the QuantizeLinear through activations alone.
* ``conv_transpose_as_conv`` (ONNX Runtime only): a quantized ConvTranspose becomes zeros
  inserted between the input codes (the zero point) -> DequantizeLinear -> Conv with the kernel
  flipped: the same sums, and ONNX Runtime's CPU has an integer Conv but no integer ConvTranspose.
* ``retype_narrow_widths``: zero points of 4-bit grids become INT4/UINT4 (opset 21).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorflow_qdq import _grid

# Placeholder storage while tf2onnx builds the graph (it has no 4-bit types): zero points of
# 4-bit grids carry these name prefixes and are retyped at the end.
_FOUR_BIT = {"qdq_zp_i4": TensorProto.INT4, "qdq_zp_u4": TensorProto.UINT4}
_NUMPY_TYPES = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
                np.dtype(np.int16): TensorProto.INT16, np.dtype(np.uint16): TensorProto.UINT16}
_LAYOUT_OPS = ("Reshape", "Transpose", "Identity")
# Ops that only move a weight's elements, which fold_weight_layout applies to the codes instead.
_WEIGHT_LAYOUT_OPS = _LAYOUT_OPS + ("Unsqueeze", "Squeeze")
# The weight input of each integer-capable op and the axis of that weight holding output channels.
_WEIGHT_AXIS = {"Conv": (1, 0), "ConvTranspose": (1, 1)}


# Grids stored in a wider ONNX type: a 7-bit weight grid (codes -63..63) is stored as INT8,
# the grid for x86 CPUs without VNNI (see Storage).
STORED_WIDTH = {7: 8}


class Storage:
    """How one export stores each grid's codes (ONNX type and zero point); every choice is exact.

    * ``runtime="tensorrt"``: signed grids as signed types with zero point 0 (TensorRT's rule).
    * ``runtime="onnxruntime"``: signed *activation* grids as unsigned types with zero point
      2^(b-1) (ONNX Runtime's CPU kernels take uint8 activations), signed *weight* grids as signed
      types with zero point 0: INT8 weights, ONNX Runtime's u8s8 kernels (its fastest on x86).
    * ``x86_without_vnni=True`` (ONNX Runtime): 8-bit weights are stored as UINT8 with zero point
      128 instead. Without VNNI, x86 u8s8 kernels add two u8*s8 products into a saturating int16
      (``vpmaddubsw``): 255 * 127 * 2 > 32767, so full-range int8 weights can overflow there; u8u8
      is computed exactly (and slower). A 7-bit weight grid (|code| <= 63, so 255 * 63 * 2 <= 32767)
      cannot overflow and stays INT8. docs/DEPLOY.md, ONNX, "Weights and the CPU".
    Unsigned grids are stored unsigned with zero point 0 everywhere.
    """

    def __init__(self, runtime, x86_without_vnni=False):
        self.runtime = runtime
        self.x86_without_vnni = x86_without_vnni

    def unsigned(self, num_bits, signed, weight):
        if not signed:
            return True
        if self.runtime != "onnxruntime":
            return False
        if weight:
            return self.x86_without_vnni and num_bits == 8  # u8u8: exact without VNNI
        return True

    def zero_point(self, num_bits, signed, shape, weight=False):
        """The zero point array (placeholder dtype for 4 bits) of a grid."""
        width = STORED_WIDTH.get(num_bits, num_bits) if weight else num_bits
        unsigned = self.unsigned(num_bits, signed, weight)
        value = 2 ** (width - 1) if (signed and unsigned) else 0
        dtype = {8: np.uint8, 4: np.uint8, 16: np.uint16}[width] if unsigned else \
            {8: np.int8, 4: np.int8, 16: np.int16}[width]
        return np.full(shape, value, dtype)

    def zero_point_name(self, num_bits, signed, weight=False):
        width = STORED_WIDTH.get(num_bits, num_bits) if weight else num_bits
        return f"qdq_zp_{'u' if self.unsigned(num_bits, signed, weight) else 'i'}{width}"


def onnx_type(array):
    return _NUMPY_TYPES[array.dtype]


def finish(model, opset, storage):
    """All passes, then the opset (onnx's version converter) and the 4-bit types; ``storage``: a
    ``Storage``."""
    quantize_on_grid_weights(model.graph, storage)
    fold_weight_layout(model.graph)
    store_weight_codes(model.graph)
    layout_before_narrow_quantize(model.graph)
    fold_bias_through_squeeze(model.graph)
    layout_after_quantize(model.graph)
    dequantize_after_layout(model.graph)
    if storage.runtime == "onnxruntime":
        conv_transpose_as_conv(model.graph)
    quantize_biases(model.graph)
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset != current:
        model = onnx.version_converter.convert_version(model, opset)
    if opset >= 21:
        model.ir_version = max(model.ir_version, 10)
    retype_narrow_widths(model.graph)
    return model


def rename_values(graph, names):
    """Renames graph values (``{old: new}``) everywhere they appear: the frozen graph's
    ``image:0``/``Identity:0`` become the signature's ``image`` and ``output_0``."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = names.get(value.name, value.name)


# ------------------------------------------------------------------------------ helpers


class _Graph:
    def __init__(self, graph):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def const(self, name):
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def add_init(self, array, name):
        name = _fresh(name, self.inits)
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name


def _new_value(graph, name):
    """A value name nothing in ``graph`` uses yet. Names derived from an input (``w + "_dq"``)
    must be made unique: tf2onnx merges equal constants, so one initializer can be the weight or
    bias of several ops (the zero biases of folded convs in ResNet50V2), and each op gets its own
    new node."""
    taken = {t.name for t in graph.initializer} | {v for n in graph.node for v in list(n.input) + list(n.output)}
    return _fresh(name, taken)


def _fresh(name, taken):
    i = 0
    candidate = name
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _dequantized_codes(g, dq):
    """(codes, scale, zero_point, axis) of a DequantizeLinear of a constant, else None."""
    scale = g.const(dq.input[1])
    zp = g.const(dq.input[2]) if len(dq.input) > 2 else None
    if scale is None or zp is None:
        return None
    axis = _attr(dq, "axis", 1)
    codes = g.const(dq.input[0])
    if codes is None:
        q = g.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        x = g.const(q.input[0])
        if x is None:
            return None
        info = np.iinfo(zp.dtype)
        s = _expand(scale, axis, x.ndim)
        z = _expand(zp.astype(np.int64), axis, x.ndim)
        codes = np.clip(np.rint(x / s) + z, info.min, info.max).astype(zp.dtype)
    return codes, scale, zp, axis


def _expand(values, axis, rank):
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis % rank] = -1
    return values.reshape(shape)


def _apply_layout(node, array, g):
    """``array`` moved as the layout op ``node`` moves its input; None if that needs a value
    that is not a constant."""
    if node.op_type == "Identity":
        return array
    if node.op_type == "Transpose":
        return np.transpose(array, _attr(node, "perm"))
    if node.op_type in ("Unsqueeze", "Squeeze"):
        return _apply_axes(node, array, g)
    shape = g.const(node.input[1])
    if shape is None:
        return None
    shape = [array.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    return array.reshape(shape)


def _apply_axes(node, array, g):
    """Unsqueeze/Squeeze: axes are an input from opset 13, an attribute before."""
    axes = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        return None  # axes computed at run time
    if node.op_type == "Squeeze":
        axes = [a for a in range(array.ndim) if array.shape[a] == 1] if axes is None else list(axes)
        return np.squeeze(array, axis=tuple(int(a) % array.ndim for a in axes))
    if axes is None:
        return None
    rank = array.ndim + len(axes)
    return np.expand_dims(array, axis=tuple(int(a) % rank for a in axes))


def _weight_slot(node, rank):
    """(input index, output-channel axis) of the weight that ``node``'s integer kernel reads
    (``rank``: that weight's rank), or None for an op without one."""
    if node.op_type in _WEIGHT_AXIS:
        return _WEIGHT_AXIS[node.op_type]
    if node.op_type == "MatMul":
        return 1, rank - 1  # [..., K, N]: the last axis indexes output columns
    if node.op_type == "Gemm":
        return 1, 0 if _attr(node, "transB", 0) else 1
    return None


def _channel_per_output(channel, out_axis):
    """The source channel of each output channel, given an index array moved like the codes;
    None when some output channel mixes source channels (its scales would not be one)."""
    moved = np.moveaxis(channel, out_axis, 0).reshape(channel.shape[out_axis], -1)
    if not np.all(moved == moved[:, :1]):
        return None
    return moved[:, 0]


# ------------------------------------------------------------------------------ passes


def fold_weight_layout(graph):
    """DQ -> Reshape/Transpose/Unsqueeze/Squeeze... -> Conv/ConvTranspose/MatMul/Gemm becomes
    DQ (codes in the final layout) -> op, when the per-channel scales still line up with the
    op's output channels; otherwise the graph is left as it is (exact, run in float)."""
    g = _Graph(graph)
    for node in list(graph.node):
        if _weight_slot(node, 2) is None or len(node.input) < 2:
            continue
        chain, name = [], node.input[1]
        while g.producer.get(name) is not None and g.producer[name].op_type in _WEIGHT_LAYOUT_OPS:
            chain.append(g.producer[name])
            name = g.producer[name].input[0]
        dq = g.producer.get(name)
        if not chain or dq is None or dq.op_type != "DequantizeLinear":
            continue
        found = _dequantized_codes(g, dq)
        if found is None:
            continue
        codes, scale, zp, axis = found
        # Follow where each channel goes with an index array moved exactly like the codes.
        channel = np.broadcast_to(_expand(np.arange(max(scale.size, 1)), axis, codes.ndim), codes.shape)
        for step in reversed(chain):
            codes, channel = _apply_layout(step, codes, g), _apply_layout(step, channel, g)
            if codes is None or channel is None:
                break
        else:
            index, out_axis = _weight_slot(node, codes.ndim)
            picks = _channel_per_output(channel, out_axis) if scale.ndim else None
            if scale.ndim and picks is None:
                continue  # channels do not line up with the op's output channels
            new_scale = scale[picks] if scale.ndim else scale
            new_zp = zp[picks] if zp.ndim else zp
            inputs = [g.add_init(codes, dq.input[0] + "_codes"), g.add_init(new_scale.astype(np.float32), "w_scale"),
                      g.add_init(new_zp, "w_zero_point")]
            attrs = {"axis": out_axis} if scale.ndim else {}
            new_dq = helper.make_node("DequantizeLinear", inputs, [_new_value(graph, node.input[index] + "_dq")],
                                      **attrs)
            graph.node.insert(list(graph.node).index(node), new_dq)
            node.input[index] = new_dq.output[0]
    _prune(graph)


# The weight input of each op and the axis of that weight holding output channels, for
# float weights (MatMul: a [in, out] matrix).
_FLOAT_WEIGHT_AXIS = dict(_WEIGHT_AXIS, MatMul=(1, 1))
_GRID_WIDTHS = (8, 7, 4, 16)


def quantize_on_grid_weights(graph, storage):
    """Float weights on a per-channel symmetric narrow grid -> codes + DequantizeLinear."""
    g = _Graph(graph)
    for node in list(graph.node):
        if node.op_type not in _FLOAT_WEIGHT_AXIS:
            continue
        index, axis = _FLOAT_WEIGHT_AXIS[node.op_type]
        x_dq, weight = g.producer.get(node.input[0]), g.const(node.input[index])
        if x_dq is None or x_dq.op_type != "DequantizeLinear" or weight is None or weight.dtype != np.float32:
            continue
        found = _on_grid(weight, axis)
        if found is None:
            continue
        codes, scale, num_bits = found
        zp = storage.zero_point(num_bits, True, scale.shape, weight=True)
        stored = codes + _expand(zp.astype(np.int64), axis, codes.ndim)
        prefix = f"qdq_zp_{'u' if zp.dtype.kind == 'u' else 'i'}4" if num_bits == 4 else ""
        inputs = [_add_codes(g, stored.astype(zp.dtype), prefix, node.input[index]),
                  g.add_init(scale, "w_scale"), g.add_init(zp, prefix or "w_zero_point")]
        dq = helper.make_node("DequantizeLinear", inputs, [_new_value(graph, node.input[index] + "_dq")], axis=axis)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[index] = dq.output[0]
    _prune(graph)


def _on_grid(weight, axis):
    """(codes, scale, bits) if every channel of ``weight`` is codes * (amax / qmax), else None."""
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.max(np.abs(moved), axis=1)
    for num_bits in _GRID_WIDTHS:
        qmax = np.float32(_grid.code_range(num_bits, _grid.WEIGHT_SIGNED, _grid.WEIGHT_NARROW_RANGE)[1])
        scale = np.where(amax > 0, _grid.weight_step(amax, num_bits), np.float32(1)).astype(np.float32)
        codes = np.rint(moved / scale[:, None])
        # the float32 products codes * scale must give the weights back exactly
        if np.array_equal((codes * scale[:, None]).astype(np.float32), moved) and np.all(np.abs(codes) <= qmax):
            shape = (weight.shape[axis],) + tuple(np.delete(weight.shape, axis))
            return np.moveaxis(codes.reshape(shape), 0, axis).astype(np.int64), scale, num_bits
    return None


def store_weight_codes(graph):
    """QuantizeLinear(constant) -> DequantizeLinear becomes codes -> DequantizeLinear."""
    g = _Graph(graph)
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is not None:
            continue
        found = _dequantized_codes(g, dq)
        if found is None:
            continue
        codes = found[0]
        zp_name = dq.input[2]
        prefix = next((p for p in _FOUR_BIT if zp_name.startswith(p)), "")
        dq.input[0] = _add_codes(g, codes, prefix, dq.input[0])
    _prune(graph)


def _add_codes(g, codes, four_bit_prefix, source):
    """Stores a weight's integer codes. 4-bit codes take their zero point's placeholder prefix,
    so retype_narrow_widths retypes them too; others are named after the value they replace."""
    return g.add_init(codes, four_bit_prefix + "_weight_codes" if four_bit_prefix else source + "_codes")


def layout_before_narrow_quantize(graph):
    """X -> Q -> Reshape/Transpose... -> DQ becomes X -> Reshape/Transpose... -> Q -> DQ for
    per-tensor 4-bit grids (quantizing each element commutes with moving it)."""
    while _move_one_layout(graph):
        pass


def _move_one_layout(graph):
    g = _Graph(graph)
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or not any(q.input[2].startswith(p) for p in _FOUR_BIT):
            continue
        scale = g.const(q.input[1])
        chain, name = [], q.output[0]
        while len(g.consumers.get(name, [])) == 1 and g.consumers[name][0].op_type in _LAYOUT_OPS:
            chain.append(g.consumers[name][0])
            name = chain[-1].output[0]
        if not chain or scale is None or scale.ndim:
            continue
        last = chain[-1].output[0]
        chain[0].input[0] = q.input[0]  # the layout ops read the float tensor,
        q.input[0] = last + "_float"  # the quantizer reads their result
        chain[-1].output[0] = q.input[0]
        for consumer in g.consumers.get(last, []):
            consumer.input[:] = [q.output[0] if i == last else i for i in consumer.input]
        moved = helper.make_node("QuantizeLinear", list(q.input), list(q.output), name=q.name)
        moved.attribute.extend(q.attribute)
        nodes = [n for n in graph.node if n is not q]
        nodes.insert(next(i for i, n in enumerate(nodes) if n.output[0] == q.input[0]) + 1, moved)
        del graph.node[:]
        graph.node.extend(nodes)
        return True
    return False


# Producers whose output ONNX Runtime fuses with a following QuantizeLinear, and the
# elementwise activations it fuses between them; both commute with moving elements around.
_FUSED_PRODUCERS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_ELEMENTWISE = ("Relu", "Clip", "LeakyRelu")


def layout_after_quantize(graph):
    """Op -> Squeeze/Unsqueeze/Reshape/Transpose -> activations -> QuantizeLinear (per tensor,
    8 bits) becomes op -> activations -> QuantizeLinear -> layout op: quantizing and the
    activations act on each element alone, so the values are the same."""
    while _move_one_layout_after(graph):
        pass


def _move_one_layout_after(graph):
    g = _Graph(graph)
    for layout in graph.node:
        source = g.producer.get(layout.input[0]) if layout.input else None
        if layout.op_type not in _WEIGHT_LAYOUT_OPS or source is None or source.op_type not in _FUSED_PRODUCERS:
            continue
        chain, name = [], layout.output[0]
        while len(g.consumers.get(name, [])) == 1 and g.consumers[name][0].op_type in _ELEMENTWISE \
                and all(g.const(i) is not None and g.const(i).ndim == 0 for i in g.consumers[name][0].input[1:] if i):
            chain.append(g.consumers[name][0])
            name = chain[-1].output[0]
        q = g.consumers.get(name, [])
        renamed = {layout.output[0]} | {n.output[0] for n in chain}
        if len(q) != 1 or q[0].op_type != "QuantizeLinear" or renamed & {o.name for o in graph.output}:
            continue
        q = q[0]
        scale = g.const(q.input[1])
        if scale is None or scale.ndim or not _eight_bit(g, q):
            continue
        _swap_layout_after(graph, layout, chain, q)
        return True
    return False


def _swap_layout_after(graph, layout, chain, q):
    """Rewires ``layout`` -> chain -> ``q`` as chain -> ``q`` -> ``layout``."""
    first = chain[0] if chain else q
    first.input[0] = layout.input[0]
    moved_names = [n.output[0] for n in chain]
    quantized = q.output[0]
    q.output[0] = quantized + "_before_layout"
    layout.input[0] = q.output[0]
    layout.output[0] = quantized
    nodes = [n for n in graph.node if n is not layout]
    nodes.insert(nodes.index(q) + 1, layout)
    del graph.node[:]
    graph.node.extend(nodes)
    # The activations' outputs now have the unmoved shape: drop tf2onnx's recorded shapes.
    _forget_types(graph, set(moved_names) | {quantized})


def _forget_types(graph, names):
    """Drops tf2onnx's recorded type and shape of values whose type or shape a pass changed."""
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def fold_bias_through_squeeze(graph):
    """Conv -> Squeeze (not the batch or channel axis) -> Add(constant varying only along the
    channels) becomes Conv(bias) -> Squeeze; the values are the same."""
    g = _Graph(graph)
    for add in list(graph.node):
        squeeze = g.producer.get(add.input[0]) if add.op_type == "Add" else None
        conv = g.producer.get(squeeze.input[0]) if squeeze is not None and squeeze.op_type == "Squeeze" else None
        weight = _weight_shape(g, conv.input[1]) if conv is not None and conv.op_type == "Conv" else None
        if weight is None or len(g.consumers.get(squeeze.output[0], [])) != 1 \
                or len(g.consumers.get(conv.output[0], [])) != 1:
            continue
        bias = _channel_bias(g, add, squeeze, weight)
        if bias is None:
            continue
        if len(conv.input) > 2 and conv.input[2]:
            old = g.const(conv.input[2])
            if old is None:
                continue
            bias = bias + old.astype(np.float32)
        name = g.add_init(bias.astype(np.float32), conv.output[0] + "_bias")
        conv.input[:] = list(conv.input[:2]) + [name]
        squeeze.output[0] = add.output[0]  # the Add's readers read the squeezed conv output
        graph.node.remove(add)
    _prune(graph)


def _weight_shape(g, name):
    """The shape of a constant weight, or of the constant codes its DequantizeLinear reads."""
    value = g.const(name)
    dq = g.producer.get(name)
    if value is None and dq is not None and dq.op_type == "DequantizeLinear":
        value = g.const(dq.input[0])
    return None if value is None else value.shape


def _channel_bias(g, add, squeeze, weight_shape):
    """The per-channel vector that ``add`` adds to the squeezed output of a Conv whose weight
    has ``weight_shape`` (channels: axis 1 of its output), or None if the constant varies along
    other axes or the squeeze removes the batch or channel axis."""
    constant = g.const(add.input[1])
    rank = len(weight_shape)  # a Conv's output has its weight's rank
    axes = _apply_axes_list(g, squeeze, rank)
    if constant is None or axes is None or 0 in axes or 1 in axes or constant.ndim > rank - len(axes):
        return None
    channels = weight_shape[0]
    full = constant.reshape((1,) * (rank - len(axes) - constant.ndim) + constant.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1) or full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).copy()


def _apply_axes_list(g, node, rank):
    """The axes (non-negative) a Squeeze removes, when they are given as constants."""
    axes = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "axes")
    return None if axes is None else sorted(int(a) % rank for a in np.ravel(axes))


# Ops between a DequantizeLinear and a Conv/MatMul that may act on the codes instead.
_CODE_LAYOUT_OPS = _WEIGHT_LAYOUT_OPS + ("Pad",)


def dequantize_after_layout(graph):
    """DQ(per tensor) -> Pad(constant 0)/layout ops -> op input 0 becomes the Pad (with the zero
    point) and layout ops on the codes -> DQ -> op: the dequantized values are the same."""
    g = _Graph(graph)
    for node in list(graph.node):
        if _weight_slot(node, 2) is None:
            continue
        chain, name = [], node.input[0]
        while g.producer.get(name) is not None and g.producer[name].op_type in _CODE_LAYOUT_OPS \
                and len(g.consumers.get(name, [])) == 1:
            chain.append(g.producer[name])
            name = chain[-1].input[0]
        dq = g.producer.get(name)
        if not chain or dq is None or dq.op_type != "DequantizeLinear" or len(g.consumers.get(name, [])) != 1:
            continue
        scale, zp = g.const(dq.input[1]), g.const(dq.input[2]) if len(dq.input) > 2 else None
        if scale is None or not _eight_bit(g, dq) or scale.ndim or not all(_pads_with_zero(g, n) for n in chain):
            continue
        for pad in (n for n in chain if n.op_type == "Pad"):
            value = g.add_init(np.asarray(zp).reshape(()), "pad_zero_point")
            pad.input[:] = list(pad.input[:2]) + [value] + list(pad.input[3:])
        _forget_types(graph, {n.output[0] for n in chain})  # they now hold codes, not floats
        chain[-1].input[0] = dq.input[0]  # the layout ops move the codes,
        dq.input[0] = node.input[0]  # the dequantizer reads their result
        dq.output[0] = _new_value(graph, node.input[0] + "_dq")
        node.input[0] = dq.output[0]
        graph.node.remove(dq)
        graph.node.insert(list(graph.node).index(node), dq)
    _prune(graph)


def _eight_bit(g, node):
    """True for a Quantize/DequantizeLinear with an 8-bit zero point: ONNX Runtime moves 8-bit
    codes through every layout op and Pad (4-bit codes through none, 16-bit not through Pad)."""
    zp = g.const(node.input[2]) if len(node.input) > 2 else None
    four_bit = zp is not None and any(node.input[2].startswith(p) for p in _FOUR_BIT)
    return zp is not None and zp.dtype in (np.uint8, np.int8) and not four_bit


def _pads_with_zero(g, node):
    """True for a layout op, or a constant-mode Pad that adds zeros (ONNX's default value)."""
    if node.op_type != "Pad":
        return True
    if _attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return False
    if len(node.input) > 2 and node.input[2]:
        value = g.const(node.input[2])
        return value is not None and value.size == 1 and float(value.reshape(())) == 0.0
    return True


def conv_transpose_as_conv(graph):
    """DQ(x) -> ConvTranspose(DQ(w)) becomes codes of x with stride-1 zero points inserted
    between them -> DQ -> Conv(DQ(flipped w)): a transposed convolution is the convolution of
    the zero-stuffed input with the spatially flipped kernel, in/out channels swapped."""
    g = _Graph(graph)
    for node in list(graph.node):
        plan = _conv_transpose_plan(g, node) if node.op_type == "ConvTranspose" else None
        if plan is None:
            continue
        x_dq, w_codes, w_scale, w_zp, pads = plan
        stuffed = _zero_stuffed(graph, g, x_dq, _attr(node, "strides"), node.name or node.output[0])
        x_new = helper.make_node("DequantizeLinear", [stuffed] + list(x_dq.input[1:]), [stuffed + "_dq"])
        weight = np.ascontiguousarray(np.flip(np.swapaxes(w_codes, 0, 1), axis=tuple(range(2, w_codes.ndim))))
        w_inputs = [g.add_init(weight, node.input[1] + "_as_conv"), g.add_init(w_scale, "w_scale"),
                    g.add_init(w_zp, "w_zero_point")]
        w_new = helper.make_node("DequantizeLinear", w_inputs, [_new_value(graph, node.input[1] + "_as_conv_dq")],
                                 **({"axis": 0} if w_scale.ndim else {}))
        rank = w_codes.ndim - 2
        conv = helper.make_node("Conv", [x_new.output[0], w_new.output[0]] + list(node.input[2:3]), list(node.output),
                                name=node.name, kernel_shape=list(w_codes.shape[2:]), strides=[1] * rank,
                                dilations=_attr(node, "dilations", [1] * rank), pads=pads, group=1)
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate((x_new, w_new, conv)):
            graph.node.insert(at + offset, new)
    _prune(graph)


def _conv_transpose_plan(g, node):
    """(input DQ, kernel codes, scale, zero point, Conv pads) for a ConvTranspose that can be a
    Conv: 8-bit per-tensor input, constant weight codes per output channel or per tensor,
    one group, explicit pads; None otherwise."""
    x_dq, w_dq = g.producer.get(node.input[0]), g.producer.get(node.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    scale = g.const(x_dq.input[1])
    found = _dequantized_codes(g, w_dq)
    if scale is None or scale.ndim or not _eight_bit(g, x_dq) or found is None or _attr(node, "group", 1) != 1:
        return None
    codes, w_scale, w_zp, axis = found
    if _attr(node, "output_shape") is not None or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if w_scale.ndim and axis % codes.ndim != 1:
        return None
    rank = codes.ndim - 2
    dilations = _attr(node, "dilations", [1] * rank)
    pads = _attr(node, "pads", [0] * 2 * rank)
    extra = _attr(node, "output_padding", [0] * rank)
    span = [(k - 1) * d for k, d in zip(codes.shape[2:], dilations)]
    # Conv pads: full correlation minus what the ConvTranspose cropped, plus its output padding
    conv_pads = [s - p for s, p in zip(span, pads[:rank])] + [s + e - p for s, e, p in zip(span, extra, pads[rank:])]
    if min(conv_pads) < 0:
        return None
    return x_dq, codes, w_scale.astype(np.float32), w_zp, conv_pads


def _zero_stuffed(graph, g, x_dq, strides, prefix):
    """Nodes (inserted before the ConvTranspose's users) that put stride - 1 zero points between
    neighbouring codes along each spatial axis; returns the name of the stuffed codes."""
    codes, zp = x_dq.input[0], x_dq.input[2]
    nodes = []
    for i, stride in enumerate(strides or []):
        if stride == 1:
            continue
        axis = 2 + i
        last = helper.make_node("Transpose", [codes], [f"{prefix}_stuff{i}_t"], perm=_swap_last(axis, len(strides) + 2))
        pad = np.zeros(2 * (len(strides) + 3), np.int64)
        pad[-1] = stride - 1  # after each code of the (now last) axis, stride - 1 zero points
        nodes += [last,
                  helper.make_node("Unsqueeze", [last.output[0], g.add_init(np.array([-1], np.int64), "axes")],
                                   [f"{prefix}_stuff{i}_u"]),
                  helper.make_node("Pad", [f"{prefix}_stuff{i}_u", g.add_init(pad, "stuff_pads"), zp],
                                   [f"{prefix}_stuff{i}_p"]),
                  helper.make_node("Reshape", [f"{prefix}_stuff{i}_p",
                                               g.add_init(np.array([0] * (len(strides) + 1) + [-1], np.int64),
                                                          "stuff_shape")], [f"{prefix}_stuff{i}_r"]),
                  helper.make_node("Slice", [f"{prefix}_stuff{i}_r", g.add_init(np.array([0], np.int64), "starts"),
                                             g.add_init(np.array([1 - stride], np.int64), "ends"),
                                             g.add_init(np.array([-1], np.int64), "axes")], [f"{prefix}_stuff{i}_s"]),
                  helper.make_node("Transpose", [f"{prefix}_stuff{i}_s"], [f"{prefix}_stuff{i}"],
                                   perm=_swap_last(axis, len(strides) + 2))]
        codes = nodes[-1].output[0]
    at = next(i for i, n in enumerate(graph.node) if n.output[0] == x_dq.output[0]) + 1
    for offset, new in enumerate(nodes):
        graph.node.insert(at + offset, new)
    return codes


def _swap_last(axis, rank):
    """The permutation that swaps ``axis`` with the last axis (its own inverse)."""
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return perm


def quantize_biases(graph):
    """Float bias of Conv / Gemm with dequantized input and weight -> int32 DequantizeLinear."""
    g = _Graph(graph)
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        x_dq, w_dq = g.producer.get(node.input[0]), g.producer.get(node.input[1])
        bias = g.const(node.input[2])
        if bias is None or x_dq is None or w_dq is None or "DequantizeLinear" != x_dq.op_type \
                or w_dq.op_type != "DequantizeLinear" or bias.ndim != 1:
            continue
        x_scale, w_scale = g.const(x_dq.input[1]), g.const(w_dq.input[1])
        if x_scale is None or w_scale is None or x_scale.ndim != 0:
            continue
        if node.op_type == "Gemm" and w_scale.ndim and _attr(w_dq, "axis", 1) != (0 if _attr(node, "transB", 0) else 1):
            continue
        scale = (x_scale.astype(np.float64) * w_scale.astype(np.float64)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy()
        codes = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
        if np.any(np.abs(codes) > 2 ** 31 - 1) or np.any(scale <= 0):
            continue  # not representable: keep the float bias
        inputs = [g.add_init(codes.astype(np.int32), node.input[2] + "_int32"), g.add_init(scale, "bias_scale"),
                  g.add_init(np.zeros(bias.shape, np.int32), "bias_zero_point")]
        dq = helper.make_node("DequantizeLinear", inputs, [_new_value(graph, node.input[2] + "_dq")], axis=0)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[2] = dq.output[0]
    _prune(graph)


def retype_narrow_widths(graph):
    """4-bit zero points: placeholder int8/uint8 initializers -> INT4/UINT4."""
    changed = False
    for i, tensor in enumerate(graph.initializer):
        kind = next((t for prefix, t in _FOUR_BIT.items() if tensor.name.startswith(prefix)), None)
        if kind is None:
            continue
        values = numpy_helper.to_array(tensor).astype(np.int64)
        graph.initializer[i].CopyFrom(helper.make_tensor(tensor.name, kind, values.shape, values.reshape(-1).tolist()))
        changed = True
    for node in graph.node:  # a Constant node instead of an initializer
        if node.op_type == "Constant" and any(node.output[0].startswith(p) for p in _FOUR_BIT):
            kind = next(t for p, t in _FOUR_BIT.items() if node.output[0].startswith(p))
            values = numpy_helper.to_array(node.attribute[0].t).astype(np.int64)
            node.attribute[0].t.CopyFrom(helper.make_tensor(node.output[0], kind, values.shape,
                                                            values.reshape(-1).tolist()))
            changed = True
    if changed:  # tf2onnx's recorded types of the quantized tensors are now stale
        del graph.value_info[:]


def _prune(graph):
    """Drops nodes and initializers that nothing reads any more."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
            needed.update(_subgraph_reads(node))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _subgraph_reads(node):
    """Every value that the subgraphs of ``node`` read (a Loop or If body reads values of the
    outer graph by name, not through the node's inputs: tf2onnx's Loop for a Keras 3 GRU)."""
    names = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_reads(inner))
    return names
