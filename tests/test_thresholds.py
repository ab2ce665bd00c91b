"""Operating thresholds: evaluate's per-class minimum score for a target precision or recall, infer's
min_score turning unsure guesses into "unknown", and the metrics that count them.

The thresholds are checked against a brute-force reading of scikit-learn's precision_recall_curve over
the same scores; the unknowns against the rule itself (top score below the class's minimum), on a real
Keras model and, in the slow test, through the CLI on a trained one.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import copy_smoke, run_cli, run_cli_traced, tensorflow_imports
from lineage.errors import UserError
from report.metrics import ALL_CLASSES, compute_metrics, curves_npz, read_curves, threshold_grid, thresholds
from tables.predictions import UNKNOWN, guesses

CLASSES = ["ant", "bee", "cat", "dog"]


def _table(seed: int, rows: int = 400, signal: float = 1.0, decimals: int | None = 2,
           min_score=None, classes: list[str] = CLASSES) -> pd.DataFrame:
    """Softmax scores with a true class `signal` above the rest; rounded to `decimals` so scores tie."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(classes), rows)
    logits = rng.normal(size=(rows, len(classes)))
    logits[np.arange(rows), truth] += signal
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if decimals is not None:
        scores = np.round(scores, decimals)
    scores = scores.astype(np.float32)
    frame = pd.DataFrame({"id": [f"{i:064x}" for i in range(rows)], "path": "p.png", "split": "test",
                          "truth": np.asarray(classes, dtype=object)[truth],
                          "guess": guesses(scores, classes, min_score), "confidence": scores.max(axis=1)})
    for index, name in enumerate(classes):
        frame[f"score_{name}"] = scores[:, index]
    return frame


def _operating_rows(frame: pd.DataFrame, name: str | None, classes: list[str] = CLASSES):
    """(is the guess right, top score) of the rows guessed as `name` (None: every row), and the support."""
    scores = frame[[f"score_{c}" for c in classes]].to_numpy()
    best = scores.argmax(axis=1)
    right = np.asarray(classes, dtype=object)[best] == frame["truth"].to_numpy()
    top = scores.max(axis=1).astype(np.float64)
    if name is None:
        return right, top, len(frame)
    mine = best == classes.index(name)
    return right[mine], top[mine], int((frame["truth"] == name).sum())


def _brute_force(right: np.ndarray, top: np.ndarray, support: int, kind: str, value: float) -> float | None:
    """The threshold by scikit-learn's curve: every distinct score is a candidate; precision from the
    curve, recall counted directly (the curve's own recall is over the guessed rows, not the class)."""
    from sklearn.metrics import precision_recall_curve

    if support == 0 or len(top) == 0:
        return None
    if right.any():
        precision, _, candidates = precision_recall_curve(right, top)
        precision = precision[:-1]
    else:  # scikit-learn's recall would divide by zero; its precision is 0 at every threshold
        candidates, precision = np.unique(top), np.zeros(len(np.unique(top)))
    recall = np.array([(right & (top >= t)).sum() / support for t in candidates])
    ok = candidates[(precision if kind == "precision" else recall) >= value]
    if not len(ok):
        return None
    return float(ok.min() if kind == "precision" else ok.max())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind,value", [("precision", 0.9), ("precision", 0.75), ("precision", 1.0),
                                        ("recall", 0.5), ("recall", 0.2), ("recall", 0.95)])
def test_thresholds_equal_a_brute_force_reading_of_sklearns_curve(seed, kind, value):
    frame = _table(seed)
    found = compute_metrics(frame, CLASSES, threshold_for={kind: value})["thresholds"]
    assert found["target"] == {kind: value}
    reached = 0
    for name, point in [*found["per_class"].items(), (None, found["all"])]:
        right, top, support = _operating_rows(frame, name)
        expected = _brute_force(right, top, support, kind, value)
        assert point["threshold"] == expected, (name, point)
        if expected is None:
            assert kind in point["reason"] and f"{value:g}" in point["reason"]
            continue
        reached += 1
        kept = top >= expected
        assert point["kept"] == kept.sum() and point["right"] == (right & kept).sum()
        assert point["unknown"] == (~kept).sum()
        assert point["precision"] == (right & kept).sum() / kept.sum()
        assert point["recall"] == (right & kept).sum() / support
        assert point[kind] >= value
    if (kind, value) in (("precision", 0.75), ("recall", 0.2)):
        assert reached >= len(CLASSES)  # the easy targets are reached nearly everywhere
    if (kind, value) == ("recall", 0.95):
        assert reached == 0  # no class is guessed right 95% of the time: unreachable, with the reason


