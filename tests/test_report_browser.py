"""report.html in a real browser: offline, filterable, groupable, no script errors.

Drives Debian's /usr/bin/chromium through Playwright (no browser download). The
filter is the real tables/query.js, and its counts are checked against
pandas on the same table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from report.html import render_report
from report.metrics import compute_metrics
from report.plots import confusion_heatmap
from tests.browser import offline_page, skip_without_browser
from tests.report_data import CLASSES, ROWS, UNLABELLED, _predictions, _thumbnail

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 100  # report.js renders this many rows, then "Show more"


skip_without_browser()


def _comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` joined with a model B that guesses every fourth image differently."""
    from tables.compare import join_predictions

    other = frame.copy()
    changed = np.arange(len(frame)) % 4 == 0
    other.loc[changed, "guess"] = np.roll(frame["guess"].to_numpy(), 3)[changed]
    joined, _ = join_predictions(frame, other, "model:v1", "model:v2")
    return joined


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The rendered report open in Chromium, with every request and console error recorded."""
    frame = _predictions()
    metrics = compute_metrics(frame, CLASSES)
    html = render_report(
        title="Report <test>", metrics=metrics, classes=CLASSES,
        plots={"confusion_counts.png": confusion_heatmap(metrics, CLASSES, normalised=False)},
        table=frame, thumbnails={key: _thumbnail(index) for index, key in enumerate(frame["id"])},
        lineage=[{"ref": "predictions:v3", "digest": "ab" * 32, "made_by": "infer",
                  "inputs": ["model:v2", "split:v1"]},
                 {"ref": "model:v2", "digest": "cd" * 32, "made_by": "train", "inputs": ["split:v1"]}],
        comparison=_comparison(frame), comparison_labels=("model:v1", "model:v2"))
    with offline_page(tmp_path_factory.mktemp("report") / "report.html", html, ready="#predictions tbody tr") as opened:
        yield {**opened.fields(), "frame": frame, "html": html}


def _set_filter(page, text: str) -> None:
    page.fill("#filter", text)


def _shown_count(page) -> int:
    return int(page.get_attribute("#row-count", "data-count"))


def test_makes_no_request_but_the_file_itself(report):
    others = [url for url in report["requests"] if url != report["url"] and not url.startswith("data:")]
    assert others == []
    assert report["requests"][0] == report["url"]


def test_opens_without_console_errors(report):
    assert report["problems"] == []
    assert report["page"].title() == "Report <test>"


def test_filter_count_matches_pandas(report):
    page, frame = report["page"], report["frame"]
    _set_filter(page, 'x["truth"] = "cat" and x["guess"] != "cat"')
    expected = int(((frame["truth"] == "cat") & (frame["guess"] != "cat")).sum())
    assert 0 < expected < ROWS
    assert _shown_count(page) == expected
    assert page.locator("#predictions tbody tr").count() == min(expected, PAGE_SIZE)
    assert page.is_hidden("#filter-error")

    _set_filter(page, 'x["confidence"] >= 0.5 or x["split"] = "val"')
    expected = int(((frame["confidence"] >= 0.5) | (frame["split"] == "val")).sum())
    assert _shown_count(page) == expected


def test_group_by_truth_counts_each_group(report):
    page, frame = report["page"], report["frame"]
    _set_filter(page, "")
    page.select_option("#group-by", "truth")
    shown = {row.get_attribute("data-group"): int(row.locator("td.count").inner_text())
             for row in page.locator("#groups tbody tr").all()}
    expected = frame["truth"].fillna("").value_counts().to_dict()
    assert shown == expected
    assert shown[""] == UNLABELLED

    _set_filter(page, 'x["guess"] = "dog"')  # groups follow the filter
    shown = {row.get_attribute("data-group"): int(row.locator("td.count").inner_text())
             for row in page.locator("#groups tbody tr").all()}
    assert shown == frame.loc[frame["guess"] == "dog", "truth"].fillna("").value_counts().to_dict()
    page.select_option("#group-by", "")
    assert page.is_hidden("#groups")


def test_invalid_filter_shows_the_column(report):
    from tables.query import QuerySyntaxError, parse

    page = report["page"]
    _set_filter(page, 'x["truth"] = "cat"')
    before = _shown_count(page)
    bad = 'x["truth"] = "cat" and x["guess"] !'
    with pytest.raises(QuerySyntaxError) as python_error:
        parse(bad)
    _set_filter(page, bad)
    assert page.is_visible("#filter-error")
    assert page.get_attribute("#filter-error", "data-column") == str(python_error.value.column)
    assert f"column {python_error.value.column}" in page.inner_text("#filter-error")
    assert _shown_count(page) == before  # the last good result stays
    _set_filter(page, "")
    assert page.is_hidden("#filter-error")


def test_sorts_by_a_clicked_header(report):
    page, frame = report["page"], report["frame"]
    _set_filter(page, "")
    header = page.locator('#predictions th[data-column="confidence"]')
    header.click()
    header.click()  # second click: descending
    assert header.get_attribute("aria-sort") == "descending"
    first = page.locator("#predictions tbody tr").first.get_attribute("data-id")
    assert first == frame.loc[frame["confidence"].idxmax(), "id"]


def test_pages_rows_and_shares_thumbnails(report):
    page, frame, html = report["page"], report["frame"], report["html"]
    _set_filter(page, "")
    assert page.locator("#predictions tbody tr").count() == PAGE_SIZE
    while page.is_visible("#show-more"):
        page.click("#show-more")
    assert page.locator("#predictions tbody tr").count() == ROWS
    assert page.is_hidden("#show-more")
    assert page.locator("#predictions img.thumbnail").count() == ROWS
    sample = page.get_attribute("#predictions img.thumbnail", "src")
    assert sample.startswith("data:image/jpeg;base64,")
    assert html.count(sample.split(",", 1)[1]) == 1  # embedded once, looked up by id


def test_comparison_is_side_by_side_and_filterable(report):
    page = report["page"]
    comparison = _comparison(report["frame"])
    assert "model:v1 vs model:v2" in page.inner_text("#comparison-section h2")
    headers = page.locator("#comparison thead th[data-column]")
    names = [headers.nth(index).get_attribute("data-column") for index in range(headers.count())]
    assert names[names.index("guess_a") + 1] == "guess_b"
    assert "score_cat_a" not in names  # drawn columns only; still filterable below
    assert "model:v2" in page.inner_text('#comparison th[data-column="guess_b"]')
    page.fill("#cmp-filter", 'x["correct_a"] = true and x["correct_b"] = false and x["score_cat_b"] >= 0')
    broke = (comparison["correct_a"] == True) & (comparison["correct_b"] == False)  # noqa: E712
    assert int(page.get_attribute("#cmp-row-count", "data-count")) == int(broke.sum()) > 0
    assert page.locator("#comparison tbody tr.broken").count() == int(broke.sum())


def test_lineage_is_shown(report):
    page = report["page"]
    assert page.locator("#lineage-table tbody tr").count() == 2
    assert page.get_attribute('#lineage-table tr[data-ref="predictions:v3"] a', "href") == "#lineage-model:v2"


def test_a_cut_page_opens_says_what_it_holds_and_filters(report, tmp_path):
    """Above the embed limit (a small one here): the note, exact group counts with an empty filter,
    and a filter over the embedded rows that says so."""
    from tests.test_report_selection import CLASSES as BIG_CLASSES, predictions

    frame = predictions(rows=2_000)
    other = frame.copy()
    other.loc[other.index % 3 == 0, "guess"] = "ant"
    from tables.compare import join_predictions

    joined, _ = join_predictions(frame, other, "predictions:v1", "predictions:v2")
    html = render_report(title="cut", metrics=compute_metrics(frame, BIG_CLASSES), classes=BIG_CLASSES, plots={},
                         table=frame, thumbnails=lambda ids: {key: _thumbnail(i) for i, key in enumerate(ids)},
                         lineage=[], comparison=joined, comparison_labels=("predictions:v1", "predictions:v2"),
                         table_ref="predictions:v1", embed_limit=500)
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    problems = []
    if True:  # in the module's browser: Playwright's sync API runs one driver at a time
        page = report["page"].context.browser.new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("#predictions tbody tr")
        assert "500 of 2,000 rows" in page.text_content("#embedded-note")
        assert "python pipeline.py table predictions:v1" in page.text_content("#embedded-note")
        assert "500 of 2,000 rows" in page.text_content("#cmp-embedded-note")
        assert page.text_content("#row-count") == "500 of 2,000 rows embedded"
        page.select_option("#group-by", "truth")
        counts = {row.get_attribute("data-group"): int(row.query_selector(".count").text_content())
                  for row in page.query_selector_all("#groups tbody tr")}
        assert counts["cow"] == int((frame["truth"] == "cow").sum())  # over all 2,000 rows, not the 500
        assert page.get_attribute("#groups-scope", "data-scope") == "exact"
        page.fill("#filter", 'x["chosen"] = "mistake"')
        mistakes = int((frame["truth"].notna() & (frame["truth"] != frame["guess"])).sum())
        assert int(page.get_attribute("#row-count", "data-count")) == mistakes
        assert "embedded rows match" in page.text_content("#row-count")
        assert page.get_attribute("#groups-scope", "data-scope") == "embedded"
        assert sum(int(cell.text_content()) for cell in page.query_selector_all("#groups tbody .count")) == mistakes
        page.close()
    assert problems == []
