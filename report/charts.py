"""The report's charts as Vega-Lite specs: one spec drawn live in report.html and rendered to PNG for the eval version.

Each function takes what its matplotlib twin in report/plots.py takes and returns a plain JSON-ready dict.
report.html embeds the spec with the Vega JavaScript inlined (`javascript_bundle`), so the chart answers the
pointer with no network: curves show threshold, precision and recall on hover, legends toggle classes (shift-click
adds one), the histogram has a bin-width slider, the scatter shows an image's scores, and a confusion cell filters
the prediction table (report/static/charts.js). `png` renders the very same spec to the PNG kept in the eval
artifact, so the file and the page never disagree.

Specs carry only what drawing needs: curves thinned to their visible turns (plots.drawing_mask, each kept point
with its threshold), the histogram as counts on a fine grid that the slider re-bins (so its size does not grow with
the table), and the scatter capped at SCATTER_POINTS (a seeded sample past it, said in its subtitle).

vl_convert is imported only when a bundle or PNG is made: it starts a JavaScript runtime.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from lineage.errors import UserError
from report.metrics import round_significant
from report.plots import drawing_mask
from tables.predictions import class_names, labelled_mask, score_column

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # names the version; vega-embed never fetches it
CHART_RESOLUTION = 200  # thinning grid per unit axis: a turn every 2 px of a 400 px chart, at most
CURVE_POINTS = 6_000  # per curve chart: Vega's CSP-safe interpreter draws ~10,000 points in about 0.5 s
LEAST_RESOLUTION = 50  # ... so many classes share the budget, but no curve gets coarser than this
DIGITS = 4  # significant digits of the numbers a chart embeds (hover shows them; drawing needs fewer)
SCATTER_POINTS = 20_000  # points the scatter embeds at most; past it, a seeded sample
FINE_BINS = 1000  # the histogram's grid: the slider's bin width is a whole number of these
WIDEST_BIN_SHARE = 5  # the slider's widest bin is 1/5 of the score range
NARROWEST_BIN = 5  # ... and its narrowest five fine bins (200 bins over the range)
UNLABELLED = "(unlabelled)"
BUNDLE_MARK = "vegaEmbed"  # a cached chart bundle without it is not the bundle: made again
UNLABELLED_COLOUR = "#9e9e9e"
PAIR_COLOURS = ("#d62728", "#1f77b4")  # two series side by side: A and B, or a histogram's two classes
FADED = 0.12  # opacity of a class the legend has toggled off
PNG_SCALE = 1.5  # the PNGs are about the size matplotlib's were (640 px wide at 100 dpi)
SEED = 0
ID_SHOWN = 12  # report.js's DIGEST_SHOWN


def pr_curves(metrics: dict, classes: list[str]) -> dict:
    """One precision-recall curve per class, AP in the legend; hover shows threshold, precision and recall."""
    _check_classes(classes, metrics["classes"])
    rows = []
    for name in classes:
        curve = metrics["curves"]["per_class"][name].pr()
        if curve is None:
            continue
        ap = metrics["per_class"][name]["average_precision"]
        # pr()'s last point (recall 0, precision 1) is the curve's end, with no threshold of its own.
        thresholds = np.r_[curve["thresholds"].astype(np.float64), np.nan]
        rows += _curve_rows(f"{name} (AP {ap:.3f})", name, curve["recall"], curve["precision"], thresholds,
                            ("recall", "precision"), _resolution(len(classes)))
    return _curve_chart("Precision-recall, one class vs rest", rows, ("recall", "precision"), diagonal=False)


def roc_curves(metrics: dict, classes: list[str]) -> dict:
    """One ROC curve per class, AUC in the legend, with the chance diagonal; hover shows the threshold."""
    _check_classes(classes, metrics["classes"])
    rows = []
    for name in classes:
        curve = metrics["curves"]["per_class"][name].roc()
        if curve is None:
            continue
        auc = metrics["per_class"][name]["roc_auc"]
        rows += _curve_rows(f"{name} (AUC {auc:.3f})", name, curve["fpr"], curve["tpr"],
                            curve["thresholds"].astype(np.float64), ("false positive rate", "true positive rate"),
                            _resolution(len(classes)))
    return _curve_chart("ROC, one class vs rest", rows, ("false positive rate", "true positive rate"),
                        diagonal=True)


def _resolution(curves: int) -> int:
    """The thinning grid that keeps a chart of `curves` curves near CURVE_POINTS (a curve keeps up to ~4 points a
    cell)."""
    return int(np.clip(CURVE_POINTS // (4 * max(curves, 1)), LEAST_RESOLUTION, CHART_RESOLUTION))


def _curve_rows(series: str, name: str, x, y, thresholds, axes: tuple[str, str],
                resolution: int = CHART_RESOLUTION) -> list[dict]:
    """One row per curve with its points as columns; the spec's flatten transform makes them rows in the browser
    (a row object per point would repeat every key and the series name, ~5x the bytes)."""
    keep = drawing_mask(np.asarray(x), np.asarray(y), resolution)
    xs, ys, ts = (_rounded(values[keep]) for values in (np.asarray(x), np.asarray(y), thresholds))
    return [{"series": series, "curve": name, axes[0]: xs, axes[1]: ys, "threshold": ts}]


def points(spec: dict) -> list[dict]:
    """A spec's data as the rows its flatten transform gives the chart (what hover shows), in order."""
    flatten = next((step["flatten"] for step in spec.get("transform", []) if "flatten" in step), None)
    rows = spec["data"]["values"]
    if flatten is None:
        return rows
    return [{**row, **dict(zip(flatten, values))} for row in rows for values in zip(*(row[key] for key in flatten))]


