"""evaluate: `predictions:vN` becomes `eval:vN`: metrics.json, the plots and report.html.

Metrics and curves come from report/metrics.py (every threshold kept; the curves stored
exactly as curves.npz), plots from report/plots.py, the page from report/html.py (which embeds
a bounded selection of a large table's rows, so thumbnails are made for those only). This module only gathers their inputs
from the store: the prediction table, the images for thumbnails, the versions to compare
and plot across, and the lineage of what is shown. No TensorFlow.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal

from lineage.contract import REF, Artifact, Output, StageContext
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import Manifest, is_digest
from tables.predictions import labelled_mask, read_predictions

NAME = "evaluate"
OUTPUT = "eval"
CODE = ("stages/evaluate.py", "tables/", "report/")  # tables/: the schema, and the filter language the page embeds
AcrossX = Literal["version", "train_images", "epochs"]


@dataclass
class Params:
    input: str = field(default="predictions:latest", metadata=REF)
    compare_with: str | None = field(default=None, metadata=REF)  # a second version, shown side by side
    across: list = field(default_factory=list, metadata=REF)  # more versions for the AP-across-runs line
    across_x: AcrossX = "version"  # what the AP-across-runs plot puts on its x axis
    scatter: list[str] | None = None  # [class_x, class_y]; default: the most confused pair
    histogram: list[str] | None = None  # [class_a, class_b]; default: the scatter's pair
    bins: Annotated[int, Range(1, 1000)] = 30
    top_k: Annotated[int, Range(1)] = 3
    thumbnail_px: Annotated[int, Range(8, 512)] = 48
    workers: Annotated[int, Range(1, 256)] = field(default=4, metadata={"cache": False})

    def __post_init__(self):
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
    from report import plots
    from tables.compare import join_predictions
    from report.html import render_report
    from report.metrics import CURVES_FILE, compute_metrics, curves_npz

    main = inputs["predictions"]
    classes = main.manifest.meta["classes"]
    check_classes(params, classes, main.ref)
    table = read_predictions(main)
    if not labelled_mask(table).any():
        raise UserError(f"{main.ref} has no labelled rows (predictions on a plain folder): there is nothing to "
                        "score; use `pipeline.py table` to look at its guesses")
    metrics = compute_metrics(table, classes, top_k=params.top_k)
    pair = params.scatter or most_confused_pair(metrics)
    images = {name: png for name, png in plots.standard_plots(metrics).items()}
    images["score_scatter.png"] = plots.score_scatter(table, pair[0], pair[1], classes)
    hist_pair = params.histogram or pair
    images["class_distributions.png"] = plots.class_distributions(table, hist_pair[0], hist_pair[1], params.bins)
    runs = [main] + [a for key, a in sorted(inputs.items()) if key.startswith("predictions#") and key != "predictions#compare"]
    if "predictions#compare" in inputs:
        runs.append(inputs["predictions#compare"])
    images["ap_across_runs.png"] = plots.ap_across_runs(_ap_points(runs, params, main, metrics), params.across_x)

    comparison, labels = None, None
    if "predictions#compare" in inputs:
        other = inputs["predictions#compare"]
        labels = (main.ref, other.ref)
        comparison, _ = join_predictions(table, read_predictions(other), *labels)
    html = render_report(title=f"Evaluation of {main.ref}", metrics=metrics, classes=classes, plots=images,
                         table=table, thumbnails=lambda ids: thumbnails(main, ids, params, ctx),
                         lineage=lineage_of(main), comparison=comparison, comparison_labels=labels,
                         table_ref=main.ref)

    # Full-resolution curves are millions of points at 1,000,000 rows: kept exactly, as counts, apart from
    # the summary (report/metrics.py: curves_npz, read_curves).
    curves = metrics.pop("curves")
    files = {"metrics.json": ctx.write_object(json.dumps(metrics, indent=1).encode()),
             CURVES_FILE: ctx.write_object(curves_npz(curves, classes)),
             "report.html": ctx.write_object(html.encode())}
    files.update({name: ctx.write_object(png) for name, png in images.items()})
    summary = {"accuracy": metrics["accuracy"], "top_k_accuracy": metrics["top_k_accuracy"],
               "macro_f1": metrics["macro"]["f1"], "micro_ap": metrics["micro"]["average_precision"],
               "macro_ap": metrics["macro"]["average_precision"], "labelled": metrics["labelled"]}
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


def _ap_points(runs: list[Artifact], params: Params, main: Artifact, main_metrics: dict) -> list[dict]:
    from report.metrics import compute_metrics

    points = []
    for artifact in runs:
        metrics = main_metrics if artifact is main else compute_metrics(read_predictions(artifact),
                                                                        artifact.manifest.meta["classes"])
        points.append({"x": _x_value(artifact, params.across_x), "ap": metrics["micro"]["average_precision"],
                       "label": artifact.ref})
    return points


def _x_value(artifact: Artifact, across_x: str):
    if across_x == "version":
        return artifact.ref
    model = _model_meta(artifact)
    if model is None:
        raise UserError(f"cannot place {artifact.ref} by {across_x}: no model found in its lineage; "
                        "use evaluate.across_x: version")
    return model["train_images"] if across_x == "train_images" else len(model["history"])


def _model_meta(artifact: Artifact) -> dict | None:
    """The model behind a predictions version: an input of the infer run, or a sibling output of train."""
    graph = artifact.graph
    run = graph and graph.producer(artifact.version)
    for item in (run.inputs + run.outputs) if run else []:
        if item.name == "model":
            return artifact.store.read_manifest(item).meta
    return None


def lineage_of(artifact: Artifact) -> list[dict]:
    """Every ancestor of a version with the run that made it: predictions ← model ← split ← raw-data."""
    graph, rows, todo, seen = artifact.graph, [], [artifact.version], set()
    while todo and graph is not None:
        version = todo.pop(0)
        if version.digest in seen:
            continue
        seen.add(version.digest)
        run = graph.producer(version)
        parents = [graph.find(i.name, i.digest) for i in run.inputs] if run else []
        rows.append({"ref": version.ref, "digest": version.digest, "made_by": run and run.stage,
                     "inputs": [p.ref for p in parents if p], "created": version.created})
        todo += [p for p in parents if p]
    return rows


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
        try:
            with Image.open(artifact.object_path(digest)) as image:
                image.draft("RGB", (params.thumbnail_px * 2, params.thumbnail_px * 2))  # JPEG: decode small
                image = image.convert("RGB")
                image.thumbnail((params.thumbnail_px, params.thumbnail_px))
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=70)
        except (OSError, ValueError):
            return digest, None
        ctx.write_cache(cached, buffer.getvalue())
        return digest, buffer.getvalue()

    with ThreadPoolExecutor(params.workers) as pool:
        return {digest: data for digest, data in pool.map(one, dict.fromkeys(ids)) if data}

