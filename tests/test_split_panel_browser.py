"""The comparison's split panel in headless Chromium: a clicked row's class scores under A and B as paired bars,
group-by with both versions' spreads side by side, and the true-class score histogram under A and B.

The page is the real one (report/html.py with report/charts.py's specs and the inlined Vega bundle), opened from a
file with every other request aborted and recorded, under the page's own Content-Security-Policy.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from report import charts
from report.html import render_report
from report.metrics import compute_metrics, round_significant
from tests.browser import launch, open_offline, skip_without_browser
from tests.report_data import CLASSES, _predictions, _thumbnail
from tests.test_split_panel import LABELS, _crosstab, comparison_of

pytestmark = pytest.mark.browser

skip_without_browser()

PANEL = "#cmp-selected"
HISTOGRAM = "score_distributions_across_models.png"


def _page_html(frame, comparison, specs: dict, **options) -> str:
    return render_report(title="split panel", metrics=compute_metrics(frame, CLASSES), classes=CLASSES, plots={},
                         charts=specs, table=frame, comparison=comparison, comparison_labels=LABELS, lineage=[],
                         thumbnails={key: _thumbnail(index) for index, key in enumerate(frame["id"])}, **options)


@pytest.fixture(scope="module")
def split_page(tmp_path_factory):
    frame = _predictions()
    frame["id"] = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(len(frame))]
    comparison = comparison_of(frame)
    specs = {HISTOGRAM: charts.score_distributions_across_models(comparison, LABELS, bins=20)}
    folder = tmp_path_factory.mktemp("split")
    path = folder / "report.html"
    path.write_text(_page_html(frame, comparison, specs), encoding="utf-8")
    with launch() as browser:
        opened = open_offline(browser, path, viewport={"width": 1400, "height": 900})
        drawn = opened.page.evaluate("Report.charts.ready.then((views) => Object.keys(views))")
        yield {**opened.fields(), "browser": browser, "folder": folder, "frame": frame, "specs": specs,
               "comparison": comparison.set_index("id", drop=False), "drawn": drawn}


def _wait_until(page, expression: str, seconds: float = 10.0) -> None:
    """Poll from here: Playwright's wait_for_function uses eval, which the page's CSP refuses."""
    import time

    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        page.wait_for_timeout(50)


def _select(page, index: int) -> str:
    row = page.locator("#comparison tbody tr").nth(index)
    key = row.get_attribute("data-id")
    row.locator("td").last.click()
    _wait_until(page, f"document.querySelector('{PANEL}').getAttribute('data-id') === {key!r}")
    return key


def _bars(page) -> list[dict]:
    """What the paired-bars chart holds and what it drew: its data rows, and each drawn bar's datum."""
    return page.evaluate("""() => {
      const view = Report.charts.views["selected_image_scores"];
      const drawn = [];
      const walk = (node) => {
        if (!node) return;
        if (node.marktype === "rect") node.items.forEach((item) => drawn.push(item.datum));
        (node.items || []).forEach((item) => walk(item));
      };
      walk(view.scenegraph().root);
      return drawn.map((d) => ({cls: d["class"], model: d.model, score: d.score}));
    }""")


def _embedded(score) -> float:
    return float(round_significant(np.array([float(score)]))[0])


def test_the_page_draws_offline_without_errors(split_page):
    assert sorted(split_page["drawn"]) == sorted([*split_page["specs"], charts.SELECTED_SCORES])
    assert [url for url in split_page["requests"] if url != split_page["url"] and not url.startswith("data:")] == []
    assert split_page["problems"] == []


def test_a_clicked_row_shows_its_scores_under_both_versions_as_paired_bars(split_page):
    page, comparison = split_page["page"], split_page["comparison"]
    page.locator("#comparison").scroll_into_view_if_needed()
    page.evaluate("() => { window.untouched = true; window.barsView = Report.charts.views['selected_image_scores']; }")
    for index in (2, 7):
        key = _select(page, index)
        row = comparison.loc[key]
        bars = _bars(page)
        assert len(bars) == 2 * len(CLASSES)
        drawn = {(bar["cls"], bar["model"]): bar["score"] for bar in bars}
        for name in CLASSES:
            # The page embeds scores to SIGNIFICANT_DIGITS (report/metrics.py round_significant): those exactly.
            assert drawn[(name, f"A: {LABELS[0]}")] == _embedded(row[f"score_{name}_a"])
            assert drawn[(name, f"B: {LABELS[1]}")] == _embedded(row[f"score_{name}_b"])
        assert page.get_attribute("#comparison tbody tr.selected", "data-id") == key
        image = page.get_attribute(f"{PANEL} img.thumbnail", "src")
        assert image == page.evaluate("(id) => Report.thumbnails[id]", key)
        assert pd.isna(row["truth"]) or str(row["truth"]) in page.inner_text(f"{PANEL} .split-facts")
    # One chart redrawn in place: the page, its script state and the Vega view are the ones from before.
    assert page.evaluate("() => window.untouched === true && "
                         "window.barsView === Report.charts.views['selected_image_scores']")
    assert page.locator("#comparison tbody tr.selected").count() == 1


