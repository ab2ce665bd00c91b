"""`pipeline.py compare` on two known tables, against hand-computed figures.

Shared images i1..i5 (i6 only in A, i7 only in B); i5 is unlabelled.
          truth  A guess (true score)  B guess (true score)  shift
    i1    cat    cat  0.9               cat  0.95             +0.05
    i2    cat    dog  0.4               cat  0.7              +0.30
    i3    dog    dog  0.8               cat  0.4              -0.40
    i4    dog    cat  0.3               dog  0.55             +0.25
    i5    -      cat                    dog
accuracy A 2/4, B 3/4; mean shift 0.2/4 = 0.05.
"""

import json

import pandas as pd
import pytest

from lineage.errors import UserError
from tables.compare import IMAGE_COLUMNS, compare_predictions, format_comparison

COLUMNS = ["id", "path", "split", "truth", "guess", "confidence", "score_cat", "score_dog"]


def predictions(rows) -> pd.DataFrame:
    return pd.DataFrame([(i, f"img/{i}.jpg", "test", t, g, max(c, d), c, d) for i, t, g, c, d in rows],
                        columns=COLUMNS)


@pytest.fixture
def a() -> pd.DataFrame:
    return predictions([("i1", "cat", "cat", 0.9, 0.1), ("i2", "cat", "dog", 0.4, 0.6), ("i3", "dog", "dog", 0.2, 0.8),
                        ("i4", "dog", "cat", 0.7, 0.3), ("i5", None, "cat", 0.6, 0.4), ("i6", "cat", "cat", 0.8, 0.2)])


@pytest.fixture
def b() -> pd.DataFrame:
    return predictions([("i4", "dog", "dog", 0.45, 0.55), ("i3", "dog", "cat", 0.6, 0.4),
                        ("i2", "cat", "cat", 0.7, 0.3), ("i1", "cat", "cat", 0.95, 0.05),
                        ("i5", "", "dog", 0.3, 0.7), ("i7", "dog", "dog", 0.1, 0.9)])


def test_accuracy_on_shared_labelled_images(a, b):
    c = compare_predictions(a, b, "model:v1", "model:v2", None)
    assert (c.rows_a, c.rows_b, c.shared, c.selected, c.labelled, c.unlabelled) == (6, 6, 5, 5, 4, 1)
    assert (c.accuracy_a, c.accuracy_b) == (0.5, 0.75)
    assert c.score_shift_mean == pytest.approx(0.05)
    assert c.truth_conflicts == 0


def test_per_class_accuracy(a, b):
    per_class = compare_predictions(a, b, "A", "B", None).per_class
    assert per_class.to_dict("records") == [
        {"truth": "cat", "images": 2, "accuracy_a": 0.5, "accuracy_b": 1.0, "change": 0.5},
        {"truth": "dog", "images": 2, "accuracy_a": 0.5, "accuracy_b": 0.5, "change": 0.0},
    ]


def test_who_got_which_images_right(a, b):
    c = compare_predictions(a, b, "A", "B", None)
    assert c.a_right_b_wrong.to_dict("records") == [
        {"id": "i3", "path": "img/i3.jpg", "truth": "dog", "guess_a": "dog", "guess_b": "cat",
         "score_true_a": 0.8, "score_true_b": 0.4}]
    assert c.b_right_a_wrong["id"].tolist() == ["i2", "i4"]
    assert c.b_right_a_wrong[["score_true_a", "score_true_b"]].to_numpy().tolist() == [[0.4, 0.7], [0.3, 0.55]]


def test_score_shift_per_image_largest_first(a, b):
    images = compare_predictions(a, b, "A", "B", None).images
    assert list(images.columns) == IMAGE_COLUMNS
    assert images["id"].tolist() == ["i3", "i2", "i4", "i1", "i5"]
    assert images["shift"].tolist()[:4] == pytest.approx([-0.4, 0.3, 0.25, 0.05])
    unlabelled = images.iloc[4]
    assert pd.isna(unlabelled["shift"]) and pd.isna(unlabelled["correct_a"]) and pd.isna(unlabelled["truth"])


def test_guess_distribution_side_by_side(a, b):
    guesses = compare_predictions(a, b, "A", "B", None).guesses
    assert guesses.values.tolist() == [
        ["cat", "cat", 1, 2], ["cat", "dog", 1, 0], ["dog", "cat", 1, 1], ["dog", "dog", 1, 1],
        ["(no truth)", "cat", 1, 0], ["(no truth)", "dog", 0, 1]]


