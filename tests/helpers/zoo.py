"""Models for the quantize_model/export tests: keras.applications (weights=None, small inputs),
a transformer block and a zoo of the other weighted layers."""

import keras
import numpy as np

L = keras.layers


def application(name, size=32, classes=10):
    build = getattr(keras.applications, name)
    extra = {"alpha": 0.35} if name == "MobileNetV2" else {}
    if name == "MobileNetV3Small":
        extra = {"alpha": 0.75, "include_preprocessing": False}
    return build(weights=None, input_shape=(size, size, 3), classes=classes, **extra)


def transformer_block(seq=8, vocab=50, dim=16, heads=2, classes=4):
    tokens = keras.Input((seq,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, dim, name="embed")(tokens)
    attn = L.MultiHeadAttention(heads, dim // heads, name="mha")(x, x)
    x = L.LayerNormalization(name="ln1")(L.Add(name="res1")([x, attn]))
    ff = L.Dense(2 * dim, activation="relu", name="ff1")(x)
    ff = L.EinsumDense("abc,cd->abd", output_shape=(None, dim), bias_axes="d", name="ff2")(ff)
    x = L.LayerNormalization(name="ln2")(L.Add(name="res2")([x, ff]))
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, L.Dense(classes, name="head")(x), name="transformer")


def conv_zoo():
    """Every other weighted layer family, BatchNorm after the foldable ones."""
    image = keras.Input((8, 8, 3), name="image")
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep2d")(image)
    x = L.ReLU(name="sep2d_relu")(L.BatchNormalization(name="sep2d_bn")(x))
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="tconv2d")(x)
    x = L.BatchNormalization(name="tconv2d_bn")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2d")(x)
    x = L.Activation("relu", name="dw2d_relu")(x)
    x = L.Conv2D(4, 1, name="pw")(x)
    a = L.GlobalAveragePooling2D(name="gap")(x)

    seq = keras.Input((12, 3), name="seq")
    y = L.Conv1D(6, 3, padding="same", name="conv1d")(seq)
    y = L.SeparableConv1D(6, 3, padding="same", name="sep1d")(y)
    y = L.DepthwiseConv1D(3, padding="same", name="dw1d")(y)
    y = L.Conv1DTranspose(4, 3, strides=2, padding="same", name="tconv1d")(y)
    b = L.GlobalAveragePooling1D(name="gap1d")(y)

    vol = keras.Input((4, 4, 4, 2), name="volume")
    z = L.Conv3D(4, 3, padding="same", name="conv3d")(vol)
    z = L.Conv3DTranspose(3, 3, strides=2, padding="same", name="tconv3d")(z)
    c = L.GlobalAveragePooling3D(name="gap3d")(z)

    merged = L.Concatenate(name="concat")([a, b, c])
    out = _SubDense(5, name="sub_dense")(merged)
    return keras.Model([image, seq, vol], out, name="conv_zoo")


@keras.saving.register_keras_serializable(package="tests")
class _SubDense(L.Dense):
    """A subclass of a built-in weighted layer (quantize_model must quantize it)."""


def inputs_for(model, batch, seed=0, high=1.0):
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (batch,) + tuple(t.shape[1:])
        if "int" in str(t.dtype):
            out.append(rng.integers(0, 50, shape).astype("int32"))
        else:
            out.append(rng.uniform(0, high, shape).astype("float32"))
    return out if len(out) > 1 else out[0]


def targets_for(model, batch, seed=0):
    classes = model.outputs[0].shape[-1]
    return np.random.default_rng(seed + 1).integers(0, classes, (batch,))
