"""The `pipeline.py table` operations, as pure functions on a prediction table (or a dataset version's
table, tables/datasets.py, which brings its own group-by).

A prediction table (its schema is tables/predictions.py's) has one row per image: id, path,
split, truth (missing for unlabelled images), guess, confidence, then score_<class> for
every class in the model's class order. `query_table` runs filter -> group-by -> sort -> columns -> limit,
so sort, columns and limit apply to whatever the earlier steps produced: the rows,
or the grouped summary. Nothing here caps the row count.
"""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import pandas as pd

from lineage.errors import UserError
from tables.predictions import UNKNOWN, class_names, missing_label
from tables.query import filter_frame, one_line, unknown_column_message

FORMATS = ("text", "csv", "json", "markdown")
NO_TRUTH = "(no truth)"  # the group of unlabelled images (and of rows with no guess)
DECIMALS = 4  # for floats in text and markdown; csv and json keep full precision
SHORT_ID = 12  # text and markdown show ids like git's short hashes; csv and json in full
COLUMN_GAP = "  "
RATE_BY_GROUP = {"truth": "accuracy", "guess": "precision"}  # share of the group guessed right


def group_codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Values factorised: a code per row into a list of strings, NO_TRUTH standing for every
    missing value. The list may hold "" unused; crosstab drops groups with no rows."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    names = [str(u) for u in uniques] + [NO_TRUTH]
    codes = np.where(missing_label(values), len(names) - 1, codes)
    return codes, names


def labels(values: pd.Series) -> pd.Series:
    """Values as group labels: strings, with NO_TRUTH for a missing one."""
    codes, names = group_codes(values)
    return pd.Series(np.array(names, dtype=object)[codes], index=values.index, dtype=object)


def class_rank(classes: list[str]):
    """A sort key: the model's class order first, then other values sorted, NO_TRUTH last."""
    rank = {c: i for i, c in enumerate(classes)}
    return lambda v: (v == NO_TRUTH, rank.get(v, len(rank)), v)


def class_order(values, classes: list[str]) -> list[str]:
    return sorted(values, key=class_rank(classes))


# ---------------------------------------------------------------- query


def query_table(frame: pd.DataFrame, filter: str | None = None, sort: str | None = None, descending: bool = False,
                group_by: str | None = None, columns: list[str] | None = None,
                limit: int | None = None, group=None, classes: list[str] | None = None) -> pd.DataFrame:
    """Filter the rows, optionally summarise them by a column, then sort, pick columns, cut.

    `group(rows, by, classes)` summarises (a prediction table's group_rows unless given: a dataset table
    passes tables/datasets.py's); `classes` orders groups (a prediction table's score columns unless given)."""
    result = filter_frame(frame, filter)
    if group_by:
        result = (group or group_rows)(result, group_by, class_names(frame.columns) if classes is None else classes)
    if sort:
        result = sort_rows(result, sort, descending)
    elif descending:
        raise UserError("table: --desc needs --sort COLUMN to say what to order by")
    if columns:
        result = result[select_columns(list(result.columns), columns)]
    if limit is not None:
        if limit < 0:
            raise UserError(f"table: --limit must be 0 or more, got {limit}")
        result = result.head(limit)
    return result.reset_index(drop=True)


def check_column(name: str, available, what: str) -> None:
    if name not in available:
        raise UserError(unknown_column_message(name, [str(c) for c in available], what))


def sort_rows(frame: pd.DataFrame, by: str, descending: bool) -> pd.DataFrame:
    check_column(by, frame.columns, "sort")
    return frame.sort_values(by, ascending=not descending, kind="stable", na_position="last")


def select_columns(available: list[str], wanted: list[str]) -> list[str]:
    """Names in the order asked; a name with * ? [ is a pattern (score_* picks every score)."""
    picked: list[str] = []
    for name in wanted:
        if any(ch in name for ch in "*?["):
            matched = [c for c in available if fnmatch.fnmatchcase(str(c), name)]
            if not matched:
                listed = ", ".join(map(str, available))
                raise UserError(one_line(f"columns: no column matches {name}; columns: {listed}"))
        else:
            check_column(name, available, "columns")
            matched = [name]
        picked += [c for c in matched if c not in picked]
    return picked


# ---------------------------------------------------------------- group-by


def group_rows(rows: pd.DataFrame, by: str, classes: list[str]) -> pd.DataFrame:
    """truth: per true class, the count of each guess, the total and the accuracy.
    guess: per guess, the count of each truth, the total and the precision.
    Any other column: the count of each value, most frequent first."""
    check_column(by, rows.columns, "group by")
    if by in RATE_BY_GROUP and {"truth", "guess"} <= set(rows.columns):
        other = "guess" if by == "truth" else "truth"
        return crosstab(rows[by], rows[other], by, RATE_BY_GROUP[by], classes)
    counts = rows[by].value_counts(dropna=False, sort=False).rename("count").reset_index()
    order = np.lexsort((counts[by].astype(str).to_numpy(), -counts["count"].to_numpy()))
    return counts.iloc[order].reset_index(drop=True)


