"""quantization_report: what quantize_model quantized, folded and left float, layer by layer."""

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
    weights left float) or "no weights"; has_kernel: whether the layer has a kernel-like
    weight that a runtime could run in integer arithmetic.
    """

    name: str
    kind: str
    status: str
    detail: str
    has_kernel: bool


def quantization_report(model, skipped=None):
    """Rows (``ReportRow``) for every layer of a model made by ``quantize_model`` (nested
    models included, their layer names prefixed with the model's name). ``skipped``: the
    names passed as ``skip_layers`` (default: those ``quantize_model`` recorded on the model)."""
    skipped = getattr(model, "_qdq_skip_layers", ()) if skipped is None else skipped
    rows = []
    for prefix, layer in _walk(model, ""):
        rows.append(_row(prefix + layer.name, layer, skipped))
    return rows


def _walk(model, prefix):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, QuantizedMultiHeadAttention):
            yield from _walk(layer, f"{prefix}{layer.name}/")
        else:
            yield prefix, layer


def _row(name, layer, skipped):
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
    if not layer.weights:
        return ReportRow(name, kind, "no weights", "", False)
    has_kernel = _placement.is_weighted(layer) or any(
        "kernel" in w.path.split("/")[-1] for w in layer.weights)
    if layer.name in skipped:
        reason = "skipped (skip_layers)"
    elif _placement.is_weighted(layer):
        reason = "not quantized (skip_layers, or the model was not made by quantize_model)"
    else:
        reason = next((text for cls, text in _placement.FLOAT_REASONS.items() if isinstance(layer, cls)),
                      "no quantization rule for this layer")
    return ReportRow(name, kind, "float", reason, has_kernel)


def summary(rows, model_name):
    """A short text: counts, then every layer with weights that stayed float and why."""
    weighted = [r for r in rows if r.has_kernel]
    quantized = [r for r in weighted if r.status == "quantized"]
    folds = sum("folded" in r.detail for r in rows)
    quantizers = sum(r.status == "activation quantizer" for r in rows)
    lines = [f"quantize_model({model_name}): {len(quantized)} of {len(weighted)} layers with kernels quantized, "
             f"{folds} BatchNorms folded, {quantizers} activation quantizers"]
    left = [r for r in rows if r.status == "float"]
    for r in left:
        lines.append(f"  left float: {r.name} ({r.kind}): {r.detail}")
    return "\n".join(lines)
