"""Average precision during training (issue 11): the per-epoch AP in a model's history, and the report's
AP-across-runs view drawn from those histories, one line per model version.

Every AP here is checked against scikit-learn's average_precision_score on the same predictions, which
the test makes itself; the training runs are tiny stand-in models (tests/test_training.py), seconds each.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from lineage.contract import Output
from lineage.graph import Graph
from lineage.records import Manifest
from lineage.runner import execute
from lineage.store import Store
from tables.average_precision import average_precisions
from tables.predictions import prediction_output, score_column


def sklearn_ap(labels: np.ndarray, scores: np.ndarray) -> dict:
    """micro, macro over the classes present, and per class (None where absent), as scikit-learn computes them."""
    one_hot = (labels[:, None] == np.arange(scores.shape[1])[None, :]).astype(int)
    present = one_hot.any(axis=0)
    return {"micro": average_precision_score(one_hot.ravel(), scores.ravel()),
            "macro": average_precision_score(one_hot[:, present], scores[:, present], average="macro"),
            "per_class": [average_precision_score(one_hot[:, i], scores[:, i]) if present[i] else None
                          for i in range(scores.shape[1])]}


def test_exact_ap_equals_scikit_learn_with_ties_and_an_absent_class():
    rng = np.random.default_rng(7)
    for trial in range(60):
        rows, classes = int(rng.integers(1, 80)), int(rng.integers(2, 7))
        scores = rng.random((rows, classes)).astype(np.float32)
        if trial % 2:  # few distinct scores: ties must form one threshold, as in scikit-learn
            scores = np.round(scores * 3) / 3
        labels = rng.integers(0, classes - 1, rows)  # the last class never occurs
        ours, theirs = average_precisions(labels, scores), sklearn_ap(labels, scores)
        assert ours.micro == pytest.approx(theirs["micro"], abs=1e-12)
        assert ours.macro == pytest.approx(theirs["macro"], abs=1e-12)
        assert ours.per_class[-1] is None and ours.undefined == [i for i, v in enumerate(theirs["per_class"])
                                                                 if v is None]
        assert ours.per_class == pytest.approx(theirs["per_class"], abs=1e-12)


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        average_precisions(np.array([0, 1]), np.array([[0.5, np.nan], [0.2, 0.8]]))


# ---------------------------------------------------------------------------------------
# AP in the history of a real (tiny) two-phase fine-tune


def test_history_holds_the_ap_of_each_epochs_validation_predictions(tmp_path, monkeypatch):
    pytest.importorskip("keras")
    from models import training
    from models.data import make_dataset
    from test_training import CLASSES, colour_task, compose, quiet_config, tiny_extractor, tiny_head

    train_x, train_y = colour_task(96, seed=1)
    val_x, val_y = colour_task(60, seed=2)
    val_x, val_y = val_x[val_y != 2], val_y[val_y != 2]  # val has no blue image: its AP is undefined
    val_y[::3] = 1 - val_y[::3]  # some labels wrong, so no epoch is perfect and the loss counts the true class
    extractor = tiny_extractor()
    head = tiny_head(extractor.output_shape[-1])
    cfg = quiet_config(epochs_head=2, epochs_finetune=2, unfreeze=4, lr_head=2e-2, lr_finetune=1e-3)

    # At each epoch's end, predict and evaluate the validation set here, independently of the code under test.
    seen = []
    record = training._EpochRecorder.on_epoch_end

    def observed(self, epoch, logs=None):
        inputs = val_x if self.model is not head else \
            extractor.predict(make_dataset(val_x, None, cfg.batch_size), verbose=0)
        seen.append({"scores": self.model.predict(inputs, verbose=0),
                     "keras": self.model.evaluate(inputs, val_y, batch_size=cfg.batch_size, verbose=0,
                                                  return_dict=True)})
        record(self, epoch, logs)

    monkeypatch.setattr(training._EpochRecorder, "on_epoch_end", observed)
    lines = []
    result = training.train_two_phase(extractor, head, train_x, train_y, val_x, val_y, cfg, str(tmp_path / "b.keras"),
                                      feature_cache_dir=str(tmp_path / "features"), log=lines.append,
                                      build_classifier=compose, class_names=CLASSES)

    assert [(row["phase"], row["epoch"]) for row in result.history] == [("head", 1), ("head", 2), ("finetune", 3),
                                                                         ("finetune", 4)]
    assert "val has no image of blue: their AP is undefined, and the macro AP is over the other 2 classes" in lines
    assert len(seen) == len(result.history)
    for row, epoch in zip(result.history, seen):
        expected = sklearn_ap(val_y, epoch["scores"])
        assert row["val_micro_ap"] == pytest.approx(expected["micro"], abs=1e-9)
        assert row["val_macro_ap"] == pytest.approx(expected["macro"], abs=1e-9)
        assert list(row["val_class_ap"]) == CLASSES and row["val_class_ap"]["blue"] is None
        assert list(row["val_class_ap"].values()) == pytest.approx(expected["per_class"], abs=1e-9)
        # Keras' own validation pass is replaced: its loss and accuracy must mean what they meant.
        assert row["val_loss"] == pytest.approx(epoch["keras"]["loss"], rel=1e-5)
        assert row["val_accuracy"] == pytest.approx(epoch["keras"]["accuracy"], abs=1e-7)
    assert len({row["val_micro_ap"] for row in result.history}) == 4  # the AP follows the training, epoch by epoch
    assert all(row["val_accuracy"] < 1 and row["val_micro_ap"] < 1 for row in result.history)


# ---------------------------------------------------------------------------------------
# The report's view: one line per model version, from the models' histories, through a real store


CLASSES = ["cat", "dog"]


@dataclass
class FakeTrainParams:
    """A train run's params, as far as a lineage needs: which model to write."""

    name: str = "model"
    history: list = field(default_factory=list)
    train_images: int = 0
    params: dict = field(default_factory=dict)


