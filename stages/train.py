"""train: `split:vN` becomes `model:vN` (and the validation predictions as `predictions:vN`).

The flow, top-down as in keras-io's fine-tuning guide: read the split's images from the
store, decode them once into a cache keyed by split digest and image size, build an ImageNet
backbone with a fresh head, fit the head with the backbone frozen, then fine-tune the top of
the backbone at a low learning rate. The model artifact carries everything inference needs:
the class-index map, input size, resize mode and preprocessing, so no class list is ever
typed twice. TensorFlow is imported inside `run` only: the other commands start fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypedDict

from lineage.contract import REF, Artifact, Output, StageContext, WorkerDone
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import Manifest
from models.distribute import Distribution, cluster_size
from models.distribute import Setting as Distribute
from models.precision import Precision

NAME = "train"
OUTPUT = "model"
CODE = ("stages/train.py", "tables/predictions.py", "tables/average_precision.py", "models/")


# The backbones models/backbones.py builds (listed here so the config is checked without
# importing TensorFlow; tests/test_config.py keeps the two lists equal), and their smallest input.
Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2",
                   "efficientnet_b0", "resnet50", "inception_v3"]
MIN_IMAGE_SIZE = {"inception_v3": 75}
SMALLEST_IMAGE_SIZE = 32
Fraction = Annotated[float, Range(0, below=1)]


class Augmentation(TypedDict, total=False):
    """Random changes to training images (models/data.py build_augmentation); 0 or absent is off."""

    flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] | bool | None
    rotation: Fraction | None
    zoom: Fraction | None
    contrast: Fraction | None


@dataclass
class Params:
    input: str = field(default="split:latest", metadata=REF)
    backbone: Backbone = "efficientnet_lite0"
    weights: str | None = "imagenet"  # imagenet, none, or a local weights file
    image_size: Annotated[int, Range(SMALLEST_IMAGE_SIZE, 2048)] | None = None  # None: the backbone's own
    resize: Literal["resize", "crop", "pad"] = "crop"  # stretch, center crop, or letterbox
    batch_size: Annotated[int, Range(1, 65536)] = 32  # per replica: the global batch is this x replicas
    # tf.distribute (models/distribute.py): auto is mirrored with more than one GPU, else none; multi_worker reads
    # TF_CONFIG. Part of the cache key: it sets the global batch, so the model differs.
    distribute: Distribute = "auto"
    epochs_head: Annotated[int, Range(0)] = 5
    epochs_finetune: Annotated[int, Range(0)] = 5
    lr_head: Annotated[float, Range(above=0, max=10)] = 1e-3
    lr_finetune: Annotated[float, Range(above=0, max=10)] = 1e-5
    # Top backbone layers to unfreeze, or the layer to unfreeze from; 0 skips phase 2.
    unfreeze: Annotated[int, Range(0)] | str = 20
    dropout: Fraction = 0.2  # before the head's Dense layer
    early_stopping_patience: Annotated[int, Range(0)] | None = 3
    reduce_lr_patience: Annotated[int, Range(0)] | None = 2
    augmentation: Augmentation = field(default_factory=lambda: {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1,
                                                                "contrast": 0.1})
    use_feature_cache: bool = True
    # 16-bit activations, float32 variables (models/precision.py); auto: float16 on a GPU, float32 on a CPU.
    mixed_precision: Precision = "auto"
    seed: int = 42
    tensorboard: bool = False
    verbose: Literal[0, 1, 2] = field(default=2, metadata={"cache": False})

    def __post_init__(self):
        smallest = MIN_IMAGE_SIZE.get(self.backbone, SMALLEST_IMAGE_SIZE)
        if self.image_size is not None and self.image_size < smallest:
            raise UserError(f"train.image_size is {self.image_size}: {self.backbone} needs at least {smallest}")
        if self.epochs_head == 0 and not self.finetunes:
            raise UserError("train: nothing to train: set train.epochs_head above 0, or train.epochs_finetune "
                            "above 0 with train.unfreeze")
        if _weights_file(self.weights) and not Path(self.weights).expanduser().is_file():
            raise UserError(f"train.weights: {self.weights} is not a file: give a weights file, "
                            "or weights: imagenet / none")

    @property
    def finetunes(self) -> bool:
        return self.epochs_finetune > 0 and self.unfreeze not in (0, "")


def input_refs(params: Params) -> dict[str, str]:
    return {"split": params.input}


def fingerprint(params: Params) -> str | None:
    """A local weights file is part of what a run depends on: its content, not just its path. So is the
    number of workers TF_CONFIG lists for multi_worker (it sets the global batch); a bad TF_CONFIG fails here,
    before anything is fetched or imported."""
    key = _weights_key(params.weights)
    weights = None if key in ("None", "none", "imagenet") else key
    workers = cluster_size(params.distribute)
    if workers is None:
        return weights
    return f"{weights or params.weights}, {workers} workers"


def run(inputs: dict[str, Artifact], params: Params, ctx: StageContext) -> list[Output]:
    from models.quiet import import_tensorflow

    import_tensorflow()  # first, so TensorFlow's native start-up lines are hidden (models/quiet.py)
    from models.distribute import choose_strategy

    distribution = choose_strategy(params.distribute, ctx.log)  # before any other op: multi_worker needs that

    from models.precision import training_precision

    # Set before any model is built (layers take the global policy when made), and undone afterwards.
    with training_precision(params.mixed_precision, ctx.log) as precision:
        return _train(inputs, params, ctx, precision, distribution)


def _train(inputs: dict[str, Artifact], params: Params, ctx: StageContext, precision: str,
           distribution: Distribution) -> list[Output]:
    from models.backbones import build_feature_extractor, build_head, get_backbone
    from models.distribute import scope
    from models.predict import predict_table
    from models.training import TrainConfig, train_two_phase
    from models.split_images import load_split_images
    from tables.predictions import prediction_output

    split = inputs["split"]
    if "val" not in split.split_names():
        raise UserError(f"{split.ref} has no val split, which training needs for checkpoints and early stopping: "
                        "split again with e.g. --set 'split.per_class={train: 0.8, val: 0.1, test: 0.1}'")
    backbone = get_backbone(params.backbone)
    size = params.image_size or backbone.default_size
    classes = split.manifest.meta["classes"]
    # The backbone first: missing weights or a misspelt layer fail in seconds, before decoding every image.
    with scope(distribution):  # the variables are made here: under a strategy, mirrored on every replica
        extractor = build_feature_extractor(params.backbone, size, params.weights)
        head = build_head(backbone.feature_dim, len(classes), params.dropout)
    train = load_split_images(split, "train", classes, size, params.resize, ctx)
    val = load_split_images(split, "val", classes, size, params.resize, ctx)
    ctx.log(f"train: {params.backbone} at {size} px on {len(train.labels):,} train / {len(val.labels):,} val "
            f"images, {len(classes)} classes")
    work = ctx.temp_dir()
    config = TrainConfig(
        epochs_head=params.epochs_head, epochs_finetune=params.epochs_finetune, batch_size=params.batch_size,
        lr_head=params.lr_head, lr_finetune=params.lr_finetune, unfreeze=params.unfreeze,
        early_stopping_patience=params.early_stopping_patience, reduce_lr_patience=params.reduce_lr_patience,
        seed=params.seed, augmentation=params.augmentation, use_feature_cache=params.use_feature_cache,
        tensorboard_dir=str(ctx.cache_dir("tensorboard", split.digest[:16])) if params.tensorboard else None,
        verbose=params.verbose)
    feature_key = f"{split.digest[:16]}-{params.backbone}-{_weights_key(params.weights)}-{size}-{params.resize}"
    feature_key += "" if precision == "float32" else f"-{precision}"  # 16-bit features differ; float32 keys as before
    result = train_two_phase(extractor, head, train.images, train.labels, val.images, val.labels, config,
                             checkpoint_path=str(work / "best.weights.h5"),
                             feature_cache_dir=str(ctx.cache_dir("features", feature_key)), log=ctx.log,
                             class_names=classes, distribution=distribution)
    if not distribution.is_chief:  # it took its part in every step; the chief holds the same weights and commits
        raise WorkerDone(f"{distribution.worker}: trained; the chief commits the model and its val predictions")

    model_path = work / "model.keras"
    result.model.save(model_path)
    model = model_output(ctx, model_path, classes, result.history, split.version.key,
                         input_size=size, resize=params.resize, backbone=params.backbone, weights=params.weights,
                         preprocessing=backbone.preprocessing, precision=precision, distribute=distribution.setting,
                         replicas=distribution.replicas, global_batch_size=params.batch_size * distribution.replicas,
                         params=asdict(params), best=result.best, train_images=len(train.labels),
                         skipped_images=train.failures + val.failures)

    table = predict_table(result.model, val.images, val.ids, val.paths, ["val"] * len(val.ids), val.truths,
                          classes, batch_size=params.batch_size, progress=ctx.progress)
    return [model, prediction_output(ctx, table, classes, split="val", made_with={"split": split.ref})]


def model_output(ctx: StageContext, model_path: Path, classes: list[str], history: list[dict], source: str | None,
                 **meta) -> Output:
    """A model version as infer reads it: model.keras, class_index.json and history.json, and a meta that holds
    the classes in output order, their index, the history and `meta` (input_size, resize, preprocessing, …).
    train writes it, and so does a model logged from the user's own code (keras_lineage/logged_run.py)."""
    class_index = {name: i for i, name in enumerate(classes)}
    files = {"model.keras": ctx.copy_object(model_path),
             "class_index.json": ctx.write_object(json.dumps(class_index, indent=1).encode()),
             "history.json": ctx.write_object(json.dumps(history, indent=1).encode())}
    return Output(Manifest(OUTPUT, source=source, files=files,
                           meta={"classes": classes, "class_index": class_index, "history": history, **meta}))


def _weights_file(weights: str | None) -> bool:
    """Whether `weights` names a local file (rather than imagenet or none)."""
    return weights is not None and weights.strip().lower() not in ("", "none", "imagenet")


def _weights_key(weights: str | None) -> str:
    """Features depend on which weights made them: a local file is keyed by its content."""
    if not _weights_file(weights):
        return str(weights)
    from lineage.store import sha256_file
    path = Path(weights).expanduser()
    return sha256_file(path)[:16] if path.is_file() else "missing"
