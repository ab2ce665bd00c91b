"""The two-phase fine-tune of keras-io's transfer-learning guide, as one function.

Phase 1 trains the new head on a frozen backbone. While the backbone is frozen and no
augmentation changes the pixels, every epoch would compute the same features again, so
they are computed once (and kept on disk for the next run) and the head is fitted on them:
the same gradient steps, at a fraction of the cost. Phase 2 unfreezes the top of the
backbone, keeps BatchNorm frozen in inference mode, and fine-tunes at a small learning rate.

Validation is one prediction of the validation set per epoch (`_ValidationPass`), made by the first
callback: validation loss and accuracy (what the checkpoint, early stopping and the learning-rate
schedule read) and micro-, macro- and per-class average precision all come from it, so AP costs no
second pass over the data. Keras' own validation pass is not run.

The caller builds the extractor and head (models.backbones) and does all store I/O; this
module only trains, checkpointing the best validation epoch to the path it is given.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np

from lineage.errors import UserError
from models.data import build_augmentation, make_dataset, save_array_atomic
from models.distribute import Distribution, predict_all, prepare_for_fit, scope, shard_by_data
from tables.average_precision import average_precisions

LOSS = "sparse_categorical_crossentropy"
MONITOR = "val_accuracy"
REDUCE_LR_FACTOR = 0.2
MIN_LR = 1e-7


@dataclass
class TrainConfig:
    """Training parameters as plain data; a stage builds it from the YAML `train:` block. The head's
    dropout is not one: it is part of the head, which the caller builds (models.backbones.build_head)."""

    epochs_head: int
    epochs_finetune: int
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_finetune: float = 1e-5
    unfreeze: int | str = 0  # top backbone layers to train, or the first one's name; 0 skips phase 2
    early_stopping_patience: int | None = 3  # None: never stop early
    reduce_lr_patience: int | None = 2  # None: never lower the learning rate
    seed: int = 0
    augmentation: dict = field(default_factory=dict)  # models.data.build_augmentation keys
    use_feature_cache: bool = True
    tensorboard_dir: str | None = None
    verbose: int = 1  # Keras progress output: 0 silent, 1 bar, 2 one line per epoch


@dataclass
class TrainResult:
    model: Any  # the composed classifier (uncompiled), best validation weights restored
    # One dict per epoch: phase, epoch (counted on across both phases), loss, accuracy, val_loss, val_accuracy,
    # val_micro_ap, val_macro_ap, val_class_ap ({class: AP, None where val has no image of it}), lr.
    history: list[dict[str, Any]]
    best: dict[str, Any]  # val_accuracy, val_loss, epoch, phase of the epoch whose weights were kept


def train_two_phase(
    extractor,
    head,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    cfg: TrainConfig,
    checkpoint_path: str,
    feature_cache_dir: str | None = None,
    log: Callable[[str], None] = print,
    build_classifier: Callable | None = None,
    class_names: list[str] | None = None,
    distribution: Distribution | None = None,
) -> TrainResult:
    """Fit head then top of backbone; return the classifier with its best validation weights.

    `feature_cache_dir` must be keyed by the caller on everything the features depend on
    (split, backbone and weights, image size, resize mode). `build_classifier` defaults to
    models.backbones.build_classifier. `class_names` (in label order) name the per-class AP in the
    history; without them the classes are named by index. `distribution` (models.distribute.choose_strategy)
    trains under its strategy: the extractor and head must have been built in its scope, `cfg.batch_size` is
    per replica, and each worker checkpoints to its own `checkpoint_path`.
    """
    _check_inputs(train_images, train_labels, val_images, val_labels, cfg, checkpoint_path, head)
    if _finetunes(cfg):
        _backbone_cut(extractor, cfg.unfreeze)  # a misspelt layer name fails now, not after phase 1
    if build_classifier is None:
        from models.backbones import build_classifier
    keras.utils.set_random_seed(cfg.seed)
    with scope(distribution):
        classifier = build_classifier(extractor, head)
    if distribution is not None and distribution.setting != "none":
        log(f"distribute: {distribution.describe()}; global batch {cfg.batch_size * distribution.replicas} = "
            f"train.batch_size {cfg.batch_size} per replica x {distribution.replicas} "
            f"replica{'s' if distribution.replicas != 1 else ''}")
    augment = build_augmentation(cfg.augmentation, seed=cfg.seed)
    checkpoint = _BestCheckpoint(classifier, checkpoint_path)
    history: list[dict[str, Any]] = []
    names = list(class_names) if class_names is not None else [str(i) for i in range(head.output_shape[-1])]
    if len(names) != head.output_shape[-1]:
        raise ValueError(f"{len(names)} class names for a head of {head.output_shape[-1]} classes")
    absent = [name for index, name in enumerate(names) if not np.any(np.asarray(val_labels) == index)]
    if absent:
        log(f"val has no image of {', '.join(absent)}: their AP is undefined, and the macro AP is over "
            f"the other {len(names) - len(absent)} classes")

    train, val = (train_images, train_labels), (val_images, val_labels)

    extractor.trainable = False
    if cfg.epochs_head > 0:
        if cfg.use_feature_cache and augment is None:
            log("head: fitting on cached backbone features (frozen backbone, no augmentation)")
            features = {
                split: (_features(extractor, images, cfg.batch_size, feature_cache_dir, split, log, distribution),
                        labels)
                for split, (images, labels) in (("train", train), ("val", val))
            }
            _compile(head, cfg.lr_head, distribution)
            _fit(head, "head", features["train"], features["val"], None, cfg.epochs_head, cfg, checkpoint, history,
                 names, distribution)
        else:
            log("head: fitting on images (frozen backbone)")
            _compile(classifier, cfg.lr_head, distribution)
            _fit(classifier, "head", train, val, augment, cfg.epochs_head, cfg, checkpoint, history, names,
                 distribution)

    if _finetunes(cfg):
        log(f"finetune: {unfreeze_top(extractor, cfg.unfreeze)}")
        _compile(classifier, cfg.lr_finetune, distribution)
        _fit(classifier, "finetune", train, val, augment, cfg.epochs_finetune, cfg, checkpoint, history, names,
             distribution)

    classifier.set_weights(checkpoint.best_weights)  # the best epoch of either phase
    best = _best_epoch(history)
    log(f"best: epoch {best['epoch']} ({best['phase']}), val_accuracy {best['val_accuracy']:.4f}")
    # A fresh, uncompiled model over the same layers, so saving it stores no optimizer state.
    final = keras.Model(classifier.inputs, classifier.outputs, name=classifier.name)
    return TrainResult(model=final, history=history, best=best)


def _finetunes(cfg: TrainConfig) -> bool:
    return cfg.epochs_finetune > 0 and cfg.unfreeze not in (0, None, "")


def _check_inputs(train_images, train_labels, val_images, val_labels, cfg, checkpoint_path, head) -> None:
    if train_images is None or len(train_images) == 0:
        raise UserError("train: the training split is empty; add images or change the split ratios")
    if val_images is None or len(val_images) == 0 or val_labels is None or len(val_labels) == 0:
        raise UserError("train: the validation split is empty; give the split a val fraction (e.g. val: 0.15)")
    if len(train_images) != len(train_labels) or len(val_images) != len(val_labels):
        raise ValueError("images and labels differ in length")
    num_classes = head.output_shape[-1]
    for name, labels in (("train", train_labels), ("val", val_labels)):
        if np.min(labels) < 0 or np.max(labels) >= num_classes:
            raise ValueError(f"{name} labels outside 0..{num_classes - 1}")
    if not (checkpoint_path.endswith(".keras") or checkpoint_path.endswith(".weights.h5")):
        raise UserError(f"checkpoint path {checkpoint_path!r} must end in .keras or .weights.h5")
    if cfg.batch_size < 1:
        raise UserError(f"train.batch_size must be at least 1, got {cfg.batch_size}")
    if cfg.epochs_head <= 0 and not _finetunes(cfg):
        raise UserError("train: nothing to train; set epochs_head > 0, or epochs_finetune > 0 with unfreeze")


def _features(extractor, images, batch_size, cache_dir, split, log, distribution=None) -> np.ndarray:
    """The frozen backbone's features of every image: from the disk cache, or computed once."""
    path = os.path.join(cache_dir, f"{split}.npy") if cache_dir else None
    width = extractor.output_shape[-1]
    if path and os.path.exists(path):
        try:
            cached = np.load(path)
        except (OSError, ValueError, EOFError):  # a damaged cache file is recomputed and overwritten
            cached = None
        if cached is not None and cached.shape == (len(images), width) and cached.dtype == np.float32:
            log(f"head: {split} features from cache ({len(images)} x {width})")
            return cached
    features = predict_all(extractor, make_dataset(images, None, batch_size), distribution).astype(np.float32)
    if path:
        save_array_atomic(path, features)
    return features


