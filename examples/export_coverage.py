"""Export coverage: every keras.applications family (and KerasHub backbones, and recurrent
models) through quantize_model -> calibrate -> QAT -> to_onnx / to_tflite, with what each
runtime runs as integer kernels and how closely it agrees with Keras.

    python examples/export_coverage.py [--set applications|blocks|keras_hub] [--only ResNet,VGG]

Inputs are scikit-learn's digits (upsampled, 3 channels; nothing is downloaded). The
applications are trained as a user would before quantizing (a few float epochs on 800 digits,
then one QAT epoch) and measured on 200 others; the blocks and backbones keep random weights
with BatchNorm statistics from data (quick, and the harder case for agreement: no trained
margins). Columns: integer share = layers with kernels that the runtime runs as integer kernels
(``quantization_report(model, runtime=...)``); graph = ONNX Runtime with optimizations off
(the QDQ graph as exported); integer = ONNX Runtime with all optimizations (its integer
kernels); TFLite = the full-integer flatbuffer in the LiteRT interpreter. Correlations are of
the logits over the test images, against the Keras model's predict; accuracies are of the
quantized Keras model and of each runtime on the test images.
"""

import argparse
import dataclasses
import gc
import os
import sys
import time
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import tensorflow_qdq  # noqa: E402
from tensorflow_qdq.deploy import ExportMismatchWarning, _sessions  # noqa: E402
from tensorflow_qdq.keras import calibrate, quantization_report, quantize_model  # noqa: E402

L = keras.layers

# family -> (keras.applications constructor, input side, extra arguments); the smallest
# member of each family at the smallest input it accepts. Keras 3.15 has no RegNet or ResNetRS
# applications (tf.keras had them): the "grouped bottleneck" block below is the RegNet structure.
APPLICATIONS = {
    "ConvNeXt": ("ConvNeXtTiny", 32, {}),
    "DenseNet": ("DenseNet121", 32, {}),
    "EfficientNet": ("EfficientNetB0", 32, {}),
    "EfficientNetV2": ("EfficientNetV2B0", 32, {}),
    "InceptionResNetV2": ("InceptionResNetV2", 75, {}),
    "InceptionV3": ("InceptionV3", 75, {}),
    "MobileNet": ("MobileNet", 32, {"alpha": 0.25}),
    "MobileNetV2": ("MobileNetV2", 32, {"alpha": 0.35}),
    "MobileNetV3Small": ("MobileNetV3Small", 32, {"alpha": 0.75}),
    "MobileNetV3Large": ("MobileNetV3Large", 32, {}),
    "NASNet": ("NASNetMobile", 32, {}),
    "ResNet": ("ResNet50", 32, {}),
    "ResNetV2": ("ResNet50V2", 32, {}),
    "VGG": ("VGG16", 32, {}),
    "Xception": ("Xception", 71, {}),
}
# Families with ops TFLite runs in float, exported with allow_float_ops=True (docs/DEPLOY.md):
# ConvNeXt's LayerNormalization has no int8 kernel.
PARTLY_FLOAT_TFLITE = ("ConvNeXt",)


def application(family, classes=10):
    name, side, extra = APPLICATIONS[family]
    build = getattr(keras.applications, name)
    return build(weights=None, input_shape=(side, side, 3), classes=classes, classifier_activation=None, **extra)


def digits_images(side, count=96, seed=0):
    """Digits in [0, 255] (the applications' own preprocessing takes that range), resized to
    side x side, 3 channels; and their labels."""
    import tensorflow as tf

    data = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.images), count, replace=False)
    images = data.images[pick, :, :, None] * (255.0 / 16.0)
    images = tf.image.resize(images, (side, side)).numpy().repeat(3, axis=-1).astype(np.float32)
    return images, data.target[pick]


@dataclasses.dataclass
class Coverage:
    family: str
    kernels: int = 0
    onnx_integer: int = 0
    onnx_graph_corr: float = float("nan")
    onnx_integer_corr: float = float("nan")
    tflite_integer: int = 0
    tflite_corr: float = float("nan")
    onnx_steps: float = float("nan")  # max |ONNX Runtime - Keras| in steps of the output grid
    tflite_steps: float = float("nan")
    accuracy: tuple = ()  # (Keras, ONNX Runtime, TFLite) on the test images, when trained
    float_layers: tuple = ()
    drift: tuple = ()  # exporters that warned: every stretch agrees, the outputs drift (rounding x depth)
    error: str = ""
    seconds: float = 0.0

    def row(self):
        if self.error:
            return f"| {self.family} | {self.kernels} | failed: {self.error[:300]} | | | | | |"
        drift = " (drift)" if self.drift else ""
        accuracy = " / ".join(f"{a:.1%}" for a in self.accuracy) if self.accuracy else "-"
        return (f"| {self.family}{drift} | {self.kernels} | {self.onnx_integer / max(self.kernels, 1):.0%} | "
                f"{self.onnx_graph_corr:.4f} | {self.onnx_integer_corr:.4f} ({self.onnx_steps:.0f}) | "
                f"{self.tflite_integer / max(self.kernels, 1):.0%} | "
                f"{self.tflite_corr:.4f} ({self.tflite_steps:.0f}) | {accuracy} |")


