"""Rewrites graphs so that they hold no ``Qdq>`` op: TensorFlow built-ins or the composite.

Works on ``GraphDef``/``FunctionDef`` protos (a SavedModel's graph and its function
library), so variables, signatures and the object graph stay untouched.

* ``QuantizeAndDequantizeV2/V3/V4/V4Grad`` (the built-ins) replace our ops where
  TensorFlow's kernel computes what ours does on every input that has no NaN and
  no degenerate range (SEMANTICS §3.3-3.4) and where the TFLite converter handles it:
  float32/float64 per tensor (and V4Grad). Everything else (per channel, half,
  bfloat16) becomes a call of the composite (``_composite``), bit-identical to
  our kernels on every input.
* ``exact=True`` uses the composite everywhere (NaN and degenerate ranges too).
"""

import hashlib

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from tensorflow_qdq import _composite, _contract

OURS = {
    "Qdq>QuantizeAndDequantizeV2": "QuantizeAndDequantizeV2",
    "Qdq>QuantizeAndDequantizeV3": "QuantizeAndDequantizeV3",
    "Qdq>QuantizeAndDequantizeV4": "QuantizeAndDequantizeV4",
    "Qdq>QuantizeAndDequantizeV4Grad": "QuantizeAndDequantizeV4Grad",
}
_DEFAULTS = _contract.DEFAULTS  # our op definitions' defaults: saving strips attributes that hold them
_GRAD_OUTPUTS = ("input_backprop", "input_min_backprop", "input_max_backprop")


def _attrs(node):
    """The node's attributes as Python values, defaults filled in."""
    values = dict(_DEFAULTS)
    if node.op.endswith("V3"):
        values["range_given"] = True
        del values["num_bits"], values["round_mode"]
    if node.op.endswith("V4Grad"):
        values = {"axis": -1}
    for key in values:
        if key in node.attr:
            value = node.attr[key]
            field = value.WhichOneof("value")
            values[key] = value.s.decode() if field == "s" else getattr(value, field)
    return values


def _uses_builtin(node, dtype, attrs, exact):
    if exact or dtype not in (tf.float32, tf.float64):
        return False
    # Per channel: TF 2.21's V2/V4 reject given ranges, and the TFLite converter crashes
    # (SIGSEGV) on its per-channel QuantizeAndDequantizeV4 with a measured range.
    return attrs["axis"] == -1 or node.op.endswith("V4Grad")


def _set_attr(node, key, value):
    if isinstance(value, bool):
        node.attr[key].CopyFrom(attr_value_pb2.AttrValue(b=value))
    elif isinstance(value, int):
        node.attr[key].CopyFrom(attr_value_pb2.AttrValue(i=value))
    else:
        node.attr[key].CopyFrom(attr_value_pb2.AttrValue(s=value.encode()))


class _CompositeLibrary:
    """Traces one composite FunctionDef per distinct (op, dtype, attributes)."""

    def __init__(self):
        self.functions = {}  # name -> FunctionDef

    def function_for(self, op, dtype, attrs):
        key = f"{op}|{dtype.name}|{sorted(attrs.items())}"
        name = "QdqPortable_" + op.split(">")[1] + "_" + dtype.name + "_" + hashlib.sha1(key.encode()).hexdigest()[:12]
        if name not in self.functions:
            self.functions[name] = self._trace(op, dtype, attrs, name)
        return name

    @staticmethod
    def _trace(op, dtype, attrs, name):
        spec = tf.TensorSpec(None, dtype)
        if op.endswith("V4Grad"):
            def fn(g, x, lo, hi):
                backprop = _composite.masked_gradient(g, x, lo, hi, attrs["axis"])
                return backprop, tf.zeros_like(lo), tf.zeros_like(hi)
            signature = [spec] * 4
        elif op.endswith("V3"):
            def fn(x, lo, hi, num_bits):
                return _composite.forward(x, lo, hi, num_bits=num_bits, **attrs)
            signature = [spec] * 3 + [tf.TensorSpec(None, tf.int32)]
        else:
            def fn(x, lo, hi):
                return _composite.forward(x, lo, hi, **attrs)
            signature = [spec] * 3
        concrete = tf.function(fn, input_signature=signature, autograph=False).get_concrete_function()
        fdef = concrete.function_def
        if concrete.graph.as_graph_def().library.function:
            raise AssertionError("the composite must not call other functions")  # kept self-contained
        renamed = type(fdef)()
        renamed.CopyFrom(fdef)
        renamed.signature.name = name
        return renamed


def _rewrite_node(node, library, exact):
    """Turns one Qdq> node into a built-in or a PartitionedCall; returns True if it was a composite."""
    dtype = tf.as_dtype(node.attr["T"].type)
    attrs = _attrs(node)
    if _uses_builtin(node, dtype, attrs, exact):
        node.op = OURS[node.op]
        for key, value in attrs.items():
            _set_attr(node, key, value)
        return False
    name = library.function_for(node.op, dtype, attrs)
    n_out = 3 if node.op.endswith("V4Grad") else 1
    in_types = [dtype.as_datatype_enum] * (4 if node.op.endswith(("V4Grad",)) else 3)
    if node.op.endswith("V3"):
        in_types.append(tf.int32.as_datatype_enum)
    for key in [k for k in node.attr if not k.startswith("_")]:
        del node.attr[key]
    node.op = "PartitionedCall"
    node.attr["Tin"].list.type.extend(in_types)
    node.attr["Tout"].list.type.extend([dtype.as_datatype_enum] * n_out)
    node.attr["f"].func.name = name
    for key in ("config", "config_proto", "executor_type"):
        node.attr[key].s = b""
    return True


def _rename_outputs(function_def, grad_nodes):
    """Inside a FunctionDef, outputs are named: V4Grad's become PartitionedCall's output:i."""
    if not grad_nodes:
        return

    def fix(ref):
        parts = ref.split(":")
        if len(parts) == 3 and parts[0] in grad_nodes and parts[1] in _GRAD_OUTPUTS:
            return f"{parts[0]}:output:{_GRAD_OUTPUTS.index(parts[1])}"
        return ref

    for node in function_def.node_def:
        node.input[:] = [fix(ref) for ref in node.input]
    for key in list(function_def.ret):
        function_def.ret[key] = fix(function_def.ret[key])


def rewrite_graph_def(graph_def, exact=False):
    """Rewrites graph_def (a GraphDef with its library) in place; returns the count of replaced ops."""
    library = _CompositeLibrary()
    count = 0
    for node in graph_def.node:
        if node.op in OURS:
            _rewrite_node(node, library, exact)
            count += 1
    for function_def in graph_def.library.function:
        grad_composites = set()
        for node in function_def.node_def:
            if node.op in OURS:
                is_grad = node.op.endswith("V4Grad")
                if _rewrite_node(node, library, exact) and is_grad:
                    grad_composites.add(node.name)
                count += 1
        _rename_outputs(function_def, grad_composites)
    graph_def.library.function.extend(library.functions.values())
    return count