def unfreeze_top(extractor, unfreeze: int | str) -> str:
    """Make the top of extractor.get_layer("backbone") trainable, BatchNorm excepted.

    `unfreeze` counts layers from the top (as keras-io's `base_model.layers[fine_tune_at:]`)
    or names the first layer to unfreeze. Returns a one-line summary for the log.
    """
    layers, first = _backbone_cut(extractor, unfreeze)
    frozen = {id(sub) for layer in layers[:first] for sub in (layer, *_all_layers(layer))}
    # Every layer is set explicitly, parents first: with the TensorFlow backend, assigning a
    # container the value it already has is a no-op that does not reach its sublayers.
    for layer in (extractor, *_all_layers(extractor)):
        layer.trainable = id(layer) not in frozen and not isinstance(layer, keras.layers.BatchNormalization)
    trainable = sum(int(np.prod(w.shape)) for w in extractor.trainable_weights)
    start = repr(layers[first].name) if first < len(layers) else "-"
    return (f"unfroze {len(layers) - first} of {len(layers)} backbone layers from {start} "
            f"(BatchNorm kept frozen), {trainable:,} trainable backbone parameters")


def _backbone_cut(extractor, unfreeze: int | str) -> tuple[list, int]:
    """The backbone's layers and the index of the first one to unfreeze; UserError if unknown."""
    try:
        layers = extractor.get_layer("backbone").layers
    except ValueError:
        raise UserError("the extractor has no layer named 'backbone' to unfreeze; "
                        "build it with models.backbones.build_feature_extractor") from None
    if isinstance(unfreeze, bool) or not isinstance(unfreeze, (int, str)):
        raise UserError(f"train.unfreeze must be a layer count or a layer name, got {unfreeze!r}")
    if isinstance(unfreeze, int):
        if unfreeze < 0:
            raise UserError(f"train.unfreeze must be 0 or more layers, got {unfreeze}")
        return layers, max(0, len(layers) - unfreeze)
    names = [layer.name for layer in layers]
    if unfreeze in names:
        return layers, names.index(unfreeze)
    hint = difflib.get_close_matches(unfreeze, names, n=3, cutoff=0.6) or names[-5:]
    raise UserError(f"train.unfreeze: no layer {unfreeze!r} in the backbone ({len(names)} layers); "
                    f"try one of {', '.join(hint)}, or a count such as 20")


