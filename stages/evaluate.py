"""evaluate: `predictions:vN` becomes `eval:vN`: metrics.json, the plots and report.html.

Metrics and curves come from report/metrics.py (every threshold kept; the curves stored
exactly as curves.npz), charts from report/charts.py (one Vega-Lite spec each: live in the page, PNG in
the version), the page from report/html.py (which embeds
a bounded selection of a large table's rows, so thumbnails are made for those only). This module only gathers their inputs
from the store: the prediction table, the images for thumbnails, the versions to compare
and plot across, and the lineage of what is shown. No TensorFlow.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypedDict

from lineage.contract import REF, Artifact, Output, StageContext
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import Manifest, is_digest
from tables.predictions import labelled_mask, read_predictions

NAME = "evaluate"
OUTPUT = "eval"
# tables/: the schema, and the filter language the page embeds; lineage/draw.*: the lineage picture it embeds.
CODE = ("stages/evaluate.py", "tables/", "report/", "lineage/draw.py", "lineage/draw.js")
AcrossX = Literal["version", "train_images", "epochs"]
Rate = Annotated[float, Range(above=0, max=1)]


class ThresholdTarget(TypedDict, total=False):
    """What each class's operating threshold must reach (report/metrics.py: thresholds); name one of them."""

    precision: Rate
    recall: Rate


@dataclass
class Params:
    input: str = field(default="predictions:latest", metadata=REF)
    compare_with: str | None = field(default=None, metadata=REF)  # a second version, shown side by side
    across: list = field(default_factory=list, metadata=REF)  # more versions for the AP-across-runs plots
    across_x: AcrossX = "version"  # the x axis of the per-version summary (ap_per_version.png)
    scatter: list[str] | None = None  # [class_x, class_y]; default: the most confused pair
    histogram: list[str] | None = None  # [class_a, class_b]; default: the scatter's pair
    bins: Annotated[int, Range(1, 1000)] = 30
    top_k: Annotated[int, Range(1)] = 3
    thumbnail_px: Annotated[int, Range(8, 512)] = 48
    threshold_for: ThresholdTarget = field(default_factory=lambda: {"precision": 0.9})  # infer.min_score per class
    workers: Annotated[int, Range(1, 256)] = field(default=4, metadata={"cache": False})

    def __post_init__(self):
        if not isinstance(self.threshold_for, dict) or len(self.threshold_for) != 1:
            raise UserError(f"evaluate.threshold_for is {self.threshold_for!r}: name one target, "
                            "{precision: 0.9} or {recall: 0.9}")
        for key in ("scatter", "histogram"):
            pair = getattr(self, key)
            if pair is not None and (len(pair) != 2 or pair[0] == pair[1]):
                raise UserError(f"evaluate.{key} is {pair}: name two different classes, e.g. [Amphibia, Reptilia]")


def check_classes(params: Params, classes: list[str], where: str) -> None:
    """The classes the scatter and histogram name must be the data's: checked as soon as the classes are
    known (after ingest, in `pipeline.py run`), not after training."""
    for key in ("scatter", "histogram"):
        unknown = [name for name in getattr(params, key) or [] if name not in classes]
        if unknown:
            raise UserError(f"evaluate.{key} names {', '.join(map(repr, unknown))}, but {where} has classes "
                            f"{', '.join(classes)}: set evaluate.{key} to two of them, or remove it to plot the "
                            "most confused pair")


def input_refs(params: Params) -> dict[str, str]:
    refs = {"predictions": params.input}
    if params.compare_with:
        refs["predictions#compare"] = params.compare_with
    refs.update({f"predictions#{i}": ref for i, ref in enumerate(params.across)})
    return refs


def fingerprint(params: Params) -> None:
    """Reads nothing from outside the store."""
    return None


