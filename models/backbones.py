"""The backbone registry, the feature extractor and the classifier head.

A classifier here is three parts, each a Keras model of its own:

    raw RGB 0-255 image --extractor--> pooled features --head--> class probabilities

The extractor holds the backbone's own preprocessing (as serializable layers, never a
Lambda), the convolutional backbone as one nested model named "backbone" (what the
trainer freezes and partly unfreezes), and global average pooling. Because the head is a
separate model on features, it can be trained on cached features first; composing the
same layer objects afterwards gives exactly the model that was trained.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from lineage.errors import UserError
from models import efficientnet_lite as lite

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
KERAS_WEIGHT_SUFFIXES = (".h5", ".hdf5")
LITE_WEIGHT_SUFFIXES = (".pth", *KERAS_WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class Backbone:
    name: str
    default_size: int
    preprocessing: str  # human-readable, stored in the model artifact
    feature_dim: int


@keras.saving.register_keras_serializable(package="models")
class CaffePreprocess(keras.layers.Layer):
    """Keras' 'caffe' preprocessing (ResNet50): RGB -> BGR, then minus the ImageNet BGR mean."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1) - keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, dtype=inputs.dtype)


def _scale_to_unit_range() -> list[keras.layers.Layer]:
    return [keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")]


def _caffe() -> list[keras.layers.Layer]:
    return [CaffePreprocess(name="preprocess")]


def _inside_backbone() -> list[keras.layers.Layer]:
    return []


def _lite_preprocessing() -> list[keras.layers.Layer]:
    return [lite.preprocessing_layer()]


@dataclass(frozen=True)
class _Recipe:
    """How to build one backbone: its preprocessing layers, constructor and smallest input."""

    backbone: Backbone
    preprocessing_layers: Callable[[], list[keras.layers.Layer]]
    keras_app: Callable[..., keras.Model] | None = None  # None: EfficientNet-Lite
    min_size: int = 32


TO_UNIT_RANGE = "x / 127.5 - 1 on RGB 0-255"
CAFFE = "caffe: RGB to BGR, minus ImageNet BGR mean (103.939, 116.779, 123.68), on RGB 0-255"
EFFICIENTNET_INSIDE = "inside Keras EfficientNetB0: x / 255, then ImageNet mean/std, on RGB 0-255"

_REGISTRY = {
    recipe.backbone.name: recipe
    for recipe in [
        *(
            _Recipe(Backbone(name, variant.image_size, lite.PREPROCESSING, lite.HEAD_FILTERS), _lite_preprocessing)
            for name, variant in lite.VARIANTS.items()
        ),
        _Recipe(Backbone("mobilenet_v2", 224, TO_UNIT_RANGE, 1280), _scale_to_unit_range, keras.applications.MobileNetV2),
        _Recipe(Backbone("efficientnet_b0", 224, EFFICIENTNET_INSIDE, 1280), _inside_backbone, keras.applications.EfficientNetB0),
        _Recipe(Backbone("resnet50", 224, CAFFE, 2048), _caffe, keras.applications.ResNet50),
        _Recipe(Backbone("inception_v3", 299, TO_UNIT_RANGE, 2048), _scale_to_unit_range, keras.applications.InceptionV3, 75),
    ]
}


def known_backbones() -> list[str]:
    return list(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    return _recipe(name).backbone


def _recipe(name: str) -> _Recipe:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(known_backbones())}") from None


def _weights_path(name: str, weights: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights file {path} for {name} not found; fix the path, or use weights: imagenet / none"
        )
    if not path.name.endswith(suffixes):
        raise UserError(f"weights file {path} for {name} must end in one of {', '.join(suffixes)}")
    return path


def _load_keras_weights(model: keras.Model, name: str, path: Path) -> None:
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"weights file {path} does not fit the {name} backbone (no top, include_top=False): {first_line}"
        ) from None


def _build_lite_backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    backbone = lite.build_lite_body(name, image_size)
    if weights == "imagenet":
        lite.load_lite_weights(backbone, lite.packaged_weights_path(name))
    elif weights is not None:
        path = _weights_path(name, weights, LITE_WEIGHT_SUFFIXES)
        if path.suffix == ".pth":
            lite.load_lite_weights(backbone, path)
        else:
            _load_keras_weights(backbone, name, path)
    return backbone


