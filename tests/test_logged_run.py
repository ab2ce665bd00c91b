"""Runs logged from the user's own code (keras_lineage/logged_run.py): real scripts in real subprocesses, over a
store the CLI built; what they commit is read back through the CLI like a built-in stage's versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT, run_cli
from lineage.errors import UserError
from lineage.store import sha256_file
from tables.predictions import score_column


@pytest.fixture(scope="module")
def split_store(tmp_path_factory) -> dict:
    """raw-data:v1 and split:v1 (4 classes; 6 train, 3 val, 3 test images each), made by the CLI."""
    root = tmp_path_factory.mktemp("logged")
    data, store = root / "data", root / "store"
    assert run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "12").returncode == 0
    args = ["--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
            "--set", f"ingest.source={data}"]
    for stage in ("ingest", "split"):
        made = run_cli(stage, *args)
        assert made.returncode == 0, made.stderr
    return {"data": data, "store": store}


@pytest.fixture
def store(split_store, tmp_path) -> Path:
    """A private copy of the split store."""
    copy = tmp_path / "store"
    shutil.copytree(split_store["store"], copy, symlinks=True)
    return copy


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, "--store", str(store))


def run_script(path: Path, source: str, *args: str, traced: bool = False) -> subprocess.CompletedProcess:
    """Write the user's script to `path` and run it as a user would (`python path args`), so it has a __file__."""
    path.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, *(["-X", "importtime"] if traced else []), str(path), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=path.parent)


def imported(result: subprocess.CompletedProcess) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


FILES_SCRIPT = """
    import os, signal, sys, time
    from pathlib import Path
    from keras_lineage.logged_run import start_run

    store, then = sys.argv[1], sys.argv[2]
    Path("out").mkdir(exist_ok=True)
    Path("out/notes.txt").write_text("a note " + then)
    with start_run("my-eval", inputs={"split": "split:v1"}, params={"threshold": 0.5}, store=store) as run:
        run.log_files("notes", "out")
        if then == "raise":
            raise ValueError("the user's code failed")
        if then == "ctrl-c":
            os.kill(os.getpid(), signal.SIGINT)
        if then == "wait":  # staged, not committed: hold here until the test says go
            Path("staged").touch()
            while not Path("go").exists():
                time.sleep(0.05)
"""