HEADER = ("| family | layers with kernels | ONNX Runtime integer share | graph correlation | integer correlation "
          "(max steps) | TFLite integer share | TFLite correlation (max steps) | accuracy Keras / ONNX Runtime / "
          "TFLite |\n|---|---|---|---|---|---|---|---|")


def steps_apart(expected, got, step):
    """max |got - expected| in steps of the output grid (nan for a float output)."""
    if not step:
        return float("nan")
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)) / step)


def correlation(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def onnx_outputs(proto, inputs, optimized):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    arrays = inputs if isinstance(inputs, list) else [inputs]
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})[0]


def tflite_outputs(flatbuffer, inputs, names):
    from tensorflow_qdq.deploy import _sessions

    return _sessions.tflite_session(flatbuffer, names)(inputs if isinstance(inputs, list) else [inputs])[0][0]


def _rows(x, start, stop):
    return [a[start:stop] for a in x] if isinstance(x, list) else x[start:stop]


def batch_norm_statistics_from(model, x):
    """A random-weight model as a trained one has it: every BatchNormalization's moving
    statistics set from one batch (momentum 0 for one training-mode call). Untrained, they are
    the identity, and the activations of a deep network collapse or explode in inference."""
    norms = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, L.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _compiled(model, optimizer):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def evaluate(family, float_model, images, labels, *, train=None, allow_float_ops=False):
    """Untrained (``train=None``): BatchNorm statistics from data -> quantize_model (no
    skip_layers) -> calibrate -> two QAT steps, measured on the rows after the first 32.
    Trained (``train=(float epochs, rows)``): the float model trained on the first ``rows``
    (BatchNorm statistics then set from data, as after a long training) -> quantize_model ->
    calibrate -> one QAT epoch, measured on the rows after them. Then both exports (verified),
    measured."""
    start = time.perf_counter()
    found = Coverage(family)
    try:
        rows = 32 if train is None else train[1]
        if train is not None:
            _compiled(float_model, keras.optimizers.Adam(1e-3)).fit(
                _rows(images, 0, rows), labels[:rows], batch_size=32, epochs=train[0], verbose=0)
        batch_norm_statistics_from(float_model, _rows(images, 0, min(rows, 256)))
        model = quantize_model(float_model, verbose=False)
        calibrate(model, _rows(images, 0, 32), verbose=False)
        if train is None:  # two SGD steps: the ranges move once
            _compiled(model, keras.optimizers.SGD(1e-3)).fit(
                _rows(images, 0, 32), labels[:32], batch_size=16, epochs=1, verbose=0)
        else:
            _compiled(model, keras.optimizers.Adam(1e-4)).fit(
                _rows(images, 0, rows), labels[:rows], batch_size=32, epochs=1, verbose=0)
        test, test_labels = _rows(images, rows, None), labels[rows:]
        expected = model.predict(test, verbose=0)
        report = quantization_report(model, runtime="onnxruntime")
        kernels = [r for r in report if r.has_kernel]
        found.kernels = len(kernels)
        found.onnx_integer = sum(r.runtime_status == "integer" for r in kernels)
        found.float_layers = tuple(f"{r.name}: {r.runtime_detail}" for r in kernels if r.runtime_status != "integer")
        with warnings.catch_warnings(record=True) as caught:  # verified: raises if a stretch parts
            warnings.simplefilter("always", ExportMismatchWarning)
            proto = tensorflow_qdq.to_onnx(model)
            flatbuffer = tensorflow_qdq.to_tflite(model, allow_float_ops=allow_float_ops)
        found.drift = tuple(str(w.message).split(":")[0] for w in caught if w.category is ExportMismatchWarning)
        found.onnx_graph_corr = correlation(expected, onnx_outputs(proto, test, optimized=False))
        onnx_integer = onnx_outputs(proto, test, optimized=True)
        found.onnx_integer_corr = correlation(expected, onnx_integer)
        found.onnx_steps = steps_apart(expected, onnx_integer, _sessions.onnx_output_steps(proto)[0])
        names = [t.name.split(":")[0] for t in model.inputs]
        tflite_out = tflite_outputs(flatbuffer, test, names)
        found.tflite_corr = correlation(expected, tflite_out)
        found.tflite_steps = steps_apart(expected, tflite_out, _sessions.tflite_output_steps(flatbuffer)[0])
        tflite_rows = quantization_report(model, runtime="tflite", allow_float_ops=allow_float_ops)
        found.tflite_integer = sum(r.runtime_status == "integer" for r in tflite_rows if r.has_kernel)
        if train is not None:
            found.accuracy = tuple(_accuracy(out, test_labels) for out in (expected, onnx_integer, tflite_out))
    except Exception as exc:  # a table row per family, failures included
        found.error = f"{type(exc).__name__}: {exc}"
    found.seconds = time.perf_counter() - start
    return found


