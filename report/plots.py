"""The report's plots, each drawn with matplotlib's Agg canvas and returned as PNG bytes.

Bytes rather than files, so the same plot goes into report.html as a data: URI and
into an eval version as an object (stages/evaluate.py stores the bytes). Figures are built on an explicit
`Figure` with no pyplot state, and matplotlib is imported only when a plot is
drawn, so importing this module stays cheap for commands that never plot.
"""

from __future__ import annotations

import io
import textwrap
import warnings

import numpy as np
import pandas as pd

from lineage.errors import UserError
from tables.predictions import class_names, labelled_mask, score_column

DPI = 100
UNLABELLED_COLOUR = "#9e9e9e"


def pr_curves(metrics: dict, classes: list[str]) -> bytes:
    """One precision-recall curve per class, its average precision in the legend."""
    _check_classes(classes, metrics["classes"])
    figure, axes = _figure(6.4, 4.8)
    for colour, name in zip(_class_colours(len(classes)), classes):
        curve = metrics["curves"]["per_class"][name].pr()
        if curve is None:
            continue
        ap = metrics["per_class"][name]["average_precision"]
        recall, precision = thin_for_drawing(curve["recall"], curve["precision"])
        axes.step(recall, precision, where="post", color=colour,
                  linewidth=1.2, label=f"{_plain(name)} (AP {ap:.3f})")
    _finish_unit_axes(axes, "recall", "precision", "Precision-recall, one class vs rest")
    return _png(figure)


def roc_curves(metrics: dict, classes: list[str]) -> bytes:
    """One ROC curve per class, its AUC in the legend, and the chance diagonal."""
    _check_classes(classes, metrics["classes"])
    figure, axes = _figure(6.4, 4.8)
    axes.plot([0, 1], [0, 1], linestyle="--", color=UNLABELLED_COLOUR, linewidth=1, label="chance")
    for colour, name in zip(_class_colours(len(classes)), classes):
        curve = metrics["curves"]["per_class"][name].roc()
        if curve is None:
            continue
        auc = metrics["per_class"][name]["roc_auc"]
        axes.plot(*thin_for_drawing(curve["fpr"], curve["tpr"]), color=colour, linewidth=1.2,
                  label=f"{_plain(name)} (AUC {auc:.3f})")
    _finish_unit_axes(axes, "false positive rate", "true positive rate", "ROC, one class vs rest")
    return _png(figure)


DRAWING_RESOLUTION = 4096  # grid cells per unit axis: several times the pixels of any plot drawn here


def thin_for_drawing(x: np.ndarray, y: np.ndarray, resolution: int = DRAWING_RESOLUTION):
    """A copy of a curve on the unit square that draws the same: the points where it turns.

    The square is cut into resolution x resolution cells; of each run of consecutive points in
    one cell only the first and the last are kept (and the curve's two ends), so every change of
    cell, i.e. every visible turn, survives while the millions of points inside one pixel go.
    A monotone curve keeps at most about 4 x resolution points, whatever its length.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    keep = drawing_mask(x, y, resolution)
    return x[keep], y[keep]


def drawing_mask(x: np.ndarray, y: np.ndarray, resolution: int = DRAWING_RESOLUTION) -> np.ndarray:
    """Which points thin_for_drawing keeps, as a mask: report/charts.py keeps each one's threshold with it."""
    x = np.asarray(x)
    y = np.asarray(y)
    keep = np.ones(len(x), dtype=bool)
    if len(x) <= 2 * resolution:
        return keep
    cells = (np.floor(np.clip(x, 0, 1) * resolution).astype(np.int64) * (resolution + 1)
             + np.floor(np.clip(y, 0, 1) * resolution).astype(np.int64))
    changes = cells[1:] != cells[:-1]
    keep[1:-1] = changes[:-1] | changes[1:]  # last point of a run, or first of the next
    return keep


def confusion_heatmap(metrics: dict, classes: list[str], normalised: bool) -> bytes:
    """The confusion matrix over `classes` (in that order), each cell annotated; an "unknown" column last
    when some guesses abstained (infer.min_score)."""
    _check_classes(classes, metrics["classes"])
    confusion = metrics["confusion"]
    order = [confusion["classes"].index(name) for name in classes]
    extra = list(confusion.get("guesses", confusion["classes"]))[len(confusion["classes"]):]
    matrix = np.asarray(confusion["normalised" if normalised else "counts"], dtype=float)
    matrix = matrix[np.ix_(order, order + list(range(len(classes), len(classes) + len(extra))))]
    side = max(4.0, 0.45 * len(classes) + 2.5)
    figure, axes = _figure(side + 1.0, side)
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalised else None)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    axes.set_xticks(np.arange(len(classes) + len(extra)), labels=[_plain(name) for name in classes + extra],
                    rotation=45, ha="right")
    axes.set_yticks(ticks, labels=[_plain(name) for name in classes])
    axes.set_xlabel("guess")
    axes.set_ylabel("truth")
    axes.set_title("Confusion matrix" + (" (row-normalised)" if normalised else " (counts)"))
    if len(classes) <= 30:
        _annotate_cells(axes, matrix, normalised)
    return _png(figure)


