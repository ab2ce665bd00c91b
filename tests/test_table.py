"""`pipeline.py table` operations on a small known table, with exact expected outputs."""

import json

import numpy as np
import pandas as pd
import pytest

from lineage.errors import UserError
from tables.table import format_table, query_table

NAN = float("nan")


@pytest.fixture
def table() -> pd.DataFrame:
    rows = [
        ("aaaaaaaaaaaaaaaa01", "a/frog1.jpg", "test", "Amphibia", "Amphibia", 0.7, 0.7, 0.2, 0.1),
        ("bbbbbbbbbbbbbbbb02", "a/frog2.jpg", "test", "Amphibia", "Aves", 0.6, 0.3, 0.6, 0.1),
        ("cccccccccccccccc03", "b/bird1.jpg", "test", "Aves", "Aves", 0.9, 0.05, 0.9, 0.05),
        ("dddddddddddddddd04", "b/bird2.jpg", "val", "Aves", "Mammalia", 0.5, 0.1, 0.4, 0.5),
        ("eeeeeeeeeeeeeeee05", "c/bat.jpg", "val", "Mammalia", "Mammalia", 0.8, 0.1, 0.1, 0.8),
        ("ffffffffffffffff06", "new/x.jpg", "test", None, "Aves", 0.55, 0.25, 0.55, 0.2),
    ]
    columns = ["id", "path", "split", "truth", "guess", "confidence", "score_Amphibia", "score_Aves", "score_Mammalia"]
    return pd.DataFrame(rows, columns=columns)


def paths(frame: pd.DataFrame) -> list[str]:
    return frame["path"].tolist()


def test_filter_keeps_matching_rows_in_order(table):
    assert paths(query_table(table, filter='x["truth"] != x["guess"]')) == ["a/frog2.jpg", "b/bird2.jpg", "new/x.jpg"]
    assert paths(query_table(table, filter='x["score_Aves"] >= 0.55 and x["split"] = "test"')) == [
        "a/frog2.jpg", "b/bird1.jpg", "new/x.jpg"]


def test_sort_limit_and_columns(table):
    top = query_table(table, sort="confidence", descending=True, limit=2)
    assert paths(top) == ["b/bird1.jpg", "c/bat.jpg"] and top.index.tolist() == [0, 1]
    by_truth = query_table(table, sort="truth")  # stable; missing truth last
    assert paths(by_truth) == ["a/frog1.jpg", "a/frog2.jpg", "b/bird1.jpg", "b/bird2.jpg", "c/bat.jpg", "new/x.jpg"]
    picked = query_table(table, columns=["path", "score_A*", "path"], limit=1)
    assert picked.to_dict("records") == [{"path": "a/frog1.jpg", "score_Amphibia": 0.7, "score_Aves": 0.2}]
    assert query_table(table, limit=0).empty


def test_group_by_truth_is_a_crosstab_with_total_and_accuracy(table):
    grouped = query_table(table, group_by="truth")
    expected = pd.DataFrame({
        "truth": ["Amphibia", "Aves", "Mammalia", "(no truth)"],
        "Amphibia": [1, 0, 0, 0], "Aves": [1, 1, 0, 1], "Mammalia": [0, 1, 1, 0],
        "total": [2, 2, 1, 1], "accuracy": [0.5, 0.5, 1.0, NAN],
    })
    pd.testing.assert_frame_equal(grouped, expected, check_dtype=False)
    assert format_table(grouped, "text") == (
        "truth       Amphibia  Aves  Mammalia  total  accuracy\n"
        "----------  --------  ----  --------  -----  --------\n"
        "Amphibia           1     1         0      2    0.5000\n"
        "Aves               0     1         1      2    0.5000\n"
        "Mammalia           0     0         1      1    1.0000\n"
        "(no truth)         0     1         0      1\n"
    )


def test_group_by_guess_counts_truths_and_precision(table):
    assert format_table(query_table(table, group_by="guess"), "markdown") == (
        "| guess    | Amphibia | Aves | Mammalia | (no truth) | total | precision |\n"
        "| -------- | -------: | ---: | -------: | ---------: | ----: | --------: |\n"
        "| Amphibia |        1 |    0 |        0 |          0 |     1 |    1.0000 |\n"
        "| Aves     |        1 |    1 |        0 |          1 |     3 |    0.5000 |\n"
        "| Mammalia |        0 |    1 |        1 |          0 |     2 |    0.5000 |\n"
    )


def test_group_by_another_column_counts_values(table):
    assert format_table(query_table(table, group_by="split"), "csv") == "split,count\ntest,4\nval,2\n"


def test_group_by_then_filter_sort_and_limit(table):
    ranked = query_table(table, group_by="truth", sort="accuracy", descending=True)
    assert ranked["truth"].tolist() == ["Mammalia", "Amphibia", "Aves", "(no truth)"]
    validation = query_table(table, filter='x["split"] = "val"', group_by="truth", columns=["truth", "accuracy"])
    assert validation.to_dict("records") == [{"truth": "Aves", "accuracy": 0.0}, {"truth": "Mammalia", "accuracy": 1.0}]
    nothing = query_table(table, filter='x["split"] = "train"', group_by="truth")
    assert nothing.empty and list(nothing.columns) == ["truth", "total", "accuracy"]


