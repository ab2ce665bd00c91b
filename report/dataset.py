"""The dataset page: one self-contained HTML file for a raw-data or split version (`pipeline.py report split:vN`).

What W&B shows for a dataset: "verify the data distribution: group by split" is the split x class counts,
drawn as a table chart (a bar per cell); "preview the images: group by label" is a gallery of thumbnails
grouped by label or by split. One filter box (tables/query.js, the language of `table --filter`) narrows
both. The page is built like report.html (report/html.py): everything inline, a Content-Security-Policy
that forbids any load, rows embedded once as JSON and drawn by static/dataset.js.

At scale the page stays bounded: up to EMBED_LIMIT rows it embeds every row; above, a seeded sample with an
equal share per (split, class) cell (report/selection.py's water-filled quotas), and thumbnails for those only.
The counts drawn while the filter is empty are exact over every row, computed here; a filter can only search
the embedded rows, and the page says so, with the `pipeline.py table` command that reaches the rest.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from report.html import STATIC_DIR, _data_uri, _e, _shell_word, _static, page_document
from report.selection import EMBED_LIMIT, SEED, _water_fill
from tables.datasets import DATASET_COLUMNS, SPLIT_ORDER
from tables.query import quote
from tables.table import class_order

SCRIPTS = (STATIC_DIR.parent.parent / "tables" / "query.js", STATIC_DIR / "dataset.js")
STYLES = (STATIC_DIR / "report.css", STATIC_DIR / "dataset.css")
NO_SPLIT = "(no split)"  # the chart's one column for a raw-data version, whose images are not split yet


def dataset_rows(frame: pd.DataFrame, limit: int = EMBED_LIMIT, seed: int = SEED) -> np.ndarray:
    """Positions (ascending) of the rows the page embeds: all of them up to `limit`, else a seeded sample
    with an equal share per (split, class), so a small class or split still shows its images."""
    if len(frame) <= limit:
        return np.arange(len(frame))
    _, cells = np.unique(_cells(frame), return_inverse=True)
    sizes = np.bincount(cells)
    members = np.argsort(cells, kind="stable")  # each cell's rows, contiguous, in table order
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(members[start:start + size], size=int(quota), replace=False)
              for start, size, quota in zip(starts, sizes, _water_fill(sizes, limit)) if quota]
    return np.sort(np.concatenate(chosen))


def split_class_counts(frame: pd.DataFrame, classes: list[str]) -> dict:
    """{"splits", "labels", "counts"}: counts[i][j] images of labels[i] in splits[j], exact over every row,
    by one bincount over factorised codes. Classes in the version's order, splits in pipeline order."""
    split_values = frame["split"].astype(object).where(frame["split"].notna(), NO_SPLIT)
    split_codes, split_names = pd.factorize(split_values)
    label_codes, label_names = pd.factorize(frame["label"].astype(str))
    counts = np.bincount(label_codes * len(split_names) + split_codes,
                         minlength=len(label_names) * len(split_names)).reshape(len(label_names), len(split_names))
    labels = class_order([str(name) for name in label_names], classes)
    splits = class_order([str(name) for name in split_names], list(SPLIT_ORDER))
    label_at = {str(name): i for i, name in enumerate(label_names)}
    split_at = {str(name): i for i, name in enumerate(split_names)}
    ordered = counts[np.ix_([label_at[name] for name in labels], [split_at[name] for name in splits])]
    return {"splits": splits, "labels": labels, "counts": ordered.tolist()}