def ap_across_runs(points: list[dict], x_label: str) -> bytes:
    """Micro-averaged AP of several prediction versions as a line against `x`: the per-version summary
    beside ap_by_epoch's lines (stages/evaluate.py stores it as ap_per_version.png).

    `x` may be numbers (training-set size, epochs) or names (versions); names are
    placed in the order given.
    """
    if not points:
        raise UserError("ap_across_runs needs at least one point (x, ap, label)")
    missing = [point for point in points if "x" not in point or "ap" not in point]
    if missing:
        raise UserError(f"each point needs 'x' and 'ap'; got {missing[0]}")
    numeric = all(isinstance(point["x"], (int, float, np.number)) for point in points)
    ordered = sorted(points, key=lambda point: point["x"]) if numeric else list(points)
    xs = [point["x"] for point in ordered] if numeric else list(range(len(ordered)))
    aps = [np.nan if point["ap"] is None else point["ap"] for point in ordered]
    figure, axes = _figure(6.4, 4.0)
    axes.plot(xs, aps, marker="o", color="tab:blue")
    for x, ap, point in zip(xs, aps, ordered):
        axes.annotate(_plain(point.get("label", "")), (x, ap), textcoords="offset points",
                      xytext=(0, 7), ha="center", fontsize=8)
    if not numeric:
        axes.set_xticks(xs, labels=[_plain(point["x"]) for point in ordered])
    axes.set_xlabel(_plain(x_label))
    axes.set_ylabel("micro-averaged AP")
    axes.set_title(f"Average precision by {_plain(x_label)}")
    axes.grid(alpha=0.3)
    return _png(figure)


def ap_by_epoch(lines: list[dict], without: list[dict]) -> bytes:
    """Validation AP against epoch, one line per model version: W&B's plot of runs side by side.

    Each line is {label, epochs, ap, finetune_from}: epochs counted on across both phases, ap with None
    where it was undefined (drawn as a gap), and the first fine-tune epoch (None: head only), marked by
    a diamond and a dotted rule in the line's colour. `without` ({ref, reason}) are the versions that
    have no such line; they are listed under the plot, so one old model does not cost the whole report.
    """
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(6.4, 4.4)
    finetunes = False
    for colour, line in zip(_class_colours(max(len(lines), 1)), lines):
        epochs = np.asarray(line["epochs"], dtype=float)
        aps = np.asarray([np.nan if ap is None else ap for ap in line["ap"]], dtype=float)
        axes.plot(epochs, aps, marker="o", markersize=3, linewidth=1.5, color=colour, label=_plain(line["label"]))
        start = line.get("finetune_from")
        if start is not None and start in line["epochs"]:
            finetunes = True
            axes.axvline(start, color=colour, linestyle=":", linewidth=1, alpha=0.8)
            axes.plot([start], [aps[list(line["epochs"]).index(start)]], marker="D", markersize=7, color=colour,
                      markeredgecolor="black", linestyle="none")
    if finetunes:
        axes.plot([], [], marker="D", markersize=6, color=UNLABELLED_COLOUR, markeredgecolor="black",
                  linestyle=":", label="fine-tuning starts")
    if not lines:
        axes.text(0.5, 0.5, "no version shown has an AP history", transform=axes.transAxes, ha="center",
                  va="center", color=UNLABELLED_COLOUR)
    if without:
        listed = "; ".join(f"{_plain(item['ref'])} ({_plain(item['reason'])})" for item in without)
        figure.supxlabel(textwrap.fill(f"No AP history: {listed}", 110), fontsize=7, color="#555555")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch (head, then fine-tune)")
    axes.set_ylabel("micro-averaged AP on val")
    axes.set_title("Average precision during training, one line per model")
    axes.grid(alpha=0.3)
    if lines:
        axes.legend(fontsize=7, loc="lower right")
    return _png(figure)


def score_scatter(frame: pd.DataFrame, class_x: str, class_y: str, classes: list[str]) -> bytes:
    """score_<class_x> against score_<class_y> over the same images, coloured by true class."""
    _check_classes([class_x, class_y], classes)
    figure, axes = _figure(6.0, 5.0)
    x = frame[score_column(class_x)].to_numpy(dtype=float)
    y = frame[score_column(class_y)].to_numpy(dtype=float)
    labelled = labelled_mask(frame)
    truth = frame["truth"].astype(object).to_numpy()
    if (~labelled).any():
        axes.scatter(x[~labelled], y[~labelled], s=5, alpha=0.4, color=UNLABELLED_COLOUR,
                     label="unlabelled", rasterized=True)
    colours = dict(zip(classes, _class_colours(len(classes))))
    # The pair itself is drawn last and strongest, so its confusions are not buried.
    others = [name for name in classes if name not in (class_x, class_y)]
    for name in others + [class_x, class_y]:
        chosen = labelled & (truth == name)
        chosen[chosen] = _one_per_cell(x[chosen], y[chosen])
        if chosen.any():
            axes.scatter(x[chosen], y[chosen], s=5, alpha=0.25 if name in others else 0.7,
                         color=colours[name], label=_plain(name), rasterized=True)
    axes.set_xlabel(f"score {_plain(class_x)}")
    axes.set_ylabel(f"score {_plain(class_y)}")
    axes.set_title(f"{_plain(class_x)} vs {_plain(class_y)} scores, coloured by truth")
    axes.legend(fontsize=7, markerscale=2, loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)