def _curve_chart(title: str, rows: list[dict], axes: tuple[str, str], diagonal: bool) -> dict:
    x_field, y_field = axes
    unit = {"type": "quantitative", "scale": {"domain": [0, 1]}}
    colour = {"field": "series", "type": "nominal", "title": None, "sort": None,
              "legend": {"orient": "bottom", "columns": 2, "symbolType": "stroke", "labelLimit": 260}}
    layers = [
        {"mark": {"type": "line", "strokeWidth": 1.6, "interpolate": "linear"},
         "params": [_legend_toggle("series")],
         "encoding": {"x": {"field": x_field, **unit}, "y": {"field": y_field, **unit},
                      "order": {"field": "order", "type": "quantitative"}, "color": colour,
                      "opacity": {"condition": {"param": "legend", "value": 1}, "value": FADED}}},
        {"mark": {"type": "point", "filled": True, "size": 70, "tooltip": True},
         # Not `nearest` (a Voronoi layer): Vega-Lite 6 gives its tooltip a nominal field's value as undefined.
         # The points sit about a pixel apart along each curve, so the pointer is always on one.
         "params": [{"name": "hover", "select": {"type": "point", "on": "pointerover", "clear": "pointerout",
                                                 "toggle": False}}],
         "encoding": {"x": {"field": x_field, "type": "quantitative"}, "y": {"field": y_field, "type": "quantitative"},
                      "color": colour,
                      "opacity": {"condition": {"param": "hover", "empty": False, "value": 1}, "value": 0},
                      "tooltip": [{"field": "curve", "type": "nominal", "title": "class"},
                                  {"field": "threshold", "type": "quantitative", "format": ".4~g"},
                                  {"field": "precision" if "precision" in axes else x_field, "type": "quantitative",
                                   "format": ".4f"},
                                  {"field": "recall" if "recall" in axes else y_field, "type": "quantitative",
                                   "format": ".4f"}]}},
    ]
    if diagonal:
        layers.insert(0, {"data": {"values": [{x_field: 0, y_field: 0}, {x_field: 1, y_field: 1}]},
                          "mark": {"type": "line", "strokeDash": [4, 4], "color": UNLABELLED_COLOUR},
                          "encoding": {"x": {"field": x_field, **unit}, "y": {"field": y_field, **unit}}})
    return {**_base(title, 420, 320), "data": {"values": rows},
            "transform": [{"flatten": [x_field, y_field, "threshold"]},
                          {"window": [{"op": "row_number", "as": "order"}], "groupby": ["series"]}],
            "layer": layers, "resolve": {"legend": {"color": "shared"}}, "usermeta": {"renderer": "canvas"}}