def test_grouping_shows_both_versions_spreads_side_by_side(split_page):
    page, comparison = split_page["page"], split_page["comparison"]
    page.fill("#cmp-filter", "")
    page.select_option("#cmp-group-by", "truth")
    header = page.inner_text("#cmp-groups thead")
    assert LABELS[0] in header and LABELS[1] in header
    shown_a, shown_b = _paired_spreads(page)
    assert shown_a == _crosstab(comparison, "truth", "guess_a")
    assert shown_b == _crosstab(comparison, "truth", "guess_b")
    assert shown_a != shown_b
    page.fill("#cmp-filter", 'x["split"] = "val"')  # the groups follow the filter
    val = comparison[comparison["split"] == "val"]
    lines = page.locator('#cmp-groups tbody tr[data-group="cat"] .paired-row').all()
    assert {line.get_attribute("data-value"): int(line.get_attribute("data-b")) for line in lines
            if int(line.get_attribute("data-b"))} == _crosstab(val, "truth", "guess_b")["cat"]
    page.fill("#cmp-filter", "")
    page.select_option("#cmp-group-by", "")


def test_the_true_class_score_histogram_draws_both_versions(split_page):
    page, comparison = split_page["page"], split_page["comparison"]
    box = page.locator(f'#comparison-section [data-chart="{HISTOGRAM}"]')
    box.scroll_into_view_if_needed()
    bars = box.locator("g.mark-rect path")
    fills = {bars.nth(index).get_attribute("fill") for index in range(bars.count())}
    assert fills == set(charts.PAIR_COLOURS)
    # One bar per non-empty bin of each series, at the slider's starting width (bins=20: 50 fine cells a bin).
    values = [comparison[column].to_numpy(dtype=float) for column in ("score_true_a", "score_true_b")]
    finite = np.concatenate([column[np.isfinite(column)] for column in values])
    low, span = finite.min(), finite.max() - finite.min()
    expected = sum(len({min(int((v - low) / span * charts.FINE_BINS), charts.FINE_BINS - 1) // 50
                        for v in column[np.isfinite(column)]}) for column in values)
    assert bars.count() == expected


def _paired_spreads(page) -> tuple[dict, dict]:
    """{group: {value: rows}} for A and for B, as the comparison's group table draws them."""
    shown_a, shown_b = {}, {}
    for group in page.locator("#cmp-groups tbody tr").all():
        key = group.get_attribute("data-group") or None
        for line in group.locator(".paired-row").all():
            value = line.get_attribute("data-value") or None
            for shown, side in ((shown_a, "data-a"), (shown_b, "data-b")):
                count = int(line.get_attribute(side))
                if count:
                    shown.setdefault(key, {})[value] = count
    return shown_a, shown_b


def test_a_cut_page_groups_both_versions_over_every_row(split_page):
    """Above the embed limit the side-by-side spreads are Python's counts over all rows, not the embedded ones."""
    frame, comparison = split_page["frame"], split_page["comparison"]
    path = split_page["folder"] / "cut.html"
    path.write_text(_page_html(frame, comparison.reset_index(drop=True), split_page["specs"], embed_limit=60),
                    encoding="utf-8")
    opened = open_offline(split_page["browser"], path)
    page = opened.page
    page.select_option("#cmp-group-by", "split")
    assert page.get_attribute("#cmp-groups-scope", "data-scope") == "exact"
    expected = (_crosstab(comparison, "split", "guess_a"), _crosstab(comparison, "split", "guess_b"))
    assert _paired_spreads(page) == expected
    page.close()
    assert opened.problems == []