def _all_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_layers(sub)


def _compile(model, learning_rate: float, distribution: Distribution | None = None) -> None:
    with scope(distribution):  # the optimizer's and metrics' variables are mirrored too
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LOSS, metrics=["accuracy"])


def _fit(model, phase: str, train: tuple, val: tuple, augment, epochs: int, cfg: TrainConfig,
         checkpoint: "_BestCheckpoint", history: list[dict[str, Any]], class_names: list[str],
         distribution: Distribution | None = None) -> None:
    """`epochs` more epochs of `model.fit`, numbered on from the epochs already in `history`. Under a strategy a
    step takes train.batch_size rows per replica: the global batch is that times the replicas."""
    validation = _ValidationPass(*val, cfg.batch_size, class_names, distribution)
    # First: Keras hands every callback the same logs dict in list order, so the checkpoint, early
    # stopping and the learning-rate schedule after it read the val_* values it writes.
    callbacks = [validation, checkpoint, _EpochRecorder(phase, history, validation)]
    if cfg.early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            MONITOR, mode="max", patience=cfg.early_stopping_patience, restore_best_weights=True))
    if cfg.reduce_lr_patience is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            "val_loss", factor=REDUCE_LR_FACTOR, patience=cfg.reduce_lr_patience, min_lr=MIN_LR))
    if cfg.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=cfg.tensorboard_dir))
    first = len(history)
    global_batch = cfg.batch_size * (distribution.replicas if distribution is not None else 1)
    dataset = shard_by_data(make_dataset(*train, global_batch, shuffle=True, seed=cfg.seed, augment=augment))
    prepare_for_fit(model, distribution, dataset.element_spec)
    with scope(distribution):
        model.fit(dataset, epochs=first + epochs, initial_epoch=first, callbacks=callbacks,
                  shuffle=False,  # the dataset shuffles, by seed
                  verbose=cfg.verbose)


