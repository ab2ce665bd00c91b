"""The smoke config end to end, as CI and a user run it, then the commands that read its results."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import PROJECT, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data, store = root / "data", root / "store"
    made = run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "12")
    assert made.returncode == 0, made.stderr
    args = ["--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
            "--set", f"ingest.source={data}"]
    result = run_cli("run", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "data": data, "store": store, "args": args, "stdout": result.stdout}


def test_every_stage_wrote_its_version(smoke):
    lines = [l for l in smoke["stdout"].splitlines() if ": wrote " in l]
    assert lines == ["ingest: wrote raw-data:v1", "split: wrote split:v1", "train: wrote model:v1, predictions:v1",
                     "infer: wrote predictions:v2", "evaluate: wrote eval:v1"]
    again = run_cli("run", "-q", *smoke["args"])
    assert again.stdout.splitlines() == ["ingest: up to date, raw-data:v1", "split: up to date, split:v1",
                                         "train: up to date, model:v1, predictions:v1",
                                         "infer: up to date, predictions:v2", "evaluate: up to date, eval:v1"]
    assert "tensorflow" not in again.stderr.lower()  # nothing to do: TensorFlow never imported
    assert list((smoke["store"] / "tmp").iterdir()) == []  # train's scratch folder (model, checkpoint) is gone


def test_model_artifact_carries_what_inference_needs(smoke):
    shown = json.loads(run_cli("show", "model:v1", "--json", *smoke["args"]).stdout)
    meta = shown["meta"]
    assert meta["classes"] == ["blue", "green", "red", "yellow"]
    assert meta["class_index"] == {"blue": 0, "green": 1, "red": 2, "yellow": 3}
    assert meta["input_size"] == 64 and meta["backbone"] == "efficientnet_lite0"
    assert set(shown["files"]) == {"model.keras", "class_index.json", "history.json"}
    assert [h["phase"] for h in meta["history"]] == ["head", "finetune"]


def test_prediction_table_schema(smoke):
    rows = json.loads(run_cli("table", "predictions:v2", "--format", "json", *smoke["args"]).stdout)
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == ["id", "path", "split", "truth", "guess", "confidence", "score_blue",
                                   "score_green", "score_red", "score_yellow"]
    assert len(frame) == 12 and set(frame["split"]) == {"test"}
    scores = frame[[c for c in frame.columns if c.startswith("score_")]]
    assert ((scores.sum(axis=1) - 1).abs() < 1e-4).all()
    assert (frame["guess"] == scores.idxmax(axis=1).str.removeprefix("score_")).all()
    assert frame["path"].str.match(r"^(blue|green|red|yellow)/").all()


def test_table_filter_and_group_by_on_real_predictions(smoke):
    mistakes = run_cli("table", "predictions:v2", "--filter", 'x["truth"] != x["guess"]', "--format", "json",
                       *smoke["args"])
    assert mistakes.returncode == 0, mistakes.stderr
    everything = pd.DataFrame(json.loads(run_cli("table", "predictions:v2", "--format", "json",
                                                 *smoke["args"]).stdout))
    assert len(json.loads(mistakes.stdout)) == int((everything["truth"] != everything["guess"]).sum())
    grouped = run_cli("table", "predictions:v2", "--group-by", "truth", *smoke["args"])
    assert grouped.returncode == 0 and "blue" in grouped.stdout
    hostile = run_cli("table", "predictions:v2", "--filter", '__import__("os").system("touch /tmp/x")',
                      *smoke["args"])
    assert hostile.returncode == 1 and "Traceback" not in hostile.stderr and "column" in hostile.stderr


def test_compare_and_report(smoke, tmp_path):
    compared = run_cli("compare", "predictions:v1", "predictions:v2", *smoke["args"])
    assert compared.returncode == 1 and "share no images" in compared.stderr  # val vs test images
    out = tmp_path / "report.html"
    report = run_cli("report", "predictions:v2", "--out", str(out), *smoke["args"])
    assert report.returncode == 0, report.stderr
    assert "evaluate: up to date, eval:v1" in report.stdout
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "predictions:v2" in html and "raw-data:v1" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_infer_on_a_plain_folder(smoke):
    result = run_cli("infer", "--set", f"infer.folder={smoke['data'] / 'red'}", "-q", *smoke["args"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(run_cli("table", "predictions:latest", "--format", "json", *smoke["args"]).stdout)
    assert len(rows) == 12 and all(r["truth"] is None for r in rows) and {r["split"] for r in rows} == {"folder"}


def test_training_bad_input(smoke, tmp_path):
    no_val = run_cli("run", *smoke["args"], "--set", "split.per_class={train: 6}", "--set", "stages=[split, train]")
    assert no_val.returncode == 1 and "has no val split" in no_val.stderr and "Traceback" not in no_val.stderr
    unknown = run_cli("train", *smoke["args"], "--set", "train.input=split:v1", "--set", "train.backbone=vgg99")
    assert unknown.returncode == 1 and "efficientnet_lite0" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = run_cli("train", *smoke["args"], "--set", "train.input=split:v1",
                      "--set", f"train.weights={tmp_path / 'nope.h5'}")
    assert missing.returncode == 1 and "nope.h5" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_text("not an image")
    no_images = run_cli("infer", *smoke["args"], "--set", f"infer.folder={empty}")
    assert no_images.returncode == 1 and "no readable image" in no_images.stderr


def test_model_and_split_with_different_classes(smoke, tmp_path):
    other = tmp_path / "other"
    for name, colour in (("cats", "red"), ("dogs", "blue")):
        (other / name).mkdir(parents=True)
        for i, source in enumerate(sorted((smoke["data"] / colour).iterdir())[:6]):
            (other / name / f"{i}.png").write_bytes(source.read_bytes())
    assert run_cli("ingest", str(other), *smoke["args"]).returncode == 0
    assert run_cli("split", *smoke["args"], "--set", "split.input=raw-data:v2",
                   "--set", "split.per_class={train: 3, val: 2, test: 1}").returncode == 0
    mismatch = run_cli("infer", *smoke["args"], "--set", "infer.model=model:v1")
    assert mismatch.returncode == 1
    assert "was trained on classes ['blue', 'green', 'red', 'yellow'], but split:" in mismatch.stderr
