"""A large table's report: which rows the page embeds, what it says about them, and that every
aggregate on it (metrics, curves, group counts) is over all rows, not the embedded ones."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from report.html import render_report
from report.metrics import compute_metrics, curves_npz, read_curves
from report.plots import thin_for_drawing
from report.selection import REASON_COLUMN, select_rows

CLASSES = ["ant", "bee", "cow", "doe"]
ROWS = 2_000
LIMIT = 500  # a small threshold, so the tests stay fast


def predictions(rows: int = ROWS, wrong_every: int = 10, seed: int = 3) -> pd.DataFrame:
    """A table where every `wrong_every`-th row is a mistake, class sizes unequal (ant is rare)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(len(CLASSES), rows, p=[0.05, 0.25, 0.3, 0.4])
    guess = truth.copy()
    wrong = np.arange(rows) % wrong_every == 0
    guess[wrong] = (truth[wrong] + 1) % len(CLASSES)
    scores = rng.dirichlet(np.ones(len(CLASSES)), rows).astype(np.float32)
    names = np.asarray(CLASSES, dtype=object)
    frame = pd.DataFrame({"id": [f"{index:064x}" for index in range(rows)], "split": "test",
                          "path": [f"images/{index}.jpg" for index in range(rows)],
                          "truth": names[truth], "guess": names[guess],
                          "confidence": rng.random(rows).astype(np.float32)})
    frame.loc[frame.index[-30:], "truth"] = None
    for index, name in enumerate(CLASSES):
        frame[f"score_{name}"] = scores[:, index]
    return frame


def wrong_mask(frame: pd.DataFrame) -> np.ndarray:
    return (frame["truth"].notna() & (frame["truth"] != frame["guess"])).to_numpy()


def test_a_table_at_the_limit_is_embedded_whole():
    frame = predictions(rows=LIMIT)
    selection = select_rows(frame, limit=LIMIT)
    assert not selection.capped
    assert selection.apply(frame) is frame  # no `chosen` column, nothing reordered


