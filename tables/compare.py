"""`pipeline.py compare`: two prediction tables on the same images, side by side.

The tables are joined on `id` (the image's object digest; inner join, first row per id).
The joined rows, which the filter sees, have these columns:

    id, path, split, truth          shared; from A, with B's where A's is missing
    guess_a, guess_b                each model's guess (likewise confidence_a, confidence_b,
                                    score_<class>_a, score_<class>_b and any other column)
    score_true_a, score_true_b      each model's score for the true class (null if unlabelled,
                                    or if that model has no such class)
    correct_a, correct_b            guess = truth (null if unlabelled)
    shift                           score_true_b - score_true_a

so `x["correct_a"] = true and x["correct_b"] = false` keeps what B broke. Accuracy
counts labelled rows only; unlabelled ones are left out and the output says how many.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lineage.errors import UserError
from tables.predictions import class_names, missing_label, score_column
from tables.query import filter_frame
from tables.table import class_order, format_table, labels, records_json

SHARED = ("id", "path", "split", "truth")
REQUIRED = ("id", "path", "truth", "guess")
IMAGE_COLUMNS = ["id", "path", "truth", "guess_a", "guess_b", "correct_a", "correct_b",
                 "score_true_a", "score_true_b", "shift"]
LIST_COLUMNS = ["id", "path", "truth", "guess_a", "guess_b", "score_true_a", "score_true_b"]
FORMATS = ("text", "json", "markdown", "csv")


@dataclass
class Comparison:
    label_a: str
    label_b: str
    rows_a: int  # images in each table
    rows_b: int
    shared: int  # images in both
    selected: int  # shared images the filter kept
    labelled: int  # of those, with a truth: accuracy counts these only
    truth_conflicts: int  # shared images whose two truths differ (A's is used)
    accuracy_a: float | None  # None when no selected image is labelled
    accuracy_b: float | None
    score_shift_mean: float | None  # mean of score_true_b - score_true_a over labelled images
    per_class: pd.DataFrame  # truth, images, accuracy_a, accuracy_b, change
    a_right_b_wrong: pd.DataFrame  # LIST_COLUMNS, sorted by truth then path
    b_right_a_wrong: pd.DataFrame
    guesses: pd.DataFrame  # truth, guess, count_a, count_b: the guess distribution per truth
    images: pd.DataFrame  # IMAGE_COLUMNS for every selected image, largest |shift| first

    @property
    def unlabelled(self) -> int:
        return self.selected - self.labelled


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, label_a: str, label_b: str,
                        filter: str | None = None) -> Comparison:
    """Join A and B on image id, apply the filter to the joined rows, and compare."""
    joined, conflicts = join_predictions(a, b, label_a, label_b)
    rows = filter_frame(joined, filter)
    labelled = rows[~missing_label(rows["truth"])]
    classes = class_order(set(labels(rows["truth"])), class_names(a.columns) + class_names(b.columns))
    images = rows[IMAGE_COLUMNS].assign(size=rows["shift"].abs())
    images = images.sort_values(["size", "path"], ascending=[False, True], kind="stable", na_position="last")
    return Comparison(
        label_a=label_a, label_b=label_b, rows_a=len(a), rows_b=len(b), shared=len(joined), selected=len(rows),
        labelled=len(labelled), truth_conflicts=conflicts,
        accuracy_a=mean_or_none(labelled["correct_a"]), accuracy_b=mean_or_none(labelled["correct_b"]),
        score_shift_mean=mean_or_none(labelled["shift"]),
        per_class=per_class_accuracy(labelled, classes),
        a_right_b_wrong=right_only(labelled, "correct_a", "correct_b"),
        b_right_a_wrong=right_only(labelled, "correct_b", "correct_a"),
        guesses=guesses_side_by_side(rows, classes),
        images=images.drop(columns="size").reset_index(drop=True),
    )


def join_predictions(a: pd.DataFrame, b: pd.DataFrame, label_a: str, label_b: str) -> tuple[pd.DataFrame, int]:
    """The joined rows described in the module docstring, and the count of truth conflicts."""
    for frame, label in ((a, label_a), (b, label_b)):
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise UserError(f"compare: {label} has no column {', '.join(missing)}; is it a prediction table?")
    joined = side(a, "a").merge(side(b, "b"), on="id", how="inner", validate="one_to_one")
    if joined.empty:
        sizes = f"{label_a} ({count_images(len(a))}) and {label_b} ({count_images(len(b))})"
        raise UserError(f"compare: {sizes} share no images; compare predictions made on the same images")
    truth_a, truth_b = joined.pop("truth_a"), joined.pop("truth_b")
    has_a, has_b = ~missing_label(truth_a), ~missing_label(truth_b)
    conflicts = int((has_a & has_b & (truth_a.astype(str) != truth_b.astype(str)).to_numpy()).sum())
    shared = {"truth": truth_a.where(has_a, truth_b.where(has_b, None))}
    for name in ("path", "split"):
        if f"{name}_a" in joined or f"{name}_b" in joined:
            first = joined.pop(f"{name}_a") if f"{name}_a" in joined else None
            second = joined.pop(f"{name}_b") if f"{name}_b" in joined else None
            shared[name] = second if first is None else first if second is None else first.fillna(second)
    front = pd.DataFrame(shared, index=joined.index)
    joined = pd.concat([joined[["id"]], front, joined.drop(columns="id")], axis=1)
    unlabelled = missing_label(joined["truth"])
    for s, frame in (("a", a), ("b", b)):
        correct = (joined[f"guess_{s}"].astype(str) == joined["truth"].astype(str)).astype("boolean")
        joined[f"correct_{s}"] = correct.mask(unlabelled)
        joined[f"score_true_{s}"] = true_class_scores(joined, class_names(frame.columns), s)
    joined["shift"] = joined["score_true_b"] - joined["score_true_a"]
    return joined, conflicts


def side(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """One table with every column but id suffixed _a or _b, one row per id."""
    if frame["id"].duplicated().any():  # else no copy: at 1,000,000 rows each copy of a table is ~400 MB
        frame = frame.drop_duplicates("id")
    return frame.rename(columns={c: f"{c}_{suffix}" for c in frame.columns if c != "id"})


def true_class_scores(joined: pd.DataFrame, classes: list[str], suffix: str) -> np.ndarray:
    """Each row's score for its true class, by one gather over the score matrix."""
    if not classes:
        return np.full(len(joined), np.nan)
    scores = joined[[f"{score_column(c)}_{suffix}" for c in classes]].to_numpy(dtype=float, na_value=np.nan)
    position = {c: i for i, c in enumerate(classes)}
    column = joined["truth"].map(position).to_numpy(dtype=float, na_value=np.nan)
    known = ~np.isnan(column)
    out = np.full(len(joined), np.nan)
    out[known] = scores[np.flatnonzero(known), column[known].astype(int)]
    return out


