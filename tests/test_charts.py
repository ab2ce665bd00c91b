"""report/charts.py: the Vega-Lite specs hold the real numbers, re-bin exactly, and render to PNG."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from lineage.errors import UserError
from report import charts
from report.html import render_report
from report.metrics import compute_metrics
from report.plots import thin_for_drawing
from tests.report_data import CLASSES, _predictions


@pytest.fixture(scope="module")
def frame():
    return _predictions()


@pytest.fixture(scope="module")
def metrics(frame):
    return compute_metrics(frame, CLASSES)


def test_pr_points_carry_their_own_threshold(metrics):
    rows = charts.points(charts.pr_curves(metrics, CLASSES))
    for name in CLASSES:
        curve = metrics["curves"]["per_class"][name].pr()
        drawn = [row for row in rows if row["curve"] == name]
        assert len(drawn) == len(curve["recall"])  # a small curve is not thinned
        for row, recall, precision, threshold in zip(drawn, curve["recall"], curve["precision"], curve["thresholds"]):
            assert (row["recall"], row["precision"], row["threshold"]) == pytest.approx(
                (recall, precision, threshold), rel=1e-3)
        assert drawn[-1]["threshold"] is None  # the last point (recall 0, precision 1) has no threshold


def test_a_long_curve_is_thinned_as_plots_thins_it():
    rng = np.random.default_rng(3)
    x = np.sort(rng.random(50_000))
    y = np.cumsum(rng.random(50_000)) / 25_000
    y /= y.max()
    rows = charts.points({"data": {"values": charts._curve_rows("s", "c", x, y, np.arange(50_000, dtype=float),
                                                                ("recall", "precision"))},
                          "transform": [{"flatten": ["recall", "precision", "threshold"]}]})
    kept_x, _ = thin_for_drawing(x, y, charts.CHART_RESOLUTION)
    assert len(rows) == len(kept_x) < 5_000
    for row in rows[::97]:  # each kept point keeps the threshold of its own position
        position = int(row["threshold"])
        assert row["recall"] == pytest.approx(x[position], rel=1e-3)


def _rebinned(spec: dict, width: float) -> dict[str, np.ndarray]:
    """The histogram spec's transform, done in Python: bars per series at a given slider value."""
    cell = spec["params"][0]["bind"]["step"]
    cells = max(1, round(width / cell))
    bars: dict[str, dict[int, int]] = {}
    for row in spec["data"]["values"]:
        series = bars.setdefault(row["series"], {})
        series[row["cell"] // cells] = series.get(row["cell"] // cells, 0) + row["n"]
    return bars


def test_histogram_rebins_to_numpys_counts(frame):
    spec = charts.class_distributions(frame, "cat", "dog", bins=20)
    values = frame[["score_cat", "score_dog"]].to_numpy(dtype=float)
    low, high = values.min(), values.max()
    cells = charts.FINE_BINS // 20
    width = cells * (high - low) / charts.FINE_BINS
    assert spec["params"][0]["value"] == pytest.approx(width, rel=1e-5)
    bars = _rebinned(spec, width)
    edges = low + np.arange(charts.FINE_BINS // cells + 1) * width
    edges[-1] = high
    expected, _ = np.histogram(frame["score_cat"].to_numpy(dtype=float), bins=edges)
    counted = np.zeros(len(expected), dtype=int)
    for index, count in bars["score cat"].items():
        counted[index] += count
    assert counted.tolist() == expected.tolist()
    assert sum(bars["score dog"].values()) == len(frame)
    assert len(spec["data"]["values"]) <= 2 * charts.FINE_BINS  # the spec's size does not grow with the rows


def test_histogram_refuses_bad_bins(frame):
    with pytest.raises(UserError, match="bins must be a positive number"):
        charts.class_distributions(frame, "cat", "dog", bins=0)


def test_scatter_is_capped_and_says_so(frame, monkeypatch):
    whole = charts.points(charts.score_scatter(frame, "cat", "dog", CLASSES))
    assert len(whole) == len(frame) and sum(row["truth"] == charts.UNLABELLED for row in whole) == 20
    monkeypatch.setattr(charts, "SCATTER_POINTS", 50)
    spec = charts.score_scatter(frame, "cat", "dog", CLASSES)
    assert len(charts.points(spec)) == 50
    assert "50 of 300 images drawn" in " ".join(spec["title"]["subtitle"])
    ids = {key[:12] for key in frame["id"]}  # as the table shows them
    assert all(row["id"] in ids for row in charts.points(spec))


def test_confusion_cells_are_the_matrix(metrics):
    spec = charts.confusion_heatmap(metrics, CLASSES, normalised=False)
    counts = {(row["truth"], row["guess"]): row["count"] for row in spec["data"]["values"]}
    matrix = metrics["confusion"]["counts"]
    assert counts == {(t, g): matrix[i][j] for i, t in enumerate(CLASSES) for j, g in enumerate(CLASSES)}
    assert spec["usermeta"] == {"filter": "predictions"}


def test_every_chart_renders_to_png(metrics, frame):
    specs = charts.standard_charts(metrics)
    specs["scatter.png"] = charts.score_scatter(frame, "cat", "dog", CLASSES)
    specs["histogram.png"] = charts.class_distributions(frame, "cat", "dog")
    specs["epochs.png"] = charts.ap_by_epoch(
        [{"label": "100 train images/class", "model": "model:v1", "epochs": [1, 2, 3], "ap": [0.4, None, 0.6],
          "finetune_from": 3}], [{"ref": "predictions:v2", "reason": "no model in its lineage"}])
    specs["versions.png"] = charts.ap_across_runs([{"x": 100, "ap": 0.5, "label": "a"},
                                                   {"x": 1000, "ap": None, "label": "b"}], "train_images")
    for name, spec in specs.items():
        image = charts.png(spec)
        assert image.startswith(b"\x89PNG"), name
        width = int.from_bytes(image[16:20], "big")
        assert width >= 300, name


def _some_specs(metrics, frame) -> dict:
    return {**charts.standard_charts(metrics), "scatter.png": charts.score_scatter(frame, "cat", "dog", CLASSES)}


def test_pngs_drawn_in_a_child_process_are_the_bytes_drawn_here(metrics, frame):
    specs = _some_specs(metrics, frame)
    wait = charts.pngs_in_background(specs)
    assert wait() == {name: charts.png(spec) for name, spec in specs.items()}


def test_a_chart_the_renderer_cannot_draw_is_one_line_that_names_it(metrics, frame):
    broken = {"title": {"text": "Broken chart"}, "mark": "point", "data": {"values": [{"x": 1}]},
              "encoding": {"x": {"field": "x", "type": "no-such-type"}}}
    with pytest.raises(UserError, match="cannot render the chart 'Broken chart' to PNG: ") as here:
        charts.png(broken)
    specs = {**_some_specs(metrics, frame), "broken.png": broken}
    with pytest.raises(UserError) as there:
        charts.pngs_in_background(specs)()
    assert str(there.value) == str(here.value) and "\n" not in str(there.value)


def test_charts_a_killed_renderer_did_not_send_are_drawn_here(metrics, frame, monkeypatch):
    """The child is killed with SIGKILL as it starts (before it reads its request): every PNG is still there, the
    same bytes. And where no child can be started at all, the charts are drawn in this process."""
    import os
    import signal
    import subprocess

    specs = _some_specs(metrics, frame)
    expected = {name: charts.png(spec) for name, spec in specs.items()}
    started = []

    class KilledAtOnce(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            os.kill(self.pid, signal.SIGKILL)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", KilledAtOnce)
    assert charts.pngs_in_background(specs)() == expected
    assert started and started[0].wait() == -signal.SIGKILL
    monkeypatch.undo()
    monkeypatch.setattr(charts.sys, "executable", "/no/such/python")
    assert charts.pngs_in_background(specs)() == expected


def test_the_page_draws_charts_in_place_of_their_pngs(metrics):
    from report.plots import roc_curves

    png = roc_curves(metrics, CLASSES)
    specs = {"pr_curves.png": charts.pr_curves(metrics, CLASSES)}
    page = render_report(title="t", metrics=metrics, classes=CLASSES, charts=specs,
                         plots={"pr_curves.png": b"\x89PNG-not-embedded", "roc_curves.png": png},
                         table=_predictions(), thumbnails={}, lineage=[])
    assert 'data-chart="pr_curves.png"' in page and 'id="report-charts"' in page
    assert "window.vegaEmbed" in page  # the library is inline: nothing is fetched
    assert page.count('data-plot="pr_curves.png"') == 1  # the chart replaces its PNG
    assert base64.b64encode(b"\x89PNG-not-embedded").decode() not in page
    assert 'data-plot="roc_curves.png"><img' in page  # a plot without a spec stays a picture
    assert "'unsafe-eval'" not in page  # Vega runs with its interpreter, the CSP is unchanged
    without = render_report(title="t", metrics=metrics, classes=CLASSES, plots={}, table=_predictions(),
                            thumbnails={}, lineage=[])
    assert "window.vegaEmbed" not in without and 'id="report-charts"' not in without


def test_odd_class_names_are_values_not_field_paths():
    """A class called "a.b" or with quotes and brackets must not turn into a Vega-Lite field path or expression."""
    from tests.test_odd_inputs import ODD_CLASSES as SHARED_ODD

    ODD_CLASSES = ["a.b[0]", *SHARED_ODD[1:]]
    frame = _predictions().rename(columns={f"score_{name}": f"score_{odd}" for name, odd in zip(CLASSES, ODD_CLASSES)})
    mapping = dict(zip(CLASSES, ODD_CLASSES))
    frame["truth"] = frame["truth"].map(mapping)
    frame["guess"] = frame["guess"].map(mapping)
    classes = ODD_CLASSES[:len(CLASSES)]
    odd_metrics = compute_metrics(frame, classes)
    for spec in [charts.score_scatter(frame, classes[0], classes[1], classes),
                 charts.class_distributions(frame, classes[0], classes[1]),
                 charts.confusion_heatmap(odd_metrics, classes, normalised=True),
                 charts.pr_curves(odd_metrics, classes)]:
        assert charts.png(spec).startswith(b"\x89PNG")


def test_the_chart_bundle_is_made_once_per_version_and_a_damaged_copy_is_made_again(tmp_path, monkeypatch):
    import vl_convert

    from report.charts import javascript_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    javascript_bundle.cache_clear()  # within one process it is also kept in memory
    made = javascript_bundle()
    cached = list((tmp_path / "keras-lineage").glob("vega-embed-bundle-*.js"))
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == made == vl_convert.javascript_bundle()
    cached[0].write_text("alert('not the bundle')", encoding="utf-8")
    javascript_bundle.cache_clear()
    assert javascript_bundle() == made and cached[0].read_text(encoding="utf-8") == made


def test_the_ap_by_epoch_chart_renders_when_no_version_has_a_history():
    """Predictions with no model in their lineage (imported, or made before AP was recorded) still evaluate:
    the chart is empty axes under a subtitle that says why, not a failed PNG render."""
    from report.charts import ap_by_epoch, png

    spec = ap_by_epoch([], [{"ref": "predictions:v1", "reason": "no model in its lineage"}])
    assert png(spec).startswith(b"\x89PNG")
    assert "predictions:v1 (no model in its" in " ".join(spec["title"]["subtitle"])
