"""Quantization-aware training on real data: the README demo's pipeline (examples/qat_digits.py)
trains a float CNN on scikit-learn's digits, then 8-bit and 4-bit copies from quantize_model."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from keras_reference import builtin_qdq

_DEMO = Path(__file__).resolve().parents[1] / "examples" / "qat_digits.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("qat_digits", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(demo):
    data = demo.digits(seed=0)
    rows, quantized = demo.run_qat(data, epochs=20, qat_epochs=6, bits=(8, 4), seed=0, verbose=0)
    return data, {name: accuracy for name, accuracy, _ in rows}, quantized


def test_qat_accuracy_within_two_points_of_float_at_8_bits(trained):
    _, accuracy, _ = trained
    print("test accuracy:", accuracy)
    assert accuracy["float32"] >= 0.9  # the float model really learned (450 test images, 10 classes)
    assert accuracy["8-bit QAT"] >= accuracy["float32"] - 0.02
    assert accuracy["4-bit QAT"] >= accuracy["float32"] - 0.05


def test_qat_model_really_runs_on_the_quantization_grid(trained):
    """The trained 4-bit model's first conv kernel lies on a 15-level grid per output channel,
    and its output takes at most 16 levels (unsigned 4-bit after ReLU) in inference."""
    data, _, quantized = trained
    model = quantized[4]
    conv = model.layers[0]
    kernel = conv.kernel.numpy()
    q_kernel = builtin_qdq(kernel, axis=-1, num_bits=4, narrow_range=True)
    assert all(len(np.unique(q_kernel[..., c])) <= 15 for c in range(kernel.shape[-1]))
    lo, hi = conv.output_quantizer.tracked_min.numpy(), conv.output_quantizer.tracked_max.numpy()
    assert lo == 0 < hi
    activations = conv(data[1][:64], training=False).numpy()
    assert len(np.unique(activations)) <= 16
    expected = builtin_qdq(np.maximum(conv.convolution_op(data[1][:64], q_kernel).numpy() + conv.bias.numpy(), 0),
                           lo, hi, num_bits=4, signed=False)
    np.testing.assert_allclose(activations, expected, atol=1e-6)


def test_exported_8_bit_model_gives_the_keras_outputs(trained, demo, tmp_path):
    data, _, quantized = trained
    keras_out, saved_out = demo.export_and_reload(quantized[8], data[1], str(tmp_path / "qat8"))
    np.testing.assert_array_equal(keras_out, saved_out)


def test_demo_main_prints_the_table_and_the_round_trip(demo, monkeypatch, capsys, tmp_path):
    """The README's main job end to end (few epochs: the accuracy test above covers quality)."""
    monkeypatch.setattr("sys.argv", ["qat_digits.py", "--epochs", "2", "--qat-epochs", "1",
                                     "--export-dir", str(tmp_path / "qat8")])
    demo.main()
    out = capsys.readouterr().out
    table = out[out.index("model         accuracy"):]
    rows = [line.split() for line in table.splitlines()[1:4]]
    assert [r[0] for r in rows] == ["float32", "8-bit", "4-bit"]
    assert all(r[-1] == "ms" and float(r[-2]) > 0 for r in rows)
    assert "tensorflow-qdq ops in it: Qdq>QuantizeAndDequantizeV4" in out
    assert "bit-identical True" in out and "predictions agree 100.0%" in out
    assert (tmp_path / "qat8" / "saved_model.pb").exists()