def test_every_mistake_is_kept_up_to_the_cap_then_the_least_confident_right_then_a_stratified_sample():
    frame = predictions()
    selection = select_rows(frame, limit=LIMIT)
    assert len(selection.positions) == LIMIT and selection.capped
    chosen = set(selection.positions.tolist())
    mistakes = np.flatnonzero(wrong_mask(frame))
    assert len(mistakes) < LIMIT // 2 and chosen >= set(mistakes.tolist())  # all 200 mistakes
    right = frame.index[frame["truth"].notna() & ~wrong_mask(frame)]
    least_confident = frame.loc[right, "confidence"].sort_values(kind="stable").index[:LIMIT // 5]
    assert chosen >= set(least_confident.tolist())
    reasons = pd.Series(selection.reasons)
    assert reasons.value_counts().to_dict() == {"mistake": len(mistakes), "least confident right": LIMIT // 5,
                                                "sample": LIMIT - len(mistakes) - LIMIT // 5}
    # The sample gives each true class (and the unlabelled) an equal share, where it has the rows.
    sampled = frame.iloc[selection.positions[selection.reasons == "sample"]]
    per_stratum = sampled["truth"].fillna("(unlabelled)").value_counts()
    assert set(per_stratum.index) == set(CLASSES) | {"(unlabelled)"}
    big = per_stratum[["bee", "cow", "doe"]]
    assert big.max() - big.min() <= 1 and big.min() > per_stratum["ant"] / 2
    again = select_rows(frame, limit=LIMIT)
    assert np.array_equal(again.positions, selection.positions) and list(again.reasons) == list(selection.reasons)


def test_more_mistakes_than_the_cap_keeps_the_most_confident_ones():
    frame = predictions(wrong_every=2)
    selection = select_rows(frame, limit=LIMIT)
    mistakes = frame[wrong_mask(frame)]
    kept = frame.iloc[selection.positions[selection.reasons == "mistake"]]
    assert len(mistakes) > LIMIT // 2 and len(kept) == LIMIT // 2
    assert kept["confidence"].min() >= mistakes["confidence"].drop(kept.index).max()


def _payload(page: str) -> dict:
    text = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(text)


def _render(frame: pd.DataFrame, **extra) -> str:
    return render_report(title="t", metrics=compute_metrics(frame, CLASSES), classes=CLASSES, plots={},
                         table=frame, thumbnails=lambda ids: {}, lineage=[], table_ref="predictions:v7", **extra)


def test_a_cut_page_says_how_many_rows_it_holds_how_they_were_chosen_and_the_table_command():
    frame = predictions()
    page = _render(frame, embed_limit=LIMIT)
    note = re.search(r'<div id="embedded-note".*?</div>', page, re.S).group(0)
    assert "500 of 2,000 rows" in note
    assert "mistake" in note and "least confident" in note and "sample" in note
    assert "python pipeline.py table predictions:v7 --filter" in note
    table = _payload(page)["tables"]["predictions"]
    assert len(table["rows"]) == LIMIT and table["total"] == ROWS
    assert REASON_COLUMN in table["columns"]


def test_below_the_limit_the_page_is_as_before():
    frame = predictions()
    page = _render(frame)  # the default limit, 10,000
    assert 'id="embedded-note"' not in page
    table = _payload(page)["tables"]["predictions"]
    assert len(table["rows"]) == ROWS and REASON_COLUMN not in table["columns"]
    assert all("totals" not in group for group in table["groups"])


def test_aggregates_on_a_cut_page_are_over_all_rows():
    frame = predictions()
    page = _render(frame, embed_limit=LIMIT)
    labelled = frame["truth"].notna()
    cards = dict(re.findall(r'data-metric="([^"]+)"><div class="value">([^<]+)<', page))
    assert cards["labelled images"] == f"{labelled.sum():,}"
    accuracy = (frame.loc[labelled, "truth"] == frame.loc[labelled, "guess"]).mean()
    assert cards["accuracy"] == f"{100 * accuracy:.2f}%"
    support = re.search(r'<tr data-class="ant">.*?</tr>', page, re.S).group(0)
    assert f"<td>{(frame['truth'] == 'ant').sum():,}</td>" in support
    groups = {group["column"]: group["totals"] for group in _payload(page)["tables"]["predictions"]["groups"]}
    by_truth = {key: rows for key, rows, _ in groups["truth"]}
    assert by_truth == {**frame["truth"].value_counts().to_dict(), None: int((~labelled).sum())}
    spread = {key: dict(map(tuple, parts)) for key, _, parts in groups["truth"]}
    assert spread["cow"] == frame[frame["truth"] == "cow"]["guess"].value_counts().to_dict()


def test_curves_are_scikit_learns_at_full_resolution_and_stored_exactly():
    frame = predictions()
    metrics = compute_metrics(frame, CLASSES)
    labelled = frame[frame["truth"].notna()]
    for name in CLASSES:
        positive = (labelled["truth"] == name).to_numpy()
        score = labelled[f"score_{name}"].to_numpy(np.float64)
        curve = metrics["curves"]["per_class"][name]
        precision, recall, thresholds = skm.precision_recall_curve(positive, score)
        pr = curve.pr()
        assert np.array_equal(pr["thresholds"], thresholds)
        assert np.allclose(pr["precision"], precision, rtol=0, atol=1e-15)
        assert np.allclose(pr["recall"], recall, rtol=0, atol=1e-15)
        fpr, tpr, roc_thresholds = skm.roc_curve(positive, score, drop_intermediate=False)
        roc = curve.roc()
        assert np.array_equal(roc["thresholds"], roc_thresholds)
        assert np.allclose(roc["fpr"], fpr, rtol=0, atol=1e-15) and np.allclose(roc["tpr"], tpr, rtol=0, atol=1e-15)
    data = curves_npz(metrics["curves"], CLASSES)
    assert data == curves_npz(metrics["curves"], CLASSES)  # same curves, same bytes, same object digest
    back = read_curves(data)
    assert back["classes"] == CLASSES
    for original, stored in [(metrics["curves"]["micro"], back["micro"])] + [
            (metrics["curves"]["per_class"][name], back["per_class"][name]) for name in CLASSES]:
        assert np.array_equal(original.thresholds, stored.thresholds)
        assert np.array_equal(original.tps, stored.tps) and np.array_equal(original.fps, stored.fps)


def test_damaged_curves_file_is_one_clear_error():
    from lineage.errors import UserError

    with pytest.raises(UserError, match="curves.npz is damaged.*evaluate --force"):
        read_curves(b"PK\x03\x04 not really a zip")


def test_thinning_for_drawing_keeps_the_shape():
    rng = np.random.default_rng(0)
    steps = rng.random(1_000_000) < 0.3
    x = np.cumsum(~steps) / (~steps).sum()
    y = np.cumsum(steps) / steps.sum()
    thin_x, thin_y = thin_for_drawing(x, y, resolution=500)
    assert len(thin_x) < 4 * 500 + 2
    assert (thin_x[0], thin_y[0], thin_x[-1], thin_y[-1]) == (x[0], y[0], x[-1], y[-1])
    # Between kept points the curve never leaves the cells they span: within one cell of the original.
    at = np.searchsorted(thin_x, x, side="right") - 1
    assert np.max(np.abs(thin_y[np.clip(at, 0, len(thin_y) - 1)] - y)) <= 2 / 500