def confusion_heatmap(metrics: dict, classes: list[str], normalised: bool) -> dict:
    """The confusion matrix over `classes`, each cell annotated; a click on a cell filters the prediction table
    to that (truth, guess) pair (report/static/charts.js)."""
    _check_classes(classes, metrics["classes"])
    confusion = metrics["confusion"]
    order = [confusion["classes"].index(name) for name in classes]
    # An "unknown" column last when some guesses abstained (infer.min_score): metrics' `guesses` lists it.
    extra = list(confusion.get("guesses", confusion["classes"]))[len(confusion["classes"]):]
    columns = order + list(range(len(confusion["classes"]), len(confusion["classes"]) + len(extra)))
    guesses = list(classes) + extra
    counts = np.asarray(confusion["counts"], dtype=np.int64)[np.ix_(order, columns)]
    shares = np.asarray(confusion["normalised"], dtype=np.float64)[np.ix_(order, columns)]
    rows = [{"truth": truth, "guess": guess, "count": int(counts[i, j]), "share": float(shares[i, j])}
            for i, truth in enumerate(classes) for j, guess in enumerate(guesses)]
    value = "share" if normalised else "count"
    side = max(240, min(900, 26 * len(classes)))
    axis = {"type": "nominal", "sort": list(classes), "axis": {"labelLimit": 160}}
    guess_axis = {**axis, "sort": guesses}
    colour = {"field": value, "type": "quantitative", "scale": {"scheme": "blues",
                                                                **({"domain": [0, 1]} if normalised else {})},
              "title": "share of row" if normalised else "images"}
    layers = [{"mark": {"type": "rect", "cursor": "pointer", "tooltip": True},
               "encoding": {"x": {"field": "guess", **guess_axis}, "y": {"field": "truth", **axis}, "color": colour,
                            "tooltip": [{"field": "truth", "type": "nominal"}, {"field": "guess", "type": "nominal"},
                                        {"field": "count", "type": "quantitative", "title": "images"},
                                        {"field": "share", "type": "quantitative", "format": ".2%",
                                         "title": "share of truth"}]}}]
    if len(classes) <= 30:
        middle = float(shares.max() if normalised else counts.max()) / 2
        layers.append({"mark": {"type": "text", "fontSize": 10 if len(classes) <= 12 else 7},
                       "encoding": {"x": {"field": "guess", **guess_axis}, "y": {"field": "truth", **axis},
                                    "text": {"field": value, "type": "quantitative",
                                             "format": ".2f" if normalised else "d"},
                                    "color": {"condition": {"test": f"datum['{value}'] > {middle}",
                                                            "value": "white"}, "value": "black"}}})
    title = "Confusion matrix" + (" (row-normalised)" if normalised else " (counts)")
    # charts.js: a click on a cell filters the "predictions" table to it.
    return {**_base(title, side, side), "data": {"values": rows}, "layer": layers,
            "usermeta": {"filter": "predictions"}}