def run(inputs: dict[str, Artifact], params: Params, ctx: StageContext) -> list[Output]:
    from report import charts
    from tables.compare import join_predictions
    from report.html import render_report
    from report.metrics import CURVES_FILE, compute_metrics, curves_npz

    main = inputs["predictions"]
    classes = main.manifest.meta["classes"]
    check_classes(params, classes, main.ref)
    runs = [main] + [artifact for key, artifact in sorted(inputs.items())
                     if key.startswith("predictions#") and key != "predictions#compare"]
    if "predictions#compare" in inputs:
        runs.append(inputs["predictions#compare"])
    runs = list({artifact.digest: artifact for artifact in runs}.values())  # each version once (compare may repeat)
    # The other versions' AP before the main table is read, each table gone before the next: at 1,000,000 rows
    # compute_metrics peaks about 1 GB above its table, which must not stack on the main table and its metrics.
    other_aps = {artifact.digest: _micro_ap(artifact) for artifact in runs if artifact is not main}
    table = read_predictions(main)
    if not labelled_mask(table).any():
        raise UserError(f"{main.ref} has no labelled rows (predictions on a plain folder): there is nothing to "
                        "score; use `pipeline.py table` to look at its guesses")
    metrics = compute_metrics(table, classes, top_k=params.top_k, threshold_for=params.threshold_for)
    pair = params.scatter or most_confused_pair(metrics)
    # One Vega-Lite spec per chart (report/charts.py): drawn live in report.html, rendered to the PNG kept here.
    specs = charts.standard_charts(metrics)
    specs["score_scatter.png"] = charts.score_scatter(table, pair[0], pair[1], classes)
    hist_pair = params.histogram or pair
    specs["class_distributions.png"] = charts.class_distributions(table, hist_pair[0], hist_pair[1], params.bins)
    specs["ap_across_runs.png"] = charts.ap_by_epoch(*_ap_histories(runs))
    other_aps[main.digest] = metrics["micro"]["average_precision"]
    specs["ap_per_version.png"] = charts.ap_across_runs(_ap_points(runs, params, other_aps), params.across_x)
    # Full-resolution curves are millions of points at 1,000,000 rows: kept exactly, as counts, apart from
    # the summary (report/metrics.py: curves_npz, read_curves). Stored now and dropped but for the operating
    # curves the page's threshold panel reads, so they are not held beside the comparison's join.
    # Compressing them (about 6 s at 1,000,000 rows) runs on a thread beside the charts and the page, as zlib lets
    # go of the GIL; with a comparison it ends before the join, which must not stack on the curves.
    background = ThreadPoolExecutor(1)
    curves_bytes = background.submit(curves_npz, metrics["curves"], classes)
    background.shutdown(wait=False)
    metrics["curves"] = {"operating": metrics["curves"]["operating"]}
    comparison, labels = None, None
    if "predictions#compare" in inputs:
        curves_bytes.result()
        other = inputs["predictions#compare"]
        labels = (main.ref, other.ref)
        comparison, _ = join_predictions(table, read_predictions(other), *labels)
        # W&B's split panel: the true-class score under A and under B (drawn under the page's comparison table).
        specs["score_distributions_across_models.png"] = charts.score_distributions_across_models(
            comparison, labels, params.bins)
    images = charts.pngs_in_background(specs)  # drawn in a child process while the page is built
    html = render_report(title=f"Evaluation of {main.ref}", metrics=metrics, classes=classes, plots={}, charts=specs,
                         table=table, thumbnails=lambda ids: thumbnails(main, ids, params, ctx),
                         lineage=lineage_of(main), comparison=comparison, comparison_labels=labels,
                         table_ref=main.ref)

    del metrics["curves"]
    files = {"metrics.json": ctx.write_object(json.dumps(metrics, indent=1).encode()),
             CURVES_FILE: ctx.write_object(curves_bytes.result()),
             "report.html": ctx.write_object(html.encode())}
    files.update({name: ctx.write_object(png) for name, png in images().items()})
    summary = {"accuracy": metrics["accuracy"], "top_k_accuracy": metrics["top_k_accuracy"],
               "macro_f1": metrics["macro"]["f1"], "micro_ap": metrics["micro"]["average_precision"],
               "macro_ap": metrics["macro"]["average_precision"], "labelled": metrics["labelled"],
               **({"unknown": metrics["unknown"]["count"]} if metrics["unknown"]["count"] else {})}
    ctx.log(f"evaluate: {main.ref}: accuracy {metrics['accuracy']:.4f}, top-{params.top_k} "
            f"{metrics['top_k_accuracy']:.4f}, macro F1 {metrics['macro']['f1']:.4f}, "
            f"micro AP {metrics['micro']['average_precision']:.4f}")
    return [Output(Manifest(OUTPUT, source=main.version.key, files=files,
                            meta={"metrics": summary, "predictions": main.ref, "classes": classes,
                                  "compare_with": labels[1] if labels else None}))]


def most_confused_pair(metrics: dict) -> list[str]:
    """The two classes most often mistaken for each other: the pair worth a scatter plot."""
    classes = metrics["classes"]
    counts = metrics["confusion"]["counts"]
    best, pair = -1, classes[:2]
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            if counts[i][j] + counts[j][i] > best:
                best, pair = counts[i][j] + counts[j][i], [classes[i], classes[j]]
    return pair if len(pair) == 2 else classes[:1] * 2


