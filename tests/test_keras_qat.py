"""Quantization-aware training on real data: the README demo's pipeline (examples/qat_digits.py)
trains a float CNN on scikit-learn's digits, then 8-bit and 4-bit copies from quantize_model."""

import keras
import numpy as np
import pytest

from tests.helpers.keras_reference import bias_on_grid, builtin_qdq, grid_step


@pytest.fixture(scope="module")
def demo(qat_demo):
    return qat_demo


@pytest.fixture(scope="module")
def trained(demo):
    data = demo.digits(seed=0)
    rows, quantized, _ = demo.run_qat(data, epochs=20, qat_epochs=6, bits=(8, 4), seed=0, verbose=0)
    return data, {name: accuracy for name, accuracy, _ in rows}, quantized


def test_qat_accuracy_within_two_points_of_float_at_8_bits(trained):
    _, accuracy, _ = trained
    print("test accuracy:", accuracy)
    assert accuracy["float32"] >= 0.9  # the float model really learned (450 test images, 10 classes)
    assert accuracy["8-bit PTQ"] >= accuracy["float32"] - 0.02
    assert accuracy["8-bit QAT"] >= accuracy["float32"] - 0.02
    assert accuracy["4-bit QAT"] >= accuracy["float32"] - 0.05


def test_qat_model_really_runs_on_the_quantization_grid(trained):
    """The trained 4-bit model's first conv, with its BatchNorm folded in, computes the ReLU
    of a 15-level-per-channel kernel over the 4-bit input grid, and the quantizer after the
    ReLU leaves at most 16 levels (unsigned 4 bits). Reference: TensorFlow's own kernels and
    the fold computed here from the BatchNorm's variables."""
    import tensorflow as tf

    from tensorflow_qdq.keras import QuantizeAndDequantize, QuantizeWrapper

    data, _, quantized = trained
    model = quantized[4]
    layers = model.layers
    conv = next(la for la in layers if isinstance(la, QuantizeWrapper))
    qin, qout = layers[layers.index(conv) - 1], layers[layers.index(conv) + 2]
    assert isinstance(qin, QuantizeAndDequantize) and isinstance(qout, QuantizeAndDequantize)
    assert conv.batch_norm is not None and qout.signed is False
    gamma, beta, mean, var = conv.batch_norm.get_weights()
    factor = gamma / np.sqrt(var + conv.batch_norm.epsilon)
    q_kernel = builtin_qdq(conv.layer.kernel.numpy() * factor, axis=-1, num_bits=4, narrow_range=True)
    assert all(len(np.unique(q_kernel[..., c])) <= 15 for c in range(q_kernel.shape[-1]))
    x = data[1][:64]
    x_q = builtin_qdq(x, qin.tracked_min.numpy(), qin.tracked_max.numpy(), num_bits=4)
    # the bias as the integer runtimes add it, which Keras adds too: on the int32 grid
    # input step x weight step
    input_step = grid_step(qin.tracked_min.numpy(), qin.tracked_max.numpy(), 4)
    bias = bias_on_grid(beta - mean * factor, input_step, conv.layer.kernel.numpy() * factor, 4)
    pre = tf.nn.conv2d(x_q, q_kernel, 1, "SAME").numpy() + bias
    lo, hi = qout.tracked_min.numpy(), qout.tracked_max.numpy()
    assert lo == 0 < hi
    expected = builtin_qdq(np.maximum(pre, 0), lo, hi, num_bits=4, signed=False)
    activations = keras.Model(model.inputs, qout.output)(x, training=False).numpy()
    assert len(np.unique(activations)) <= 16
    np.testing.assert_allclose(activations, expected, atol=1e-5)


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
    rows = [_split_row(line) for line in table.splitlines()[1:5]]
    assert [name for name, _ in rows] == ["float32", "8-bit PTQ", "8-bit QAT", "4-bit QAT"]
    assert all(cells[-1] == "ms" and float(cells[-2]) > 0 for name, cells in rows if name != "8-bit PTQ")
    assert "tensorflow-qdq ops in it: Qdq>QuantizeAndDequantizeV4" in out
    assert "bit-identical True" in out and "predictions agree 100.0%" in out
    assert (tmp_path / "qat8" / "saved_model.pb").exists()
    deployed = [_split_row(line) for line in out[out.index("runtime "):].splitlines()[1:5]]
    assert [name for name, _ in deployed] == ["ONNX Runtime int8", "TFLite int8", "ONNX Runtime float32",
                                              "TFLite float32"]
    for name, cells in deployed:  # accuracy, agreement, latency, size
        assert 0 < float(cells[0].rstrip("%")) <= 100 and float(cells[2]) > 0 and float(cells[4]) > 0, name
    for name in ("onnx_runtime_int8.onnx", "tflite_int8.tflite"):
        assert (tmp_path / name).stat().st_size > 0


def _split_row(line):
    """(name, the numeric cells after it) of a printed table row."""
    words = line.split()
    first = next(i for i, w in enumerate(words) if w[0].isdigit() and not w.endswith("-bit") or w == "-")
    return " ".join(words[:first]), words[first:]