def crosstab(keys: pd.Series, others: pd.Series, key_name: str, rate_name: str, classes: list[str]) -> pd.DataFrame:
    """Counts of each (key, other) pair by one bincount over factorised codes: linear, no pivot."""
    key_codes, key_names = group_codes(keys)
    other_codes, other_names = group_codes(others)
    counts = np.bincount(key_codes * len(other_names) + other_codes, minlength=len(key_names) * len(other_names))
    counts = counts.reshape(len(key_names), len(other_names))
    rank = class_rank(classes)
    rows = sorted(np.flatnonzero(counts.sum(axis=1)), key=lambda i: rank(key_names[i]))
    columns = sorted(np.flatnonzero(counts.sum(axis=0)), key=lambda i: rank(other_names[i]))
    counts = counts[np.ix_(rows, columns)]
    key_values, other_values = [key_names[i] for i in rows], [other_names[i] for i in columns]

    position = {v: i for i, v in reversed(list(enumerate(other_values)))}
    right = np.array([counts[i, position[k]] if k in position else 0 for i, k in enumerate(key_values)], dtype=int)
    labelled = counts[:, [v != NO_TRUTH for v in other_values]].sum(axis=1)
    rate = right / np.where(labelled > 0, labelled, 1)
    abstained = key_name == "guess" and UNKNOWN not in classes  # an "unknown" guess has no precision
    rate[(labelled == 0) | np.array([k == NO_TRUTH or (abstained and k == UNKNOWN) for k in key_values],
                                    dtype=bool)] = np.nan

    taken = {key_name, "total", rate_name}
    names = [f"{'guess' if key_name == 'truth' else 'truth'}={v}" if v in taken else v for v in other_values]
    table = pd.DataFrame(counts, columns=names)
    table.insert(0, key_name, key_values)
    table["total"] = counts.sum(axis=1)
    table[rate_name] = rate
    return table


# ---------------------------------------------------------------- formatting


def format_table(frame: pd.DataFrame, fmt: str) -> str:
    """The frame as text (aligned columns), csv, json (a list of records) or markdown."""
    if fmt not in FORMATS:
        raise UserError(f"table: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        return records_json(frame)
    cells = {str(name): display_cells(frame[name], str(name)) for name in frame.columns}
    right = {str(name): is_number_column(frame[name]) for name in frame.columns}
    return (markdown_lines if fmt == "markdown" else text_lines)(cells, right)


def records_json(frame: pd.DataFrame) -> str:
    """One record per line; NaN and missing values become null."""
    plain = frame.astype(object).where(frame.notna(), None)
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False) for record in plain.to_dict("records")]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


def is_number_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def display_cells(series: pd.Series, name: str) -> list[str]:
    """One display string per value, a whole column at a time (100,000 rows format in well
    under a second): floats to DECIMALS places, booleans as true/false, missing as ""."""
    missing = series.isna().to_numpy(dtype=bool)
    if pd.api.types.is_float_dtype(series.dtype):
        negative_zero = f"{-0.0:.{DECIMALS}f}"
        values = [f"{v:.{DECIMALS}f}" for v in series.to_numpy(dtype=float, na_value=0.0)]
        values = [v[1:] if v == negative_zero else v for v in values]
    elif pd.api.types.is_string_dtype(series.dtype) and not missing.any():
        values = series.str.replace(r"[\r\n\t]", " ", regex=True).tolist()
    else:
        values = [display_value(v) for v in series.tolist()]
    if name == "id":
        values = [v[:SHORT_ID] for v in values]
    if missing.any():
        values = ["" if gone else v for v, gone in zip(values, missing)]
    return values


def display_value(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}".replace(f"{-0.0:.{DECIMALS}f}", f"{0.0:.{DECIMALS}f}")
    return str(value).replace("\r", " ").replace("\n", " ").replace("\t", " ")


def text_lines(cells: dict[str, list[str]], right: dict[str, bool]) -> str:
    columns = []
    for name, values in cells.items():
        width = max([len(name)] + [len(v) for v in values])
        values = [name, "-" * width] + values
        columns.append([v.rjust(width) for v in values] if right[name] else [v.ljust(width) for v in values])
    return "\n".join(COLUMN_GAP.join(row).rstrip() for row in zip(*columns)) + "\n" if columns else ""


def markdown_lines(cells: dict[str, list[str]], right: dict[str, bool]) -> str:
    escaped = {name.replace("|", "\\|"): [v.replace("|", "\\|") for v in values] for name, values in cells.items()}
    aligned = {name.replace("|", "\\|"): flag for name, flag in right.items()}
    widths = {name: max([len(name), 3] + [len(v) for v in values]) for name, values in escaped.items()}

    def row(values) -> str:
        return "| " + " | ".join(values) + " |"

    header = row(n.rjust(widths[n]) if aligned[n] else n.ljust(widths[n]) for n in escaped)
    rule = row("-" * (widths[n] - 1) + ":" if aligned[n] else "-" * widths[n] for n in escaped)
    body = [row(v.rjust(widths[n]) if aligned[n] else v.ljust(widths[n]) for n, v in zip(escaped, line))
            for line in zip(*escaped.values())]
    return "\n".join([header, rule] + body) + "\n" if escaped else ""
