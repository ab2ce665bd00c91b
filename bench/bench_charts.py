"""What the live charts cost: report.html's size and load time at 10,000 rows before and after them, and how fast
a bin-slider change, a confusion-cell filter and a typed filter redraw in Chromium (target: under 200 ms).

"Before" is the report as the last commit draws it (every plot a matplotlib PNG): the script renders it from a
git worktree of HEAD (`git worktree add`, which leaves this working tree alone) with the same rows and thumbnails.
"After" is this tree's report with report/charts.py's Vega-Lite specs and the inlined Vega bundle.

    python bench/bench_charts.py              # writes bench/results/charts.json
    python bench/bench_charts.py --before-tree /tmp/r1-before   # reuse an existing HEAD worktree
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = 10_000
REPEATS = 7
TARGET_MS = 200
RESULT = ROOT / "bench" / "results" / "charts.json"
CONFUSED = ("class_3", "class_5")
HISTOGRAM = "class_distributions.png"

# Renders a report with the code of whichever tree it runs in; argv: output path, rows, "charts" or "pngs".
RENDER = r'''
import sys, time
sys.path.insert(0, ".")
from bench.bench_evaluate import random_predictions
from bench.bench_report import CLASSES, thumbnails
from report.html import render_report
from report.metrics import compute_metrics
from report import plots

path, rows, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
frame = random_predictions(rows, CLASSES, seed=1, unlabelled=0.02)
metrics = compute_metrics(frame, CLASSES)
pair, points = ["class_3", "class_5"], [{"x": "predictions:v1", "ap": metrics["micro"]["average_precision"],
                                         "label": "predictions:v1"}]
start = time.perf_counter()
if kind == "charts":
    from report import charts
    specs = charts.standard_charts(metrics)
    specs["score_scatter.png"] = charts.score_scatter(frame, *pair, CLASSES)
    specs["class_distributions.png"] = charts.class_distributions(frame, *pair, 30)
    specs["ap_per_version.png"] = charts.ap_across_runs(points, "version")
    extra = {"plots": {}, "charts": specs}
else:
    images = plots.standard_plots(metrics)
    images["score_scatter.png"] = plots.score_scatter(frame, *pair, CLASSES)
    images["class_distributions.png"] = plots.class_distributions(frame, *pair, 30)
    images["ap_across_runs.png"] = plots.ap_across_runs(points, "version")
    extra = {"plots": images}
html = render_report(title="bench", metrics=metrics, classes=CLASSES, table=frame,
                     thumbnails=lambda ids: thumbnails(ids), lineage=[], table_ref="predictions:v1", **extra)
seconds = time.perf_counter() - start
open(path, "w", encoding="utf-8").write(html)
print(seconds)
'''

SLIDER = """async ([name, value]) => {
  const view = Report.charts.views[name];
  const input = document.querySelector(`[data-chart="${name}"] input[type="range"]`);
  const start = performance.now();
  input.value = value;
  input.dispatchEvent(new Event("input"));
  await view.runAsync();
  void document.body.offsetHeight;
  const bars = document.querySelectorAll(`[data-chart="${name}"] g.mark-rect path`).length;
  return [performance.now() - start, bars];
}"""
# What a click on a confusion cell runs (charts.js filterOnClick), with the layout it forces.
CELL_FILTER = """([truth, guess]) => {
  const table = Report.tables.predictions;
  const start = performance.now();
  table.filterSorted(`x["truth"] = "${truth}" and x["guess"] = "${guess}"`, "score_" + guess, true);
  void document.body.offsetHeight;
  return [performance.now() - start, table.matching.length];
}"""
TYPED_FILTER = """(text) => {
  const input = document.getElementById("filter");
  const start = performance.now();
  input.value = text;
  input.dispatchEvent(new Event("input"));
  void document.body.offsetHeight;
  return performance.now() - start;
}"""


def render(tree: Path, kind: str, rows: int, out: Path) -> float:
    done = subprocess.run([sys.executable, "-c", RENDER, str(out), str(rows), kind], cwd=tree, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def measure(path: Path, charts: bool) -> dict:
    from playwright.sync_api import sync_playwright

    from bench.bench_report import CHROMIUM, CHROMIUM_ARGS

    result: dict = {}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tables, loads = [], []
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(path.as_uri())
            page.wait_for_selector("#predictions tbody tr")
            # In the page's own clock from navigation start: the inline scripts have run (the table is drawn and
            # answers) at domContentLoaded; the charts draw after it, one per turn of the event loop.
            tables.append(page.evaluate('performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd')
                          / 1000)
            loads.append(page.evaluate("(Report.charts ? Report.charts.ready : Promise.resolve()).then(() => "
                                       'Math.max(performance.now(), performance.getEntriesByType("navigation")[0]'
                                       ".loadEventEnd))") / 1000)
            page.close()
        result["table_ready_s_median"] = round(statistics.median(tables), 2)
        result["load_s_median"] = round(statistics.median(loads), 2)  # with every chart drawn
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(path.as_uri())
        page.wait_for_selector("#predictions tbody tr")
        typed = []
        for _ in range(REPEATS):
            page.evaluate(TYPED_FILTER, "")
            typed.append(page.evaluate(TYPED_FILTER, 'x["truth"] != x["guess"]'))
        result["typed_filter_ms_median"] = round(statistics.median(typed), 1)
        if charts:
            page.evaluate("Report.charts.ready.then(() => true)")
            slider = page.locator(f'[data-chart="{HISTOGRAM}"] input[type="range"]')
            low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
            moves, bars = [], set()
            for index in range(REPEATS * 2):
                value = low if index % 2 else high
                milliseconds, count = page.evaluate(SLIDER, [HISTOGRAM, str(value)])
                moves.append(milliseconds)
                bars.add(count)
            cells = []
            for _ in range(REPEATS):
                page.evaluate(TYPED_FILTER, "")
                milliseconds, matching = page.evaluate(CELL_FILTER, list(CONFUSED))
                cells.append(milliseconds)
            result.update({"bin_slider_ms_median": round(statistics.median(moves), 1),
                           "bin_slider_ms_max": round(max(moves), 1), "bars_at_narrowest_and_widest": sorted(bars),
                           "confusion_cell_filter_ms_median": round(statistics.median(cells), 1),
                           "confusion_cell_rows": matching})
        browser.close()
    return result


def main(rows: int, before_tree: Path | None) -> dict:
    made_worktree = before_tree is None
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if made_worktree:
            before_tree = folder / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), "HEAD"], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            sides = {}
            for name, tree, kind in (("before", before_tree, "pngs"), ("after", ROOT, "charts")):
                out = folder / f"{name}.html"
                seconds = render(tree, kind, rows, out)
                sides[name] = {"file_mb": round(out.stat().st_size / 1e6, 2), "render_report_s": round(seconds, 2),
                               **measure(out, charts=kind == "charts")}
        finally:
            if made_worktree:
                subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT,
                               capture_output=True)
    import vl_convert

    after = sides["after"]
    worst = max(after["bin_slider_ms_median"], after["confusion_cell_filter_ms_median"],
                after["typed_filter_ms_median"])
    result = {"rows": rows, "before": sides["before"], "after": after,
              "added_mb": round(after["file_mb"] - sides["before"]["file_mb"], 2),
              "chart_library": f"vega {vl_convert.get_vega_version()}, vega-embed {vl_convert.get_vega_embed_version()}"
                               f" (vl-convert-python), {len(__import__('report.charts').charts.javascript_bundle()):,} "
                               "bytes inline",
              "worst_redraw_ms": worst, "target_ms": TARGET_MS, "meets_target": worst < TARGET_MS,
              "host": platform.node(), "python": platform.python_version()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.with_name("charts.json" if rows == ROWS else f"charts-{rows}.json").write_text(
        json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--before-tree", type=Path, default=None,
                        help="a checkout of the commit to compare against (default: a temporary worktree of HEAD)")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.rows, arguments.before_tree), indent=2))
