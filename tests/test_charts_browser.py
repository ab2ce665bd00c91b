"""The live charts of report.html in headless Chromium: hover, legend, bin slider, confusion cell -> table.

The page is the real one (report/html.py with report/charts.py's specs and the inlined Vega bundle), opened
from a file with every other request aborted and recorded; the page's own Content-Security-Policy is in force,
so a chart that needed eval or a fetch would fail here.
"""

from __future__ import annotations

import hashlib

import pytest

from report import charts
from report.html import render_report
from report.metrics import compute_metrics
from tests.browser import offline_page, skip_without_browser
from tests.report_data import CLASSES, _predictions, _thumbnail

pytestmark = pytest.mark.browser

skip_without_browser()

# Where a data value is on the screen: the view's own scales, from its drawing's corner (padding, then origin).
SCREEN_POINT = """([name, x, y, band]) => {
  const view = Report.charts.views[name];
  const box = view.container().querySelector("svg, canvas").getBoundingClientRect();
  const [left, top] = view.origin();  // past the axes and title, but not the padding around the whole view
  const padding = view.padding();
  const half = (scale) => band ? scale.bandwidth() / 2 : 0;
  return [box.left + padding.left + left + view.scale("x")(x) + half(view.scale("x")),
          box.top + padding.top + top + view.scale("y")(y) + half(view.scale("y"))];
}"""
HISTOGRAM = "class_distributions.png"
BARS = 'document.querySelectorAll("[data-chart=\\"class_distributions.png\\"] g.mark-rect path").length'


@pytest.fixture(scope="module")
def chart_page(tmp_path_factory):
    frame = _predictions()
    # Content digests, as real ids are: the chart shows an id's first 12 characters, which must tell images apart.
    frame["id"] = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(len(frame))]
    metrics = compute_metrics(frame, CLASSES)
    specs = charts.standard_charts(metrics)
    specs["score_scatter.png"] = charts.score_scatter(frame, "cat", "dog", CLASSES)
    specs["class_distributions.png"] = charts.class_distributions(frame, "cat", "dog", bins=30)
    html = render_report(title="charts", metrics=metrics, classes=CLASSES, plots={}, charts=specs, table=frame,
                         thumbnails={key: _thumbnail(index) for index, key in enumerate(frame["id"])}, lineage=[])
    path = tmp_path_factory.mktemp("charts") / "report.html"
    with offline_page(path, html, viewport={"width": 1400, "height": 900}) as opened:
        drawn = opened.page.evaluate("Report.charts.ready.then((views) => Object.keys(views))")
        yield {**opened.fields(), "frame": frame, "specs": specs, "drawn": drawn}


def _point(page, name: str, x, y, band: bool = False) -> tuple[float, float]:
    page.locator(f'[data-chart="{name}"]').scroll_into_view_if_needed()
    return page.evaluate(SCREEN_POINT, [name, x, y, band])


def _wait_until(page, expression: str, seconds: float = 10.0) -> None:
    """Poll a page expression from here: Playwright's wait_for_function evaluates its predicate with eval, which the
    page's CSP refuses."""
    import time

    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        page.wait_for_timeout(50)


def test_every_chart_draws_offline_without_errors(chart_page):
    assert sorted(chart_page["drawn"]) == sorted(chart_page["specs"])
    assert [url for url in chart_page["requests"] if url != chart_page["url"] and not url.startswith("data:")] == []
    assert chart_page["problems"] == []  # a CSP violation (eval) or a Vega warning would be listed here


def test_hover_on_a_pr_curve_shows_threshold_precision_and_recall(chart_page):
    page, rows = chart_page["page"], charts.points(chart_page["specs"]["pr_curves.png"])
    row = next(row for row in rows if row["curve"] == "owl" and row["threshold"] is not None and row["recall"] > 0.5)
    page.mouse.move(*_point(page, "pr_curves.png", row["recall"], row["precision"]))
    tooltip = page.locator("#vg-tooltip-element.visible")
    tooltip.wait_for(timeout=10_000)
    cells = tooltip.locator("td").all_inner_texts()
    shown = dict(zip(cells[0::2], cells[1::2]))
    assert set(shown) == {"class", "threshold", "precision", "recall"}
    # The nearest point may be a neighbour on another curve: it must be a real point of the curves, with its threshold.
    match = [candidate for candidate in rows if candidate["curve"] == shown["class"]
             and candidate["threshold"] is not None and f"{candidate['precision']:.4f}" == shown["precision"]
             and f"{candidate['recall']:.4f}" == shown["recall"]]
    assert match, shown
    assert float(shown["threshold"]) == pytest.approx(match[0]["threshold"], rel=1e-3)
    page.mouse.move(0, 0)