class FakeTrain:
    """The train stage's contract with a model made up by the test: the real runner commits its model
    manifest and val predictions, and records the run, so evaluate finds the model through the lineage."""

    NAME, OUTPUT, CODE = "train", "model", ("stages/train.py",)
    Params = FakeTrainParams

    @staticmethod
    def input_refs(params):
        return {}

    @staticmethod
    def fingerprint(params):
        return None

    @staticmethod
    def run(inputs, params, ctx):
        meta = {"classes": CLASSES, "backbone": "efficientnet_lite0", "train_images": params.train_images,
                "params": params.params, "history": params.history}
        offset = (params.train_images + params.params.get("seed", 0)) / 10_000  # each model's own predictions
        scores = np.linspace(0.1, 0.8, 6, dtype=np.float32) + np.float32(offset)
        table = pd.DataFrame({"id": [f"i{n}" for n in range(6)], "path": "x.png", "split": "val",
                              "truth": ["cat", "dog"] * 3, "guess": ["cat", "dog", "dog", "cat", "cat", "dog"],
                              "confidence": 0.5})
        table[score_column("cat")] = scores
        table[score_column("dog")] = 1 - scores
        return [Output(Manifest("model", files={}, meta=meta)),
                prediction_output(ctx, table, CLASSES, split="val", made_with={})]


def history(aps: list, phases: list[str]) -> list[dict]:
    return [{"phase": phase, "epoch": epoch, "loss": 1.0, "val_micro_ap": ap}
            for epoch, (ap, phase) in enumerate(zip(aps, phases), start=1)]


TRAIN_PARAMS = {"input": "split:latest", "epochs_head": 2, "epochs_finetune": 1, "unfreeze": 20, "seed": 42}


@pytest.fixture
def three_models(tmp_path):
    """predictions:v1..v3 from models trained on 240 and 60 images per class, and one trained before AP."""
    store = Store.open(tmp_path / "store", create=True)
    for params in (
        FakeTrainParams(history=history([0.5, 0.7, 0.8], ["head", "head", "finetune"]), train_images=480,
                        params=TRAIN_PARAMS),
        FakeTrainParams(history=history([0.4, None, 0.6], ["head", "head", "finetune"]), train_images=120,
                        params={**TRAIN_PARAMS, "input": "split:small"}),
        FakeTrainParams(history=[{"phase": "head", "epoch": 1, "loss": 1.0, "val_accuracy": 0.5}], train_images=480,
                        params={**TRAIN_PARAMS, "seed": 1}),
    ):
        execute(store, FakeTrain, params, log=lambda line: None, progress=False)
    return store


