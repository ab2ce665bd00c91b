"""compute_metrics against numbers worked out by hand, and its full-resolution curves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from lineage.errors import UserError
from report.metrics import compute_metrics, round_significant

CLASSES = ["a", "b", "c"]

# truth, score_a, score_b, score_c; the guess is the arg-max. Rows 7 and 8 are unlabelled.
HAND_ROWS = [
    ("a", 0.70, 0.20, 0.10),  # a, right
    ("a", 0.30, 0.60, 0.10),  # b, wrong
    ("a", 0.50, 0.10, 0.40),  # a, right
    ("b", 0.10, 0.80, 0.10),  # b, right
    ("b", 0.35, 0.15, 0.50),  # c, wrong; b is not even in the top 2
    ("c", 0.10, 0.20, 0.70),  # c, right
    (None, 0.90, 0.05, 0.05),
    ("", 0.05, 0.90, 0.05),
]


def hand_table(rows=HAND_ROWS, classes=CLASSES) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["truth"] + [f"score_{name}" for name in classes])
    scores = frame[[f"score_{name}" for name in classes]].to_numpy()
    frame.insert(0, "id", [f"{index:064x}" for index in range(len(frame))])
    frame.insert(1, "guess", np.asarray(classes)[scores.argmax(axis=1)])
    frame.insert(2, "confidence", scores.max(axis=1))
    return frame


def random_table(rows: int, classes: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(classes), rows)
    scores = rng.dirichlet(np.ones(len(classes)), rows).astype(np.float32)
    frame = pd.DataFrame({"truth": np.asarray(classes)[truth],
                          "guess": np.asarray(classes)[scores.argmax(axis=1)]})
    for index, name in enumerate(classes):
        frame[f"score_{name}"] = scores[:, index]
    return frame


@pytest.fixture(scope="module")
def hand():
    return compute_metrics(hand_table(), CLASSES, top_k=2)


def test_accuracy_and_top_k(hand):
    assert hand["accuracy"] == pytest.approx(4 / 6)
    assert hand["top_k_accuracy"] == pytest.approx(5 / 6)
    assert hand["top_k"] == 2


def test_unlabelled_rows_are_excluded_and_counted(hand):
    assert hand["labelled"] == 6
    assert hand["unlabelled"] == 2
    assert sum(entry["support"] for entry in hand["per_class"].values()) == 6


def test_precision_recall_f1_per_class(hand):
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}
    for name, (precision, recall, f1, support) in expected.items():
        entry = hand["per_class"][name]
        assert entry["precision"] == pytest.approx(precision)
        assert entry["recall"] == pytest.approx(recall)
        assert entry["f1"] == pytest.approx(f1)
        assert entry["support"] == support


def test_micro_and_macro_averages(hand):
    assert hand["micro"]["precision"] == pytest.approx(4 / 6)  # single-label: micro = accuracy
    assert hand["micro"]["recall"] == pytest.approx(4 / 6)
    assert hand["macro"]["precision"] == pytest.approx(2 / 3)
    assert hand["macro"]["recall"] == pytest.approx(13 / 18)
    assert hand["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_confusion_matrix_counts_and_rows(hand):
    confusion = hand["confusion"]
    assert confusion["classes"] == CLASSES
    assert confusion["counts"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert np.allclose(confusion["normalised"], [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]],
                       atol=1e-6)


def test_average_precision_and_auc_by_hand(hand):
    # Class a, scores sorted: 0.7+ 0.5+ 0.35- 0.3+ 0.1- 0.1-.
    # AP = 1/3*1 + 1/3*1 + 0*2/3 + 1/3*3/4 + 0*1/2 = 11/12.
    # AUC = positive-above-negative pairs / 9 = (3 + 3 + 2) / 9.
    entry = hand["per_class"]["a"]
    assert entry["average_precision"] == pytest.approx(11 / 12)
    assert entry["roc_auc"] == pytest.approx(8 / 9)
    pr = hand["curves"]["per_class"]["a"].pr()
    assert pr["thresholds"].tolist() == [0.1, 0.3, 0.35, 0.5, 0.7]
    assert pr["precision"] == pytest.approx([1 / 2, 3 / 4, 2 / 3, 1, 1, 1], abs=1e-6)
    assert pr["recall"] == pytest.approx([1, 1, 2 / 3, 2 / 3, 1 / 3, 0], abs=1e-6)
    roc = hand["curves"]["per_class"]["a"].roc()
    assert roc["thresholds"].tolist() == [np.inf, 0.7, 0.5, 0.35, 0.3, 0.1]
    assert roc["fpr"] == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 1], abs=1e-6)
    assert roc["tpr"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1], abs=1e-6)


def test_agrees_with_scikit_learn_scorers():
    classes = ["p", "q", "r", "s"]
    frame = random_table(500, classes, seed=1)
    result = compute_metrics(frame, classes)
    truth = frame["truth"].to_numpy()
    scores = frame[[f"score_{name}" for name in classes]].to_numpy(dtype=np.float64)
    onehot = (truth[:, None] == np.asarray(classes)[None, :]).astype(int)
    for index, name in enumerate(classes):
        entry = result["per_class"][name]
        assert entry["average_precision"] == pytest.approx(
            skm.average_precision_score(onehot[:, index], scores[:, index]), abs=1e-12)
        assert entry["roc_auc"] == pytest.approx(
            skm.roc_auc_score(onehot[:, index], scores[:, index]), abs=1e-12)
    assert result["micro"]["average_precision"] == pytest.approx(
        skm.average_precision_score(onehot, scores, average="micro"), abs=1e-12)
    assert result["micro"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(onehot, scores, average="micro"), abs=1e-12)
    assert result["macro"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(onehot, scores, average="macro"), abs=1e-12)


def test_curves_keep_every_threshold():
    classes = ["p", "q", "r"]
    frame = random_table(2000, classes, seed=2)
    frame["score_p"] = frame["score_p"].round(2)  # ties: 101 distinct values at most
    result = compute_metrics(frame, classes)
    for name in classes:
        distinct = frame[f"score_{name}"].nunique()
        pr = result["curves"]["per_class"][name].pr()
        roc = result["curves"]["per_class"][name].roc()
        assert len(pr["thresholds"]) == distinct
        assert len(pr["precision"]) == len(pr["recall"]) == distinct + 1
        assert len(roc["thresholds"]) == len(roc["fpr"]) == len(roc["tpr"]) == distinct + 1
    micro = result["curves"]["micro"].pr()
    pooled = np.concatenate([frame[f"score_{name}"].to_numpy(np.float64) for name in classes])
    assert len(micro["thresholds"]) == len(np.unique(pooled))


def test_a_class_without_positives_has_no_ap_and_says_why():
    rows = [row + (0.0,) for row in HAND_ROWS]
    result = compute_metrics(hand_table(rows, CLASSES + ["d"]), CLASSES + ["d"], top_k=2)
    entry = result["per_class"]["d"]
    assert entry["average_precision"] is None and entry["roc_auc"] is None
    assert "no positive examples" in entry["note"]
    assert result["curves"]["per_class"]["d"].pr() is None and result["curves"]["per_class"]["d"].roc() is None
    assert result["macro"]["average_precision"] == pytest.approx(
        np.mean([result["per_class"][name]["average_precision"] for name in CLASSES]))


def test_result_is_strict_json(hand):
    text = json.dumps({key: value for key, value in hand.items() if key != "curves"}, allow_nan=False)
    assert json.loads(text)["accuracy"] == hand["accuracy"]


def test_guess_defaults_to_the_arg_max():
    frame = hand_table().drop(columns=["guess"])
    assert compute_metrics(frame, CLASSES)["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("change, words", [
    (lambda frame: frame.drop(columns=["score_b"]), "score_b"),
    (lambda frame: frame.assign(truth=frame["truth"].replace("c", "zebra")), "zebra"),
    (lambda frame: frame.assign(truth=None), "truth label"),
    (lambda frame: frame.assign(score_a=np.nan), "NaN"),
])
def test_bad_tables_are_user_errors(change, words):
    with pytest.raises(UserError, match=words):
        compute_metrics(change(hand_table()), CLASSES)


def test_top_k_below_one_is_a_user_error():
    with pytest.raises(UserError, match="top_k"):
        compute_metrics(hand_table(), CLASSES, top_k=0)


def test_round_significant_keeps_six_digits():
    values = [0.123456789, 123456789.0, 1.5e-7, -2.0000004, 0.0, np.inf]
    assert round_significant(values).tolist() == [0.123457, 123457000.0, 1.5e-7, -2.0, 0.0, np.inf]


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: abs(v) > 1e-300))
def test_round_significant_is_close(value):
    rounded = round_significant([value]).tolist()[0]
    assert abs(rounded - value) <= 5e-6 * abs(value)
    assert len(repr(rounded).replace("-", "").replace(".", "").split("e")[0].strip("0")) <= 6