def test_unreachable_and_undefined_thresholds_say_why():
    frame = _table(3, rows=60)
    scores = frame[[f"score_{c}" for c in CLASSES]].to_numpy()
    # "dog" is never the top score, and no image is an "ant": two thresholds that cannot exist.
    scores[:, 3] = 0.0
    frame["score_dog"] = scores[:, 3]
    frame["truth"] = frame["truth"].replace("ant", "bee")
    found = compute_metrics(frame, CLASSES, threshold_for={"precision": 0.5})["thresholds"]["per_class"]
    assert found["dog"]["threshold"] is None and "never guesses dog" in found["dog"]["reason"]
    assert found["ant"]["threshold"] is None and "no labelled ant images" in found["ant"]["reason"]


def test_a_table_made_with_the_thresholds_scores_what_evaluate_promised():
    """The point of the thresholds: infer with min_score at one class's threshold gives that class exactly
    the precision and recall evaluate reported, with exactly the unknowns it reported."""
    frame = _table(5, rows=600, signal=1.3)
    found = compute_metrics(frame, CLASSES, threshold_for={"precision": 0.8})["thresholds"]["per_class"]
    scores = frame[[f"score_{c}" for c in CLASSES]].to_numpy()
    checked = 0
    for name, point in found.items():
        if point["threshold"] is None:
            continue
        made = frame.assign(guess=guesses(scores, CLASSES, {name: point["threshold"]}))
        metrics = compute_metrics(made, CLASSES)
        assert metrics["per_class"][name]["precision"] == point["precision"] >= 0.8
        assert metrics["per_class"][name]["recall"] == point["recall"]
        assert metrics["unknown"]["count"] == point["unknown"]
        checked += 1
    assert checked >= 2


def test_guesses_are_unknown_exactly_below_the_minimum():
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33], [0.1, 0.2, 0.7], [0.5, 0.5, 0.0]],
                      dtype=np.float32)
    classes = ["a", "b", "c"]
    assert guesses(scores, classes) == ["a", "b", "a", "c", "a"]
    # One number for all; a score equal to the minimum keeps its guess.
    assert guesses(scores, classes, float(np.float32(0.5))) == ["a", "b", UNKNOWN, "c", "a"]
    # Per class: classes not named have no minimum.
    assert guesses(scores, classes, {"a": 0.55, "c": 0.8}) == ["a", "b", UNKNOWN, UNKNOWN, UNKNOWN]
    with pytest.raises(UserError, match="class named 'unknown'"):
        guesses(scores, ["a", "unknown", "c"], 0.5)
    assert guesses(scores, ["a", "unknown", "c"]) == ["a", "unknown", "a", "c", "a"]


def test_metrics_count_unknowns_apart_and_as_wrong():
    frame = _table(7, rows=500, min_score={"ant": 0.5, "bee": 0.45, "cat": 0.6, "dog": 0.4})
    frame.loc[frame.index[:25], "truth"] = None  # unlabelled rows: their unknowns are counted on their own
    metrics = compute_metrics(frame, CLASSES)
    labelled = frame[frame["truth"].notna()]
    abstained = labelled["guess"] == UNKNOWN
    assert 0 < abstained.sum() < len(labelled)
    assert metrics["unknown"] == {"count": int(abstained.sum()), "rate": float(abstained.mean()),
                                  "unlabelled": int((frame["guess"][:25] == UNKNOWN).sum())}
    assert metrics["accuracy"] == float((labelled["guess"] == labelled["truth"]).mean())
    for name in CLASSES:
        mine = labelled[labelled["truth"] == name]
        guessed = labelled[labelled["guess"] == name]
        entry = metrics["per_class"][name]
        assert entry["unknown"] == int((mine["guess"] == UNKNOWN).sum())
        assert entry["recall"] == float((mine["guess"] == name).mean())  # an unknown is a miss
        assert entry["precision"] == float((guessed["truth"] == name).mean())  # and predicts nothing
    confusion = metrics["confusion"]
    assert confusion["guesses"] == CLASSES + [UNKNOWN]
    expected = pd.crosstab(labelled["truth"], labelled["guess"]).reindex(index=CLASSES, columns=CLASSES + [UNKNOWN],
                                                                      fill_value=0)
    assert confusion["counts"] == expected.to_numpy().tolist()
    plain = compute_metrics(_table(7, rows=500), CLASSES)
    assert plain["confusion"]["guesses"] == CLASSES and plain["unknown"]["count"] == 0