def _best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first epoch with the highest val_accuracy: the one the checkpoint kept."""
    def score(row):
        return row["val_accuracy"] if np.isfinite(row["val_accuracy"]) else -np.inf

    best = max(history, key=score)
    return {key: best[key] for key in ("val_accuracy", "val_loss", "epoch", "phase")}


VAL_KEYS = ("val_loss", "val_accuracy", "val_micro_ap", "val_macro_ap")


class _ValidationPass(keras.callbacks.Callback):
    """Predicts the validation set once at the end of each epoch and writes what it measures into `logs`.

    val_loss and val_accuracy mean what Keras' own validation pass means (the compiled loss, plus any
    weight regularisation, averaged over the images; the arg-max against the label), so everything that
    monitors them behaves as before. val_micro_ap and val_macro_ap follow scikit-learn's
    average_precision_score; the per-class AP, a dict too wide for the progress line, is kept in
    `class_ap` for the recorder. An AP that is undefined (no image of the class, or predictions that are
    not finite) is NaN in `logs` and None in `class_ap`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, class_names: list[str],
                 distribution: Distribution | None = None):
        super().__init__()
        self.dataset = make_dataset(images, None, batch_size)
        self.distribution = distribution
        self.labels = np.asarray(labels)
        self.class_names = class_names
        self.class_ap: dict[str, float | None] = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        probabilities = predict_all(self.model, self.dataset, self.distribution)
        losses = keras.ops.convert_to_numpy(keras.losses.get(LOSS)(self.labels, probabilities))
        regularisation = sum(float(keras.ops.convert_to_numpy(loss)) for loss in self.model.losses)
        logs["val_loss"] = float(np.mean(losses, dtype=np.float64)) + regularisation
        logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == self.labels))
        micro, macro, self.class_ap = validation_ap(self.labels, probabilities, self.class_names)
        logs["val_micro_ap"] = np.nan if micro is None else micro
        logs["val_macro_ap"] = np.nan if macro is None else macro


def validation_ap(labels: np.ndarray, probabilities: np.ndarray,
                  class_names: list[str]) -> tuple[float | None, float | None, dict[str, float | None]]:
    """Micro, macro and per-class AP of one epoch's validation prediction: what `_ValidationPass` and a logged
    run's Keras callback (keras_lineage/logged_run.py) record. All undefined (None) for a diverged epoch, whose
    predictions are not finite: the loss says why."""
    if not np.isfinite(probabilities).all():
        return None, None, dict.fromkeys(class_names)
    ap = average_precisions(labels, probabilities)
    return ap.micro, ap.macro, dict(zip(class_names, ap.per_class))


class _EpochRecorder(keras.callbacks.Callback):
    """Appends one plain dict per epoch, with the learning rate the epoch ran at and the per-class AP."""

    def __init__(self, phase: str, history: list[dict[str, Any]], validation: _ValidationPass):
        super().__init__()
        self.phase, self.history, self.validation = phase, history, validation

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = float(self.model.optimizer.learning_rate.numpy())

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"phase": self.phase, "epoch": epoch + 1}
        row.update({key: float(logs.get(key, np.nan)) for key in ("loss", "accuracy", *VAL_KEYS)})
        for key in ("val_micro_ap", "val_macro_ap"):  # JSON has no NaN: an undefined AP is null
            row[key] = None if np.isnan(row[key]) else row[key]
        row["val_class_ap"] = dict(self.validation.class_ap)
        row["lr"] = self._lr
        self.history.append(row)


class _BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint of the whole classifier, even while the fit is of the head alone.

    One instance serves both phases, so phase 2 only overwrites phase 1's best when it beats
    it. It also keeps the best weights in memory, to restore them without reading the file
    back (whose optimizer state belongs to whichever phase saved it).
    """

    def __init__(self, classifier, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        super().__init__(path, monitor=MONITOR, mode="max", save_best_only=True,
                         save_weights_only=path.endswith(".weights.h5"))
        self.classifier = classifier
        self.best_weights = classifier.get_weights()

    def set_model(self, model):
        super().set_model(self.classifier)

    def on_epoch_end(self, epoch, logs=None):
        best_before = self.best
        super().on_epoch_end(epoch, logs)
        if self.best != best_before:
            self.best_weights = self.classifier.get_weights()
