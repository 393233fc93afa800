"""Export coverage on architectures the rest of the suite does not hold (docs/DEPLOY.md,
"Coverage"): quantize_model with no skip_layers -> calibrate -> QAT steps -> to_onnx and
to_tflite (both verified against Keras by the exporters themselves), then measured here against
the Keras model's predict: the share of layers with kernels that ONNX Runtime runs as integer
kernels (its optimized graph), the correlation of the exported graph with optimizations off and
with them on, and of the full-integer TFLite model.

The structures of the families (squeeze-excite, hard swish, grouped convs, U-Net, ConvNeXt and
ViT blocks, Conv1D, recurrent layers) run by default; every keras.applications family and the
KerasHub backbones are marked slow."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _coverage_module():
    spec = importlib.util.spec_from_file_location("export_coverage", os.path.join(ROOT, "examples",
                                                                                  "export_coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


coverage = _coverage_module()

# The bounds (docs/DEPLOY.md): integer kernels for >= 90% of the layers with kernels in
# ONNX Runtime, the QDQ graph as exported within float rounding of Keras, the integer runtimes
# close to it.
MIN_INTEGER_SHARE = 0.9
MIN_GRAPH_CORRELATION = 0.999
MIN_INTEGER_CORRELATION = 0.99
MAX_STEPS = 2
MAX_ACCURACY_GAP = 0.02  # 4 of the 200 test images
# Models whose recurrent layers stay float (reported): their integer share is not asked for.
FLOAT_RECURRENT = ("Embedding, BiLSTM, GRU",)


def _check(found, integer_share=True):
    assert not found.error, found.error
    assert found.kernels > 0
    if integer_share:
        share = found.onnx_integer / found.kernels
        assert share >= MIN_INTEGER_SHARE, (share, found.float_layers)
    if found.accuracy:  # trained (the applications): the QDQ graph as exported is Keras' function, and
        # each runtime is as accurate as Keras on the test images, within MAX_ACCURACY_GAP
        assert found.onnx_graph_corr >= MIN_GRAPH_CORRELATION, found
        keras_accuracy, *runtimes = found.accuracy
        assert all(abs(a - keras_accuracy) <= MAX_ACCURACY_GAP for a in runtimes), found
    # End to end, unless the exporters' teacher-forced check found every stretch between
    # quantizers in agreement and warned that rounding grows with depth (docs/DEPLOY.md)
    # (an output within MAX_STEPS of its grid agrees too: untrained nets have near-constant logits,
    # whose correlation says little; the exporters' documented bound)
    if "to_onnx" not in found.drift:
        assert found.onnx_graph_corr >= MIN_GRAPH_CORRELATION or found.onnx_steps <= MAX_STEPS, found
        assert found.onnx_integer_corr >= MIN_INTEGER_CORRELATION or found.onnx_steps <= MAX_STEPS, found
    if "to_tflite" not in found.drift:
        assert found.tflite_corr >= MIN_INTEGER_CORRELATION or found.tflite_steps <= MAX_STEPS, found


@pytest.mark.parametrize("block", list(coverage.BLOCKS))
def test_family_structures(block):
    _check(coverage.evaluate_block(block), integer_share=block not in FLOAT_RECURRENT)


# NASNet trained: its QDQ graph agrees with Keras at 0.9973 (docs/DEPLOY.md, Coverage), below
# MIN_GRAPH_CORRELATION; not analysed yet. Strict: a fix shows.
_NASNET_GRAPH = pytest.mark.xfail(strict=True, reason="trained NASNet's QDQ graph: 0.9973 < 0.999")


@pytest.mark.slow
@pytest.mark.parametrize("family", [pytest.param(f, marks=_NASNET_GRAPH) if f == "NASNet" else f
                                    for f in coverage.APPLICATIONS])
def test_keras_applications(family):
    _check(coverage.evaluate_application(family))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(coverage.KERAS_HUB))
def test_keras_hub_backbones(backbone):
    # inlined blocks; the backbones below the integer share say why (HUB_BELOW_INTEGER_SHARE)
    _check(coverage.evaluate_hub(backbone), integer_share=backbone not in coverage.HUB_BELOW_INTEGER_SHARE)