def test_logged_files_commit_and_show_like_a_stage(store, tmp_path):
    done = run_script(tmp_path / "evaluate_mine.py", FILES_SCRIPT, str(store), "commit", traced=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "my-eval: wrote notes:v1" in done.stdout
    assert not {m for m in imported(done) if m.split(".")[0] in ("tensorflow", "keras")}  # no Keras was needed
    listed = cli(store, "ls")
    assert "notes:v1" in listed.stdout, listed.stdout
    lineage = cli(store, "lineage", "notes:v1")
    assert "my-eval (run" in lineage.stdout and "split:v1" in lineage.stdout, lineage.stdout
    shown = json.loads(cli(store, "show", "notes:v1", "--json").stdout)
    assert set(shown["files"]) == {"notes.txt"} and shown["meta"] == {"logged_by": "my-eval", "split": "split:v1"}
    records = [json.loads(p.read_text()) for p in (store / "runs").glob("*.json")]
    record = next(r for r in records if r["stage"] == "my-eval")
    assert record["status"] == "finished" and record["params"] == {"threshold": 0.5}
    assert record["code_digest"] == sha256_file(tmp_path / "evaluate_mine.py")  # the calling script's file
    assert [(i["name"], i["ref"]) for i in record["inputs"]] == [("split", "split:v1")]
    assert list((store / "inprogress").iterdir()) == [] and list((store / "tmp").iterdir()) == []
    assert cli(store, "verify").returncode == 0


def test_a_block_that_raises_commits_nothing(store, tmp_path):
    before = cli(store, "ls").stdout
    failed = run_script(tmp_path / "mine.py", FILES_SCRIPT, str(store), "raise")
    assert failed.returncode == 1 and "ValueError: the user's code failed" in failed.stderr
    assert cli(store, "ls").stdout == before
    records = [json.loads(p.read_text()) for p in (store / "runs").glob("*.json")]
    record = next(r for r in records if r["stage"] == "my-eval")
    assert record["status"] == "failed" and record["outputs"] == []
    assert record["error"] == "ValueError: the user's code failed"
    assert not (store / "manifests" / "notes").exists()
    # What it staged is garbage, as a killed stage's is: gc collects it (and nothing else).
    note = sha256_file(tmp_path / "out" / "notes.txt")
    assert (store / "objects" / "sha256" / note[:2] / note[2:]).exists()
    swept = cli(store, "gc", "--yes", "--grace-minutes", "0")
    assert swept.returncode == 0, swept.stderr
    assert not (store / "objects" / "sha256" / note[:2] / note[2:]).exists()
    assert cli(store, "verify").returncode == 0


def test_ctrl_c_inside_the_block_says_what_the_cli_says(store, tmp_path):
    before = cli(store, "ls").stdout
    stopped = run_script(tmp_path / "mine.py", FILES_SCRIPT, str(store), "ctrl-c")
    assert stopped.returncode != 0 and "KeyboardInterrupt" in stopped.stderr
    assert "interrupted: nothing was committed; the store is as it was" in stopped.stdout
    assert cli(store, "ls").stdout == before
    assert list((store / "inprogress").iterdir()) == []


def test_gc_cannot_sweep_what_an_open_block_staged(store, tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(textwrap.dedent(FILES_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    running = subprocess.Popen([sys.executable, str(script), str(store), "wait"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "staged").exists():
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.05)
        swept = cli(store, "gc", "--yes", "--grace-minutes", "0")
        assert swept.returncode == 1 and "1 run(s) in progress: my-eval" in swept.stderr, swept.stderr
        (tmp_path / "go").touch()
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0 and "my-eval: wrote notes:v1" in out, err
    assert cli(store, "verify").returncode == 0  # every object of notes:v1 is there


def test_bad_inputs_and_names_are_one_line_before_any_work(store):
    from keras_lineage.logged_run import start_run

    cases = [(dict(stage="my-train", inputs={"split": "split:v9"}), "split:v9 does not exist: split has v1..v1"),
             (dict(stage="my-train", inputs={"split": "raw-data:v1"}), "a raw-data version: key each input"),
             (dict(stage="my-train", inputs={"split": "modle:v1"}), "no artifact named 'modle'"),
             (dict(stage="train"), "is a built-in stage's"),
             (dict(stage="../x"), "is not a plain name"),
             (dict(stage="my-train", params={"f": open}), "cannot be recorded as JSON")]
    for arguments, expected in cases:
        with pytest.raises(UserError) as raised:
            start_run(store=store, **arguments)
        assert expected in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UserError, match="no artifact store at"):
        start_run("my-train", inputs={"split": "split:v1"}, store=store.parent / "elsewhere")
    assert not list((store / "inprogress").iterdir())


def _predictions(store: Path, split: str = "val") -> pd.DataFrame:
    """A prediction table over the split's `split` images, written by hand in the schema (no model)."""
    from lineage.contract import Artifact
    from lineage.graph import Graph
    from lineage.store import Store

    opened = Store.open(store)
    graph = Graph.load(opened)
    artifact = Artifact.open(opened, graph, graph.resolve("split:v1"))
    classes = artifact.manifest.meta["classes"]
    rows = []
    for label, digests in artifact.split_digests(split).items():
        for digest in digests:
            scores = [0.7 if c == label else 0.1 for c in classes]
            rows.append({"id": digest, "path": f"{label}/{digest[:8]}.png", "split": split, "truth": label,
                         "guess": label, "confidence": 0.7, **{score_column(c): s for c, s in zip(classes, scores)}})
    return pd.DataFrame(rows)


def test_log_table_checks_the_schema(store):
    from keras_lineage.logged_run import start_run

    good = _predictions(store)
    bad = {"extra column": good.assign(note="x"),
           "score out of range": good.assign(**{"score_blue": 1.5}),
           "guess not a class": good.assign(guess="purple"),
           "id not an image": good.assign(id=["f" * 64] * len(good)),
           "wrong split": good.assign(split="test")}
    with start_run("my-train", inputs={"split": "split:v1"}, store=store, log=lambda line: None) as run:
        for why, frame in bad.items():
            with pytest.raises(UserError) as raised:
                run.log_table(frame, split="val")
            assert "\n" not in str(raised.value), why
        with pytest.raises(UserError, match="log_files"):
            run.log_table(good, name="metrics")
        with pytest.raises(UserError, match="run.log_model"):
            run.log_files("model", [])
        run.log_table(good, split="val")
    assert [v.ref for v in run.versions] == ["predictions:v1"]
    shown = json.loads(cli(store, "show", "predictions:v1", "--json").stdout)
    assert shown["meta"]["accuracy"] == 1.0 and shown["meta"]["rows"] == len(good)
    table = json.loads(run_cli("table", "predictions:v1", "--format", "json", "--store", str(store)).stdout)
    assert [row["id"] for row in table] == good["id"].tolist()
    with pytest.raises(UserError, match="is not open"):
        run.log_table(good)
    with pytest.raises(UserError, match="once"):
        run.__enter__()


MODEL_SCRIPT = """
    import json, sys
    import keras
    from keras_lineage.logged_run import start_run
    from models.predict import predict_table

    store, epochs, wreck, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "wreck", int(sys.argv[4])
    keras.utils.set_random_seed(seed)
    with start_run("my-train", inputs={"split": "split:v1"}, params={"epochs": epochs, "seed": seed},
                   store=store) as run:
        train, val = run.split_images("train", 16), run.split_images("val", 16)
        model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(len(run.classes), activation="softmax")])
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
        # With "wreck", the last epoch runs at a learning rate that ruins the weights: an earlier epoch is best.
        ruin = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 50.0 if wreck and epoch == epochs - 1 else lr)
        model.fit(train.images, train.labels, epochs=epochs, batch_size=8, verbose=0,
                  callbacks=[run.keras_callback(validation_data=(val.images, val.labels)), ruin])
        probabilities = model.predict(val.images, verbose=0)
        kept = float(model.compute_loss(y=val.labels, y_pred=probabilities, training=False))
        print(json.dumps({"kept_val_loss": kept, "best": run.best}))
        run.log_model(model, run.classes, preprocessing="Rescaling(1/255) in the model", train_images=len(train.ids))
        run.log_table(predict_table(model, val.images, val.ids, val.paths, ["val"] * len(val.ids), val.truths,
                                    run.classes, progress=False), split="val")
"""


@pytest.fixture(scope="module")
def logged_models(split_store, tmp_path_factory) -> dict:
    """Two runs of the user's training script: 3 epochs with the last one ruined, then 2 plain epochs from another
    seed (the same seed's first 2 epochs are the first run's best: the same model, the same predictions)."""
    root = tmp_path_factory.mktemp("logged-models")
    store = root / "store"
    shutil.copytree(split_store["store"], store, symlinks=True)
    first = run_script(root / "train_mine.py", MODEL_SCRIPT, str(store), "3", "wreck", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_script(root / "train_mine.py", MODEL_SCRIPT, str(store), "2", "plain", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    return {"root": root, "store": store, "first": first, "second": second}


@pytest.mark.slow
def test_logged_model_is_a_model_version(logged_models):
    store = logged_models["store"]
    assert "my-train: wrote model:v1, predictions:v1" in logged_models["first"].stdout
    assert "my-train: wrote model:v2, predictions:v2" in logged_models["second"].stdout
    shown = json.loads(cli(store, "show", "model:v1", "--json").stdout)
    meta = shown["meta"]
    assert set(shown["files"]) == {"model.keras", "class_index.json", "history.json"}
    assert meta["classes"] == ["blue", "green", "red", "yellow"] and meta["input_size"] == 16
    assert meta["class_index"] == {"blue": 0, "green": 1, "red": 2, "yellow": 3} and meta["resize"] == "crop"
    assert [row["epoch"] for row in meta["history"]] == [1, 2, 3]
    assert all(isinstance(row["val_micro_ap"], float) and set(row["val_class_ap"]) == set(meta["classes"])
               for row in meta["history"][:2])
    assert all("loss" in row and "val_loss" in row and "lr" in row for row in meta["history"])
    lineage = cli(store, "lineage", "model:v1").stdout
    assert "my-train (run" in lineage and "split:v1" in lineage


@pytest.mark.slow
def test_the_callback_keeps_the_best_epochs_weights(logged_models):
    said = json.loads(next(line for line in logged_models["first"].stdout.splitlines() if line.startswith("{")))
    best = said["best"]
    assert best["epoch"] < 3  # the ruined last epoch is not the best
    assert said["kept_val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)  # the model holds the best weights
    meta = json.loads(cli(logged_models["store"], "show", "model:v1", "--json").stdout)["meta"]
    assert meta["best"] == best


@pytest.mark.slow
def test_compare_report_and_infer_read_logged_versions(logged_models):
    store = logged_models["store"]
    compared = cli(store, "compare", "predictions:v1", "predictions:v2")
    assert compared.returncode == 0 and "shared images: 12" in compared.stdout, compared.stderr
    out = logged_models["root"] / "report.html"
    report = cli(store, "report", "predictions:v2", "predictions:v1", "--out", str(out))
    assert report.returncode == 0, report.stderr
    html = out.read_text()
    # The AP-by-epoch chart draws the logged models as it draws train's: one point per epoch of each.
    assert html.count('"ref":"model:v1"') == 3 and html.count('"ref":"model:v2"') == 2
    inferred = cli(store, "infer", "--set", "infer.model=model:v1", "--set", "infer.split=split:v1")
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    assert "infer: wrote predictions:v3" in inferred.stdout
    table = json.loads(cli(store, "table", "predictions:v3", "--format", "json").stdout)
    assert len(table) == 12 and {row["split"] for row in table} == {"test"}


@pytest.mark.slow
def test_a_model_infer_could_not_load_is_refused(store):
    import keras

    from keras_lineage.logged_run import start_run

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Lambda(lambda x: x / 255),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax")])
    with start_run("my-train", inputs={"split": "split:v1"}, store=store, log=lambda line: None) as run:
        with pytest.raises(UserError, match="does not load back with safe_mode=True") as raised:
            run.log_model(model, run.classes)
        assert "\n" not in str(raised.value)
        with pytest.raises(UserError, match="4 outputs but 3 class names"):
            run.log_model(model, run.classes[:3])
    assert run.versions == []
