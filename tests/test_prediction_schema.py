"""One schema for prediction tables (tables/predictions.py), and one meaning of "unlabelled" in every reader.

A truth of "" is unlabelled exactly like a missing one: the same table with None where it has ""
must give the same metrics, plots, report page, group-by, comparison and headline accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lineage.contract import StageContext
from lineage.store import Store
from report import plots
from report.html import render_report
from report.metrics import compute_metrics
from tables.compare import compare_predictions
from tables.predictions import (FIXED_COLUMNS, SCORE_PREFIX, class_names, is_labelled, labelled_mask, missing_label,
                                prediction_output, score_column)
from tables.table import NO_TRUTH, query_table

PROJECT = Path(__file__).resolve().parent.parent
PREFIX_SPELT = r"""["']score_["']|f["']score_\{"""  # "score_" or f"score_{...}"
# frame["truth"].notna(), rows["truth"] == "" (but not the filter language's x["truth"] != "")
TRUTH_TESTED_BY_HAND = r"""\w\w\[["']truth["']\](\.(notna|isna)\(| *[!=]= *["']["'])"""
CLASSES = ["dog", "cat"]  # not sorted: the class order is the model's
# truth, guess, dog score. Rows 2, 4 and 5 are unlabelled: "" in one table, missing in the other.
ROWS = [("dog", "dog", 0.9), ("cat", "dog", 0.6), ("", "cat", 0.3), ("cat", "cat", 0.2), ("", "dog", 0.7),
        ("", "cat", 0.4), ("dog", "cat", 0.45)]


def table(missing) -> pd.DataFrame:
    """The ROWS table with `missing` (None, NaN or "") standing for each unlabelled truth."""
    frame = pd.DataFrame({"id": [f"i{n}" for n in range(len(ROWS))], "path": [f"img/{n}.jpg" for n in range(len(ROWS))],
                          "split": "test", "truth": [t if t else missing for t, _, _ in ROWS],
                          "guess": [g for _, g, _ in ROWS], "confidence": [max(d, 1 - d) for _, _, d in ROWS]})
    frame[score_column("dog")] = np.array([d for _, _, d in ROWS], dtype=np.float32)
    frame[score_column("cat")] = np.array([1 - d for _, _, d in ROWS], dtype=np.float32)
    return frame


@pytest.fixture(scope="module")
def empty() -> pd.DataFrame:
    return table("")


@pytest.fixture(scope="module")
def none() -> pd.DataFrame:
    return table(None)


def test_the_schema_in_one_place(empty):
    assert list(empty.columns[:len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    assert score_column("cat") == SCORE_PREFIX + "cat"
    assert class_names(empty.columns) == CLASSES
    assert class_names(["truth", "score_b", "guess", "score_a"]) == ["b", "a"]


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, ""])
def test_missing_or_empty_truth_is_unlabelled(missing):
    assert labelled_mask(table(missing)).tolist() == [True, True, False, True, False, False, True]
    assert not is_labelled(missing)
    assert is_labelled("cat")


def test_missing_label_on_a_string_dtype_column():
    values = pd.Series(["cat", "", None, "dog"], dtype="string")
    assert missing_label(values).tolist() == [False, True, True, False]


def test_filter_null_is_exactly_the_unlabelled_rows(empty):
    unlabelled = query_table(empty, filter='x["truth"] = null')
    assert unlabelled["id"].tolist() == empty["id"][~labelled_mask(empty)].tolist()


def test_metrics_count_empty_truth_as_unlabelled(empty, none):
    metrics = compute_metrics(empty, CLASSES)
    assert (metrics["labelled"], metrics["unlabelled"]) == (4, 3)
    assert metrics["accuracy"] == 0.5
    assert metrics == compute_metrics(none, CLASSES)


def test_scatter_draws_empty_truth_as_unlabelled(empty, none):
    assert plots.score_scatter(empty, "dog", "cat", CLASSES) == plots.score_scatter(none, "dog", "cat", CLASSES)


def test_report_page_shows_empty_truth_as_missing(empty, none):
    def page(frame) -> str:
        return render_report(title="t", metrics=compute_metrics(frame, CLASSES), classes=CLASSES, plots={},
                             table=frame, thumbnails={}, lineage=[])

    shown = page(empty)
    assert shown == page(none)
    assert '"truth":""' not in shown.replace(" ", "")


def test_group_by_truth_puts_empty_truth_in_the_no_truth_group(empty, none):
    grouped = query_table(empty, group_by="truth")
    assert grouped.set_index("truth")["total"].to_dict() == {"dog": 2, "cat": 2, NO_TRUTH: 3}
    assert grouped["accuracy"].tolist()[:2] == [0.5, 0.5]
    assert grouped.equals(query_table(none, group_by="truth"))


def test_compare_leaves_empty_truth_out_of_the_accuracy(empty, none):
    other = none.assign(guess=none["truth"].fillna("dog"))  # B is right on every labelled image
    c = compare_predictions(empty, other, "A", "B")
    assert (c.labelled, c.unlabelled, c.accuracy_a, c.accuracy_b) == (4, 3, 0.5, 1.0)
    reversed_roles = compare_predictions(none, other.assign(truth=other["truth"].fillna("")), "A", "B")
    assert (reversed_roles.labelled, reversed_roles.accuracy_a) == (4, 0.5)


def test_headline_accuracy_of_a_predictions_version_skips_empty_truth(tmp_path, empty):
    lines: list[str] = []
    ctx = StageContext(Store.open(tmp_path / "store", create=True), "infer", log=lines.append)
    prediction_output(ctx, empty, CLASSES, "test", {})
    assert lines == ["predictions: 7 rows on test, accuracy 0.5000"]


def test_no_other_module_spells_the_prefix_or_the_unlabelled_rule():
    """The prefix and the unlabelled rule live in tables/predictions.py; a copy elsewhere is how they drift."""
    home = PROJECT / "tables" / "predictions.py"
    copies = []
    for folder in ("models", "report", "stages", "tables", "workflow"):
        for path in (PROJECT / folder).rglob("*.py"):
            if path == home:
                continue
            text = path.read_text()
            if re.search(PREFIX_SPELT, text) or re.search(TRUTH_TESTED_BY_HAND, text):
                copies.append(str(path.relative_to(PROJECT)))
    assert copies == []