def test_the_live_confusion_chart_has_the_unknown_column():
    from report.charts import confusion_heatmap

    frame = _table(7, rows=500, min_score=0.5)
    labelled = frame[frame["truth"].notna()]
    spec = confusion_heatmap(compute_metrics(frame, CLASSES), CLASSES, normalised=False)
    cells = {(row["truth"], row["guess"]): row["count"] for row in spec["data"]["values"]}
    expected = pd.crosstab(labelled["truth"], labelled["guess"])
    assert {guess for _, guess in cells} == set(CLASSES) | {UNKNOWN}
    assert all(cells[(truth, UNKNOWN)] == expected.loc[truth, UNKNOWN] for truth in CLASSES)


def test_a_class_named_unknown_is_a_class_not_an_abstention():
    classes = ["cat", "unknown"]
    frame = _table(8, rows=100, classes=classes)
    metrics = compute_metrics(frame, classes)
    assert metrics["unknown"]["count"] == 0 and metrics["confusion"]["guesses"] == classes
    assert metrics["accuracy"] == float((frame["guess"] == frame["truth"]).mean())


def test_operating_curves_round_trip_through_curves_npz():
    frame = _table(9)
    metrics = compute_metrics(frame, CLASSES)
    back = read_curves(curves_npz(metrics["curves"], CLASSES))
    assert back["operating"] == metrics["curves"]["operating"]
    again = thresholds(back["operating"], ("recall", 0.5))
    assert again == compute_metrics(frame, CLASSES, threshold_for={"recall": 0.5})["thresholds"]


def test_threshold_grid_counts_exactly_at_each_step():
    frame = _table(10)
    for name in CLASSES:  # scores on the grid itself (multiples of 1/64, exact in float32): ties at each step
        frame[f"score_{name}"] = (np.round(frame[f"score_{name}"] * 64) / 64).astype(np.float32)
    grid = threshold_grid(compute_metrics(frame, CLASSES)["curves"]["operating"], steps=64)
    for name, sampled in [*grid["per_class"].items(), (None, grid["all"])]:
        right, top, support = _operating_rows(frame, name)
        assert sampled["support"] == support
        for step in range(65):
            kept = top >= step / 64
            assert (sampled["right"][step], sampled["wrong"][step]) == ((right & kept).sum(), (~right & kept).sum())
    assert ALL_CLASSES not in CLASSES


@pytest.mark.parametrize("setting,message", [
    ("evaluate.threshold_for={precision: 1.5}", "evaluate.threshold_for.precision is 1.5"),
    ("evaluate.threshold_for={recall: 0}", "evaluate.threshold_for.recall is 0"),
    ("evaluate.threshold_for={f1: 0.5}", "evaluate.threshold_for.f1 is not a key"),
    ("evaluate.threshold_for={precision: 0.9, recall: 0.9}", "name one target"),
    ("infer.min_score=1.5", "infer.min_score is 1.5"),
    ("infer.min_score={ant: -0.1}", "infer.min_score.ant is -0.1"),
    ("infer.min_score=high", "infer.min_score is 'high'"),
])
def test_bad_settings_fail_before_any_work_in_one_line(setting, message, tmp_path):
    result = run_cli_traced("evaluate", "--store", str(tmp_path / "store"), "--set", setting)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert tensorflow_imports(result) == [] and not (tmp_path / "store" / "runs").exists()


def test_min_score_classes_are_checked_against_the_model():
    from stages.infer import Params, check_classes

    check_classes(Params(min_score={"ant": 0.5}), CLASSES, "model:v1")
    check_classes(Params(), ["ant", "unknown"], "model:v1")  # no min_score: a class "unknown" is fine
    with pytest.raises(UserError) as error:
        check_classes(Params(min_score={"ant": 0.5, "moth": 0.4}), CLASSES, "model:v1")
    assert "'moth'" in str(error.value) and "ant, bee, cat, dog" in str(error.value)
    with pytest.raises(UserError, match="has a class named 'unknown'"):
        check_classes(Params(min_score=0.5), ["ant", "unknown"], "model:v1")


def test_run_checks_min_score_classes_as_soon_as_the_data_has_classes():
    """`pipeline.py run` calls this hook after ingest, before any training."""
    from workflow.config import load_config

    config = load_config(None, ["infer.min_score={ant: 0.5, moth: 0.4}"])
    assert "infer" in config.class_checkers(config.stages)
    with pytest.raises(UserError, match="'moth'"):
        config.check_classes(config.stages, CLASSES, "raw-data:v1")
    pinned = load_config(None, ["infer.min_score={moth: 0.4}", "infer.model=model:v1"])
    assert "infer" not in pinned.class_checkers(pinned.stages)  # another model's classes: checked when it runs