def score_scatter(frame: pd.DataFrame, class_x: str, class_y: str, classes: list[str]) -> dict:
    """score_<class_x> against score_<class_y>, coloured by truth; hover shows the image's id and scores (the page
    shows its thumbnail beside the chart). The pair's own classes are drawn over the others."""
    _check_classes([class_x, class_y], classes)
    chosen = np.arange(len(frame))
    subtitle = None
    if len(frame) > SCATTER_POINTS:
        chosen = np.sort(np.random.default_rng(SEED).choice(len(frame), SCATTER_POINTS, replace=False))
        subtitle = f"{SCATTER_POINTS:,} of {len(frame):,} images drawn (a seeded random sample)"
    part = frame.iloc[chosen]
    truth = np.where(labelled_mask(part), part["truth"].astype(object), UNLABELLED)
    names = [str(value) for value in truth]
    layer = [2 if name in (class_x, class_y) else (0 if name == UNLABELLED else 1) for name in names]
    # Fixed field names: Vega-Lite reads "." and "[" in a field name as a path, and a class may be called "a.b".
    x_field, y_field = "x", "y"
    # The id as the table shows it (its first 12 characters): charts.js finds the thumbnail by that prefix.
    columns = {"id": [key[:ID_SHOWN] for key in part["id"].astype(str)] if "id" in part.columns else [None] * len(part),
               "truth": names,
               "guess": part["guess"].astype(object).where(part["guess"].notna(), None).tolist()
               if "guess" in part.columns else [None] * len(part),
               x_field: _rounded(part[score_column(class_x)].to_numpy(dtype=np.float64)),
               y_field: _rounded(part[score_column(class_y)].to_numpy(dtype=np.float64)),
               "layer": layer}
    rows = [columns]  # as columns, made rows by the flatten transform
    present = [name for name in classes if name in set(names)] + ([UNLABELLED] if UNLABELLED in names else [])
    colours = _palette(len(classes))
    scale = {"domain": present, "range": [colours[classes.index(name)] if name in classes else UNLABELLED_COLOUR
                                          for name in present]}
    spec = {**_base(f"{class_x} vs {class_y} scores, coloured by truth", 420, 360, subtitle),
            "data": {"values": rows}, "transform": [{"flatten": list(columns)}],
            "params": [_legend_toggle("truth")],
            "mark": {"type": "circle", "size": 14, "tooltip": True},
            "encoding": {"x": {"field": x_field, "type": "quantitative", "title": f"score {class_x}"},
                         "y": {"field": y_field, "type": "quantitative", "title": f"score {class_y}"},
                         "color": {"field": "truth", "type": "nominal", "scale": scale, "title": "truth"},
                         "order": {"field": "layer", "type": "quantitative"},
                         "opacity": {"condition": {"param": "legend", "value": 0.7}, "value": 0.04},
                         "tooltip": [{"field": "truth", "type": "nominal"}, {"field": "guess", "type": "nominal"},
                                     {"field": x_field, "type": "quantitative", "format": ".4f",
                                      "title": f"score {class_x}"},
                                     {"field": y_field, "type": "quantitative", "format": ".4f",
                                      "title": f"score {class_y}"},
                                     {"field": "id", "type": "nominal"}]}}
    # charts.js: show the hovered image's thumbnail and scores beside the chart, under these names.
    spec["usermeta"] = {"thumbnails": True, "labels": {x_field: f"score {class_x}", y_field: f"score {class_y}"},
                        "renderer": "canvas"}  # thousands of circles: as SVG elements they take seconds to draw
    return spec


def class_distributions(frame: pd.DataFrame, class_a: str, class_b: str, bins: int = 30) -> dict:
    """Overlaid histograms of score_<class_a> and score_<class_b> over all rows, with W&B's bin-width slider."""
    _check_classes([class_a, class_b], class_names(frame.columns))
    return multi_histogram(frame[score_column(class_a)].to_numpy(dtype=float),
                           frame[score_column(class_b)].to_numpy(dtype=float),
                           (f"score {class_a}", f"score {class_b}"), bins)


