"""quantization_report's rows: what quantize_model quantized, folded and left float, layer by layer."""

import dataclasses

import keras

from tensorflow_qdq.keras import _placement
from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._wrapper import QuantizeWrapper


@dataclasses.dataclass(frozen=True)
class ReportRow:
    """One layer of a quantized model.

    status: "quantized" (weights quantized), "activation quantizer", "float" (a layer with
    weights left float, or a custom layer whose call could not be inlined), "inlined" (a custom
    layer without weights whose keras.ops are now nodes of the graph, quantized like merges;
    detail names them) or "no weights"; has_kernel: whether the layer has a kernel-like
    weight that a runtime could run in integer arithmetic.

    With ``quantization_report(model, runtime=...)``, what that runtime runs:
    runtime_status is "integer" (every op computing the layer is an integer kernel), "float"
    (some op computes in float; runtime_detail says which and why), "moves data" (only ops
    that move or re-encode values), "absent" (no op of its own: folded, or nothing to compute)
    or "quantize/dequantize" (an activation quantizer); runtime_detail names the ops. An
    "inlined" row goes by the runtime ops that compute its inlined ops (traced in name scopes of
    the ops' names), like any layer without weights: "integer" if all of them are integer
    kernels, "float" naming the float op and why, "absent" if the runtime folded them all.
    """

    name: str
    kind: str
    status: str
    detail: str
    has_kernel: bool
    runtime_status: str = ""
    runtime_detail: str = ""


def layer_rows(model, skipped=None):
    """``quantization_report``'s rows without a runtime (see its docstring in the package face,
    tensorflow_qdq.keras, which adds the runtime's view from deploy/)."""
    skipped = getattr(model, "_qdq_skip_layers", ()) if skipped is None else skipped
    reasons = getattr(model, "_qdq_float_reasons", {})  # layers quantize_model kept float, and why
    rows = []
    for prefix, layer in _walk(model, ""):
        if isinstance(layer, _Inlined):
            rows.append(ReportRow(prefix + layer.name, layer.kind, "inlined", layer.detail(), False))
        else:
            rows.append(_row(prefix + layer.name, layer, skipped, reasons))
    return rows


def _walk(model, prefix):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, QuantizedMultiHeadAttention):
            yield from _walk(layer, f"{prefix}{layer.name}/")
        else:
            yield prefix, layer
    # Custom layers quantize_model inlined are no longer layers of the copy: one row each, so
    # the report still accounts for every layer of the original model.
    for name, (kind, ops) in getattr(model, "_qdq_inlined", {}).items():
        yield prefix, _Inlined(name, kind, tuple(ops))


@dataclasses.dataclass(frozen=True)
class _Inlined:
    name: str
    kind: str
    ops: tuple  # ((op name, op kind), ...) in call order

    def detail(self):
        ops = ", ".join(f"{name} ({kind})" for name, kind in self.ops) or "none (it returns an input)"
        return (f"call inlined as keras.ops nodes of the graph: {ops}; add/subtract/multiply/divide are "
                "quantized like merges")


def _row(name, layer, skipped, reasons):
    kind = type(layer).__name__
    if isinstance(layer, QuantizeWrapper):
        inner = type(layer.layer).__name__
        fold = f", BatchNorm {layer.batch_norm.name!r} folded" if layer.batch_norm is not None else ""
        bits = "float weights" if layer.weight_bits is None else f"{layer.weight_bits}-bit weights per channel"
        return ReportRow(name, inner, "quantized", bits + fold, True)
    if isinstance(layer, QuantizedMultiHeadAttention):
        return ReportRow(name, kind, "quantized",
                         f"{layer.weight_bits}-bit projections per channel, context {layer.activation_bits}-bit", True)
    if isinstance(layer, QuantizeAndDequantize):
        grid = "signed" if layer.signed else "unsigned"
        return ReportRow(name, kind, "activation quantizer", f"{layer.num_bits}-bit {grid}, {layer.range_mode} range",
                         False)
    has_kernel = _placement.is_weighted(layer) or any(
        "kernel" in w.path.split("/")[-1] for w in layer.weights)
    if layer.name in reasons:
        return ReportRow(name, kind, "float", reasons[layer.name], has_kernel)
    if not layer.weights:
        return ReportRow(name, kind, "no weights", "", False)
    if layer.name in skipped:
        reason = "skipped (skip_layers)"
    elif _placement.is_weighted(layer):
        reason = "not quantized (skip_layers, or the model was not made by quantize_model)"
    else:
        reason = next((text for cls, text in _placement.FLOAT_REASONS.items() if isinstance(layer, cls)),
                      "no quantization rule for this layer")
    return ReportRow(name, kind, "float", reason, has_kernel)


def report_summary(rows, model_name="model", runtime=None):
    """The text ``quantize_model`` prints, for any report (see ``summary``)."""
    return summary(rows, model_name, runtime)


def summary(rows, model_name, runtime=None):
    """A short text: counts, then every layer with weights that stayed float and why; for
    rows with a runtime's view (``runtime`` names it), the layers that runtime runs in float."""
    weighted = [r for r in rows if r.has_kernel]
    quantized = [r for r in weighted if r.status == "quantized"]
    folds = sum("folded" in r.detail for r in rows)
    quantizers = sum(r.status == "activation quantizer" for r in rows)
    lines = [f"quantize_model({model_name}): {len(quantized)} of {len(weighted)} layers with kernels quantized, "
             f"{folds} BatchNorms folded, {quantizers} activation quantizers"]
    inlined = [r for r in rows if r.status == "inlined"]
    if inlined:  # one line: InceptionResNetV2 has 40 of them
        kinds = ", ".join(sorted({r.kind for r in inlined}))
        lines.append(f"  inlined: {len(inlined)} custom layers without weights ({kinds}): their keras.ops are "
                     "graph nodes now")
    left = [r for r in rows if r.status == "float"]
    for r in left:
        lines.append(f"  left float: {r.name} ({r.kind}): {r.detail}")
    if any(r.runtime_status for r in rows):
        where = runtime or "the runtime"
        integer = [r for r in weighted if r.runtime_status == "integer"]
        lines.append(f"{where}: {len(integer)} of {len(weighted)} layers with kernels run as integer kernels")
        for r in rows:
            if r.runtime_status == "float":
                lines.append(f"  float in {where}: {r.name} ({r.kind}): {r.runtime_detail}")
    return "\n".join(lines)
