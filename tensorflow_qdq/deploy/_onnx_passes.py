"""Passes over the tf2onnx output that give ONNX Runtime's QDQ fusion the form it expects.

* ``fold_weight_layout``: tf2onnx puts Reshape/Transpose between a weight's
  DequantizeLinear and the Conv (depthwise kernels, NHWC -> NCHW); ONNX Runtime fuses only a
  DequantizeLinear that feeds the op directly. The codes are moved into the final layout.
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
* ``retype_narrow_widths``: zero points of 4-bit grids become INT4/UINT4 (opset 21).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Placeholder storage while tf2onnx builds the graph (it has no 4-bit types): zero points of
# 4-bit grids carry these name prefixes and are retyped at the end.
_FOUR_BIT = {"qdq_zp_i4": TensorProto.INT4, "qdq_zp_u4": TensorProto.UINT4}
_NUMPY_TYPES = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
                np.dtype(np.int16): TensorProto.INT16, np.dtype(np.uint16): TensorProto.UINT16}
_LAYOUT_OPS = ("Reshape", "Transpose", "Identity")
# The weight input of each integer-capable op and the axis of that weight holding output channels.
_WEIGHT_AXIS = {"Conv": (1, 0), "ConvTranspose": (1, 1)}


def _stored_unsigned(signed, runtime):
    return runtime == "onnxruntime" or not signed


def zero_point(num_bits, signed, runtime, shape):
    """The zero point array (placeholder dtype for 4 bits) of a grid exported for ``runtime``."""
    unsigned = _stored_unsigned(signed, runtime)
    value = 2 ** (num_bits - 1) if (signed and unsigned) else 0
    dtype = {8: np.uint8, 4: np.uint8, 16: np.uint16}[num_bits] if unsigned else \
        {8: np.int8, 4: np.int8, 16: np.int16}[num_bits]
    return np.full(shape, value, dtype)


def zero_point_name(num_bits, signed, runtime):
    kind = "u" if _stored_unsigned(signed, runtime) else "i"
    return f"qdq_zp_{kind}{num_bits}"


def onnx_type(array):
    return _NUMPY_TYPES[array.dtype]


def finish(model, opset, runtime):
    """All passes, then the opset (onnx's version converter) and the 4-bit types."""
    quantize_on_grid_weights(model.graph, runtime)
    fold_weight_layout(model.graph)
    store_weight_codes(model.graph)
    layout_before_narrow_quantize(model.graph)
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
    if node.op_type == "Identity":
        return array
    if node.op_type == "Transpose":
        return np.transpose(array, _attr(node, "perm"))
    shape = g.const(node.input[1])
    if shape is None:
        return None
    shape = [array.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    return array.reshape(shape)


# ------------------------------------------------------------------------------ passes


def fold_weight_layout(graph):
    """DQ -> Reshape/Transpose... -> Conv becomes DQ (codes in the final layout) -> Conv."""
    g = _Graph(graph)
    for node in list(graph.node):
        if node.op_type not in _WEIGHT_AXIS:
            continue
        index, out_axis = _WEIGHT_AXIS[node.op_type]
        chain, name = [], node.input[index]
        while g.producer.get(name) is not None and g.producer[name].op_type in _LAYOUT_OPS:
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
            moved = np.moveaxis(channel, out_axis, 0).reshape(channel.shape[out_axis], -1)
            if scale.ndim and not np.all(moved == moved[:, :1]):
                continue  # channels do not line up with the op's output channels
            picks = moved[:, 0]
            new_scale = scale[picks] if scale.ndim else scale
            new_zp = zp[picks] if zp.ndim else zp
            inputs = [g.add_init(codes, dq.input[0] + "_codes"), g.add_init(new_scale.astype(np.float32), "w_scale"),
                      g.add_init(new_zp, "w_zero_point")]
            attrs = {"axis": out_axis} if scale.ndim else {}
            new_dq = helper.make_node("DequantizeLinear", inputs, [node.input[index] + "_dq"], **attrs)
            graph.node.insert(list(graph.node).index(node), new_dq)
            node.input[index] = new_dq.output[0]
    _prune(graph)


# The weight input of each op and the axis of that weight holding output channels, for
# float weights (MatMul: a [in, out] matrix).
_FLOAT_WEIGHT_AXIS = dict(_WEIGHT_AXIS, MatMul=(1, 1))
_GRID_WIDTHS = (8, 4, 16)


def quantize_on_grid_weights(graph, runtime):
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
        zp = zero_point(num_bits, True, runtime, scale.shape)
        stored = codes + _expand(zp.astype(np.int64), axis, codes.ndim)
        prefix = f"qdq_zp_{'u' if zp.dtype.kind == 'u' else 'i'}4" if num_bits == 4 else ""
        inputs = [_add_codes(g, stored.astype(zp.dtype), prefix, node.input[index]),
                  g.add_init(scale, "w_scale"), g.add_init(zp, prefix or "w_zero_point")]
        dq = helper.make_node("DequantizeLinear", inputs, [node.input[index] + "_dq"], axis=axis)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[index] = dq.output[0]
    _prune(graph)


def _on_grid(weight, axis):
    """(codes, scale, bits) if every channel of ``weight`` is codes * (amax / qmax), else None."""
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.max(np.abs(moved), axis=1)
    for num_bits in _GRID_WIDTHS:
        qmax = np.float32(2 ** (num_bits - 1) - 1)
        scale = np.where(amax > 0, amax / qmax, np.float32(1)).astype(np.float32)
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
        dq = helper.make_node("DequantizeLinear", inputs, [node.input[2] + "_dq"], axis=0)
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
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