def test_predict_table_with_min_score_on_a_real_keras_model():
    """models/predict.py on a real (untrained, fixed-weight) Keras model: unknown exactly where the top score
    is below its class's minimum; scores and confidence are the model's whatever the minimum."""
    from models.quiet import import_tensorflow

    import_tensorflow()
    import keras

    from models.predict import predict_table

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    model.set_weights([np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32), np.zeros(3, np.float32)])
    images = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    args = (model, images, [f"{i:064x}" for i in range(64)], ["p"] * 64, ["test"] * 64, [None] * 64, ["x", "y", "z"])
    plain = predict_table(*args, batch_size=16)
    minimum = {"x": 0.6, "z": 0.7}
    table = predict_table(*args, batch_size=16, min_score=minimum)
    scores = table[["score_x", "score_y", "score_z"]].to_numpy()
    top = scores.max(axis=1).astype(np.float64)
    below = np.array([top[i] < minimum.get(plain["guess"][i], 0.0) for i in range(64)])
    assert 0 < below.sum() < 64
    assert (table["guess"][below] == UNKNOWN).all() and (table["guess"][~below] == plain["guess"][~below]).all()
    pd.testing.assert_frame_equal(table.drop(columns="guess"), plain.drop(columns="guess"))


# ---------------------------------------------------------------- the CLI, on a trained model (slow)


@pytest.fixture(scope="module")
def trained(smoke_pipeline, tmp_path_factory):
    return copy_smoke(smoke_pipeline, tmp_path_factory.mktemp("thresholds"))["args"]


def _rows(ref: str, args: list[str]) -> pd.DataFrame:
    listed = run_cli("table", ref, "--format", "json", *args)
    assert listed.returncode == 0, listed.stderr
    return pd.DataFrame(json.loads(listed.stdout))


@pytest.mark.slow
def test_infer_min_score_end_to_end(trained):
    plain = _rows("predictions:latest", trained)
    classes = [c.removeprefix("score_") for c in plain.columns if c.startswith("score_")]
    # A minimum in the middle of the first class's guesses, and one for all the others: some go unknown.
    first = plain.loc[plain["guess"] == plain["guess"].iloc[0], "confidence"]
    minimum = {plain["guess"].iloc[0]: float(first.median()),
               **{c: float(plain["confidence"].median()) for c in classes if c != plain["guess"].iloc[0]}}
    setting = "infer.min_score={" + ", ".join(f"{c}: {v!r}" for c, v in minimum.items()) + "}"
    inferred = run_cli("infer", "--set", setting, "--alias", "unsure", *trained)
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    made = _rows("predictions:unsure", trained)
    below = np.array([conf < minimum[guess] for conf, guess in zip(plain["confidence"], plain["guess"])])
    assert 0 < below.sum() < len(plain)
    assert (made["guess"][below] == UNKNOWN).all() and (made["guess"][~below] == plain["guess"][~below]).all()
    pd.testing.assert_frame_equal(made.drop(columns="guess"), plain.drop(columns="guess"))

    evaluated = run_cli("evaluate", "--set", "evaluate.input=predictions:unsure", "-q", *trained)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    shown = json.loads(run_cli("show", "eval:latest", "--json", *trained).stdout)
    assert shown["meta"]["metrics"]["unknown"] == int(below.sum())

    refused = run_cli_traced("infer", "--set", "infer.min_score={purple: 0.5}", *trained)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "'purple'" in refused.stderr and ", ".join(classes) in refused.stderr
    assert tensorflow_imports(refused) == []


def test_table_groups_show_unknown_guesses_without_a_precision():
    from tables.table import group_rows

    frame = _table(7, rows=200, min_score=0.5)
    by_truth = group_rows(frame, "truth", CLASSES).set_index("truth")
    assert by_truth[UNKNOWN].to_dict() == frame[frame["guess"] == UNKNOWN].groupby("truth").size().to_dict()
    by_guess = group_rows(frame, "guess", CLASSES).set_index("guess")
    assert by_guess.loc[UNKNOWN, "total"] == (frame["guess"] == UNKNOWN).sum()
    assert np.isnan(by_guess.loc[UNKNOWN, "precision"]) and not by_guess.loc[CLASSES, "precision"].isna().any()
