"""Benchmark `pipeline.py table`'s filter + group-by against plain pandas.

Builds a 100,000-row x 10-class prediction table as Parquet in a temporary folder, then
times, in-process (median of REPEATS runs):
  ours:     tables.table.query_table(filter=FILTER, group_by="truth")
  baseline: the same selection by pandas boolean indexing, then pd.crosstab
plus the filter and the group-by alone, and text/csv formatting of the result rows.
With node on the PATH it also times tables/query.js filtering the same rows.
Prints the figures and writes them to bench/results/table.json.

    .venv/bin/python bench/bench_table.py [--rows 100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tables.query import filter_frame  # noqa: E402
from tables.table import format_table, group_rows, query_table  # noqa: E402

ROWS = 100_000
CLASSES = [f"class_{i}" for i in range(10)]
UNLABELLED_SHARE = 0.02
REPEATS = 7
FILTER = 'x["truth"] != x["guess"] and x["confidence"] >= 0.3'
RESULTS = ROOT / "bench" / "results" / "table.json"

NODE_FILTER = """
const Query = require(process.argv[1]);
const rows = JSON.parse(require("fs").readFileSync(0, "utf8"));
const times = [];
let kept = 0;
for (let r = 0; r < Number(process.argv[3]); r++) {
  const start = process.hrtime.bigint();
  const test = Query.compile(process.argv[2]);
  kept = rows.filter(test).length;
  times.push(Number(process.hrtime.bigint() - start) / 1e6);
}
times.sort((a, b) => a - b);
process.stdout.write(JSON.stringify({median_ms: times[times.length >> 1], kept}));
"""


def make_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A plausible prediction table: the guess is the truth about 70% of the time."""
    rng = np.random.default_rng(seed)
    raw = rng.bytes(32 * rows)
    truth = rng.integers(0, len(CLASSES), rows)
    logits = rng.normal(size=(rows, len(CLASSES)))
    logits[np.arange(rows), truth] += 1.5
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    guess = scores.argmax(axis=1)
    names = np.array(CLASSES, dtype=object)
    truth_names = names[truth]
    truth_names[rng.random(rows) < UNLABELLED_SHARE] = None
    frame = pd.DataFrame({
        "id": [raw[i:i + 32].hex() for i in range(0, 32 * rows, 32)],  # like sha256 digests
        "path": [f"images/{n}/{i:06d}.jpg" for i, n in enumerate(names[truth])],
        "split": np.array(["train", "val", "test"], dtype=object)[rng.integers(0, 3, rows)],
        "truth": truth_names,
        "guess": names[guess],
        "confidence": scores.max(axis=1),
    })
    for i, name in enumerate(CLASSES):
        frame[f"score_{name}"] = scores[:, i]
    return frame


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def baseline_filter(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["truth"] != frame["guess"]) & (frame["confidence"] >= 0.3)]


def baseline_query(frame: pd.DataFrame) -> pd.DataFrame:
    rows = baseline_filter(frame)
    return pd.crosstab(rows["truth"], rows["guess"])


def node_filter_ms(frame: pd.DataFrame, repeats: int) -> dict | None:
    node = shutil.which("node")
    if node is None:
        return None
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    run = subprocess.run([node, "-e", NODE_FILTER, str(ROOT / "tables" / "query.js"), FILTER, str(repeats)],
                         input=json.dumps(rows), capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def cli_wall_s(frame: pd.DataFrame, folder: Path, repeats: int) -> float:
    """`pipeline.py table REF --filter … --group-by truth` as a user runs it: Python start included.

    The table is committed to a throwaway store through the real runner, by a one-off stage."""
    from dataclasses import dataclass
    from types import SimpleNamespace

    from lineage import runner
    from lineage.contract import Output
    from lineage.records import Manifest
    from lineage.store import Store

    @dataclass
    class Params:
        pass

    def run(inputs, params, ctx):
        buffer = __import__("io").BytesIO()
        frame.to_parquet(buffer, index=False, compression="zstd")
        files = {"predictions.parquet": ctx.write_object(buffer.getvalue())}
        return [Output(Manifest("predictions", files=files, meta={"classes": CLASSES}))]

    stage = SimpleNamespace(NAME="bench-table", OUTPUT="predictions", CODE=(), Params=Params, input_refs=lambda p: {},
                            fingerprint=lambda p: None, check_classes=lambda p, c, w: None, run=run)
    store = folder / "store"
    runner.execute(Store.open(store, create=True), stage, Params(), log=lambda m: None)
    command = [sys.executable, str(ROOT / "pipeline.py"), "table", "predictions:latest", "--store", str(store),
               "--filter", FILTER, "--group-by", "truth"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictions.parquet"
        make_table(args.rows).to_parquet(path, index=False)
        read_ms = median_ms(lambda: pd.read_parquet(path), args.repeats)
        frame = pd.read_parquet(path)
        cli_s = cli_wall_s(frame, Path(folder), 5)

    ours = query_table(frame, filter=FILTER, group_by="truth")
    selected = filter_frame(frame, FILTER)
    # Same selection on labelled rows (the baseline's NaN != guess is True, as ours is).
    assert len(selected) == len(baseline_filter(frame))
    expected = baseline_query(frame)
    labelled = ours[ours["truth"].isin(expected.index)].set_index("truth")
    assert (labelled.loc[expected.index, expected.columns].to_numpy() == expected.to_numpy()).all()

    figures = {
        "read_parquet_ms": read_ms,
        "filter_and_group_by_ms": median_ms(lambda: query_table(frame, filter=FILTER, group_by="truth"), args.repeats),
        "baseline_filter_and_crosstab_ms": median_ms(lambda: baseline_query(frame), args.repeats),
        "filter_ms": median_ms(lambda: filter_frame(frame, FILTER), args.repeats),
        "baseline_filter_ms": median_ms(lambda: baseline_filter(frame), args.repeats),
        "group_by_truth_ms": median_ms(lambda: group_rows(selected, "truth", CLASSES), args.repeats),
        "baseline_crosstab_ms": median_ms(lambda: pd.crosstab(selected["truth"], selected["guess"]), args.repeats),
        "format_text_ms": median_ms(lambda: format_table(selected, "text"), 3),
        "format_csv_ms": median_ms(lambda: format_table(selected, "csv"), 3),
    }
    node = node_filter_ms(frame, args.repeats)
    if node:
        figures["javascript_filter_ms"] = node["median_ms"]
        assert node["kept"] == len(selected), "query.js and query.py selected different rows"
    result = {
        "rows": args.rows, "classes": len(CLASSES), "columns": frame.shape[1], "filter": FILTER,
        "rows_selected": len(selected), "repeats": args.repeats,
        "figures_ms": {k: round(v, 2) for k, v in figures.items()},
        "cli_filter_and_group_by_wall_s": round(cli_s, 3),
        "ratio_to_baseline": round(figures["filter_and_group_by_ms"] / figures["baseline_filter_and_crosstab_ms"], 2),
        "python": platform.python_version(), "pandas": pd.__version__, "numpy": np.__version__,
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
    }
    print(f"table bench: {args.rows:,} rows x {len(CLASSES)} classes, filter {FILTER!r}, "
          f"{len(selected):,} rows selected, median of {args.repeats}")
    for name, value in result["figures_ms"].items():
        print(f"  {name:<34} {value:>9.2f} ms")
    print(f"  ours / baseline (filter + group-by): {result['ratio_to_baseline']}x")
    print(f"  pipeline.py table --filter --group-by, wall with Python start: {cli_s:.3f} s (target < 1 s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