# Training of the applications: float epochs on TRAIN_ROWS digits, then one QAT epoch; the
# rest of the images are the test set.
FLOAT_EPOCHS, TRAIN_ROWS, TEST_ROWS = 3, 800, 200


def evaluate_application(family):
    # the previous family's graphs and models (ResNet50 after ten families in one process ran out of 23 GB)
    keras.backend.clear_session()
    gc.collect()
    side = APPLICATIONS[family][1]
    images, labels = digits_images(side, count=TRAIN_ROWS + TEST_ROWS)
    keras.utils.set_random_seed(0)
    return evaluate(family, application(family), images, labels, train=(FLOAT_EPOCHS, TRAIN_ROWS),
                    allow_float_ops=family in PARTLY_FLOAT_TFLITE)


# ---------------------------------------------------------------------------- custom blocks
# The structures of the families and of common user models, built small: what the default
# test run exports on every change (the applications themselves are the slow test).


@keras.saving.register_keras_serializable(package="export_coverage")
class LayerScale(L.Layer):
    """ConvNeXt's per-channel scale: a weight that is not a kernel."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(0.1))

    def call(self, x):
        return x * self.gamma


@keras.saving.register_keras_serializable(package="export_coverage")
class PositionEmbedding(L.Layer):
    """A learned position embedding added to a sequence: a weight that is not a kernel."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal")

    def call(self, x):
        return x + self.table


def _image_input(side=16):
    return keras.Input((side, side, 3), name="image")


def _head(x, classes=10):
    return L.Dense(classes, name="logits")(L.GlobalAveragePooling2D(name="pool")(x))


def se_block():
    """EfficientNet/MobileNetV3 style: conv-BN-swish, depthwise-BN-swish, squeeze-excite with a
    sigmoid gate, projection, residual add."""
    inputs = _image_input()
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)))
    y = L.Activation("swish")(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    s = L.GlobalAveragePooling2D(keepdims=True)(y)
    s = L.Conv2D(4, 1, activation="swish")(s)
    s = L.Conv2D(16, 1, activation="sigmoid")(s)
    y = L.Multiply()([y, s])
    y = L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(y))
    return keras.Model(inputs, _head(L.Add()([x, y])), name="se_block")


def hard_swish_block():
    """MobileNetV3 style with its preprocessing: Rescaling at the input, hard swish."""
    inputs = _image_input()
    x = L.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = L.Activation("hard_swish")(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, use_bias=False)(x)))
    x = L.Activation("hard_swish")(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    return keras.Model(inputs, _head(L.ReLU()(L.Conv2D(16, 1)(x))), name="hard_swish_block")


def grouped_bottleneck():
    """RegNet style: Rescaling input; 1x1 -> grouped 3x3 -> 1x1 with BatchNorm and a residual add."""
    inputs = _image_input()
    x = L.Rescaling(1.0 / 255)(inputs)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False)(x)))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(x)))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", groups=4, use_bias=False)(y)))
    y = L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(y))
    return keras.Model(inputs, _head(L.ReLU()(L.Add()([x, y]))), name="grouped_bottleneck")


def unet_block():
    """U-Net style: down with max pooling, up with a strided transposed conv, skip concatenation."""
    inputs = _image_input()
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = L.Conv2D(8, 3, padding="same", activation="relu")(L.MaxPooling2D()(a))
    up = L.Conv2DTranspose(8, 3, strides=2, padding="same")(b)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(L.Concatenate()([a, up]))
    return keras.Model(inputs, _head(L.Conv2D(4, 1)(x)), name="unet_block")