def render_dataset_page(*, title: str, ref: str, frame: pd.DataFrame, classes: list[str],
                        thumbnails: Callable[[list[str]], dict[str, bytes]], limit: int = EMBED_LIMIT) -> str:
    """The page as one HTML string. `thumbnails` makes small images for the ids the page embeds (only those:
    a million-image version does not decode a million images)."""
    positions = dataset_rows(frame, limit)
    embedded = frame.iloc[positions]
    ids = [str(key) for key in embedded["id"]]
    images, wanted = thumbnails(ids), set(ids)
    columns = list(DATASET_COLUMNS)
    data = {"ref": ref, "columns": columns, "rows": _rows(embedded[columns]), "total": len(frame),
            "no_split": NO_SPLIT, "chart": split_class_counts(frame, classes),
            "thumbnails": {key: _data_uri(value) for key, value in images.items() if key in wanted}}
    example = data["chart"]["labels"][0] if data["chart"]["labels"] else "cat"
    body = "\n".join([_summary(ref, frame, len(embedded), example), _controls(example), _chart_section(),
                      _gallery_section()])
    return _page(title, body, data)


def _cells(frame: pd.DataFrame) -> np.ndarray:
    """A number per (split, class) cell for each row: factorised codes, no string per row."""
    split_codes, _ = pd.factorize(frame["split"], use_na_sentinel=True)  # -1: no split (raw-data)
    label_codes, label_names = pd.factorize(frame["label"], use_na_sentinel=True)
    return (split_codes.astype(np.int64) + 1) * (len(label_names) + 1) + label_codes + 1


def _rows(frame: pd.DataFrame) -> list[list]:
    """Rows as JSON-ready lists, column by column (no per-cell pandas access); missing values are null."""
    columns = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_integer_dtype(series.dtype):
            columns.append([int(v) for v in series.to_numpy()])
        else:
            columns.append([None if pd.isna(v) else str(v) for v in series.astype(object).tolist()])
    return [list(row) for row in zip(*columns)]


def _summary(ref: str, frame: pd.DataFrame, embedded: int, label: str) -> str:
    total = len(frame)
    command = f"python pipeline.py table {_shell_word(ref)} --filter {_shell_word(_example_filter(label))}"
    held = (f"<p>This page holds <strong>{embedded:,} of {total:,} images</strong>: a random sample with an "
            "equal share per split and class. The chart's counts (with an empty filter) are over all "
            f"{total:,}; a filter searches the {embedded:,} embedded images only. The rest: "
            f"<code>{_e(command)}</code></p>") if embedded < total else ""
    return (f'<section id="summary"><p id="image-count" data-total="{total}" data-embedded="{embedded}">'
            f"{total:,} images in {_e(ref)}.</p>"
            + (f'<div id="embedded-note" class="embedded-note">{held}</div>' if held else "") + "</section>")


def _example_filter(label: str) -> str:
    return f'x["label"] = {quote(label)}'


def _controls(label: str) -> str:
    example = f'{_example_filter(label)} and x["width"] >= 32'
    columns = "".join(f'<button type="button" class="column-name" data-column="{_e(c)}">{_e(c)}</button>'
                      for c in DATASET_COLUMNS)
    return f"""<section id="filter-section">
<div class="controls">
<label>Filter <input id="filter" type="text" spellcheck="false" autocomplete="off" placeholder="{_e(example)}"></label>
<span id="match-count" class="row-count"></span>
</div>
<div id="filter-error" class="filter-error" role="alert" hidden></div>
<p class="columns-help">Columns: {columns}</p>
</section>"""


def _chart_section() -> str:
    return """<section id="distribution"><h2>Images per split and class</h2>
<p id="chart-scope" class="groups-scope"></p>
<table id="chart" class="chart"><thead></thead><tbody></tbody></table>
</section>"""


def _gallery_section() -> str:
    return """<section id="previews"><h2>Previews</h2>
<div class="controls"><label>Group by <select id="gallery-by">
<option value="label">label</option><option value="split">split</option></select></label></div>
<div id="gallery"></div>
</section>"""


def _page(title: str, body: str, data: dict) -> str:
    css = "\n".join(_static(path) for path in STYLES)
    scripts = "\n".join(f"<script>\n{_static(path)}\n</script>" for path in SCRIPTS)
    nav = '<a href="#distribution">Distribution</a> <a href="#previews">Previews</a>'
    return page_document(title, css, nav, body, "dataset-data", data, scripts)
