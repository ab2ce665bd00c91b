"""The report's threshold panel in headless Chromium: moving the minimum score shows the precision, recall
and number of unknowns that the same minimum gives when counted in Python over the table's rows.

The page is rendered from a table that already holds unknown guesses (infer.min_score), so the report's
other readers of the guess (confusion matrix, the table, the cards) are exercised with them too.
"""

from __future__ import annotations

import numpy as np
import pytest

from report.html import render_report
from report.metrics import THRESHOLD_STEPS, compute_metrics
from report.plots import confusion_heatmap
from test_thresholds import _operating_rows, _table
from tests.browser import offline_page, skip_without_browser

pytestmark = pytest.mark.browser

skip_without_browser()

CLASSES = ["cat", "dog", "<fox>", "(all)"]  # markup and the panel's own "(all)" as class names
MIN_SCORE = {"cat": 0.5, "<fox>": 0.45}


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    frame = _table(11, rows=500, signal=1.2, decimals=None, min_score=MIN_SCORE, classes=CLASSES)
    metrics = compute_metrics(frame, CLASSES, threshold_for={"precision": 0.8})
    html = render_report(title="Thresholds", metrics=metrics, classes=CLASSES,
                         plots={"confusion_counts.png": confusion_heatmap(metrics, CLASSES, normalised=False)},
                         table=frame, thumbnails={}, lineage=[])
    with offline_page(tmp_path_factory.mktemp("thresholds") / "report.html", html,
                      ready="#threshold-readout td[data-value]") as opened:
        yield {**opened.fields(), "frame": frame, "metrics": metrics}


def _readout(page) -> dict:
    cells = page.locator("#threshold-readout td[data-field]")
    return {cell.get_attribute("data-field"): (cell.get_attribute("data-value"), cell.inner_text())
            for cell in cells.all()}


def _expected(frame, name: str | None, step: int) -> dict:
    right, top, support = _operating_rows(frame, name, CLASSES)
    kept = top >= step / THRESHOLD_STEPS
    return {"precision": (right & kept).sum() / kept.sum() if kept.any() else None,
            "recall": (right & kept).sum() / support if support else None,
            "unknown": int((~kept).sum()), "kept": int(kept.sum())}


def _check(page, frame, name: str | None, step: int) -> dict:
    shown, expected = _readout(page), _expected(frame, name, step)
    for field in ("precision", "recall"):
        value, text = shown[field]
        if expected[field] is None:
            assert value == "" and "n/a" in text
        else:
            assert float(value) == pytest.approx(expected[field], abs=1e-12)
            assert text == f"{expected[field]:.4f}"
    assert int(shown["unknown"][0]) == expected["unknown"] and int(shown["kept"][0]) == expected["kept"]
    assert page.inner_text("#threshold-value") == f"{step / THRESHOLD_STEPS:.3f}"
    return expected


def test_opens_offline_without_errors(panel):
    assert panel["problems"] == []
    assert [url for url in panel["requests"] if url != panel["url"] and not url.startswith("data:")] == []


@pytest.mark.parametrize("choice,name", [(0, None), (1, "cat"), (3, "<fox>"), (4, "(all)")])
def test_moving_the_slider_shows_precision_recall_and_unknowns(panel, choice, name):
    page, frame = panel["page"], panel["frame"]
    page.select_option("#threshold-class", str(choice))
    seen = []
    for step in (0, 150, 225, 300, 400, THRESHOLD_STEPS):
        page.fill("#threshold-slider", str(step))
        seen.append(_check(page, frame, name, step))
    assert seen[0]["unknown"] == 0 and seen[-1]["kept"] <= 1  # nothing dropped at 0; almost all at 1
    assert len({entry["unknown"] for entry in seen}) >= 3  # the counts move with the slider
    page.focus("#threshold-slider")
    page.fill("#threshold-slider", "299")
    page.keyboard.press("ArrowRight")  # a user's step, not a set value
    _check(page, frame, name, 300)


def test_the_target_thresholds_and_the_unknowns_now_are_listed(panel):
    page, metrics = panel["page"], panel["metrics"]
    for name in CLASSES:
        row = page.locator(f'#threshold-targets tr[data-class="{name}"]')
        point = metrics["thresholds"]["per_class"][name]
        cells = row.locator("td").all_inner_texts()
        if point["threshold"] is None:
            assert cells[0] == point["reason"]
        else:
            assert float(cells[0]) == pytest.approx(point["threshold"], rel=1e-8)
            assert cells[1] == f"{point['precision']:.4f}" and point["precision"] >= 0.8
        assert int(cells[-1].replace(",", "")) == metrics["per_class"][name]["unknown"]
    unknown = metrics["unknown"]["count"]
    assert unknown > 0
    every = page.locator("#threshold-targets tr[data-all]").locator("td").all_inner_texts()
    assert float(every[0]) == pytest.approx(metrics["thresholds"]["all"]["threshold"], rel=1e-8)
    assert int(every[-1].replace(",", "")) == unknown
    assert page.inner_text('.card[data-metric="unknown guesses"] .value').startswith(f"{unknown:,}")
    assert page.locator('#predictions tbody tr').count() > 0  # the table draws rows whose guess is unknown


def test_dragging_the_slider_updates_while_the_button_is_down(panel):
    """A drag fires `input` as it goes and `change` only on release: the numbers follow the pointer."""
    page, frame = panel["page"], panel["frame"]
    page.select_option("#threshold-class", "2")  # dog
    page.fill("#threshold-slider", "0")
    box = page.locator("#threshold-slider").bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, middle, steps=8)
    step = int(page.input_value("#threshold-slider"))
    assert step > THRESHOLD_STEPS // 3
    _check(page, frame, "dog", step)  # before the button is released
    page.mouse.up()