def test_a_class_named_like_a_summary_column_keeps_both(table):
    table.loc[0, "guess"] = "total"
    assert list(query_table(table, group_by="truth").columns) == [
        "truth", "Aves", "Mammalia", "guess=total", "total", "accuracy"]


@pytest.mark.parametrize("arguments, message", [
    ({"sort": "confidnce"}, 'sort: unknown column "confidnce"; did you mean "confidence"? columns: confidence, id,'),
    ({"group_by": "trut"}, 'group by: unknown column "trut"; did you mean "truth"?'),
    ({"columns": ["pth"]}, 'columns: unknown column "pth"; did you mean "path"?'),
    ({"columns": ["scores_*"]}, "columns: no column matches scores_*"),
    ({"group_by": "truth", "sort": "confidence"}, 'sort: unknown column "confidence"'),
    ({"descending": True}, "--desc needs --sort"),
    ({"limit": -1}, "--limit must be 0 or more"),
    ({"filter": 'x["truth"] = '}, "filter: expected a value after '=', found the end at column 14"),
])
def test_mistakes_are_user_errors_naming_the_fix(table, arguments, message):
    with pytest.raises(UserError) as caught:
        query_table(table, **arguments)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_text_format_aligns_shortens_ids_and_blanks_missing_values(table):
    table.loc[1, "score_Aves"] = NAN
    out = query_table(table, columns=["id", "truth", "score_Aves", "path"], limit=2)
    out.loc[0, "path"] = "a/line\nbreak.jpg"
    assert format_table(out, "text") == (
        "id            truth     score_Aves  path\n"
        "------------  --------  ----------  ----------------\n"
        "aaaaaaaaaaaa  Amphibia      0.2000  a/line break.jpg\n"
        "bbbbbbbbbbbb  Amphibia              a/frog2.jpg\n"
    )


def test_csv_and_json_keep_full_ids_and_precision(table):
    out = query_table(table, filter='x["truth"] = null or x["split"] = "val"', columns=["id", "truth", "score_Aves"])
    assert format_table(out, "csv") == (
        "id,truth,score_Aves\n"
        "dddddddddddddddd04,Aves,0.4\n"
        "eeeeeeeeeeeeeeee05,Mammalia,0.1\n"
        "ffffffffffffffff06,,0.55\n"
    )
    assert format_table(out, "json") == (
        "[\n"
        '{"id": "dddddddddddddddd04", "truth": "Aves", "score_Aves": 0.4},\n'
        '{"id": "eeeeeeeeeeeeeeee05", "truth": "Mammalia", "score_Aves": 0.1},\n'
        '{"id": "ffffffffffffffff06", "truth": null, "score_Aves": 0.55}\n'
        "]\n"
    )
    assert json.loads(format_table(out, "json"))[2]["truth"] is None


def test_markdown_escapes_pipes_and_handles_no_rows(table):
    table.loc[0, "path"] = "a|b.jpg"
    assert format_table(query_table(table, columns=["path", "confidence"], limit=1), "markdown") == (
        "| path     | confidence |\n"
        "| -------- | ---------: |\n"
        "| a\\|b.jpg |     0.7000 |\n"
    )
    empty = query_table(table, filter='x["split"] = "train"', columns=["path", "confidence"])
    assert format_table(empty, "markdown") == "| path | confidence |\n| ---- | ---------: |\n"
    assert format_table(empty, "text") == "path  confidence\n----  ----------\n"
    assert format_table(empty, "json") == "[]\n"


def test_booleans_and_negative_zero_read_plainly():
    frame = pd.DataFrame({"correct": [True, False], "change": [-1e-9, 0.25]})
    assert format_table(frame, "text") == "correct  change\n-------  ------\ntrue     0.0000\nfalse    0.2500\n"


def test_unknown_format_is_a_user_error(table):
    with pytest.raises(UserError, match="use one of text, csv, json, markdown"):
        format_table(table, "html")


def test_no_row_limit():
    rows = 200_001  # W&B Tables stop at 200,000
    rng = np.random.default_rng(0)
    classes = np.array(["Amphibia", "Aves", "Mammalia"])
    frame = pd.DataFrame({"truth": classes[rng.integers(0, 3, rows)], "guess": classes[rng.integers(0, 3, rows)],
                          "score_Aves": rng.random(rows)})
    assert len(query_table(frame, filter='x["score_Aves"] >= 0')) == rows
    grouped = query_table(frame, group_by="truth")
    assert grouped["total"].sum() == rows
    assert grouped["truth"].tolist() == ["Aves", "Amphibia", "Mammalia"]  # score columns' classes first
    expected = pd.crosstab(frame["truth"], frame["guess"]).loc[grouped["truth"], grouped["truth"]]
    assert (grouped[grouped["truth"].tolist()].to_numpy() == expected.to_numpy()).all()