def test_ap_across_runs_draws_one_line_per_model_and_lists_those_without_ap(three_models, monkeypatch):
    from report import charts  # evaluate draws with report/charts.py (a Vega-Lite spec, rendered to the PNG)
    from stages import evaluate

    drawn = {}
    draw = charts.ap_by_epoch
    monkeypatch.setattr(charts, "ap_by_epoch", lambda lines, without: drawn.update(lines=lines, without=without)
                        or draw(lines, without))
    params = evaluate.Params(input="predictions:v1", across=["predictions:v2", "predictions:v3"],
                             compare_with="predictions:v2")  # shown twice, drawn once
    result = execute(three_models, evaluate, params, log=lambda line: None, progress=False)

    assert drawn["lines"] == [
        {"label": "240 train images/class", "model": "model:v1", "predictions": ["predictions:v1"],
         "epochs": [1, 2, 3], "ap": [0.5, 0.7, 0.8], "finetune_from": 3},
        {"label": "60 train images/class", "model": "model:v2", "predictions": ["predictions:v2"],
         "epochs": [1, 2, 3], "ap": [0.4, None, 0.6], "finetune_from": 3},
    ]
    assert drawn["without"] == [{"ref": "model:v3", "reason": "trained before AP was recorded"}]
    files = three_models.read_manifest(result.outputs[0].key).files
    assert {"ap_across_runs.png", "ap_per_version.png"} <= set(files)
    assert three_models.read_object(files["ap_across_runs.png"].digest).startswith(b"\x89PNG")


def test_labels_say_what_differs_between_the_models_or_name_the_version():
    from stages.evaluate import _model_labels

    def meta(images=480, **params):
        return {"classes": CLASSES, "backbone": "efficientnet_lite0", "train_images": images,
                "params": {**TRAIN_PARAMS, **params}}

    assert _model_labels({"model:v1": meta(), "model:v2": meta(epochs_finetune=0)}) == {
        "model:v1": "2+1 epochs", "model:v2": "2+0 epochs"}
    assert _model_labels({"model:v1": meta(), "model:v2": meta(120, unfreeze=0, input="split:v2")}) == {
        "model:v1": "240 train images/class, 2+1 epochs, unfreeze 20",
        "model:v2": "60 train images/class, 2+0 epochs, unfreeze 0"}
    assert _model_labels({"model:v1": meta(), "model:v2": meta(input="split:v2")}) == {
        "model:v1": "model:v1", "model:v2": "model:v2"}  # nothing but the split's name differs
    assert _model_labels({"model:v1": meta()}) == {"model:v1": "model:v1"}


def test_a_history_that_is_not_a_list_of_epochs_is_no_ap_history():
    from stages.evaluate import _ap_series

    for damaged in (None, [], {"epoch": 1}, [{"epoch": "1", "val_micro_ap": 0.5}], [{"epoch": 1, "val_micro_ap": "x"}],
                    [{"epoch": True, "val_micro_ap": 0.5}], ["row"]):
        assert _ap_series(damaged) is None, damaged
    assert _ap_series([{"epoch": 1, "val_micro_ap": float("nan"), "phase": "head"}]) == {
        "epochs": [1], "ap": [None], "finetune_from": None}


def test_the_plot_draws_with_no_line_at_all():
    from report.plots import ap_by_epoch

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty legend or layout would warn
        png = ap_by_epoch([], [{"ref": "predictions:v1", "reason": "no model in its lineage"}])
    assert png.startswith(b"\x89PNG")


def test_the_lineage_is_read_through_the_graph(three_models):
    from lineage.contract import Artifact
    from stages.evaluate import _model_of

    graph = Graph.load(three_models)
    artifact = Artifact.open(three_models, graph, graph.resolve("predictions:v2"))
    ref, meta = _model_of(artifact)
    assert ref == "model:v2" and meta["train_images"] == 120
    assert _model_of(Artifact.open(three_models, None, graph.resolve("predictions:v2"))) is None


def test_a_model_that_cannot_be_read_or_found_is_listed_not_fatal(three_models):
    from lineage.contract import Artifact
    from stages.evaluate import _ap_histories

    graph = Graph.load(three_models)
    model = graph.resolve("model:v2")
    (three_models.root / "manifests" / "model" / f"{model.digest}.json").unlink()  # as after a lost file
    shown = [Artifact.open(three_models, graph, graph.resolve("predictions:v1")),
             Artifact.open(three_models, graph, graph.resolve("predictions:v2")),
             Artifact.open(three_models, None, graph.resolve("predictions:v3"))]  # opened without its lineage
    lines, without = _ap_histories(shown)
    assert [line["model"] for line in lines] == ["model:v1"] and lines[0]["label"] == "model:v1"
    assert without == [{"ref": "predictions:v2", "reason": "its model's manifest cannot be read"},
                       {"ref": "predictions:v3", "reason": "no model in its lineage"}]
