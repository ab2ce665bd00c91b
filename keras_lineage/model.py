"""A model version loaded for use in Python: the Keras model and what it needs to be used right.

The model artifact carries its class order, input size, resize mode and a description of its
preprocessing (which is inside the model: Rescaling or registered layers), so predictions here
are made exactly as infer makes them: images fitted to the square input the same way, scores in
the model's own class order, the guess by the same rule (tables/predictions.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lineage.contract import Artifact
from lineage.errors import UserError


@dataclass
class LoadedModel:
    """`Version.load_model()`: `.model` is the keras.Model; its outputs are `class_names`, in order."""

    model: Any
    class_names: list[str]
    input_size: int
    resize: str  # how an image is fitted to input_size x input_size: resize, crop or pad
    preprocessing: str  # what the model does to pixels in 0..255 before the backbone (inside the model)
    ref: str

    def __repr__(self) -> str:
        return (f"<LoadedModel {self.ref}: {len(self.class_names)} classes, {self.input_size} px "
                f"({self.resize}), preprocessing {self.preprocessing}>")

    def predict(self, images: str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray,
                batch_size: int = 64) -> pd.DataFrame:
        """Scores for image files (decoded and fitted as infer does) or an array of pixels in 0..255 shaped
        (N, input_size, input_size, 3): one row each with path (for files), guess, confidence, score_<class>."""
        from models.data import decode_one
        from models.predict import predict_scores
        from tables.predictions import guesses, score_column

        paths: list[str] | None = None
        if isinstance(images, np.ndarray):
            pixels = images[None] if images.ndim == 3 else images
            expected = (self.input_size, self.input_size, 3)
            if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
                raise UserError(f"{self.ref} takes images shaped (N, {self.input_size}, {self.input_size}, 3), "
                                f"got {images.shape}: resize them, or pass file paths")
        else:
            paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
            if not paths:
                raise UserError("predict: no images given")
            pixels = np.empty((len(paths), self.input_size, self.input_size, 3), np.uint8)
            for index, path in enumerate(paths):
                try:
                    pixels[index] = decode_one(path, self.input_size, self.resize)
                except (OSError, ValueError) as error:
                    raise UserError(f"cannot read image {path}: {error}") from None
        scores = predict_scores(self.model, pixels, batch_size, progress=False)
        frame = pd.DataFrame({"guess": guesses(scores, self.class_names),
                              "confidence": scores.max(axis=1)})
        if paths is not None:
            frame.insert(0, "path", paths)
        scores_frame = pd.DataFrame(scores, columns=[score_column(c) for c in self.class_names])
        return pd.concat([frame, scores_frame], axis=1)


def load_model(artifact: Artifact) -> LoadedModel:
    """The model file read with safe_mode (no Lambda layers to run), after registering the custom layers."""
    from models.quiet import import_tensorflow

    quiet_tensorflow()
    import_tensorflow()
    import keras

    import models.backbones  # noqa: F401  registers the custom layers a saved model may use

    meta = artifact.manifest.meta
    try:
        classes, size, resize = list(meta["classes"]), int(meta["input_size"]), str(meta["resize"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{artifact.ref}'s manifest lacks classes, input_size or resize: it is not a model "
                        "train made; run `pipeline.py verify`") from None
    with artifact.named_file("model.keras") as model_file:
        model = keras.models.load_model(model_file, safe_mode=True, compile=False)
    return LoadedModel(model, classes, size, resize, str(meta.get("preprocessing", "")), artifact.ref)


def quiet_tensorflow() -> None:
    """As the CLI does without --verbose: TensorFlow's C++ start-up lines hidden, unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