def mean_or_none(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else None


def per_class_accuracy(labelled: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    grouped = labelled.astype({"correct_a": float, "correct_b": float}).groupby("truth", sort=False)
    table = grouped.agg(images=("id", "size"), accuracy_a=("correct_a", "mean"), accuracy_b=("correct_b", "mean"))
    table = table.reindex([c for c in classes if c in table.index]).rename_axis("truth").reset_index()
    table["change"] = table["accuracy_b"] - table["accuracy_a"]
    return table


def right_only(labelled: pd.DataFrame, right: str, wrong: str) -> pd.DataFrame:
    rows = labelled[(labelled[right] & ~labelled[wrong]).to_numpy(dtype=bool)]
    return rows[LIST_COLUMNS].sort_values(["truth", "path"], kind="stable").reset_index(drop=True)


def guesses_side_by_side(rows: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per truth (NO_TRUTH for unlabelled images), how often each model guessed each class."""
    truth = labels(rows["truth"])
    counts = [pd.Series(1, index=rows.index).groupby([truth, rows[f"guess_{s}"].astype(str)]).size()
              .rename(f"count_{s}") for s in ("a", "b")]
    table = pd.concat(counts, axis=1).fillna(0).astype(int).rename_axis(["truth", "guess"]).reset_index()
    rank = {c: i for i, c in enumerate(class_order(set(table["truth"]) | set(table["guess"]) | set(classes), classes))}
    order = np.lexsort((table["guess"].map(rank).to_numpy(), table["truth"].map(rank).to_numpy()))
    return table.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------- formatting


def format_comparison(c: Comparison, fmt: str, limit: int | None = 20) -> str:
    """text and markdown: a summary and the tables, lists cut at `limit` rows (None: all);
    json: everything; csv: one row per selected image (IMAGE_COLUMNS)."""
    if fmt not in FORMATS:
        raise UserError(f"compare: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return format_table(c.images, "csv")
    if fmt == "json":
        return comparison_json(c)
    heading = (lambda t: f"\n## {t}\n\n") if fmt == "markdown" else (lambda t: f"\n{t}\n")
    parts = [("# " if fmt == "markdown" else "") + "compare\n\n" + "\n".join(summary_lines(c)) + "\n"]
    sections = [("accuracy per true class", c.per_class),
                (f"{c.label_a} right, {c.label_b} wrong ({len(c.a_right_b_wrong)})", c.a_right_b_wrong),
                (f"{c.label_b} right, {c.label_a} wrong ({len(c.b_right_a_wrong)})", c.b_right_a_wrong),
                ("guesses per true class", c.guesses),
                ("true-class score shift per image, largest first", c.images[c.images["shift"].notna()])]
    for title, table in sections:
        shown = table if limit is None else table.head(limit)
        more = f"... {len(table) - len(shown)} more (--format json lists all)\n" if len(shown) < len(table) else ""
        body = format_table(shown, fmt) if len(table) else "(none)\n"
        parts.append(heading(title) + body + more)
    return "".join(parts)


def summary_lines(c: Comparison) -> list[str]:
    def number(value, signed=False) -> str:
        return "n/a" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

    change = None if c.accuracy_a is None or c.accuracy_b is None else c.accuracy_b - c.accuracy_a
    lines = [f"A = {c.label_a} ({count_images(c.rows_a)}), B = {c.label_b} ({count_images(c.rows_b)})",
             f"shared images: {c.shared}, selected by the filter: {c.selected}, labelled: {c.labelled}"]
    if c.unlabelled:
        lines.append(f"{count_images(c.unlabelled)} without a truth left out of the accuracy")
    if c.truth_conflicts:
        lines.append(f"{count_images(c.truth_conflicts)} with a different truth in B; A's truth is used")
    lines += [f"accuracy: A {number(c.accuracy_a)}, B {number(c.accuracy_b)}, change {number(change, True)}",
              f"mean true-class score shift (B - A): {number(c.score_shift_mean, True)}"]
    return lines


def count_images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def comparison_json(c: Comparison) -> str:
    """The figures, then each table as a list of records, one record per line."""
    scalars = {k: v for k, v in vars(c).items() if not isinstance(v, pd.DataFrame)} | {"unlabelled": c.unlabelled}
    fields = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in scalars.items()]
    fields += [f" {json.dumps(k)}: {records_json(v).rstrip()}" for k, v in vars(c).items() if isinstance(v, pd.DataFrame)]
    return "{\n" + ",\n".join(fields) + "\n}\n"