@pytest.mark.parametrize("expr, ids, accuracy_a, accuracy_b", [
    ('x["guess_a"] != x["guess_b"]', ["i3", "i2", "i4", "i5"], 1 / 3, 2 / 3),
    ('x["correct_a"] = true and x["correct_b"] = false', ["i3"], 1.0, 0.0),
    ('x["shift"] > 0 and x["truth"] = "cat"', ["i2", "i1"], 0.5, 1.0),
    ('x["score_cat_b"] > x["score_cat_a"] and x["split"] = "test"', ["i3", "i2", "i1"], 2 / 3, 2 / 3),
    ('x["truth"] = null', ["i5"], None, None),
])
def test_the_filter_sees_the_joined_rows(a, b, expr, ids, accuracy_a, accuracy_b):
    c = compare_predictions(a, b, "A", "B", expr)
    assert c.images["id"].tolist() == ids
    assert c.accuracy_a == pytest.approx(accuracy_a) and c.accuracy_b == pytest.approx(accuracy_b)


def test_no_shared_images_says_so_with_both_sizes(a):
    other = predictions([("z1", "cat", "cat", 0.9, 0.1)])
    with pytest.raises(UserError, match=r"A \(6 images\) and B \(1 image\) share no images"):
        compare_predictions(a, other, "A", "B", None)


def test_not_a_prediction_table(a):
    with pytest.raises(UserError, match="B has no column guess"):
        compare_predictions(a, a.drop(columns="guess"), "A", "B", None)


def test_a_different_truth_in_b_is_counted_and_a_wins(a, b):
    b.loc[b["id"] == "i1", "truth"] = "dog"
    c = compare_predictions(a, b, "A", "B", None)
    assert c.truth_conflicts == 1 and (c.accuracy_a, c.accuracy_b) == (0.5, 0.75)
    assert "1 image with a different truth in B; A's truth is used" in format_comparison(c, "text")


def test_models_with_different_classes_and_duplicate_ids(a, b):
    b = b.assign(score_fox=0.0)
    a = pd.concat([a, a.iloc[[0]].assign(guess="dog")])  # a second row for i1: the first one counts
    b.loc[b["id"] == "i3", "truth"] = None
    a.loc[a["id"] == "i3", "truth"] = "fox"  # a class only B knows
    c = compare_predictions(a, b, "A", "B", None)
    i3 = c.images.set_index("id").loc["i3"]
    assert pd.isna(i3["score_true_a"]) and i3["score_true_b"] == 0.0 and i3["truth"] == "fox"
    assert c.per_class["truth"].tolist() == ["cat", "dog", "fox"]
    assert (c.accuracy_a, c.accuracy_b) == (0.25, 0.75)  # i3 is now a fox: both models are wrong


def test_text_summary(a, b):
    text = format_comparison(compare_predictions(a, b, "model:v1", "model:v2", None), "text", limit=1)
    assert text.startswith(
        "compare\n\n"
        "A = model:v1 (6 images), B = model:v2 (6 images)\n"
        "shared images: 5, selected by the filter: 5, labelled: 4\n"
        "1 image without a truth left out of the accuracy\n"
        "accuracy: A 0.5000, B 0.7500, change +0.2500\n"
        "mean true-class score shift (B - A): +0.0500\n"
        "\naccuracy per true class\n"
        "truth  images  accuracy_a  accuracy_b  change\n"
        "-----  ------  ----------  ----------  ------\n"
        "cat         2      0.5000      1.0000  0.5000\n"
        "... 1 more (--format json lists all)\n"
        "\nmodel:v1 right, model:v2 wrong (1)\n")
    assert "\nmodel:v2 right, model:v1 wrong (2)\n" in text


def test_markdown_json_and_csv(a, b):
    c = compare_predictions(a, b, "A", "B", None)
    markdown = format_comparison(c, "markdown", limit=None)
    assert markdown.startswith("# compare\n") and "\n## A right, B wrong (1)\n\n| id " in markdown
    data = json.loads(format_comparison(c, "json"))
    assert (data["accuracy_a"], data["accuracy_b"], data["unlabelled"]) == (0.5, 0.75, 1)
    assert [r["id"] for r in data["b_right_a_wrong"]] == ["i2", "i4"] and len(data["images"]) == 5
    assert data["images"][4]["correct_a"] is None
    csv = format_comparison(c, "csv")
    assert csv.splitlines()[0] == ",".join(IMAGE_COLUMNS) and len(csv.splitlines()) == 6
    with pytest.raises(UserError, match="use one of text, json, markdown, csv"):
        format_comparison(c, "html")


def test_a_filter_that_keeps_nothing_reports_no_accuracy(a, b):
    c = compare_predictions(a, b, "A", "B", 'x["truth"] = "zebra"')
    assert (c.selected, c.accuracy_a, c.accuracy_b, c.score_shift_mean) == (0, None, None, None)
    assert "accuracy: A n/a, B n/a, change n/a" in format_comparison(c, "text")
    assert json.loads(format_comparison(c, "json"))["images"] == []
