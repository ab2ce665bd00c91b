"""The dataset page (report/dataset.py) in a real browser: offline, a split x class chart whose counts match
pandas, previews grouped by label and by split, one filter (the real tables/query.js) over both, and a page
cut to a sample that keeps its counts exact and says what it holds.

Drives Debian's /usr/bin/chromium through Playwright, as tests/test_report_browser.py does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.report_data import _thumbnail
from tests.browser import launch, open_offline, skip_without_browser, watch_problems

skip_without_browser()

from report.dataset import render_dataset_page  # noqa: E402

pytestmark = pytest.mark.browser

CLASSES = ["owl", "cat", "dog"]  # the version's order, not alphabetical
PER_GROUP = 24  # dataset.js draws this many thumbnails per group


def _dataset(rows: int, seed: int = 3) -> pd.DataFrame:
    """A split's table: tables/datasets.py's columns; "dog" has no test images."""
    rng = np.random.default_rng(seed)
    label = np.asarray(CLASSES, dtype=object)[rng.integers(0, 3, rows)]
    split = np.asarray(["train", "val", "test"], dtype=object)[rng.choice(3, rows, p=[0.7, 0.2, 0.1])]
    split[(label == "dog") & (split == "test")] = "val"
    return pd.DataFrame({
        "id": [f"{index:064x}" for index in range(rows)], "path": [f"{lab}/{i}.png" for i, lab in enumerate(label)],
        "label": label, "split": split, "format": np.where(np.arange(rows) % 4 == 0, "JPEG", "PNG"),
        "width": rng.integers(16, 64, rows), "height": rng.integers(16, 64, rows),
        "bytes": rng.integers(100, 900, rows),
    })


def _thumbnails(ids: list[str]) -> dict[str, bytes]:
    return {key: _thumbnail(index) for index, key in enumerate(ids)}


def _open(browser, path, problems):
    page = browser.new_page()
    watch_problems(page, problems)
    page.goto(path.as_uri())
    page.wait_for_selector("#chart tbody tr")
    return page


@pytest.fixture(scope="module")
def browser():
    with launch() as launched:
        yield launched


@pytest.fixture(scope="module")
def dataset_page(browser, tmp_path_factory):
    frame = _dataset(400)
    html = render_dataset_page(title="Dataset <split:v1>", ref="split:v1", frame=frame, classes=CLASSES,
                               thumbnails=_thumbnails)
    path = tmp_path_factory.mktemp("dataset") / "split.html"
    path.write_text(html, encoding="utf-8")
    opened = open_offline(browser, path)
    opened.page.wait_for_selector("#chart tbody tr")
    yield {**opened.fields(), "frame": frame}
    opened.page.close()


def _chart(page) -> dict[tuple[str, str], int]:
    """(label, split) -> the count the chart draws, read from its cells."""
    counts = {}
    for row in page.query_selector_all("#chart tbody tr[data-label]"):
        for cell in row.query_selector_all("td.bar-cell"):
            counts[(row.get_attribute("data-label"), cell.get_attribute("data-split"))] = \
                int(cell.get_attribute("data-count"))
    return counts


def _crosstab(frame: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {key: int(n) for key, n in frame.groupby(["label", "split"]).size().items() if n}


def test_opens_offline_without_errors(dataset_page):
    others = [url for url in dataset_page["requests"] if url != dataset_page["url"]]
    assert others == [] and dataset_page["problems"] == []
    assert dataset_page["page"].title() == "Dataset <split:v1>"


def test_chart_is_the_split_by_class_count_in_order(dataset_page):
    page, frame = dataset_page["page"], dataset_page["frame"]
    drawn = _chart(page)
    assert {key: n for key, n in drawn.items() if n} == _crosstab(frame)
    assert drawn[("dog", "test")] == 0  # an empty cell is drawn, as zero
    assert [r.get_attribute("data-label") for r in page.query_selector_all("#chart tbody tr[data-label]")] == CLASSES
    assert [h.get_attribute("data-split") for h in page.query_selector_all("#chart thead th[data-split]")] == \
        ["train", "val", "test"]
    totals = {c.get_attribute("data-split"): int(c.get_attribute("data-count"))
              for c in page.query_selector_all("#chart tr.totals td[data-split]")}
    assert totals == frame["split"].value_counts().to_dict()
    assert page.get_attribute("#chart-scope", "data-scope") == "exact"


def test_filter_narrows_chart_and_previews_as_pandas_does(dataset_page):
    page, frame = dataset_page["page"], dataset_page["frame"]
    page.fill("#filter", 'x["format"] = "JPEG" and x["width"] >= 30')
    kept = frame[(frame["format"] == "JPEG") & (frame["width"] >= 30)]
    assert 0 < len(kept) < len(frame)
    assert int(page.get_attribute("#match-count", "data-count")) == len(kept)
    assert {key: n for key, n in _chart(page).items() if n} == _crosstab(kept)
    groups = {g.get_attribute("data-group"): int(g.get_attribute("data-count"))
              for g in page.query_selector_all("#gallery .preview-group")}
    assert groups == kept["label"].value_counts().to_dict()
    shown = [f.get_attribute("data-id") for f in page.query_selector_all("#gallery figure.preview")]
    assert set(shown) <= set(kept["id"]) and len(shown) == sum(min(n, PER_GROUP) for n in groups.values())
    assert page.query_selector_all("#gallery img.thumbnail")[0].get_attribute("src").startswith("data:image/jpeg")
    page.fill("#filter", "")


def test_previews_group_by_label_then_by_split(dataset_page):
    page, frame = dataset_page["page"], dataset_page["frame"]
    page.fill("#filter", "")
    order = [g.get_attribute("data-group") for g in page.query_selector_all("#gallery .preview-group")]
    assert order == CLASSES
    owl = page.query_selector('#gallery .preview-group[data-group="owl"]')
    assert len(owl.query_selector_all("figure.preview")) == min(PER_GROUP, int((frame["label"] == "owl").sum()))
    page.select_option("#gallery-by", "split")
    groups = {g.get_attribute("data-group"): int(g.get_attribute("data-count"))
              for g in page.query_selector_all("#gallery .preview-group")}
    assert list(groups) == ["train", "val", "test"] and groups == frame["split"].value_counts().to_dict()
    page.click('#gallery .preview-group[data-group="val"] h3')  # a heading narrows to its group
    assert page.input_value("#filter") == 'x["split"] = "val"'
    assert int(page.get_attribute("#match-count", "data-count")) == int((frame["split"] == "val").sum())
    page.select_option("#gallery-by", "label")
    page.fill("#filter", "")


def test_a_chart_cell_click_filters_to_it(dataset_page):
    page, frame = dataset_page["page"], dataset_page["frame"]
    page.fill("#filter", "")
    page.click('#chart tr[data-label="cat"] td[data-split="train"]')
    assert page.input_value("#filter") == '(x["label"] = "cat") and x["split"] = "train"'
    expected = int(((frame["label"] == "cat") & (frame["split"] == "train")).sum())
    assert int(page.get_attribute("#match-count", "data-count")) == expected
    page.fill("#filter", "")


def test_a_bad_filter_says_where_and_keeps_the_last_view(dataset_page):
    page = dataset_page["page"]
    page.fill("#filter", 'x["labl"] = "cat"')
    assert page.is_visible("#filter-error") and "labl" in page.text_content("#filter-error")
    assert page.get_attribute("#filter-error", "data-column") is None
    page.fill("#filter", 'x["label"] = = "cat"')
    assert page.get_attribute("#filter-error", "data-column") == "14"  # the second "=", as the CLI says
    assert page.text_content("#filter-error pre").endswith(" " * 13 + "^")
    assert page.get_attribute("#chart-scope", "data-scope") == "exact"  # the chart still shows the last view
    page.fill("#filter", "")
    assert page.is_hidden("#filter-error")


def test_a_cut_page_keeps_exact_counts_and_every_cell(browser, tmp_path):
    frame = _dataset(3_000, seed=5)
    rare = (frame["label"] == "owl") & (frame["split"] == "test")
    frame.loc[rare, "split"] = "train"
    frame.loc[frame.index[-4:], ["label", "split"]] = ["owl", "test"]  # a rare cell, last in table order
    made = []
    html = render_dataset_page(title="cut", ref="split:v2", frame=frame, classes=CLASSES, limit=300,
                               thumbnails=lambda ids: made.extend(ids) or _thumbnails(ids))
    assert len(made) == 300  # thumbnails for the embedded images only
    payload = json.loads(html.split('id="dataset-data">')[1].split("</script>")[0])
    embedded = pd.DataFrame(payload["rows"], columns=payload["columns"])
    assert set(zip(embedded["label"], embedded["split"])) == set(_crosstab(frame))  # every (class, split) cell
    path = tmp_path / "cut.html"
    path.write_text(html, encoding="utf-8")
    problems = []
    page = _open(browser, path, problems)
    assert "300 of 3,000 images" in page.text_content("#embedded-note")
    assert "python pipeline.py table split:v2" in page.text_content("#embedded-note")
    assert {key: n for key, n in _chart(page).items() if n} == _crosstab(frame)  # over all 3,000
    page.fill("#filter", 'x["label"] = "owl"')
    assert page.get_attribute("#chart-scope", "data-scope") == "embedded"
    assert int(page.get_attribute("#match-count", "data-count")) == int((embedded["label"] == "owl").sum())
    page.close()
    assert problems == []


def test_a_raw_data_page_has_one_column_of_unsplit_images(browser, tmp_path):
    frame = _dataset(60).assign(split=None)
    path = tmp_path / "raw.html"
    path.write_text(render_dataset_page(title="raw", ref="raw-data:v1", frame=frame, classes=CLASSES,
                                        thumbnails=_thumbnails), encoding="utf-8")
    problems = []
    page = _open(browser, path, problems)
    assert [h.get_attribute("data-split") for h in page.query_selector_all("#chart thead th[data-split]")] == \
        ["(no split)"]
    assert {label: n for (label, _), n in _chart(page).items()} == frame["label"].value_counts().to_dict()
    page.fill("#filter", 'x["split"] = null and x["label"] = "cat"')
    assert int(page.get_attribute("#match-count", "data-count")) == int((frame["label"] == "cat").sum())
    page.close()
    assert problems == []