def _micro_ap(artifact: Artifact) -> float | None:
    """One version's micro AP, for the AP-per-version chart; its table and metrics are freed on return."""
    from report.metrics import compute_metrics

    return compute_metrics(read_predictions(artifact), artifact.manifest.meta["classes"])["micro"]["average_precision"]


def _ap_points(runs: list[Artifact], params: Params, aps: dict[str, float | None]) -> list[dict]:
    """One point per version: where across_x places it and its micro AP (`aps` by version digest)."""
    return [{"x": _x_value(artifact, params.across_x), "ap": aps[artifact.digest], "label": artifact.ref}
            for artifact in runs]


def _x_value(artifact: Artifact, across_x: str):
    if across_x == "version":
        return artifact.ref
    model = _model_meta(artifact)
    if model is None:
        raise UserError(f"cannot place {artifact.ref} by {across_x}: no model found in its lineage; "
                        "use evaluate.across_x: version")
    value = model.get("train_images") if across_x == "train_images" else len(model.get("history") or [])
    if value is None:  # a model logged from the user's own code without train_images=
        raise UserError(f"cannot place {artifact.ref} by {across_x}: its model does not record how many images "
                        "it trained on (log_model(..., train_images=N) does); use evaluate.across_x: version")
    return value


def _model_meta(artifact: Artifact) -> dict | None:
    """The model behind a predictions version: an input of the infer run, or a sibling output of train."""
    found = _model_of(artifact)
    return found[1] if found else None


def _model_of(artifact: Artifact) -> tuple[str, dict] | None:
    """The model behind a predictions version, as (its ref, its manifest's meta); None when the lineage has none."""
    graph = artifact.graph
    run = graph and graph.producer(artifact.version)
    for item in (run.inputs + run.outputs) if run else []:
        if item.name == "model":
            version = graph.find(item.name, item.digest)
            return (version.ref if version else item.short), artifact.store.read_manifest(item).meta
    return None


def _ap_histories(runs: list[Artifact]) -> tuple[list[dict], list[dict]]:
    """W&B's view of runs side by side: the validation AP of each epoch, one line per model version behind
    the predictions shown, labelled by what differs between those models. Also the versions that have no
    such line, each with the reason, for the plot to list instead of failing."""
    models: dict[str, dict] = {}
    without = []
    for artifact in runs:
        try:
            found = _model_of(artifact)
        except UserError:  # the model's manifest is missing or damaged: `verify` names it; the report goes on
            without.append({"ref": artifact.ref, "reason": "its model's manifest cannot be read"})
            continue
        if found is None:
            without.append({"ref": artifact.ref, "reason": "no model in its lineage"})
            continue
        ref, meta = found
        models.setdefault(ref, {"meta": meta, "predictions": []})["predictions"].append(artifact.ref)
    drawn = {}
    for ref, model in models.items():
        series = _ap_series(model["meta"].get("history"))
        if series is None:
            without.append({"ref": ref, "reason": "trained before AP was recorded"})
        else:
            drawn[ref] = {**model, **series}
    labels = _model_labels({ref: model["meta"] for ref, model in drawn.items()})
    return [{"label": labels[ref], "model": ref, "predictions": model["predictions"], "epochs": model["epochs"],
             "ap": model["ap"], "finetune_from": model["finetune_from"]} for ref, model in drawn.items()], without


def _ap_series(history) -> dict | None:
    """Epochs (counted on across both phases), micro AP (None: undefined that epoch) and the first fine-tune
    epoch of a model's history; None when it has no AP (trained before it was recorded) or is malformed."""
    if not isinstance(history, list) or not history:
        return None
    epochs, aps, finetune_from = [], [], None
    for row in history:
        if not isinstance(row, dict) or "val_micro_ap" not in row or not _is_number(row.get("epoch")):
            return None
        ap = row["val_micro_ap"]
        if ap is not None and not _is_number(ap):
            return None
        if finetune_from is None and row.get("phase") == "finetune":
            finetune_from = row["epoch"]
        epochs.append(row["epoch"])
        aps.append(ap if ap is None or ap == ap else None)  # NaN: undefined, as None
    return {"epochs": epochs, "ap": aps, "finetune_from": finetune_from}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Train params that name inputs or change only what is printed: never what tells two models apart.
_NOT_A_DIFFERENCE = {"input", "verbose", "tensorboard", "epochs_head", "epochs_finetune", "backbone"}