def test_the_bin_slider_changes_the_number_of_bars(chart_page):
    page, frame = chart_page["page"], chart_page["frame"]
    page.locator('[data-chart="class_distributions.png"]').scroll_into_view_if_needed()
    before = page.evaluate(BARS)
    slider = page.locator('[data-chart="class_distributions.png"] input[type="range"]')
    values = frame[["score_cat", "score_dog"]].to_numpy(dtype=float)
    widest = float(slider.get_attribute("max"))
    slider.evaluate("(input, value) => { input.value = value; input.dispatchEvent(new Event('input')); }",
                    str(widest))
    _wait_until(page, f"{BARS} !== {before}")
    after = page.evaluate(BARS)
    # At the widest bins (a fifth of the range) each series has at most five bars, one per non-empty bin.
    span = values.max() - values.min()
    expected = sum(len({min(int((v - values.min()) / span * 1000), 999) // 200 for v in column})
                   for column in values.T)
    assert after == expected < before


def test_a_confusion_cell_filters_the_table_sorted_by_score(chart_page):
    page, frame = chart_page["page"], chart_page["frame"]
    page.fill("#filter", "")
    page.mouse.click(*_point(page, "confusion_counts.png", "fox", "cat", band=True))  # x = guess fox, y = truth cat
    assert page.input_value("#filter") == 'x["truth"] = "cat" and x["guess"] = "fox"'
    expected = frame[(frame["truth"] == "cat") & (frame["guess"] == "fox")].sort_values("score_fox", ascending=False)
    assert 0 < len(expected) == int(page.get_attribute("#row-count", "data-count"))
    shown = [row.get_attribute("data-id") for row in page.locator("#predictions tbody tr").all()]
    assert shown == expected["id"].tolist()
    assert page.get_attribute('#predictions th[data-column="score_fox"]', "aria-sort") == "descending"
    assert page.locator("#predictions tbody img.thumbnail").count() == len(expected)  # with its images
    page.fill("#filter", "")


def test_a_legend_click_shows_that_series_alone(chart_page):
    page = chart_page["page"]
    page.locator(f'[data-chart="{HISTOGRAM}"]').scroll_into_view_if_needed()
    bars = f'[data-chart="{HISTOGRAM}"] g.mark-rect path'
    faded = (f"Array.from(document.querySelectorAll('{bars}'))"
             ".filter((p) => p.getAttribute('opacity') === '0.05').length")
    assert page.evaluate(faded) == 0
    page.locator(f'[data-chart="{HISTOGRAM}"] g.role-legend-label text').nth(1).click()  # "score dog"
    _wait_until(page, f"{faded} > 0")
    fills = page.evaluate(f"Array.from(document.querySelectorAll('{bars}')).map((p) => [p.getAttribute('fill'), "
                          "p.getAttribute('opacity')])")
    assert {fill for fill, opacity in fills if opacity == "0.05"} == {"#d62728"}  # score cat's bars, only
    page.locator(f'[data-chart="{HISTOGRAM}"] g.role-legend-label text').nth(1).dblclick()


def test_hovering_a_scatter_point_shows_its_image_and_scores(chart_page):
    page, rows = chart_page["page"], charts.points(chart_page["specs"]["score_scatter.png"])
    aim = max(rows, key=lambda row: row["x"])  # an outlier, nearly alone on the chart
    x, y = _point(page, "score_scatter.png", aim["x"], aim["y"])
    side = page.locator('[data-chart-side="score_scatter.png"]')
    # A circle is ~4 px wide: sweep the pointer over the spot until it is on one.
    for dx, dy in [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (2, 0), (0, 2), (-2, 0), (0, -2)]:
        page.mouse.move(x + dx, y + dy)
        page.wait_for_timeout(30)
        if side.get_attribute("data-id"):
            break
    shown = side.get_attribute("data-id")
    assert shown == aim["id"]
    row = aim
    image = side.locator("img.thumbnail").get_attribute("src")
    whole_id = next(key for key in chart_page["frame"]["id"] if key.startswith(shown))
    table_image = page.evaluate("(id) => Report.thumbnails[id]", whole_id)
    assert image == table_image and image.startswith("data:image/jpeg;base64,")
    text = side.inner_text()
    assert f"{row['x']:.4f}" in text and f"{row['y']:.4f}" in text and row["truth"] in text
