"""One self-contained report.html: metrics, plots, the prediction table and lineage.

Everything is inline (CSS, JS, PNGs and thumbnails as data: URIs) and a
Content-Security-Policy forbids any other load, so the file opens offline, can
be mailed or attached to an artifact, and never phones home.

The table is embedded once as JSON and drawn by report.js a page at a time, so a
10,000-row report stays responsive; thumbnails sit in one id -> data: URI map and
rows refer to them by id. Filtering uses tables/query.js, the same filter
language as `pipeline.py table --filter`.

A table over `embed_limit` rows is not embedded whole (report/selection.py picks the rows, and
the page says how many, how they were chosen and the command that reaches the rest). What the
page states as a total stays exact over every row: the metrics and plots come from the caller,
computed over the whole table, and the group counts shown with an empty filter are computed
here over the whole table too (`_group_totals`), not by report.js from the embedded rows.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from lineage.errors import UserError
from report.metrics import round_significant
from report.selection import EMBED_LIMIT, REASON_COLUMN, Selection, describe, select_rows
from tables.compare import SHARED
from tables.predictions import labelled_mask, score_column
from tables.query import quote

STATIC_DIR = Path(__file__).parent / "static"
# The filter language is the table tools' (tables/query.js); it goes first: report.js calls Query.compile.
SCRIPTS = (Path(__file__).parent.parent / "tables" / "query.js", STATIC_DIR / "report.js",
           Path(__file__).parent.parent / "lineage" / "draw.js",  # the lineage picture's click-to-summary
           STATIC_DIR / "thresholds.js")  # the operating-threshold panel's slider (_thresholds_section)
# The charts' script goes after the Vega bundle and report.js: it draws the specs and drives the table's filter.
CHART_SCRIPT = STATIC_DIR / "charts.js"
# What a lineage entry holds for its node's summary (lineage/draw.py describe), too long for the table.
LINEAGE_IN_PICTURE_ONLY = ("run", "aliases", "entries", "size", "params", "counts", "metrics", "problem")
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                           "script-src 'unsafe-inline'")
IMAGE_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif",
               b"RIFF": "image/webp"}
# Group-by choices: (group by this column, show the spread of that one within each group).
GROUP_PAIRS = (("truth", "guess"), ("guess", "truth"), ("split", "truth"))
COMPARISON_GROUP_PAIRS = (("truth", "guess_a"), ("guess_a", "guess_b"), ("guess_b", "guess_a"),
                          ("correct_a", "correct_b"), ("split", "guess_a"))
# W&B's split panel: grouped by these, a comparison shows A's spread (the pair's other) and B's side by side.
SIDE_BY_SIDE_GROUPS = {"truth": "guess_b", "split": "guess_b"}
# Comparison charts (report/charts.py) drawn in the comparison's section, not among the plots.
COMPARISON_CHARTS = ("score_distributions_across_models.png",)
# The split panel's script: after charts.js, whose Report.charts.views holds its chart.
SPLIT_PANEL_SCRIPT = STATIC_DIR / "split_panel.js"
DIGEST_SHOWN = 12
THUMBNAIL_LIMIT = 10_000  # images one page embeds (the predictions table's first); past it rows show none
# The drawn columns of a comparison table (tables/compare.py's join_predictions): its SHARED ones, then these.
SIDE_BY_SIDE_PAIRED = ("guess", "confidence", "score_true", "correct")
SIDE_BY_SIDE_AFTER = ("shift",)


def render_report(*, title: str, metrics: dict, classes: list[str], plots: dict[str, bytes],
                  charts: dict[str, dict] | None = None,
                  table: pd.DataFrame, thumbnails: dict[str, bytes] | Callable[[list[str]], dict[str, bytes]],
                  lineage: list[dict], comparison: pd.DataFrame | None = None,
                  comparison_labels: tuple[str, str] | None = None, table_ref: str | None = None,
                  embed_limit: int = EMBED_LIMIT) -> str:
    """The report as one HTML string; write it anywhere, it needs nothing beside it.

    `thumbnails` is a map by id, or a function that makes them for the ids the page embeds (so a
    1,000,000-row table does not decode 1,000,000 images). `table_ref` names the predictions version,
    for the `pipeline.py table` command a cut table points to. `charts` are Vega-Lite specs by the same file
    names as `plots` (report/charts.py): each is drawn live in place of its PNG, which is then not embedded.
    With a `comparison`, the page is W&B's split panel: group-by shows A's and B's spreads side by side, a click
    on a row shows that image's class scores under both (paired bars), and COMPARISON_CHARTS among `charts`
    are drawn under the comparison table.
    """
    labels = comparison_labels or ("A", "B")
    charts = dict(charts or {})
    page_charts = dict(charts)
    if comparison is not None:  # the comparison's own charts go in its section (_comparison_charts)
        charts = {name: spec for name, spec in charts.items() if name not in COMPARISON_CHARTS}
    selection = select_rows(table, embed_limit)
    embedded = selection.apply(table)
    tables = {"predictions": _table_payload(embedded, classes, _prediction_groups(table), full=table,
                                            selection=selection)}
    command = f"python pipeline.py table {_shell_word(table_ref or 'predictions:latest')}"
    sections = [
        _metrics_section(metrics, classes),
        _thresholds_section(metrics, classes),
        _plots_section(plots, charts),
        _table_section("predictions", "Predictions", len(embedded), "",
                       example=_example_filter(classes), selection=selection,
                       command=f"{command} --filter '{_example_filter(classes)}'"),
    ]
    embedded_comparison = None
    if comparison is not None:
        comparison_selection = select_rows(comparison, embed_limit)
        embedded_comparison = comparison_selection.apply(comparison)
        tables["comparison"] = _table_payload(
            embedded_comparison, classes, _comparison_groups(comparison),
            display=_side_by_side(embedded_comparison), notes={"_a": labels[0], "_b": labels[1]},
            full=comparison, selection=comparison_selection, paired=SIDE_BY_SIDE_GROUPS)
        from report.charts import SELECTED_SCORES, paired_scores, score_range

        scored = [f"{score_column(name)}_{side}" for name in classes for side in ("a", "b")]
        page_charts[SELECTED_SCORES] = paired_scores(classes, labels, score_range(comparison, scored))
        caption = (f"The same images under two model versions: A = {_e(labels[0])} and "
                   f"B = {_e(labels[1])}.{_accuracy_change(comparison)} "
                   "Green rows: B right where A was wrong; red: the reverse.")
        compare = (f"python pipeline.py compare {_shell_word(labels[0])} {_shell_word(labels[1])} "
                   "--filter 'x[\"correct_a\"] != x[\"correct_b\"]' --limit 100")
        sections.append(_table_section("comparison", f"{labels[0]} vs {labels[1]}",
                                       len(embedded_comparison), caption,
                                       example='x["correct_a"] = true and x["correct_b"] = false',
                                       selection=comparison_selection, command=compare,
                                       aside=_split_panel(labels),
                                       after=_comparison_charts(page_charts)))
    sections.append(_lineage_section(lineage))
    shown_ids = list(dict.fromkeys(str(key) for frame in (embedded, embedded_comparison)
                                   if frame is not None and "id" in frame.columns for key in frame["id"]))
    if len(shown_ids) > THUMBNAIL_LIMIT:  # a cut page with a comparison: ~2 KB a thumbnail adds up
        shown_ids = shown_ids[:THUMBNAIL_LIMIT]
    images = thumbnails(shown_ids) if callable(thumbnails) else thumbnails
    wanted = set(shown_ids)
    data = {"tables": tables,
            "thumbnails": {key: _data_uri(value) for key, value in images.items() if key in wanted}}
    return _page(title, "\n".join(sections), data, page_charts)


# ---------------------------------------------------------------- page


def _page(title: str, body: str, data: dict, charts: dict[str, dict] | None = None) -> str:
    css = _static(STATIC_DIR / "report.css")
    scripts = "\n".join(f"<script>\n{_static(path)}\n</script>" for path in SCRIPTS)
    if charts:  # the ~0.9 MB chart library only on a page that has charts; their specs apart from the table's data
        scripts += (f'\n<script type="application/json" id="report-charts">{_json_for_script(charts)}</script>'
                    f"\n<script>\n{_chart_library()}\n</script>\n<script>\n{_static(CHART_SCRIPT)}\n</script>"
                    f"\n<script>\n{_static(SPLIT_PANEL_SCRIPT)}\n</script>")
    comparison = ' <a href="#comparison-section">Comparison</a>' if "comparison" in data["tables"] else ""
    nav = (f'<a href="#metrics">Metrics</a> <a href="#plots">Plots</a> <a href="#predictions-section">Predictions</a>'
           f'{comparison} <a href="#lineage">Lineage</a>')
    return page_document(title, css, nav, body, "report-data", data, scripts)


def page_document(title: str, css: str, nav: str, body: str, data_id: str, data, scripts: str) -> str:
    """The self-contained page every report here is: its CSP, inline styles, the page's data as JSON under
    `data_id`, then its inline scripts (the evaluation report and report/dataset.py's page)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>
{css}
</style>
</head>
<body>
<header><h1>{_e(title)}</h1>
<nav>{nav}</nav>
</header>
<main>
{body}
</main>
<script type="application/json" id="{data_id}">{_json_for_script(data)}</script>
{scripts}
</body>
</html>
"""


def _chart_library() -> str:
    """Vega, Vega-Lite and vega-embed, inlined (report/charts.py); as _static, a </script> in it is escaped."""
    from report.charts import javascript_bundle

    return javascript_bundle().replace("</script", "<\\/script")


def _static(path: Path) -> str:
    if not path.exists():
        raise UserError(f"report asset {path} is missing; the report needs it inlined")
    # A literal </script> inside the code would end the inline <script> early.
    return path.read_text(encoding="utf-8").replace("</script", "<\\/script")


def _json_for_script(data) -> str:
    """JSON that is safe inside <script>: '<' only ever occurs inside strings, so escape it."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).replace("<", "\\u003c")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- sections


def _metrics_section(metrics: dict, classes: list[str]) -> str:
    cards = [("accuracy", _percent(metrics["accuracy"])),
             (f"top-{metrics['top_k']} accuracy", _percent(metrics["top_k_accuracy"])),
             ("labelled images", f"{metrics['labelled']:,}"),
             ("unlabelled (excluded)", f"{metrics['unlabelled']:,}")]
    if metrics.get("unknown", {}).get("count"):  # guesses infer.min_score turned into "unknown": wrong, shown apart
        cards.append(("unknown guesses", f"{metrics['unknown']['count']:,} ({_percent(metrics['unknown']['rate'])})"))
    card_html = "".join(f'<div class="card" data-metric="{_e(name)}"><div class="value">{value}'
                        f'</div><div class="name">{_e(name)}</div></div>' for name, value in cards)
    names = ("precision", "recall", "f1", "average_precision", "roc_auc")
    headers = "".join(f"<th>{_e(name.replace('_', ' '))}</th>" for name in names)
    averages = "".join(
        f'<tr data-average="{kind}"><th>{kind}</th>'
        + "".join(f"<td>{_number(metrics[kind][name])}</td>" for name in names) + "</tr>"
        for kind in ("micro", "macro"))
    per_class = "".join(
        f'<tr data-class="{_e(name)}"><th>{_e(name)}</th>'
        + "".join(f"<td>{_number(metrics['per_class'][name][key])}</td>" for key in names)
        + f"<td>{metrics['per_class'][name]['support']:,}</td>"
        + f"<td class=\"note\">{_e(metrics['per_class'][name].get('note', ''))}</td></tr>"
        for name in classes)
    return f"""<section id="metrics"><h2>Metrics</h2>
<div class="cards">{card_html}</div>
<h3>Averages</h3>
<table id="averages" class="numbers"><thead><tr><th></th>{headers}</tr></thead><tbody>{averages}</tbody></table>
<h3>Per class (one vs rest)</h3>
<table id="per-class" class="numbers"><thead><tr><th>class</th>{headers}<th>support</th><th></th></tr></thead>
<tbody>{per_class}</tbody></table>
</section>"""


def _plots_section(plots: dict[str, bytes], charts: dict[str, dict]) -> str:
    """A live chart where there is a spec (charts.js draws it into the empty box, with a panel beside it for what
    hover shows), the PNG for the rest."""
    live = "".join(
        f'<figure data-plot="{_e(name)}" class="live"><div class="chart" data-chart="{_e(name)}"></div>'
        f'<div class="chart-side" data-chart-side="{_e(name)}" hidden></div>'
        f"<figcaption>{_e(_caption(name))}</figcaption></figure>" for name in charts)
    figures = live + "".join(
        f'<figure data-plot="{_e(name)}"><img alt="{_e(_caption(name))}" src="{_data_uri(png)}">'
        f"<figcaption>{_e(_caption(name))}</figcaption></figure>" for name, png in plots.items() if name not in charts)
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{figures}</div></section>'


def _table_section(name: str, heading: str, rows: int, caption: str, example: str,
                   selection: Selection | None = None, command: str = "", aside: str = "", after: str = "") -> str:
    """The controls and an empty table; report.js fills it from the embedded JSON. `aside` goes beside the
    table (the comparison's selected image), `after` under it."""
    prefix = "" if name == "predictions" else "cmp-"
    rows_table = f'<div class="scroll"><table id="{name}" class="rows"><thead></thead><tbody></tbody></table></div>'
    if aside:
        rows_table = f'<div class="beside">{rows_table}{aside}</div>'
    return f"""<section id="{name}-section" class="data-table" data-table="{name}" data-prefix="{prefix}">
<h2>{_e(heading)}</h2>
{f'<p class="caption">{caption}</p>' if caption else ""}
{_embedded_note(prefix, selection, command)}
<div class="controls">
<label>Filter <input id="{prefix}filter" type="text" spellcheck="false" autocomplete="off"
 placeholder="{_e(example)}"></label>
<label>Group by <select id="{prefix}group-by"><option value="">(none)</option></select></label>
<span id="{prefix}row-count" class="row-count" data-count="{rows}">{rows:,} rows</span>
</div>
<div id="{prefix}filter-error" class="filter-error" role="alert" hidden></div>
<p class="columns-help">Columns: <span id="{prefix}columns"></span></p>
<p id="{prefix}groups-scope" class="groups-scope" hidden></p>
<table id="{prefix}groups" class="groups" hidden><thead><tr><th></th><th>rows</th>
<th>distribution</th></tr></thead><tbody></tbody></table>
{rows_table}
<button id="{prefix}show-more" type="button" hidden>Show more</button>
{after}
</section>"""


def _embedded_note(prefix: str, selection: Selection | None, command: str) -> str:
    """What a cut table holds, why, and where the rest is; nothing when every row is embedded."""
    if selection is None or not selection.capped:
        return ""
    held, total = len(selection.positions), selection.total
    return (f'<div id="{prefix}embedded-note" class="embedded-note" data-embedded="{held}" data-total="{total}">'
            f"<p>This page holds <strong>{held:,} of {total:,} rows</strong>: {_e(describe(selection))}. "
            f"The <code>{REASON_COLUMN}</code> column says why each row is here.</p>"
            f"<p>Metrics, plots, the confusion matrix and the group counts (with an empty filter) are over all "
            f"{total:,} rows; a filter searches the {held:,} embedded rows only. The rest: "
            f"<code>{_e(command)}</code></p></div>")


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


def _split_panel(labels: tuple[str, str]) -> str:
    """Beside the comparison table: the clicked row's image and its class scores under A and B as paired bars
    (report/charts.py paired_scores, filled by static/split_panel.js without redrawing the page)."""
    from report.charts import SELECTED_SCORES

    return f"""<aside id="cmp-selected" class="split-panel" aria-live="polite">
<h3>Selected image</h3>
<p class="split-hint">Click a row to see its class scores under A = {_e(labels[0])} and B = {_e(labels[1])}.</p>
<div class="split-image"></div>
<dl class="split-facts"></dl>
<div class="chart" data-chart="{_e(SELECTED_SCORES)}"></div>
</aside>"""


def _comparison_charts(charts: dict[str, dict]) -> str:
    """The comparison's live charts (COMPARISON_CHARTS among `charts`), under its table."""
    return "".join(
        f'<figure data-plot="{_e(name)}" class="live"><div class="chart" data-chart="{_e(name)}"></div>'
        f"<figcaption>{_e(_caption(name))}: the true-class score of each labelled image under A and under B, "
        f"over every row of the comparison</figcaption></figure>"
        for name in COMPARISON_CHARTS if name in charts)


def _lineage_section(lineage: list[dict]) -> str:
    """The ancestry as a picture (lineage/draw.py: click a node for its summary), then as a table."""
    from lineage import draw

    figure = draw.figure_html(draw.lay_out(draw.picture(lineage))) if lineage else ""
    refs = {str(entry.get("ref", "")) for entry in lineage}
    rows = []
    for entry in lineage:
        ref = str(entry.get("ref", ""))
        digest = str(entry.get("digest", ""))
        inputs = " ".join(
            f'<a href="#lineage-{_e(item)}">{_e(item)}</a>' if str(item) in refs else _e(item)
            for item in entry.get("inputs", []))
        extra = ", ".join(f"{_e(key)}={_e(value)}" for key, value in entry.items()
                          if key not in ("ref", "digest", "made_by", "inputs", *LINEAGE_IN_PICTURE_ONLY))
        rows.append(f'<tr id="lineage-{_e(ref)}" data-ref="{_e(ref)}"><td>{_e(ref)}</td>'
                    f'<td><code title="{_e(digest)}">{_e(digest[:DIGEST_SHOWN])}</code></td>'
                    f"<td>{_e(entry.get('made_by', ''))}</td><td>{inputs}</td>"
                    f"<td>{extra}</td></tr>")
    body = "".join(rows) or '<tr><td colspan="5">no lineage recorded</td></tr>'
    return f"""<section id="lineage"><h2>Lineage</h2>
{figure}
<table id="lineage-table"><thead><tr><th>artifact</th><th>digest</th><th>made by</th><th>inputs</th>
<th></th></tr></thead><tbody>{body}</tbody></table></section>"""


# ---------------------------------------------------------------- operating thresholds (static/thresholds.js)


def _thresholds_section(metrics: dict, classes: list[str]) -> str:
    """Per class, the minimum score that reaches evaluate.threshold_for, and a slider that shows what any
    minimum does: precision, recall and unknowns, read exactly from the operating curves on a grid of
    minimum scores (report/metrics.py: threshold_grid). Nothing when the metrics carry no such curves."""
    from report.metrics import ALL_CLASSES, threshold_grid

    found = metrics.get("thresholds")
    operating = metrics.get("curves", {}).get("operating")
    if not found or not operating:
        return ""
    (kind, value), = found["target"].items()
    rows = []
    for name, point, now, key in [
            *((name, found["per_class"][name], metrics["per_class"][name].get("unknown", 0), "data-class")
              for name in classes),
            (ALL_CLASSES, found["all"], metrics.get("unknown", {}).get("count", 0), "data-all")]:
        if point["threshold"] is None:
            cells = f'<td colspan="4" class="note">{_e(point["reason"])}</td>'
        else:
            cells = (f'<td>{_threshold_text(point["threshold"])}</td><td>{point["precision"]:.4f}</td>'
                     f'<td>{point["recall"]:.4f}</td><td>{point["unknown"]:,}</td>')
        rows.append(f'<tr {key}="{_e(name)}"><th>{_e(name)}</th>{cells}<td>{now:,}</td></tr>')
    grid = threshold_grid(operating)
    # Classes by position: a class may be called anything, "(all)" included.
    payload = {"steps": grid["steps"], "curves": [grid["all"], *(grid["per_class"][name] for name in classes)]}
    options = "".join(f'<option value="{index}">{_e(name)}</option>'
                      for index, name in enumerate([ALL_CLASSES, *classes]))
    return f"""<section id="thresholds"><h2>Operating thresholds</h2>
<p class="caption">A guess whose top score is below its class's minimum becomes <code>unknown</code>
(<code>infer.min_score</code>): wrong for accuracy and recall, but no longer a confident mistake. Per class,
the lowest minimum that reaches {_e(kind)} {value:g} (evaluate.threshold_for), over the labelled images
the model guesses as that class; {_e(ALL_CLASSES)} is one minimum for every class.</p>
<table id="threshold-targets" class="numbers"><thead><tr><th>class</th><th>min_score</th><th>precision</th>
<th>recall</th><th>unknown at it</th><th>unknown in this table (by truth)</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h3>Try a minimum score</h3>
<div class="controls">
<label>Class <select id="threshold-class">{options}</select></label>
<label>Minimum score <input id="threshold-slider" type="range" min="0" max="{grid["steps"]}" step="1"
 value="0"></label> <output id="threshold-value">0.000</output>
</div>
<table id="threshold-readout" class="numbers"><thead><tr><th>precision</th><th>recall</th><th>unknown</th>
<th>kept (right of guessed)</th></tr></thead><tbody><tr><td data-field="precision"></td>
<td data-field="recall"></td><td data-field="unknown"></td><td data-field="kept"></td></tr></tbody></table>
<p class="caption">Counts over the labelled images: precision = right / kept guesses of the class, recall = right /
its images, unknown = its guesses below the minimum.</p>
<script type="application/json" id="threshold-data">{_json_for_script(payload)}</script>
</section>"""


def _threshold_text(threshold: float) -> str:
    """The exact minimum (float32 scores: up to 9 digits), short where it is short."""
    return f"{threshold:.9g}"


# ---------------------------------------------------------------- table data


def _table_payload(frame: pd.DataFrame, classes: list[str], groups: list[tuple[str, str]],
                   display: list[str] | None = None, notes: dict[str, str] | None = None,
                   full: pd.DataFrame | None = None, selection: Selection | None = None,
                   paired: dict[str, str] | None = None) -> dict:
    """Columns and rows as JSON-ready lists; missing values become null.

    Every column goes into the rows, so the filter can use it; `display` picks the
    ones drawn as table columns, and `notes` maps a column-name suffix to a small
    line under its heading (the model version of a comparison's `_a`/`_b` columns).
    When `frame` holds only some rows of `full`, the payload carries `total` and each
    group's exact counts over `full` (report.js shows those while the filter is empty).
    `paired` maps a group-by column to a second spread shown beside its pair's (a comparison's B beside A),
    with its exact counts likewise.
    """
    columns = [str(column) for column in frame.columns]
    values = [_json_column(frame[column]) for column in frame.columns]
    if "truth" in columns:  # an unlabelled row's truth is null, whatever stands for it in the table
        at = columns.index("truth")
        values[at] = [value if known else None for value, known in zip(values[at], labelled_mask(frame))]
    rows = [list(row) for row in zip(*values)] if values else []
    display = display or columns
    notes = notes or {}
    capped = full is not None and selection is not None and selection.capped
    return {"columns": columns, "rows": rows, "display": display,
            "notes": {column: note for column in display for suffix, note in notes.items()
                      if column.endswith(suffix)},
            "score_columns": [score_column(name) for name in classes if score_column(name) in columns],
            "groups": [{"column": column, "other": other,
                        **({"totals": _group_totals(full, column, other)} if capped else {}),
                        **_paired_group(full if capped else None, column, paired or {}, columns)}
                       for column, other in groups],
            "total": len(full) if capped else len(frame)}


def _paired_group(full: pd.DataFrame | None, column: str, paired: dict[str, str], columns: list[str]) -> dict:
    """A group's second spread, shown beside the first (report.js): its column, and its exact counts over `full`
    when the page holds only some of the rows."""
    second = paired.get(column)
    if second is None or second not in columns:
        return {}
    return {"paired": second, **({"paired_totals": _group_totals(full, column, second)} if full is not None else {})}


def _group_totals(frame: pd.DataFrame, column: str, other: str) -> list:
    """[value, rows, [[other value, rows], …]] per value of `column` over every row of `frame`, most
    rows first: the exact counts a cut page's group table shows. Missing values (and an unlabelled
    truth) are null, as in the rows. Counted on factorised codes, so a million rows cost no Python loop."""
    key_codes, key_values = pd.factorize(_group_values(frame, column), use_na_sentinel=True)
    other_codes, other_values = pd.factorize(_group_values(frame, other), use_na_sentinel=True)
    keys = _json_column(pd.Series(key_values, dtype=object)) + [None]  # code -1 (missing) is the last
    others = _json_column(pd.Series(other_values, dtype=object)) + [None]
    width = len(others)
    counts = np.bincount(key_codes.astype(np.int64) % len(keys) * width + other_codes.astype(np.int64) % width,
                         minlength=len(keys) * width).reshape(len(keys), width)
    totals = []
    for index, key in enumerate(keys):
        row = counts[index]
        if row.sum():
            spread = [[others[j], int(row[j])] for j in np.argsort(-row, kind="stable") if row[j]]
            totals.append([key, int(row.sum()), spread])
    return sorted(totals, key=lambda entry: -entry[1])


def _group_values(frame: pd.DataFrame, column: str) -> pd.Series:
    if column == "truth":
        return frame[column].where(labelled_mask(frame), None)
    return frame[column]


def _json_column(series: pd.Series) -> list:
    if pd.api.types.is_bool_dtype(series.dtype):
        return [None if pd.isna(value) else bool(value) for value in series.astype(object)]
    if pd.api.types.is_integer_dtype(series.dtype):
        return [None if pd.isna(value) else int(value) for value in series.astype(object)]
    if pd.api.types.is_float_dtype(series.dtype):
        rounded = round_significant(series.to_numpy(dtype=np.float64, na_value=np.nan))
        return [None if not np.isfinite(value) else value for value in rounded.tolist()]
    return [None if _missing(value) else (value if isinstance(value, (str, int, float, bool))
                                          else str(value)) for value in series.astype(object)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _prediction_groups(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [(column, other) for column, other in GROUP_PAIRS
            if column in frame.columns and other in frame.columns]


def _comparison_groups(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [(column, other) for column, other in COMPARISON_GROUP_PAIRS
            if column in frame.columns and other in frame.columns]


def _side_by_side(frame: pd.DataFrame) -> list[str]:
    """A comparison's shared columns, then each per-model column with its A and B together.

    Per-class scores stay out of the drawn table (they are still filterable).
    """
    columns = [str(column) for column in frame.columns]
    paired = [column for base in SIDE_BY_SIDE_PAIRED for column in (f"{base}_a", f"{base}_b")
              if column in columns]
    if not paired:
        return columns  # not a join_predictions table: draw it as it is
    return ([column for column in SHARED if column in columns] + paired
            + [column for column in SIDE_BY_SIDE_AFTER if column in columns])


def _accuracy_change(frame: pd.DataFrame) -> str:
    """The caption's accuracy line for A and B, from the correct_a/_b columns."""
    if "correct_a" not in frame.columns or "correct_b" not in frame.columns:
        return ""
    labelled = frame[frame["correct_a"].notna() & frame["correct_b"].notna()]
    if labelled.empty:
        return ""
    a, b = (labelled[column].astype(float).mean() for column in ("correct_a", "correct_b"))
    return (f" Accuracy over the {len(labelled):,} labelled images: A {a:.4f}, B {b:.4f} "
            f"({b - a:+.4f}).")


def _example_filter(classes: list[str]) -> str:
    name = quote(classes[0] if classes else "cat")
    return f'x["truth"] = {name} and x["guess"] != {name}'


def _data_uri(content: bytes) -> str:
    mime = next((mime for magic, mime in IMAGE_TYPES.items() if content.startswith(magic)), None)
    if mime is None:
        raise UserError(f"an image for the report is not PNG, JPEG, GIF or WebP "
                        f"(starts with {content[:8]!r})")
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def _caption(name: str) -> str:
    return Path(name).stem.replace("_", " ")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return '<span class="na" title="undefined: see the note">n/a</span>' if value is None \
        else f"{value:.4f}"