def _model_labels(metas: dict[str, dict]) -> dict[str, str]:
    """A legend label per model ref: the traits that differ between the models (train images per class,
    epochs, backbone, then any other train param), or the ref itself where nothing differs."""
    traits = {ref: _model_traits(meta) for ref, meta in metas.items()}
    keys = list(dict.fromkeys(key for described in traits.values() for key in described))
    differing = [key for key in keys if len({described.get(key) for described in traits.values()}) > 1]
    labels = {ref: ", ".join(described[key] for key in differing if key in described) or ref
              for ref, described in traits.items()}
    repeated = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {ref: f"{label} ({ref})" if label in repeated and label != ref else label for ref, label in labels.items()}


def _model_traits(meta: dict) -> dict[str, str]:
    """What describes a model in a legend, each trait as the text it would show; a trait the (untrusted)
    manifest lacks or holds in the wrong type is left out."""
    traits = {}
    classes, images = meta.get("classes"), meta.get("train_images")
    if isinstance(classes, list) and classes and _is_number(images):
        per_class = images / len(classes)
        traits["train_images"] = f"{per_class:.0f} train images/class" if per_class == int(per_class) \
            else f"{per_class:.1f} train images/class"
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    head, finetune = params.get("epochs_head"), params.get("epochs_finetune")
    if _is_number(head) and _is_number(finetune):
        finetune = finetune if params.get("unfreeze") not in (0, "", None) else 0
        traits["epochs"] = f"{head}+{finetune} epochs"
    if isinstance(meta.get("backbone"), str):
        traits["backbone"] = meta["backbone"]
    for key in sorted(set(params) - _NOT_A_DIFFERENCE):
        traits[key] = f"{key} {json.dumps(params[key], sort_keys=True)}"
    return traits


def lineage_of(artifact: Artifact) -> list[dict]:
    """Every ancestor of a version with the run that made it (predictions ← model ← split ← raw-data), each
    with what the report's lineage picture says of it: digest, run, params, counts (lineage/draw.py)."""
    from lineage import draw

    if artifact.graph is None:
        return []
    return draw.describe(artifact.store, artifact.graph, draw.ancestors(artifact.graph, artifact.version))


def thumbnails(artifact: Artifact, ids: list[str], params: Params, ctx: StageContext) -> dict[str, bytes]:
    """Small JPEGs of each image, cached by digest and size (decoding 10,000 photos takes a while)."""
    from PIL import Image

    folder = ctx.cache_dir("thumbnails", str(params.thumbnail_px))

    def one(digest: str) -> tuple[str, bytes | None]:
        if not is_digest(digest):  # a table row whose id is no digest has no image (and no path is built)
            return digest, None
        cached = folder / digest
        try:
            data = cached.read_bytes()
            if data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9"):  # a whole JPEG, else made again
                return digest, data
        except OSError:
            pass
        try:  # loose or packed (a packed image has no path of its own)
            with artifact.open_object(digest) as source, Image.open(source) as image:
                image.draft("RGB", (params.thumbnail_px * 2, params.thumbnail_px * 2))  # JPEG: decode small
                image = image.convert("RGB")
                image.thumbnail((params.thumbnail_px, params.thumbnail_px))
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=70)
        except (OSError, ValueError, UserError):  # missing or damaged (`verify` names it): no thumbnail
            return digest, None
        ctx.write_cache(cached, buffer.getvalue())
        return digest, buffer.getvalue()

    ids = list(dict.fromkeys(ids))
    if _mean_size(artifact, ids[:THREADS_SAMPLE]) < THREADED_MEAN_BYTES:
        return {digest: data for digest, data in map(one, ids) if data}
    with ThreadPoolExecutor(params.workers) as pool:
        return {digest: data for digest, data in pool.map(one, ids) if data}


# Thumbnails of photos are made on evaluate.workers threads (decoding a JPEG lets go of the GIL). Small images
# are made on one: there the work is Python's, and threads only contended (10,000 packed 300-byte PNGs: 0.22 ms
# each on one thread, 0.32 ms on two or four).
THREADED_MEAN_BYTES = 32 << 10
THREADS_SAMPLE = 64  # images whose mean size decides


def _mean_size(artifact: Artifact, ids: list[str]) -> float:
    sizes = []
    for digest in filter(is_digest, ids):
        try:
            sizes.append(artifact.store.object_size(digest))
        except OSError:  # missing (or no image): it has no thumbnail, and no say in how the rest are made
            pass
    return sum(sizes) / len(sizes) if sizes else 0.0

