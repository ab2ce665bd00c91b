"""The Python API (keras_lineage) against real stores made by the CLI: it must say what the CLI says.

The fast half reads and runs ingest and split on a tiny store; the slow half (marked) reads the smoke
pipeline's predictions, eval and model versions, and runs infer through the API."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html import escape

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import PROJECT, copy_smoke, make_class_folders, run_cli

import keras_lineage as kl
from lineage.errors import UserError
from lineage.store import Store

CLASSES = {"Amphibia": 6, "Aves": 6, "Fungi": 6}
SPLIT = "split.per_class={train: 2, val: 2, test: 2}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A store with raw-data:v1 and split:v1 (aliased `mine`), made through the CLI."""
    root = tmp_path_factory.mktemp("api")
    photos, store = make_class_folders(root / "photos", CLASSES), root / "store"
    for args in (["ingest", str(photos)], ["split", "--set", SPLIT, "--alias", "mine"]):
        made = run_cli(*args, "--store", str(store), "-q")
        assert made.returncode == 0, made.stderr
    return {"root": root, "photos": photos, "store": store}


def cli_json(*args: str):
    made = run_cli(*args)
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)


def cli_error(*args: str) -> str:
    made = run_cli(*args)
    assert made.returncode == 1 and made.stderr.startswith("error: "), made.stderr
    return made.stderr.strip()[len("error: "):]


def runs_in(store) -> int:
    return len(list((store / "runs").glob("*.json")))


# -- reading -------------------------------------------------------------------------------


def test_versions_are_what_ls_lists(tiny):
    ws = kl.open(tiny["store"])
    listed = cli_json("ls", "--json", "--store", str(tiny["store"]))
    assert [(v.ref, v.digest, v.aliases, v.size, v.count) for v in ws.versions()] == \
           [(r["ref"], r["digest"], r["aliases"], r["size"], r["count"]) for r in listed]
    assert ws.artifacts() == ["raw-data", "split"]
    assert [v.ref for v in ws.versions("split")] == ["split:v1"]
    with pytest.raises(UserError, match="no artifact named 'model'"):
        ws.versions("model")


def test_every_reference_the_cli_takes_resolves_to_the_same_version(tiny):
    ws = kl.open(tiny["store"])
    split = ws.version("split:v1")
    for ref in ("split", "split:latest", "split:mine", split.digest[:8], f"split@{split.digest[:10]}",
                f"split:{split.digest[:6]}"):
        shown = cli_json("show", ref, "--json", "--store", str(tiny["store"]))
        assert ws[ref].digest == shown["digest"] == split.digest, ref
        assert ws[ref] == split
    assert (split.name, split.number, split.aliases) == ("split", 1, ["latest", "mine"])


@pytest.mark.parametrize("ref", ["nope:v1", "split:v9", "split:gone", "ffffffff", "model:latest"])
def test_a_bad_reference_is_the_clis_one_line_error(tiny, ref):
    ws = kl.open(tiny["store"])
    with pytest.raises(UserError) as raised:
        ws[ref]
    assert str(raised.value) == cli_error("show", ref, "--store", str(tiny["store"]))
    assert raised.value._render_traceback_() == [f"error: {raised.value}"]  # what Jupyter shows: one line


