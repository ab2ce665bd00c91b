"""infer: `model:vN` + a split (its test part by default) or a plain folder → `predictions:vN`.

One row per image: id (object digest), path, split, truth, guess, confidence and score_<class>
for every class, in the order of the model's own class-index map. The table is Parquet:
typed columns (float32 scores stay float32), column order kept, zstd-compressed to a fraction
of a CSV's size, and read by pandas in milliseconds, which `table` and `report` rely on.
A folder's images are stored as objects like ingested ones, so the report can show them.

`min_score` (one number, or `{class: number}` for some classes) makes a guess whose top score is below
its class's minimum the literal "unknown" (tables/predictions.py), so that an image the model is unsure
of is not forced into a class; `evaluate` reports per class the minimum that reaches a chosen precision
or recall (report/metrics.py: thresholds). Its classes are checked before anything is predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from lineage.contract import REF, Artifact, Output, StageContext
from lineage.display import printable_name
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import SplitName
from tables.predictions import UNKNOWN

Score = Annotated[float, Range(0, 1)]

NAME = "infer"
OUTPUT = "predictions"
CODE = ("stages/infer.py", "tables/predictions.py", "images/check.py", "models/")


@dataclass
class Params:
    model: str = field(default="model:latest", metadata=REF)
    split: str = field(default="split:latest", metadata=REF)
    on: SplitName = "test"  # which part of the split
    folder: str | None = None  # a folder of images instead of a split (truth left empty)
    batch_size: Annotated[int, Range(1, 65536)] = 64
    min_score: Score | dict[str, Score] | None = None  # below it (per class if a mapping) the guess is unknown


def check_classes(params: Params, classes: list[str], where: str) -> None:
    """min_score may name only the model's classes, and needs "unknown" free to mean an abstention."""
    if params.min_score is None:
        return
    if UNKNOWN in classes:
        raise UserError(f"infer.min_score writes the guess {UNKNOWN!r} below the minimum, but {where} has a class "
                        f"named {UNKNOWN!r}, which it could not be told from: rename that class's folder "
                        "(and ingest again), or remove infer.min_score")
    named = params.min_score if isinstance(params.min_score, dict) else {}
    strangers = [name for name in named if name not in classes]
    if strangers:
        raise UserError(f"infer.min_score names {', '.join(map(repr, strangers))}, which {where} does not know; "
                        f"its classes are {', '.join(classes)}")


def input_refs(params: Params) -> dict[str, str]:
    return {"model": params.model} if params.folder else {"model": params.model, "split": params.split}


def fingerprint(params: Params) -> str | None:
    """For a folder, the stat data of its files (as ingest does): an unchanged folder is a cache hit."""
    if not params.folder:
        return None
    from lineage.store import canonical_json, sha256_bytes
    return sha256_bytes(canonical_json([[str(p), p.stat().st_size, p.stat().st_mtime_ns]
                                        for p in _folder_files(Path(params.folder))]))


def run(inputs: dict[str, Artifact], params: Params, ctx: StageContext) -> list[Output]:
    from models.quiet import import_tensorflow

    check_classes(params, inputs["model"].manifest.meta["classes"], inputs["model"].ref)  # before TensorFlow
    import_tensorflow()  # first, so TensorFlow's native start-up lines are hidden (models/quiet.py)
    import keras

    import models.backbones  # noqa: F401  registers the custom layers a saved model may use
    from models.predict import predict_table
    from models.split_images import decode, load_split_images
    from tables.predictions import prediction_output

    model_artifact = inputs["model"]
    meta = model_artifact.manifest.meta
    classes = meta["classes"]
    if params.folder:
        ids, paths = _store_folder(Path(params.folder), ctx)
        images = decode(model_artifact, ids, paths, [None] * len(ids), classes, meta["input_size"], meta["resize"],
                        None, ctx)
        where, made_with = "folder", {"folder": str(Path(params.folder).resolve())}
    else:
        split = inputs["split"]
        if split.manifest.meta["classes"] != classes:
            raise UserError(f"{model_artifact.ref} was trained on classes {classes}, but {split.ref} has "
                            f"{split.manifest.meta['classes']}: infer on a split of the same raw data")
        if params.on not in split.split_names():
            raise UserError(f"{split.ref} has no {params.on} split (it has "
                            f"{', '.join(split.split_names())}): set infer.on")
        images = load_split_images(split, params.on, classes, meta["input_size"], meta["resize"], ctx)
        where, made_with = params.on, {"split": split.ref}
    if not images.ids:
        raise UserError("no readable image to predict on")

    with model_artifact.named_file("model.keras") as model_file:
        model = keras.models.load_model(model_file, safe_mode=True, compile=False)
    ctx.log(f"infer: {model_artifact.ref} on {len(images.ids):,} images ({where})")
    table = predict_table(model, images.images, images.ids, images.paths, [where] * len(images.ids), images.truths,
                          classes, batch_size=params.batch_size, progress=ctx.progress,
                          min_score=params.min_score)
    if params.min_score is not None:
        made_with["min_score"] = params.min_score
    return [prediction_output(ctx, table, classes, split=where, made_with={"model": model_artifact.ref, **made_with})]


def _folder_files(folder: Path) -> list[Path]:
    return _walk_folder(folder)[0]


def _walk_folder(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The folder's files (hidden names skipped; symlinked folders are not followed, so a loop
    cannot recurse), and what was left out with the reason: dangling or looping symlinks, and
    names that are not UTF-8, which no table or report could hold."""
    if not folder.is_dir():
        raise UserError(f"infer.folder {folder} does not exist or is not a folder")
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        shown = printable_name(str(relative))
        if shown != str(relative):
            skipped.append((shown, "name is not valid UTF-8 (shown with \\x escapes): rename it"))
        elif path.is_symlink() and not path.exists():
            skipped.append((shown, "dangling symlink or symlink loop"))
        elif path.is_file():
            files.append(path)
    return files, skipped


def _store_folder(folder: Path, ctx: StageContext) -> tuple[list[str], list[str]]:
    """Keep the folder's images (not its other files) as objects; the rows refer to them by digest."""
    from images.check import Rejected, inspect_image

    ids, paths = [], []
    files, skipped = _walk_folder(folder)
    for shown, why in skipped:
        ctx.log(f"  skipped {shown}: {why}")
    for path in files:
        try:
            data = path.read_bytes()
            inspect_image(data)
        except OSError as error:
            ctx.log(f"  skipped {path.relative_to(folder)}: unreadable ({error.strerror})")
            continue
        except Rejected as why:
            ctx.log(f"  skipped {path.relative_to(folder)}: {why}")
            continue
        ids.append(ctx.write_object(data).digest)
        paths.append(path.relative_to(folder).as_posix())
    if not ids:
        raise UserError(f"no readable image in {folder}")
    return ids, paths