def convnext_block():
    """ConvNeXt style: depthwise 7x7, LayerNormalization, inverted MLP with GELU, LayerScale."""
    inputs = _image_input()
    x = L.Conv2D(16, 4, strides=4)(inputs)
    y = L.DepthwiseConv2D(7, padding="same")(x)
    y = L.LayerNormalization(epsilon=1e-6)(y)
    y = L.Dense(32, activation="gelu")(y)
    y = LayerScale()(L.Dense(16)(y))
    return keras.Model(inputs, _head(L.Add()([x, y])), name="convnext_block")


def vit_block():
    """A small ViT: patch embedding, position embedding, attention, MLP with exact GELU."""
    inputs = _image_input()
    x = L.Reshape((16, 16))(L.Conv2D(16, 4, strides=4)(inputs))
    x = PositionEmbedding()(x)
    y = L.MultiHeadAttention(2, 8)(L.LayerNormalization()(x), L.LayerNormalization()(x))
    x = L.Add()([x, y])
    y = L.Dense(16)(L.Dense(32, activation="gelu")(L.LayerNormalization()(x)))
    x = L.Add()([x, y])
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling1D()(x)), name="vit_block")


def conv1d_net():
    """An audio-style Conv1D net over a sequence of 64 samples."""
    inputs = keras.Input((64, 1), name="signal")
    x = L.ReLU()(L.BatchNormalization()(L.Conv1D(8, 5, padding="same", use_bias=False)(inputs)))
    x = L.Conv1D(16, 3, activation="relu")(L.MaxPooling1D()(x))
    return keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling1D()(x)), name="conv1d_net")


def recurrent_net():
    """Embedding -> bidirectional LSTM -> GRU -> Dense: recurrent layers stay float (reported)."""
    tokens = keras.Input((8,), dtype="int32", name="tokens")
    x = L.Embedding(17, 8)(tokens)
    x = L.Bidirectional(L.LSTM(8, return_sequences=True))(x)
    x = L.GRU(8)(x)
    return keras.Model(tokens, L.Dense(10, name="logits")(x), name="recurrent_net")


# block -> (builder, input kind, TFLite full-integer expected)
BLOCKS = {
    "squeeze-excite, swish": (se_block, "image", True),
    "hard swish, Rescaling input": (hard_swish_block, "image", True),
    "grouped bottleneck, Rescaling input": (grouped_bottleneck, "image", True),
    "U-Net (transposed conv, concat)": (unet_block, "image", True),
    "ConvNeXt block (LayerScale, GELU)": (convnext_block, "image", False),
    "ViT block (attention, GELU)": (vit_block, "image", False),
    "Conv1D": (conv1d_net, "signal", True),
    "Embedding, BiLSTM, GRU": (recurrent_net, "tokens", False),
}


def block_inputs(kind, count=96, seed=0):
    """Digits as the block wants them: 16x16x3 images in [0, 255], 64-sample signals, or 8-token
    rows (one image row's pixel values, 0..16, as tokens)."""
    data = load_digits()
    pick = np.random.default_rng(seed).choice(len(data.images), count, replace=False)
    if kind == "image":
        return digits_images(16, count, seed)
    if kind == "signal":
        return (data.images[pick].reshape(count, 64, 1) / 16.0).astype(np.float32), data.target[pick]
    return data.images[pick, 3].astype(np.int32), data.target[pick]


# ---------------------------------------------------------------------------- KerasHub
# Backbones built from their constructors at tiny sizes (no presets: nothing is downloaded),
# under a classifier head; keras-hub is optional (scripts/setup_env.sh installs it).


def _hub_models():
    import keras_hub

    return keras_hub.models


def _image_classifier(backbone, side=32):
    # KerasHub's image backbones read what its ImageConverter gives them (pixels scaled to [0, 1]):
    # on raw [0, 255] pixels two SGD steps blow ViT's float patch embedding up to 1e10 (no
    # normalization before its first residual add), where float32 rounding exceeds the range.
    image = keras.Input((side, side, 3), name="image")
    features = backbone(L.Rescaling(1 / 255, name="pixels")(image))
    pool = L.GlobalAveragePooling2D() if len(features.shape) == 4 else L.GlobalAveragePooling1D()
    return keras.Model(image, L.Dense(10, name="logits")(pool(features)), name=f"{backbone.name}_classifier")


def _text_classifier(backbone, names, length=16):
    inputs = {name: keras.Input((length,), dtype="int32", name=name) for name in names}
    features = backbone(inputs)
    if isinstance(features, dict):
        features = features["pooled_output"] if "pooled_output" in features else features["sequence_output"]
    if len(features.shape) == 3:
        features = L.GlobalAveragePooling1D()(features)
    return keras.Model(list(inputs.values()), L.Dense(10, name="logits")(features), name=f"{backbone.name}_classifier")