def test_a_missing_store_is_the_clis_error_and_open_does_not_create_it(tmp_path):
    ws = kl.open(tmp_path / "none")
    with pytest.raises(UserError) as raised:
        ws.versions()
    assert str(raised.value) == cli_error("ls", "--store", str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()
    with pytest.raises(UserError, match="unknown config key split.sead"):
        kl.open(tmp_path / "none", overrides={"split.sead": 3})


def test_metadata_run_record_and_files(tiny):
    ws = kl.open(tiny["store"])
    split = ws["split:v1"]
    manifest = json.loads((tiny["store"] / "manifests" / "split" / f"{split.digest}.json").read_text())
    assert split.meta == manifest["meta"] and split.meta["classes"] == list(CLASSES)
    run = split.run
    assert (run.stage, run.status, run.id) == ("split", "finished", cli_json(
        "show", "split:v1", "--json", "--store", str(tiny["store"]))["made_by"]["run"])
    assert run.all_params["per_class"] == {"train": 2, "val": 2, "test": 2}
    assert split.summary() == cli_json("show", "split:v1", "--json", "--store", str(tiny["store"]))
    with pytest.raises(UserError, match="has no file 'model.keras'"):
        split.read_bytes("model.keras")


def test_ancestors_and_descendants_follow_the_runs(tiny):
    ws = kl.open(tiny["store"])
    assert ws["split:v1"].ancestors() == [ws["raw-data:v1"]]
    assert ws["raw-data:v1"].descendants() == [ws["split:v1"]]
    assert ws["raw-data:v1"].ancestors() == [] and ws["split:v1"].descendants() == []


def test_dataset_rows_are_what_table_prints(tiny):
    ws = kl.open(tiny["store"])
    for ref in ("raw-data:v1", "split:v1"):
        frame = ws[ref].to_pandas()
        records = cli_json("table", ref, "--format", "json", "--store", str(tiny["store"]))
        assert json.loads(frame.to_json(orient="records")) == records, ref
    grouped = ws["split:v1"].table(group_by="split").frame
    printed = cli_json("table", "split:v1", "--group-by", "split", "--format", "json", "--store", str(tiny["store"]))
    assert json.loads(grouped.to_json(orient="records")) == printed
    assert grouped["total"].tolist() == [6, 6, 6]
    chosen = ws["split:v1"].table(filter='x["label"] = "Aves"', sort="path", columns=["id", "path"], limit=3)
    assert chosen.frame["path"].tolist() == sorted(p for p in ws["raw-data:v1"].to_pandas()["path"]
                                                  if p.startswith("Aves/"))[:3]


def test_table_html_shows_the_first_rows_with_their_thumbnails(tiny):
    assert list((tiny["store"] / "objects" / "packs").glob("*.idx"))  # the images are packed: no path each
    ws = kl.open(tiny["store"])
    table = ws["split:v1"].table(sort="path")
    page = table._repr_html_()
    shown = table.frame.head(20)
    pictures = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="([0-9a-f]{12})"', page)
    assert [alt for _, alt in pictures] == [i[:12] for i in shown["id"]]  # one per row, in row order
    for data, _ in pictures[:3]:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "JPEG" and max(image.size) <= 48
    assert page.count("<tr>") == len(shown) + 1
    assert "18 rows × 8 columns" in page
    grouped = ws["split:v1"].table(group_by="label")._repr_html_()
    assert "<img" not in grouped and "Amphibia" in grouped


def test_version_html_is_what_show_prints(tiny):
    ws = kl.open(tiny["store"])
    shown = run_cli("show", "split:mine", "--store", str(tiny["store"])).stdout.rstrip("\n")
    page = ws["split:mine"]._repr_html_()
    assert f"<pre>{escape(shown)}</pre>" in page
    assert ws["split:mine"].show() == shown


def test_lineage_graph_is_the_clis_picture(tiny):
    ws = kl.open(tiny["store"])
    whole = run_cli("lineage", "--format", "svg", "--store", str(tiny["store"])).stdout.rstrip("\n")
    assert ws.lineage().svg() == whole
    assert whole in ws.lineage()._repr_html_() and "<svg" in whole
    around = run_cli("lineage", "split:v1", "--format", "svg", "--store", str(tiny["store"])).stdout.rstrip("\n")
    assert ws["split:v1"].lineage().svg() == around
    saved = ws.lineage().save(tiny["root"] / "graph.svg")
    assert saved.read_text().rstrip("\n") == whole


def test_reading_never_imports_tensorflow(tiny):
    script = f"""
import sys
import keras_lineage as kl
ws = kl.open({str(tiny["store"])!r})
ws.versions(); ws.artifacts()
v = ws["split:latest"]
v.meta; v.run; v.files(); v.ancestors(); v.descendants(); v.summary()
v.to_pandas(); v.table(group_by="split")._repr_html_(); v.table()._repr_html_(); v._repr_html_()
ws.lineage()._repr_html_()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- running -------------------------------------------------------------------------------


def test_run_stage_returns_its_version_and_a_cache_hit_the_same_one(tiny, tmp_path):
    store = tmp_path / "store"
    ws = kl.open(store, overrides={"ingest.source": tiny["photos"]})
    raw = ws.run_stage("ingest", quiet=True)
    assert raw.ref == "raw-data:v1" and raw.digest == kl.open(tiny["store"])["raw-data:v1"].digest
    split = ws.run_stage("split", {"split.per_class": {"train": 2, "val": 2, "test": 2}}, aliases=["first"],
                         quiet=True)
    assert split.ref == "split:v1" and split.aliases == ["latest", "first"]
    runs = runs_in(store)
    again = ws.run_stage("split", {"split.per_class": {"train": 2, "val": 2, "test": 2}}, quiet=True)
    assert again == split and runs_in(store) == runs  # a cache hit runs nothing and records nothing
    said = run_cli("split", "--store", str(store), "--set", SPLIT)
    assert said.stdout.strip() == "split: up to date, split:v1"  # the CLI sees the API's run as its own
    other = ws.run_stage("split", {"split.per_class": {"train": 2, "val": 2, "test": 2}, "split.seed": 9},
                         quiet=True)
    assert other.ref == "split:v2" and other.run.all_params["seed"] == 9


def test_run_checks_the_config_before_any_work(tiny, tmp_path):
    store = tmp_path / "store"
    ws = kl.open(store, overrides={"ingest.source": tiny["photos"]})
    with pytest.raises(UserError, match="nothing to train"):
        ws.run(overrides={"train.epochs_head": 0, "train.epochs_finetune": 0})
    assert not store.exists()  # refused before the store was even created
    with pytest.raises(UserError) as raised:
        ws.run_stage("train", {"train.epoch_head": 1})
    assert str(raised.value) == cli_error("train", "--store", str(store), "--set", "train.epoch_head=1")
    with pytest.raises(UserError, match="not a plain value"):
        ws.run_stage("split", {"split.seed": object()})
    with pytest.raises(UserError, match="unknown stage 'trian'"):
        ws.run_stage("trian")


def test_run_returns_each_stage_version_and_reuses_them(tiny, tmp_path):
    store = tmp_path / "store"
    ws = kl.open(store, overrides={"ingest.source": tiny["photos"], "split.per_class": {"train": 2, "val": 2}})
    made = ws.run(stages=["ingest", "split"], quiet=True)
    assert {stage: v.ref for stage, v in made.items()} == {"ingest": "raw-data:v1", "split": "split:v1"}
    runs = runs_in(store)
    assert ws.run(stages=["ingest", "split"], quiet=True) == made and runs_in(store) == runs


def test_overrides_are_values_not_yaml_text(tiny, tmp_path):
    """A Python value reaches the config as itself: text that YAML would read as a number stays text."""
    ws = kl.open(tmp_path / "store")
    assert ws.config({"ingest.source": "1e-3"}).params("ingest").source == "1e-3"
    assert ws.config({"train.weights": None}).params("train").weights is None
    assert ws.config({"train.lr_head": np.float64(0.5)}).params("train").lr_head == 0.5


def test_alias_moves_like_the_cli(tiny, tmp_path):
    store = tmp_path / "store"
    ws = kl.open(store, overrides={"ingest.source": tiny["photos"]})
    ws.run(stages=["ingest", "split"], overrides={"split.per_class": {"train": 2, "val": 2}}, quiet=True)
    ws.run_stage("split", {"split.per_class": {"train": 2, "val": 2}, "split.seed": 5}, quiet=True)
    assert ws.alias("split:v1", "best").aliases == ["best"]
    assert ws["split:best"].ref == "split:v1"
    assert ws.alias("split:v2", "best").aliases == ["latest", "best"] and ws["split:v1"].aliases == []
    assert cli_json("show", "split:best", "--json", "--store", str(store))["ref"] == "split:v2"


# -- the trained versions (slow: they need the smoke pipeline's model) ------------------------


@pytest.fixture(scope="module")
def smoke(smoke_pipeline, tmp_path_factory):
    return copy_smoke(smoke_pipeline, tmp_path_factory.mktemp("api-smoke"))


@pytest.mark.slow
def test_predictions_and_eval_as_frames(smoke):
    ws = kl.open(smoke["store"])
    store = str(smoke["store"])
    predictions = ws["predictions:latest"]
    printed = pd.DataFrame(cli_json("table", predictions.ref, "--format", "json", "--store", store))
    pd.testing.assert_frame_equal(predictions.to_pandas(), printed, check_dtype=False, rtol=1e-7)
    by_truth = predictions.table(group_by="truth").frame
    pd.testing.assert_frame_equal(by_truth, pd.DataFrame(cli_json(
        "table", predictions.ref, "--group-by", "truth", "--format", "json", "--store", store)), check_dtype=False)
    assert "<img" in predictions.table()._repr_html_()

    evaluation = ws["eval:latest"]
    metrics = json.loads(evaluation.read_bytes("metrics.json"))
    assert evaluation.files()["metrics.json"].read_bytes() == evaluation.read_bytes("metrics.json")
    frame = evaluation.to_pandas()
    value = frame.set_index(["scope", "metric"])["value"]
    assert value[("all", "accuracy")] == metrics["accuracy"]
    for name, entry in metrics["per_class"].items():
        assert value[(name, "recall")] == entry["recall"] and value[(name, "support")] == entry["support"]
    assert value[("macro", "f1")] == metrics["macro"]["f1"]
    with pytest.raises(UserError, match="use load_model"):
        ws["model:latest"].to_pandas()
    assert [v.name for v in evaluation.ancestors()] == ["predictions", "model", "split", "raw-data"]


@pytest.mark.slow
def test_compare_is_the_clis_comparison(smoke):
    ws = kl.open(smoke["store"])
    val, test = ws["predictions:v1"], ws["predictions:v2"]  # train's on val, infer's on test
    view = ws.compare(val, val.ref)
    assert view.text() == run_cli("compare", val.ref, val.ref, "--store", str(smoke["store"])).stdout
    assert escape(view.summary) in view._repr_html_() and "<img" in view._repr_html_()
    with pytest.raises(UserError) as raised:
        ws.compare(val, test)
    assert str(raised.value) == cli_error("compare", val.ref, test.ref, "--store", str(smoke["store"]))
    with pytest.raises(UserError, match="is a split version"):
        ws.compare("split:v1", test)


@pytest.mark.slow
def test_load_model_predicts_as_infer_did(smoke):
    ws = kl.open(smoke["store"])
    model = ws["model:latest"]
    loaded = model.load_model()
    assert loaded.class_names == model.meta["classes"] and loaded.input_size == model.meta["input_size"]
    assert loaded.preprocessing == model.meta["preprocessing"] and loaded.resize == model.meta["resize"]
    assert loaded.model.output_shape[-1] == len(loaded.class_names)
    predictions = next(v for v in model.descendants() if v.name == "predictions").to_pandas()
    # infer decoded every image of its split from the store's packs (small images have no file of their own)
    store = Store.open(smoke["store"])
    assert all(next(store.packs.locate(i), None) is not None for i in predictions["id"])
    split_rows = ws["split:latest"].to_pandas()
    assert sorted(predictions["id"]) == sorted(split_rows["id"][split_rows["split"] == predictions["split"][0]])
    paths = [str(smoke["data"] / p) for p in predictions["path"]]
    mine = loaded.predict(paths)
    scores = [f"score_{c}" for c in loaded.class_names]
    np.testing.assert_allclose(mine[scores].to_numpy(), predictions[scores].to_numpy(), atol=1e-5)
    assert mine["guess"].tolist() == predictions["guess"].tolist()
    with pytest.raises(UserError, match="load_model needs a model version"):
        ws["split:latest"].load_model()


@pytest.mark.slow
def test_a_cache_hit_of_infer_imports_no_tensorflow_and_a_new_run_does(smoke):
    script = f"""
import sys
import keras_lineage as kl
ws = kl.open({str(smoke["store"])!r}, config={str(PROJECT / "configs" / "smoke.yaml")!r},
             overrides={{"ingest.source": {str(smoke["data"])!r}}})
before = ws["predictions:latest"]
again = ws.run_stage("infer", quiet=True)
print(again == before, sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")) == [])
made = ws.run_stage("infer", {{"infer.on": "val"}}, quiet=True)
print(made.ref, ",".join(made.to_pandas()["split"].unique()), "tensorflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first == "True True"
    ref, split, imported = second.split()
    assert ref.startswith("predictions:v") and split == "val" and imported == "True"
