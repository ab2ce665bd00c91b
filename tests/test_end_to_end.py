"""The smoke config end to end, as CI and a user run it, then the commands that read its results."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import copy_smoke, run_cli, run_cli_traced, tensorflow_imports

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(smoke_pipeline, tmp_path_factory):
    return copy_smoke(smoke_pipeline, tmp_path_factory.mktemp("smoke"))


def test_every_stage_wrote_its_version(smoke):
    lines = [l for l in smoke["stdout"].splitlines() if ": wrote " in l]
    assert lines == ["ingest: wrote raw-data:v1", "split: wrote split:v1", "train: wrote model:v1, predictions:v1",
                     "infer: wrote predictions:v2", "evaluate: wrote eval:v1"]
    again = run_cli_traced("run", "-q", *smoke["args"])
    assert again.stdout.splitlines() == ["ingest: up to date, raw-data:v1", "split: up to date, split:v1",
                                         "train: up to date, model:v1, predictions:v1",
                                         "infer: up to date, predictions:v2", "evaluate: up to date, eval:v1"]
    assert tensorflow_imports(again) == []  # nothing to do: TensorFlow never imported
    assert list((smoke["store"] / "tmp").iterdir()) == []  # train's scratch folder (model, checkpoint) is gone


def test_model_artifact_carries_what_inference_needs(smoke):
    shown_model = run_cli_traced("show", "model:v1", "--json", *smoke["args"])
    assert tensorflow_imports(shown_model) == []
    shown = json.loads(shown_model.stdout)
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
    grouped = run_cli_traced("table", "predictions:v2", "--group-by", "truth", *smoke["args"])
    assert grouped.returncode == 0 and "blue" in grouped.stdout
    assert tensorflow_imports(grouped) == []
    hostile = run_cli("table", "predictions:v2", "--filter", '__import__("os").system("touch /tmp/x")',
                      *smoke["args"])
    assert hostile.returncode == 1 and "Traceback" not in hostile.stderr and "column" in hostile.stderr


def test_compare_and_report(smoke, tmp_path):
    compared = run_cli_traced("compare", "predictions:v1", "predictions:v2", *smoke["args"])
    assert compared.returncode == 1 and "share no images" in compared.stderr  # val vs test images
    out = tmp_path / "report.html"
    report = run_cli_traced("report", "predictions:v2", "--out", str(out), *smoke["args"])
    assert report.returncode == 0, report.stderr
    assert "evaluate: up to date, eval:v1" in report.stdout
    assert tensorflow_imports(compared) == [] and tensorflow_imports(report) == []
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "predictions:v2" in html and "raw-data:v1" in html
    # The inlined chart library names URLs in its own code (loaders the page never calls: the browser tests
    # check that no request is made), and each spec's $schema is an identifier, as SVG's namespace is;
    # everything else on the page must name none.
    from report.charts import javascript_bundle

    page = html.replace(javascript_bundle().replace("</script", "<\\/script"), "")
    assert len(page) < len(html), "the chart library is not inlined"
    page = page.replace("http://www.w3.org", "").replace('"$schema":"https://vega.github.io/schema/', "")
    assert "http://" not in page and "https://" not in page


def test_infer_on_a_plain_folder_is_cached_by_the_folders_stat_data(smoke, tmp_path):
    folder = tmp_path / "red"
    shutil.copytree(smoke["data"] / "red", folder)
    args = ["infer", "-q", "--set", f"infer.folder={folder}", "--set", "infer.model=model:v1", *smoke["args"]]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    ref = first.stdout.strip().removeprefix("infer: wrote ")
    rows = json.loads(run_cli("table", ref, "--format", "json", *smoke["args"]).stdout)
    assert len(rows) == 12 and all(r["truth"] is None for r in rows) and {r["split"] for r in rows} == {"folder"}

    again = run_cli_traced(*args)
    assert again.stdout.strip() == f"infer: up to date, {ref}" and tensorflow_imports(again) == []
    shutil.copy(smoke["data"] / "blue" / sorted(p.name for p in (smoke["data"] / "blue").iterdir())[0],
                folder / "from-blue.png")
    grown = run_cli(*args)
    assert grown.returncode == 0 and grown.stdout.strip().startswith("infer: wrote predictions:v")
    assert grown.stdout.strip() != f"infer: wrote {ref}"
    rows = json.loads(run_cli("table", "predictions:latest", "--format", "json", *smoke["args"]).stdout)
    assert len(rows) == 13 and "from-blue.png" in {r["path"] for r in rows}


def test_training_bad_input(smoke, tmp_path):
    no_val = run_cli("run", *smoke["args"], "--set", "split.per_class={train: 6}", "--set", "stages=[split, train]")
    assert no_val.returncode == 1 and "leaves no val images" in no_val.stderr and "Traceback" not in no_val.stderr
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


@pytest.fixture(scope="module")
def head_only(smoke):
    """A second model, head phase only, and its predictions on the same test images as predictions:v2."""
    pinned = ["--set", "train.input=split:v1", "--set", "infer.split=split:v1", *smoke["args"]]
    trained = run_cli("train", "-q", "--set", "train.epochs_finetune=0", "--alias", "head-only", *pinned)
    assert trained.returncode == 0, trained.stderr[-2000:]
    inferred = run_cli("infer", "-q", "--set", "infer.model=model:head-only", "--alias", "head-only", *pinned)
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    return json.loads(run_cli("show", "predictions:head-only", "--json", *smoke["args"]).stdout)["ref"]


def _eval_of(smoke, report) -> dict:
    """The eval version a `report -q` wrote or reused, as `show --json` describes it."""
    assert report.returncode == 0, report.stderr[-2000:]
    ref = next(line for line in report.stdout.splitlines() if line.startswith("evaluate: ")).split(", ")[-1]
    ref = ref.removeprefix("evaluate: wrote ")
    return json.loads(run_cli("show", ref, "--json", *smoke["args"]).stdout)


def test_report_compare_shows_two_models_side_by_side(smoke, head_only, tmp_path):
    out = tmp_path / "compared.html"
    report = run_cli("report", "-q", "predictions:v2", "--compare", "predictions:head-only", "--out", str(out),
                     *smoke["args"])
    shown = _eval_of(smoke, report)
    assert shown["meta"]["predictions"] == "predictions:v2" and shown["meta"]["compare_with"] == head_only
    html = out.read_text()
    assert 'id="comparison-section"' in html
    assert html.count("predictions:v2") >= 2 and html.count(head_only) >= 2
    plain = tmp_path / "plain.html"
    assert run_cli("report", "predictions:v2", "--out", str(plain), *smoke["args"]).returncode == 0
    assert 'id="comparison-section"' not in plain.read_text()


@pytest.mark.parametrize("across_x", ["version", "train_images", "epochs"])
def test_report_across_x_places_each_version_by_its_model(smoke, head_only, tmp_path, across_x):
    from report.charts import ap_across_runs, png

    def model_meta(predictions_ref):
        lineage = json.loads(run_cli("show", predictions_ref, "--json", *smoke["args"]).stdout)
        model = next(i for i in lineage["made_by"]["inputs"] if i.startswith("model:"))
        return json.loads(run_cli("show", model, "--json", *smoke["args"]).stdout)["meta"]

    refs = ["predictions:v2", head_only]
    solo_ap = {ref: _eval_of(smoke, run_cli("report", "-q", ref, "--out", str(tmp_path / "solo.html"),
                                            *smoke["args"]))["meta"]["metrics"]["micro_ap"] for ref in refs}
    report = run_cli("report", "-q", *refs, "--set", f"evaluate.across_x={across_x}", "--out", str(tmp_path / "r.html"),
                     *smoke["args"])
    shown = _eval_of(smoke, report)
    assert {"metrics.json", "report.html", "ap_across_runs.png", "ap_per_version.png"} <= set(shown["files"])

    # The x of each point, read here from the model manifests, not from the code under test.
    if across_x == "version":
        xs = refs
    elif across_x == "train_images":
        xs = [model_meta(ref)["train_images"] for ref in refs]
    else:
        xs = [len(model_meta(ref)["history"]) for ref in refs]
        assert xs == [2, 1]  # one head and one fine-tune epoch, against the head-only model's one epoch
    # The same spec the report draws, rendered as evaluate renders it.
    expected = png(ap_across_runs([{"x": x, "ap": solo_ap[ref], "label": ref} for x, ref in zip(xs, refs)], across_x))
    digest = shown["files"]["ap_per_version.png"]["digest"]
    stored = (smoke["store"] / "objects" / "sha256" / digest[:2] / digest[2:]).read_bytes()
    assert stored == expected


def test_across_x_without_a_model_in_the_lineage_is_one_clear_error(smoke):
    # Every predictions version the CLI makes has a model in its lineage; an artifact opened without the
    # graph has none to trace, which is the case the error exists for.
    from lineage.errors import UserError
    from lineage.graph import Graph
    from lineage.contract import Artifact
    from lineage.store import Store
    from stages import evaluate

    store = Store.open(smoke["store"])
    untraced = Artifact.open(store, None, Graph.load(store).resolve("predictions:v2"))
    assert evaluate._x_value(untraced, "version") == "predictions:v2"
    for across_x in ("train_images", "epochs"):
        with pytest.raises(UserError, match=rf"^cannot place predictions:v2 by {across_x}: no model found in its "
                                            r"lineage; use evaluate.across_x: version$"):
            evaluate._x_value(untraced, across_x)