KERAS_HUB = {
    "ResNetBackbone": lambda H: _image_classifier(H.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=(32, 32, 3))),
    "DenseNetBackbone": lambda H: _image_classifier(H.DenseNetBackbone(
        stackwise_num_repeats=[1, 1], image_shape=(32, 32, 3), growth_rate=8)),
    "EfficientNetBackbone": lambda H: _image_classifier(H.EfficientNetBackbone(
        width_coefficient=0.25, depth_coefficient=0.25, stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16], stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25], stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"], image_shape=(32, 32, 3))),
    "MobileNetBackbone": lambda H: _image_classifier(H.MobileNetBackbone(
        stackwise_expansion=[[1], [4]], stackwise_num_blocks=[1, 1], stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]], stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]], stackwise_padding=[[1], [1]], output_num_filters=32,
        depthwise_filters=8, depthwise_stride=2, depthwise_residual=False, squeeze_and_excite=0.5,
        last_layer_filter=32, image_shape=(32, 32, 3))),
    "ViTBackbone": lambda H: _image_classifier(H.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)),
    "BertBackbone": lambda H: _text_classifier(H.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16),
        ("token_ids", "segment_ids", "padding_mask")),
    "GPT2Backbone": lambda H: _text_classifier(H.GPT2Backbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16),
        ("token_ids", "padding_mask")),
}
# quantize_model inlines KerasHub's block layers (their sublayers quantized like any layer). TFLite
# keeps float ops in these (allow_float_ops=True): LayerNormalization and attention's softmax and
# batch matmuls.
HUB_PARTLY_FLOAT = ("ViTBackbone", "BertBackbone", "GPT2Backbone")
# Below the 90% integer share in ONNX Runtime, with the reasons quantization_report gives:
# ViT's patch embedding owns a class token and position table besides its conv (a layer with its
# own weights stays float); BERT's and GPT-2's token/segment embeddings count as layers with
# kernels (lookups: ONNX Runtime gathers in float), GPT-2's TransformerDecoder does not run on
# symbolic tensors (not inlined) and BERT's cached attention keeps float batch matmuls.
HUB_BELOW_INTEGER_SHARE = ("ViTBackbone", "BertBackbone", "GPT2Backbone")


def hub_inputs(model, count=96, seed=0):
    """Digits for a KerasHub classifier: images, or 16 pixel values of an image as tokens with
    a full padding mask and zero segment ids."""
    if len(model.inputs) == 1 and "float" in str(model.inputs[0].dtype):
        return digits_images(int(model.inputs[0].shape[1]), count, seed)
    data = load_digits()
    pick = np.random.default_rng(seed).choice(len(data.images), count, replace=False)
    tokens = data.images[pick].reshape(count, 64)[:, 16:32].astype(np.int32)
    feeds = {"token_ids": tokens, "padding_mask": np.ones_like(tokens), "segment_ids": np.zeros_like(tokens)}
    return [feeds[t.name.split(":")[0]] for t in model.inputs], data.target[pick]


def evaluate_hub(name):
    keras.utils.set_random_seed(0)
    model = KERAS_HUB[name](_hub_models())
    x, y = hub_inputs(model)
    return evaluate(name, model, x, y, allow_float_ops=name in HUB_PARTLY_FLOAT)


def evaluate_block(name):
    build, kind, full_integer = BLOCKS[name]
    keras.utils.set_random_seed(0)
    x, y = block_inputs(kind)
    return evaluate(name, build(), x, y, allow_float_ops=not full_integer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated family or block names")
    parser.add_argument("--set", choices=("applications", "blocks", "keras_hub"), default="applications")
    args = parser.parse_args()
    names, evaluate_one = {"applications": (APPLICATIONS, evaluate_application), "blocks": (BLOCKS, evaluate_block),
                           "keras_hub": (KERAS_HUB, evaluate_hub)}[args.set]
    print(HEADER)
    for family in [f for f in names if not args.only or f in args.only.split(",")]:
        found = evaluate_one(family)
        print(found.row(), flush=True)
        if found.error:
            print(f"<!-- {family}: {found.error} -->", file=sys.stderr)
        for detail in found.float_layers:
            print(f"<!-- {family}: float in ONNX Runtime: {detail} -->", file=sys.stderr)
        print(f"<!-- {family}: {found.seconds:.0f} s -->", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