def _download_failure_url(error: Exception) -> str | None:
    """The URL Keras failed to fetch, if `error` is a failed weights download."""
    match = re.search(r"URL fetch failure on (\S+?):", str(error))
    if match:
        return match.group(1)
    return "" if isinstance(error, OSError) else None


def _build_keras_app_backbone(recipe: _Recipe, image_size: int, weights: str | None) -> keras.Model:
    name = recipe.backbone.name
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        try:
            backbone = recipe.keras_app(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as error:  # Keras wraps a failed download in a bare Exception
            url = _download_failure_url(error)
            if url is None:
                raise
            keras_home = os.environ.get("KERAS_HOME", "~/.keras")
            raise UserError(
                f"cannot download the ImageNet weights for {name} ({url or error}); on a machine with internet "
                f"run once with weights: imagenet and copy {keras_home}/models/ here, or pass weights: <path to the .h5 file>"
            ) from None
    else:
        backbone = recipe.keras_app(include_top=False, weights=None, input_shape=shape)
        if weights is not None:
            _load_keras_weights(backbone, name, _weights_path(name, weights, KERAS_WEIGHT_SUFFIXES))
            _fix_efficientnet_variance(backbone)
    # Renamed only now: Keras derives the weights file name from the model name.
    backbone.name = "backbone"
    return backbone


def _fix_efficientnet_variance(backbone: keras.Model) -> None:
    """Keras' EfficientNet ImageNet files store the RGB std where a variance belongs.

    With weights="imagenet" Keras inserts an extra Rescaling(1/sqrt(std)) to compensate
    (tensorflow/tensorflow#49930); a model built with weights=None lacks it, so a local copy
    of that file would feed wrongly scaled inputs. Squaring the variance gives the same result.
    """
    stddev = np.array([0.229, 0.224, 0.225], dtype="float32")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Normalization):
            mean, variance, count = layer.get_weights()
            if np.allclose(variance.reshape(-1), stddev):
                layer.set_weights([mean, variance**2, count])


def _normalize_weights(weights: str | None) -> str | None:
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return None
    return "imagenet" if str(weights).strip().lower() == "imagenet" else str(weights)


def build_feature_extractor(name: str, image_size: int, weights: str | None) -> keras.Model:
    """Raw RGB 0-255 (image_size, image_size, 3) -> pooled (feature_dim,) features.

    weights: "imagenet", None / "none" (random init), or a local weights file path.
    """
    recipe = _recipe(name)
    if image_size < recipe.min_size:
        raise UserError(f"image_size {image_size} is too small for {name}; use at least {recipe.min_size}")
    weights = _normalize_weights(weights)
    if recipe.keras_app is None:
        backbone = _build_lite_backbone(name, image_size, weights)
    else:
        backbone = _build_keras_app_backbone(recipe, image_size, weights)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = inputs
    for layer in recipe.preprocessing_layers():
        x = layer(x)
    x = backbone(x)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name="extractor")


def build_head(feature_dim: int, num_classes: int, dropout: float) -> keras.Model:
    """Pooled features -> Dropout -> Dense softmax over the classes.

    The Dense layer is float32 under every policy: under mixed precision (models/precision.py) a softmax in
    16 bits rounds small probabilities to 0 and makes the loss unstable, and the prediction tables' scores
    are float32 (Keras' mixed-precision guide: the model's last layer in float32).
    """
    features = keras.Input(shape=(feature_dim,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(features, probabilities, name="head")


def build_classifier(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Raw image -> class probabilities, sharing the extractor's and head's layers.

    The extractor is called with training=False, so a call without a training flag runs its
    BatchNorm layers in inference mode. Keras 3 lets fit's training=True override that flag
    (keras-team/keras#20285), so what keeps BatchNorm on its ImageNet statistics while
    fine-tuning is BatchNormalization.trainable = False, which the trainer sets when it
    unfreezes the backbone. Dropout in the head follows the training flag either way.
    """
    inputs = keras.Input(shape=extractor.input_shape[1:], name="image")
    features = extractor(inputs, training=False)
    return keras.Model(inputs, head(features), name="classifier")
