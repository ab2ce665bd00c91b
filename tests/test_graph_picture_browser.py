"""The lineage picture in a real browser: a click on a node shows its summary, offline.

Drives Debian's /usr/bin/chromium through Playwright (no browser download), on the report
(report/html.py, the ancestry of what it shows) and on `lineage --format html`, both drawn from
the branched store of test_graph_picture.py. Every request but the page itself is aborted and
recorded: there must be none.
"""

from __future__ import annotations

import pytest

from conftest import run_cli
from lineage import draw
from lineage.graph import Graph
from test_graph_picture import branched  # noqa: F401  (the store, a module fixture)
from tests.browser import launch, open_offline, skip_without_browser

pytestmark = pytest.mark.browser

skip_without_browser()


@pytest.fixture(scope="module")
def browser():
    with launch() as launched:
        yield launched


def _open(browser, path):
    """The page at `path`, with every other request aborted and listed, and every console problem listed."""
    opened = open_offline(browser, path)
    return opened.page, opened.requests, opened.problems


def _field(page, name: str) -> str:
    return page.text_content(f'.graph-summary dd[data-field="{name}"]')


def _report(store, ref: str) -> str:
    """The evaluation report's page for `ref`, with the lineage evaluate gives it (stages/evaluate.py)."""
    from report.html import render_report
    from report.metrics import compute_metrics
    from stages.evaluate import lineage_of
    from lineage.contract import Artifact
    import pandas as pd

    graph = Graph.load(store)
    classes = ["Aves", "Fungi"]
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "truth": ["Aves", "Fungi", "Aves", "Fungi"],
                          "guess": ["Aves", "Fungi", "Fungi", "Fungi"], "confidence": [0.9, 0.8, 0.6, 0.7],
                          "score_Aves": [0.9, 0.2, 0.4, 0.3], "score_Fungi": [0.1, 0.8, 0.6, 0.7]})
    lineage = lineage_of(Artifact.open(store, graph, graph.resolve(ref)))
    return render_report(title=f"Evaluation of {ref}", metrics=compute_metrics(frame, classes), classes=classes,
                         plots={}, table=frame, thumbnails={}, lineage=lineage, table_ref=ref)


def test_a_report_graph_node_shows_its_summary_with_no_request(branched, browser, tmp_path):  # noqa: F811
    root, store = branched
    graph = Graph.load(store)
    path = tmp_path / "report.html"
    path.write_text(_report(store, "predictions:v4"), encoding="utf-8")
    page, requests, problems = _open(browser, path)
    drawn = sorted(page.eval_on_selector_all("#lineage .node.version", "nodes => nodes.map(n => n.dataset.key)"))
    assert drawn == ["model:v3", "predictions:v4", "raw-data:v1", "split:v1", "split:v2"]  # its ancestry only
    assert page.is_visible("#lineage-table")  # the table stays, under the picture
    page.click('#lineage .node[data-key="split:v2"]')
    assert page.text_content(".graph-summary h3") == "split:v2"
    assert _field(page, "digest") == graph.resolve("split:v2").digest
    assert _field(page, "made by") == f"split run {graph.resolve('split:v2').run}"
    assert "seed: 2" in _field(page, "params").splitlines()
    assert _field(page, "counts").splitlines() == ["test: Aves 1, Fungi 1, Insecta 1",
                                                   "train: Aves 3, Fungi 3, Insecta 3",
                                                   "val: Aves 2, Fungi 2, Insecta 2"]
    assert page.get_attribute('#lineage .node[data-key="split:v2"]', "class") == "node version selected"
    page.click('#lineage .node.run[aria-label="infer"]')
    assert page.text_content(".graph-summary h3") == "infer (run)"
    assert _field(page, "inputs") == "model:v3, split:v1" and _field(page, "outputs") == "predictions:v4"
    assert [url for url in requests if url != path.as_uri()] == [] and problems == []


def test_the_lineage_html_page_answers_clicks_and_the_keyboard_offline(branched, browser, tmp_path):  # noqa: F811
    root, store = branched
    graph = Graph.load(store)
    path = tmp_path / "lineage.html"
    result = run_cli("lineage", "--format", "html", "--out", str(path), "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    page, requests, problems = _open(browser, path)
    assert page.eval_on_selector_all(".node", "nodes => nodes.length") == 19
    page.click('.node[data-key="model:v2"]')
    assert _field(page, "aliases") == "best"
    assert _field(page, "digest") == graph.resolve("model:v2").digest
    assert "seed: 2" in _field(page, "params").splitlines()
    page.focus('.node[data-key="eval:v1"]')
    page.keyboard.press("Enter")
    assert page.text_content(".graph-summary h3") == "eval:v1"
    assert _field(page, "inputs") == "predictions:v4, predictions:v1"
    assert _field(page, "metrics") == "accuracy: 0.75"
    assert [url for url in requests if url != path.as_uri()] == [] and problems == []


def test_a_hostile_name_stays_text_in_the_panel(browser, tmp_path):
    hostile = '<img src=x onerror="document.title=1">'
    picture = draw.lay_out(draw.picture([{"ref": f"{hostile}:v1", "digest": "ab" * 32, "made_by": hostile,
                                          "run": "r1", "inputs": [], "params": {"p": hostile}}]))
    path = tmp_path / "hostile.html"
    path.write_text(draw.html_page(picture, "hostile"), encoding="utf-8")
    page, requests, problems = _open(browser, path)
    page.click(".node.version")
    assert _field(page, "made by") == f"{hostile} run r1"
    assert page.title() == "hostile" and page.query_selector(".graph-summary img") is None
    assert [url for url in requests if url != path.as_uri()] == [] and problems == []
