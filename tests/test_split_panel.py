"""The comparison's split panel, its data: the true-class score histogram under A and B against numpy's, the
side-by-side group spreads against a pandas crosstab over every row, and the eval version's PNG of the histogram.

The browser side (clicks, drawing) is tests/test_split_panel_browser.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from lineage.errors import UserError
from report import charts
from report.html import render_report
from report.metrics import compute_metrics
from tests.report_data import CLASSES, _predictions

LABELS = ("predictions:v1", "predictions:v2")


@pytest.fixture(scope="module")
def comparison() -> pd.DataFrame:
    return comparison_of(_predictions())


def comparison_of(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` joined with a B whose scores differ (so the two histograms and guess spreads differ); the frame's
    unlabelled rows have no true-class score."""
    from tables.compare import join_predictions

    other = frame.copy()
    rng = np.random.default_rng(3)
    for name in CLASSES:
        other[f"score_{name}"] = (frame[f"score_{name}"] * rng.uniform(0.5, 1.0, len(frame))).astype(np.float32)
    other["guess"] = np.asarray(CLASSES, dtype=object)[other[[f"score_{name}" for name in CLASSES]]
                                                       .to_numpy().argmax(axis=1)]
    joined, _ = join_predictions(frame, other, *LABELS)
    return joined


def _counts_at(spec: dict, cells: int) -> dict[str, np.ndarray]:
    """The histogram spec's transform done in Python: per series, the images in each bin of `cells` fine cells."""
    bins = -(-charts.FINE_BINS // cells)
    out = {}
    for row in spec["data"]["values"]:
        counts = out.setdefault(row["series"], np.zeros(bins, dtype=np.int64))
        counts[row["cell"] // cells] += row["n"]
    return out


@pytest.mark.parametrize("cells", [1, 40, 200])
def test_true_class_score_histograms_equal_numpys(comparison, cells):
    spec = charts.score_distributions_across_models(comparison, LABELS, bins=25)
    a, b = (comparison[column].to_numpy(dtype=float) for column in ("score_true_a", "score_true_b"))
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    low, high = finite.min(), finite.max()
    edges = low + np.arange(charts.FINE_BINS // cells + 1) * cells * (high - low) / charts.FINE_BINS
    edges[-1] = high
    drawn = _counts_at(spec, cells)
    assert list(drawn) == ["A: predictions:v1", "B: predictions:v2"]
    for values, series in ((a, "A: predictions:v1"), (b, "B: predictions:v2")):
        expected, _ = np.histogram(values[np.isfinite(values)], bins=edges)
        assert drawn[series].tolist() == expected.tolist()
    assert not np.array_equal(drawn["A: predictions:v1"], drawn["B: predictions:v2"])
    unlabelled = int(comparison["truth"].isna().sum())
    assert sum(drawn["A: predictions:v1"]) == len(comparison) - unlabelled > 0
    assert spec["title"]["text"] == "Score distributions across models"
    assert f"{unlabelled} without a true-class score" in " ".join(spec["title"]["subtitle"])


def test_the_histogram_needs_a_comparison_table():
    with pytest.raises(UserError, match="score_true_a"):
        charts.score_distributions_across_models(_predictions(), LABELS)


def _page_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def _crosstab(frame: pd.DataFrame, column: str, other: str) -> dict:
    """{group: {value: rows}} with pandas, a missing key or value as None (the page's null)."""
    keys = frame[column].astype(object).where(frame[column].notna(), "<missing>")
    values = frame[other].astype(object).where(frame[other].notna(), "<missing>")
    table = pd.crosstab(keys, values)
    back = lambda name: None if name == "<missing>" else name  # noqa: E731
    return {back(key): {back(value): int(count) for value, count in row.items() if count}
            for key, row in table.iterrows()}


def test_group_spreads_side_by_side_are_exact_over_every_row(comparison):
    """A cut page (embed_limit below the rows): each paired group carries A's and B's spreads over all rows."""
    frame = _predictions()
    html = render_report(title="t", metrics=compute_metrics(frame, CLASSES), classes=CLASSES, plots={}, table=frame,
                         thumbnails={}, lineage=[], comparison=comparison, comparison_labels=LABELS, embed_limit=50)
    groups = {group["column"]: group for group in _page_data(html)["tables"]["comparison"]["groups"]}
    for column in ("truth", "split"):
        group = groups[column]
        assert (group["other"], group["paired"]) == ("guess_a", "guess_b")
        for key, side in (("totals", "guess_a"), ("paired_totals", "guess_b")):
            shown = {entry[0]: dict((value, rows) for value, rows in entry[2]) for entry in group[key]}
            assert shown == _crosstab(comparison, column, side), (column, side)
            assert sum(entry[1] for entry in group[key]) == len(comparison)
    assert "paired" not in groups["guess_a"]  # a transition (A's guess, B's spread) stays one spread


def test_paired_scores_names_each_class_columns_under_a_and_b():
    spec = charts.paired_scores(CLASSES, LABELS)
    meta = spec["usermeta"]["selected"]
    assert meta["columns"] == [[name, f"score_{name}_a", f"score_{name}_b"] for name in CLASSES]
    assert meta["series"] == ["A: predictions:v1", "B: predictions:v2"]
    assert spec["data"] == {"name": charts.SELECTED_SCORES}


def test_the_comparison_page_places_the_split_panel(comparison):
    frame = _predictions()
    spec = charts.score_distributions_across_models(comparison, LABELS)
    html = render_report(title="t", metrics=compute_metrics(frame, CLASSES), classes=CLASSES, plots={}, table=frame,
                         charts={"score_distributions_across_models.png": spec}, thumbnails={}, lineage=[],
                         comparison=comparison, comparison_labels=LABELS)
    section = html[html.index('id="comparison-section"'):html.index('<section id="lineage"')]
    assert 'data-chart="selected_image_scores"' in section and 'id="cmp-selected"' in section
    assert 'data-chart="score_distributions_across_models.png"' in section
    assert 'data-chart="score_distributions_across_models.png"' not in html[:html.index('id="comparison-section"')]


def test_evaluate_keeps_the_histogram_as_a_png_when_comparing(tmp_path):
    from lineage.runner import execute
    from stages import evaluate
    from lineage.store import Store
    from tests.test_ap_history import FakeTrain, FakeTrainParams, history

    store = Store.open(tmp_path / "store", create=True)
    for seed in (1, 2):
        execute(store, FakeTrain, FakeTrainParams(train_images=40 * seed, params={"seed": seed},
                                                  history=history([0.5, 0.6], ["head", "finetune"])),
                log=lambda line: None, progress=False)
    compared = execute(store, evaluate, evaluate.Params(input="predictions:v1", compare_with="predictions:v2"),
                       log=lambda line: None, progress=False)
    files = store.read_manifest(compared.outputs[0].key).files
    assert store.read_object(files["score_distributions_across_models.png"].digest).startswith(b"\x89PNG")
    alone = execute(store, evaluate, evaluate.Params(input="predictions:v1"), log=lambda line: None, progress=False)
    assert "score_distributions_across_models.png" not in store.read_manifest(alone.outputs[0].key).files