SCATTER_RESOLUTION = 1000  # cells per axis; a 6-inch plot at 100 dpi is 600 pixels wide


def _one_per_cell(x: np.ndarray, y: np.ndarray, resolution: int = SCATTER_RESOLUTION) -> np.ndarray:
    """True for the first point in each sub-pixel cell: a million points of one class draw the same
    marks from far fewer (drawing, not counting: the curves and metrics use every row)."""
    if len(x) <= resolution:
        return np.ones(len(x), dtype=bool)
    span = [(float(np.nanmin(v)), float(np.nanmax(v))) if np.isfinite(v).any() else (0.0, 1.0) for v in (x, y)]
    cells = [np.nan_to_num((v - low) / ((high - low) or 1.0) * resolution, nan=-1).astype(np.int64)
             for v, (low, high) in zip((x, y), span)]
    _, first = np.unique(cells[0] * (resolution + 2) + cells[1], return_index=True)
    keep = np.zeros(len(x), dtype=bool)
    keep[first] = True
    return keep


def class_distributions(frame: pd.DataFrame, class_a: str, class_b: str, bins: int = 30) -> bytes:
    """Overlaid histograms of score_<class_a> and score_<class_b> over all rows."""
    _check_classes([class_a, class_b], class_names(frame.columns))
    return multi_histogram(frame[score_column(class_a)].to_numpy(dtype=float),
                           frame[score_column(class_b)].to_numpy(dtype=float),
                           (f"score {class_a}", f"score {class_b}"), bins)


def multi_histogram(a, b, labels, bins: int = 30) -> bytes:
    """Two overlaid histograms on shared bins, `a` in red and `b` in blue."""
    if int(bins) < 1:
        raise UserError(f"bins must be a positive number, got {bins}")
    if len(labels) != 2:
        raise UserError(f"multi_histogram needs two labels, got {list(labels)}")
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    values = np.concatenate([a, b])
    edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=int(bins))
    figure, axes = _figure(6.4, 4.0)
    axes.hist(a, bins=edges, color="tab:red", alpha=0.5, label=_plain(labels[0]))
    axes.hist(b, bins=edges, color="tab:blue", alpha=0.5, label=_plain(labels[1]))
    axes.set_xlabel("score")
    axes.set_ylabel("images")
    axes.set_title(f"{_plain(labels[0])} vs {_plain(labels[1])}")
    axes.legend()
    return _png(figure)


def standard_plots(metrics: dict) -> dict[str, bytes]:
    """The plots every evaluation gets, by file name: PR, ROC and both confusion matrices."""
    classes = metrics["classes"]
    return {
        "pr_curves.png": pr_curves(metrics, classes),
        "roc_curves.png": roc_curves(metrics, classes),
        "confusion_counts.png": confusion_heatmap(metrics, classes, normalised=False),
        "confusion_normalised.png": confusion_heatmap(metrics, classes, normalised=True),
    }


def _check_classes(requested: list[str], known: list[str]) -> None:
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise UserError(f"unknown classes {unknown}; the classes are {list(known)}")


def _class_colours(count: int) -> list:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return [colormaps["turbo"](value) for value in np.linspace(0.05, 0.95, count)]


LABEL_MAX_CHARS = 40


def _plain(text) -> str:
    """User text (class names, version labels) as matplotlib must show it: literally. An unescaped
    pair of `$` is mathtext to matplotlib, and a class named `cost$_$` fails to draw. A name longer
    than a legend can hold is cut (the report's tables show it whole)."""
    text = str(text)
    if len(text) > LABEL_MAX_CHARS:
        text = text[:LABEL_MAX_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _figure(width: float, height: float):
    """A fresh Agg-backed figure and its one axes; no pyplot, so no global state (but TeX stays off,
    whatever a matplotlibrc says: class names are drawn as text, never typeset)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matplotlib.rcParams["text.usetex"] = False

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _finish_unit_axes(axes, x_label: str, y_label: str, title: str) -> None:
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")


def _annotate_cells(axes, matrix: np.ndarray, normalised: bool) -> None:
    threshold = np.nanmax(matrix) / 2 if matrix.size else 0
    size = 8 if len(matrix) <= 12 else 6
    for row, col in np.ndindex(matrix.shape):
        value = matrix[row, col]
        text = f"{value:.2f}" if normalised else f"{int(value)}"
        axes.text(col, row, text, ha="center", va="center", fontsize=size,
                  color="white" if value > threshold else "black")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a class name in a script the font lacks still draws, as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
