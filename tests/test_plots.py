"""Each plot is a real PNG of the expected size; unknown classes are user errors."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lineage.errors import UserError
from report import plots
from report.metrics import compute_metrics

CLASSES = ["cat", "dog", "fox"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, len(CLASSES), 120)
    scores = rng.dirichlet(np.ones(len(CLASSES)), 120)
    scores[np.arange(120), truth] += 0.5
    scores /= scores.sum(axis=1, keepdims=True)
    table = pd.DataFrame({"truth": np.asarray(CLASSES, dtype=object)[truth],
                          "guess": np.asarray(CLASSES)[scores.argmax(axis=1)]})
    table.loc[:9, "truth"] = None  # unlabelled rows are drawn grey in the scatter
    for index, name in enumerate(CLASSES):
        table[f"score_{name}"] = scores[:, index].astype(np.float32)
    return table


@pytest.fixture(scope="module")
def metrics(frame) -> dict:
    return compute_metrics(frame, CLASSES)


def image_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.mark.parametrize("draw, size", [
    (lambda m, f: plots.pr_curves(m, CLASSES), (640, 480)),
    (lambda m, f: plots.roc_curves(m, CLASSES), (640, 480)),
    (lambda m, f: plots.confusion_heatmap(m, CLASSES, normalised=False), (500, 400)),
    (lambda m, f: plots.confusion_heatmap(m, ["fox", "cat"], normalised=True), (500, 400)),
    (lambda m, f: plots.score_scatter(f, "cat", "dog", CLASSES), (600, 500)),
    (lambda m, f: plots.class_distributions(f, "cat", "fox", bins=12), (640, 400)),
    (lambda m, f: plots.multi_histogram(np.arange(10), np.arange(5, 15), ("a", "b"), 5), (640, 400)),
    (lambda m, f: plots.ap_across_runs([{"x": 1000, "ap": 0.7, "label": "v2"},
                                        {"x": 100, "ap": 0.5, "label": "v1"}], "images"), (640, 400)),
    (lambda m, f: plots.ap_across_runs([{"x": "v1", "ap": 0.5}, {"x": "v2", "ap": None}],
                                       "version"), (640, 400)),
], ids=["pr", "roc", "confusion", "confusion-subset", "scatter", "distributions", "histogram",
        "ap-numeric", "ap-versions"])
def test_plot_is_a_png(metrics, frame, draw, size):
    assert image_size(draw(metrics, frame)) == size


def test_standard_plots_are_named_pngs(metrics):
    standard = plots.standard_plots(metrics)  # evaluate stores each under its name in the eval version
    assert sorted(standard) == ["confusion_counts.png", "confusion_normalised.png", "pr_curves.png", "roc_curves.png"]
    assert all(png.startswith(PNG_SIGNATURE) for png in standard.values())


@pytest.mark.parametrize("draw", [
    lambda m, f: plots.pr_curves(m, ["cat", "zebra"]),
    lambda m, f: plots.roc_curves(m, ["zebra"]),
    lambda m, f: plots.confusion_heatmap(m, ["zebra", "dog"], normalised=True),
    lambda m, f: plots.score_scatter(f, "cat", "zebra", CLASSES),
    lambda m, f: plots.class_distributions(f, "zebra", "dog"),
], ids=["pr", "roc", "confusion", "scatter", "distributions"])
def test_unknown_class_is_a_user_error_listing_the_classes(metrics, frame, draw):
    with pytest.raises(UserError, match=r"unknown classes \['zebra'\]; the classes are \['cat', 'dog', 'fox'\]"):
        draw(metrics, frame)


def test_bad_plot_arguments_are_user_errors():
    with pytest.raises(UserError, match="bins"):
        plots.multi_histogram([1, 2], [3, 4], ("a", "b"), bins=0)
    with pytest.raises(UserError, match="at least one point"):
        plots.ap_across_runs([], "epochs")