def multi_histogram(a, b, labels, bins: int = 30) -> dict:
    """Two overlaid histograms on shared bins, the bin width a slider (`bins` sets where it starts).

    The values are counted once on a grid of FINE_BINS cells over their range; the chart re-bins those counts
    into bins of a whole number of cells (a calculate + aggregate in the spec), so moving the slider is exact and
    the spec holds at most 2 x FINE_BINS counts, whatever the number of rows."""
    if int(bins) < 1:
        raise UserError(f"bins must be a positive number, got {bins}")
    if len(labels) != 2:
        raise UserError(f"multi_histogram needs two labels, got {list(labels)}")
    arrays = [np.asarray(a, dtype=float), np.asarray(b, dtype=float)]
    finite = np.concatenate([values[np.isfinite(values)] for values in arrays])
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    cell = (high - low) / FINE_BINS
    rows = []
    for label, values in zip(labels, arrays):
        values = values[np.isfinite(values)]
        index = np.minimum(((values - low) / cell).astype(np.int64), FINE_BINS - 1)
        counts = np.bincount(index, minlength=FINE_BINS)
        rows += [{"series": str(label), "cell": int(position), "n": int(counts[position])}
                 for position in np.flatnonzero(counts)]
    start = max(NARROWEST_BIN, min(FINE_BINS // WIDEST_BIN_SHARE, round(FINE_BINS / int(bins))))
    width = {"name": "bin_width", "value": _round_to(start * cell),
             "bind": {"input": "range", "min": _round_to(NARROWEST_BIN * cell),
                      "max": _round_to(FINE_BINS // WIDEST_BIN_SHARE * cell), "step": _round_to(cell),
                      "name": "bin width "}}
    # Cells per bin from the slider's value; a value between steps rounds to the nearest whole cell.
    cells = f"max(1, round(bin_width / {cell!r}))"
    return {**_base(f"{labels[0]} vs {labels[1]}", 420, 280),
            "data": {"values": rows},
            "params": [width, _legend_toggle("series")],
            "transform": [{"calculate": f"floor(datum.cell / {cells})", "as": "bin"},
                          {"aggregate": [{"op": "sum", "field": "n", "as": "images"}], "groupby": ["series", "bin"]},
                          {"calculate": f"{low!r} + datum.bin * {cells} * {cell!r}", "as": "from"},
                          {"calculate": f"datum.from + {cells} * {cell!r}", "as": "to"}],
            "mark": {"type": "rect", "tooltip": True},
            "encoding": {"x": {"field": "from", "type": "quantitative", "title": "score"},
                         "x2": {"field": "to"},
                         "y": {"field": "images", "type": "quantitative", "stack": None, "title": "images"},
                         "color": {"field": "series", "type": "nominal", "title": None, "sort": [str(label) for label
                                                                                                  in labels],
                                   "scale": {"range": list(PAIR_COLOURS)}},
                         "opacity": {"condition": {"param": "legend", "value": 0.5}, "value": 0.05},
                         "tooltip": [{"field": "series", "type": "nominal"},
                                     {"field": "from", "type": "quantitative", "format": ".4f"},
                                     {"field": "to", "type": "quantitative", "format": ".4f"},
                                     {"field": "images", "type": "quantitative"}]}}


def score_distributions_across_models(comparison: pd.DataFrame, labels: tuple[str, str], bins: int = 30) -> dict:
    """W&B's "score distributions across models": each labelled image's true-class score under A and under B
    (tables/compare.py's score_true_a/_b, over every row of the comparison), overlaid on shared bins with the
    bin-width slider of multi_histogram. An unlabelled image has no true class, so it is not counted."""
    missing = [column for column in ("score_true_a", "score_true_b") if column not in comparison.columns]
    if missing:
        raise UserError(f"score distributions across models need a comparison table (tables/compare.py's "
                        f"join_predictions), which has the columns score_true_a and score_true_b; missing: "
                        f"{', '.join(missing)}")
    a, b = (comparison[column].to_numpy(dtype=float, na_value=np.nan) for column in ("score_true_a", "score_true_b"))
    spec = multi_histogram(a, b, distribution_series(labels), bins)
    counted = [int(np.isfinite(values).sum()) for values in (a, b)]
    unscored = len(comparison) - min(counted)
    subtitle = (f"{counted[0]:,} images under A, {counted[1]:,} under B" if counted[0] != counted[1]
                else f"{counted[0]:,} images") + (f"; {unscored:,} without a true-class score (unlabelled, or a class "
                                                  "the model lacks) are not counted" if unscored else "")
    spec["title"] = _base("Score distributions across models", 420, 280, subtitle)["title"]
    spec["encoding"]["x"]["title"] = "score of the true class"
    return spec


def distribution_series(labels: tuple[str, str]) -> tuple[str, str]:
    """The two versions' names in the comparison's charts ("A: …", "B: …": unlike when both are the same ref)."""
    return f"A: {labels[0]}", f"B: {labels[1]}"


SELECTED_SCORES = "selected_image_scores"  # the paired-bars chart's name in the page, and its data source's


def paired_scores(classes: list[str], labels: tuple[str, str], scores: tuple[float, float] = (0.0, 1.0),
                  table: str = "comparison") -> dict:
    """The class scores of one image under A and under B as paired bars, for the comparison table's selected row.

    The spec holds no image: its data source is named and empty, and report/static/split_panel.js fills it with
    the clicked row's score_<class>_a and _b (listed in usermeta, by class position: a class may be called
    anything) through the Vega view, so a selection redraws this chart alone. `scores` is the lowest and highest
    score of any row (score_range): one fixed axis, so two selections compare by eye, and none drawn off it."""
    series = list(distribution_series(labels))
    columns = [[name, f"{score_column(name)}_a", f"{score_column(name)}_b"] for name in classes]
    axis = {"field": "class", "type": "nominal", "sort": list(classes), "title": None,
            "axis": {"labelLimit": 120, "labelAngle": -45 if len(classes) > 6 else 0}}
    return {**_base("Class scores of the selected image", int(np.clip(44 * len(classes), 160, 900)), 180),
            "data": {"name": SELECTED_SCORES},
            "mark": {"type": "bar", "tooltip": True},
            "encoding": {"x": axis,
                         "xOffset": {"field": "model", "type": "nominal", "sort": series},
                         # A fixed domain, not stacked: the empty chart (no row selected yet) has no extent to warn of.
                         "y": {"field": "score", "type": "quantitative", "title": "score", "stack": None,
                               "scale": {"domain": [min(0.0, float(scores[0])), max(1.0, float(scores[1]))]}},
                         "color": {"field": "model", "type": "nominal", "title": None, "sort": series,
                                   "scale": {"domain": series, "range": list(PAIR_COLOURS)},
                                   "legend": {"orient": "bottom", "labelLimit": 300}},
                         "tooltip": [{"field": "class", "type": "nominal"}, {"field": "model", "type": "nominal"},
                                     {"field": "score", "type": "quantitative", "format": ".4f"}]},
            "usermeta": {"selected": {"table": table, "columns": columns, "series": series}}}


def score_range(frame: pd.DataFrame, columns: list[str]) -> tuple[float, float]:
    """The lowest and highest finite value in `columns` of `frame` ((0, 1) when there is none)."""
    present = [column for column in columns if column in frame.columns]
    values = frame[present].to_numpy(dtype=np.float64, na_value=np.nan) if present else np.empty(0)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)


def ap_by_epoch(lines: list[dict], without: list[dict]) -> dict:
    """Validation AP against epoch, one line per model version (plots.ap_by_epoch's input); hover shows epoch and
    AP, the legend toggles a model, a diamond marks where fine-tuning starts, `without` is listed underneath."""
    rows, starts = [], []
    for line in lines:
        for epoch, ap in zip(line["epochs"], line["ap"]):
            rows.append({"model": str(line["label"]), "epoch": epoch, "AP": ap, "ref": line.get("model")})
        start = line.get("finetune_from")
        if start is not None and start in line["epochs"]:
            starts.append({"model": str(line["label"]), "epoch": start,
                           "AP": line["ap"][list(line["epochs"]).index(start)]})
    subtitle = ("No AP history: " + "; ".join(f"{item['ref']} ({item['reason']})" for item in without)) \
        if without else None
    if not lines:
        subtitle = "no version shown has an AP history" + (f". {subtitle}" if subtitle else "")
    colour = {"field": "model", "type": "nominal", "title": None, "sort": None,
              "legend": {"orient": "bottom", "labelLimit": 360}}
    encoding = {"x": {"field": "epoch", "type": "quantitative", "title": "epoch (head, then fine-tune)",
                      "axis": {"tickMinStep": 1, "format": "d"}},
                "y": {"field": "AP", "type": "quantitative", "title": "micro-averaged AP on val"},
                "color": colour}
    if not rows:  # empty axes under the subtitle that says why (an empty legend gives Vega a NaN size)
        del encoding["color"]
    layers = [{"mark": {"type": "line", "point": True, "tooltip": True},
               "params": [_legend_toggle("model")],
               "encoding": {**encoding, "opacity": {"condition": {"param": "legend", "value": 1}, "value": FADED},
                            "tooltip": [{"field": "model", "type": "nominal"}, {"field": "ref", "type": "nominal"},
                                        {"field": "epoch", "type": "quantitative"},
                                        {"field": "AP", "type": "quantitative", "format": ".4f"}]}}]
    if starts:
        layers.append({"data": {"values": starts}, "mark": {"type": "point", "shape": "diamond", "size": 90,
                                                            "filled": True, "stroke": "black"},
                       "encoding": encoding})
    return {**_base("Average precision during training, one line per model", 420, 300, subtitle),
            "data": {"values": rows}, "layer": layers}


def ap_across_runs(points: list[dict], x_label: str) -> dict:
    """Micro-averaged AP of several prediction versions against `x` (plots.ap_across_runs's input); hover shows
    the version and its AP."""
    if not points:
        raise UserError("ap_across_runs needs at least one point (x, ap, label)")
    missing = [point for point in points if "x" not in point or "ap" not in point]
    if missing:
        raise UserError(f"each point needs 'x' and 'ap'; got {missing[0]}")
    numeric = all(isinstance(point["x"], (int, float, np.number)) and not isinstance(point["x"], bool)
                  for point in points)
    ordered = sorted(points, key=lambda point: point["x"]) if numeric else list(points)
    rows = [{"x": point["x"] if numeric else str(point["x"]), "AP": point["ap"], "label": str(point.get("label", "")),
             "order": index} for index, point in enumerate(ordered)]
    x = ({"field": "x", "type": "quantitative", "title": str(x_label)} if numeric else
         {"field": "x", "type": "ordinal", "title": str(x_label), "sort": [row["x"] for row in rows]})
    return {**_base(f"Average precision by {x_label}", 420, 260), "data": {"values": rows},
            "mark": {"type": "line", "point": {"size": 60}, "tooltip": True},
            "encoding": {"x": x, "y": {"field": "AP", "type": "quantitative", "title": "micro-averaged AP"},
                         "order": {"field": "order", "type": "quantitative"},
                         "tooltip": [{"field": "label", "type": "nominal", "title": "version"},
                                     {"field": "x", "title": str(x_label)},
                                     {"field": "AP", "type": "quantitative", "format": ".4f"}]}}


def standard_charts(metrics: dict) -> dict[str, dict]:
    """plots.standard_plots as charts, by the same file names: PR, ROC and both confusion matrices."""
    classes = metrics["classes"]
    return {"pr_curves.png": pr_curves(metrics, classes), "roc_curves.png": roc_curves(metrics, classes),
            "confusion_counts.png": confusion_heatmap(metrics, classes, normalised=False),
            "confusion_normalised.png": confusion_heatmap(metrics, classes, normalised=True)}


def png(spec: dict) -> bytes:
    """The chart as the PNG an eval version keeps, rendered from the same spec the page draws."""
    import vl_convert

    try:
        return vl_convert.vegalite_to_png(spec, scale=PNG_SCALE)
    except ValueError as error:  # vl_convert reports a spec it cannot compile or render as ValueError
        raise _not_drawn(spec, str(error)) from None


def _not_drawn(spec: dict, message: str) -> UserError:
    return UserError(f"cannot render the chart {spec.get('title', {}).get('text', '?')!r} to PNG: "
                     f"{(message.splitlines() or ['?'])[0]}")


def pngs_in_background(specs: dict[str, dict]) -> Callable[[], dict[str, bytes]]:
    """Start drawing each spec's PNG (as `png`) in a child process, report/png_worker.py, and return the call
    that waits for them by name. vl-convert holds the GIL while it draws, so this process builds the page in
    the meantime. A spec it cannot draw is the same UserError `png` raises; a child that cannot start, or dies,
    leaves the charts it did not send back to be drawn here."""
    import json
    import subprocess
    import threading

    names = list(specs)
    result: dict = {}

    def talk(child: subprocess.Popen, request: bytes) -> None:
        try:
            result["out"], _ = child.communicate(request)
        except OSError:  # the child died before it read the request
            child.kill()
            result["out"] = b""

    try:
        request = json.dumps({"scale": PNG_SCALE, "specs": list(specs.values())}, allow_nan=False).encode()
        child = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("png_worker.py"))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except (OSError, ValueError, TypeError):  # no child, or a spec plain JSON cannot carry: drawn here
        return lambda: {name: png(spec) for name, spec in specs.items()}
    talker = threading.Thread(target=talk, args=(child, request), daemon=True)
    talker.start()

    def wait() -> dict[str, bytes]:
        talker.join()
        out, at, drawn = result.get("out", b""), 0, {}
        for name in names:
            if at + 9 > len(out) or at + 9 + int.from_bytes(out[at + 1:at + 9], "little") > len(out):
                break  # the child stopped here
            size = int.from_bytes(out[at + 1:at + 9], "little")
            status, payload, at = out[at:at + 1], out[at + 9:at + 9 + size], at + 9 + size
            if status not in (b"P", b"E"):
                break
            if status == b"E":
                raise _not_drawn(specs[name], payload.decode("utf-8", "replace"))
            drawn[name] = payload
        drawn.update({name: png(specs[name]) for name in names if name not in drawn})
        return drawn

    return wait


@lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed (with its CSP-safe expression interpreter) as one inline script that
    defines window.vegaEmbed; about 0.9 MB, the same bytes every time for one vl-convert version.

    Bundling takes about 2 s, once per process, so the result is kept per vl-convert version in the user's
    cache folder (as matplotlib keeps its font list); a cache that cannot be read or written is skipped."""
    from importlib.metadata import version

    from lineage.atomic import write_atomic

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keras-lineage"
    cached = folder / f"vega-embed-bundle-{version('vl-convert-python')}.js"
    try:
        text = cached.read_text(encoding="utf-8")
        if BUNDLE_MARK in text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    import vl_convert

    text = vl_convert.javascript_bundle()
    try:
        write_atomic(cached, text.encode("utf-8"), durable=False)
    except OSError:
        pass
    return text


# ---------------------------------------------------------------- helpers


def _base(title: str, width: int, height: int, subtitle: str | None = None) -> dict:
    heading = {"text": title, "anchor": "start"}
    if subtitle:
        heading["subtitle"] = _wrapped(subtitle)
        heading["subtitleColor"] = "#555555"
    return {"$schema": SCHEMA, "title": heading, "width": width, "height": height,
            "background": "white", "config": {"view": {"stroke": "#d0d7de"}, "axis": {"gridOpacity": 0.5}}}


def _legend_toggle(field: str) -> dict:
    """A click on a legend entry shows that series alone (shift-click adds another, a double click shows all)."""
    return {"name": "legend", "select": {"type": "point", "fields": [field]}, "bind": "legend"}


def _palette(count: int) -> list[str]:
    """The hex colours plots._class_colours gives matplotlib, so a class keeps its colour between the two."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if count <= 10:
        return [to_hex(colormaps["tab10"](index)) for index in range(count)]
    if count <= 20:
        return [to_hex(colormaps["tab20"](index)) for index in range(count)]
    return [to_hex(colormaps["turbo"](value)) for value in np.linspace(0.05, 0.95, count)]


def _rounded(values: np.ndarray) -> list:
    """Numbers to DIGITS significant digits; inf and nan become None (JSON has neither)."""
    rounded = round_significant(np.asarray(values, dtype=np.float64), DIGITS)
    return [value if np.isfinite(value) else None for value in rounded.tolist()]


def _round_to(value: float) -> float:
    return float(f"{value:.6g}")


def _wrapped(text: str, width: int = 90) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [text]


def _check_classes(requested: list[str], known: list[str]) -> None:
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise UserError(f"unknown classes {unknown}; the classes are {list(known)}")
