"""A 10,000-row report.html: its size, and how fast a filter redraws in Chromium.

The filter time is measured inside the page with performance.now() around the
filter box's input handler (compile, filter all rows, re-render the first page,
group counts) plus the forced layout, and separately until the next frame is
painted. Target: under 200 ms, so filtering feels immediate as the user types.

    python bench/bench_report.py                            # writes bench/results/report.json
    python bench/bench_report.py --rows 1000000 --compare   # a cut page (report/selection.py), with B
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_evaluate import random_predictions  # noqa: E402
from report.html import render_report  # noqa: E402
from report.metrics import compute_metrics  # noqa: E402
from report.plots import standard_plots  # noqa: E402

ROWS = 10_000
CLASSES = [f"class_{index}" for index in range(10)]
THUMBNAIL_PX = 48
REPEATS = 7
TARGET_MS = 200
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
RESULT = ROOT / "bench" / "results" / "report.json"
FILTERS = {
    "truth_and_wrong_guess": 'x["truth"] = "class_3" and x["guess"] != "class_3"',
    "all_wrong": 'x["truth"] != x["guess"]',
    "score_threshold": 'x["score_class_1"] > 0.2 or x["confidence"] < 0.3',
    "clear": "",
}

# Runs in the page: set the box, fire the handler synchronously, force layout.
TIME_HANDLER = """(text) => {
  const input = document.getElementById("filter");
  const start = performance.now();
  input.value = text;
  input.dispatchEvent(new Event("input"));
  void document.body.offsetHeight;
  return performance.now() - start;
}"""
# The same, but until the frame after the change has been produced.
TIME_TO_FRAME = """(text) => new Promise((resolve) => {
  const input = document.getElementById("filter");
  const start = performance.now();
  input.value = text;
  input.dispatchEvent(new Event("input"));
  requestAnimationFrame(() => setTimeout(() => resolve(performance.now() - start), 0));
})"""


def thumbnails(ids, seed: int = 0) -> dict[str, bytes]:
    """Small JPEGs with photo-like detail, so their size is realistic (~1-2 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, THUMBNAIL_PX)
    result = {}
    for key in ids:
        base = rng.integers(40, 200, 3)
        pixels = base + 50 * ramp[:, None, None] + rng.normal(0, 18, (THUMBNAIL_PX, THUMBNAIL_PX, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
        result[key] = buffer.getvalue()
    return result


def build_report(rows: int = ROWS, compare: bool = False) -> tuple[str, float, int]:
    frame = random_predictions(rows, CLASSES, seed=1, unlabelled=0.02)
    comparison = None
    if compare:
        from tables.compare import join_predictions

        other = random_predictions(rows, CLASSES, seed=2, unlabelled=0.02)
        other["id"], other["truth"] = frame["id"], frame["truth"]
        comparison, _ = join_predictions(frame, other, "predictions:v1", "predictions:v2")
    metrics = compute_metrics(frame, CLASSES)
    made = {}

    def images(ids):  # thumbnails for the embedded rows only, as evaluate makes them
        made.update(thumbnails(ids))
        return made

    start = time.perf_counter()
    html = render_report(title=f"bench: {rows:,} predictions", metrics=metrics, classes=CLASSES,
                         plots=standard_plots(metrics), table=frame, thumbnails=images,
                         lineage=[{"ref": "predictions:v1", "digest": "0" * 64, "made_by": "infer",
                                   "inputs": ["model:v1", "split:v1"]}], comparison=comparison,
                         comparison_labels=("predictions:v1", "predictions:v2") if compare else None,
                         table_ref="predictions:v1")
    seconds = time.perf_counter() - start
    return html, seconds, sum(len(image) for image in made.values())


def measure_in_browser(path: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("#predictions tbody tr")
        load_seconds = time.perf_counter() - start
        page.select_option("#group-by", "truth")  # interactive: the group table answers at once
        page.wait_for_selector("#groups tbody tr")
        interactive_seconds = time.perf_counter() - start
        page.select_option("#group-by", "")
        timings = {}
        for name, text in FILTERS.items():
            handler, frame = [], []
            for _ in range(REPEATS):
                page.evaluate(TIME_HANDLER, "")  # start each run from the full table
                handler.append(page.evaluate(TIME_HANDLER, text))
                page.evaluate(TIME_HANDLER, "")
                frame.append(page.evaluate(TIME_TO_FRAME, text))
            timings[name] = {"expression": text,
                             "matching_rows": int(page.get_attribute("#row-count", "data-count")),
                             "handler_ms_median": round(statistics.median(handler), 1),
                             "handler_ms_max": round(max(handler), 1),
                             "to_next_frame_ms_median": round(statistics.median(frame), 1)}
        page.select_option("#group-by", "truth")
        group_ms = page.evaluate(TIME_HANDLER, 'x["confidence"] < 0.5')
        browser.close()
    return {"load_s": round(load_seconds, 2), "interactive_s": round(interactive_seconds, 2), "filters": timings,
            "filter_with_group_by_ms": round(group_ms, 1)}


def main(rows: int = ROWS, compare: bool = False) -> dict:
    html, render_seconds, thumbnail_bytes = build_report(rows, compare)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.html"
        path.write_text(html, encoding="utf-8")
        size = path.stat().st_size
        browser = measure_in_browser(path)
    worst = max(entry["handler_ms_median"] for entry in browser["filters"].values())
    result = {
        "rows": rows, "classes": len(CLASSES), "thumbnail_px": THUMBNAIL_PX, "comparison": compare,
        "file_mb": round(size / 1e6, 2),
        "thumbnails_raw_mb": round(thumbnail_bytes / 1e6, 2),
        "render_report_s": round(render_seconds, 2),
        **browser,
        "worst_filter_handler_ms": worst,
        "target_ms": TARGET_MS,
        "meets_target": worst < TARGET_MS,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "host": platform.node(), "python": platform.python_version(),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if rows == ROWS and not compare else f"-{rows}" + ("-compare" if compare else "")
    result_file = RESULT.with_name(f"report{suffix}.json")
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--compare", action="store_true", help="add a second model's predictions, side by side")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.rows, arguments.compare), indent=2))
