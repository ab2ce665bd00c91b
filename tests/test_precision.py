"""`train.mixed_precision`: what each choice resolves to, the config check, the Keras policy set only while a
model is trained, and a bfloat16 model trained, saved, loaded by infer and written as float32 scores."""

from __future__ import annotations

import importlib.metadata
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT, run_cli, run_cli_traced, tensorflow_imports
from lineage.errors import UserError
from models.precision import keras_policy, resolve_precision


@pytest.mark.parametrize("choice, gpus, expected", [
    ("auto", 0, "float32"), ("auto", 1, "float16"), ("auto", 8, "float16"),
    ("float32", 1, "float32"), ("bfloat16", 0, "bfloat16"), ("bfloat16", 1, "bfloat16"), ("float16", 1, "float16"),
])
def test_resolve_precision(choice, gpus, expected):
    assert resolve_precision(choice, gpus) == expected


def test_float16_without_a_gpu_is_refused_in_one_line_naming_the_fix():
    with pytest.raises(UserError) as refused:
        resolve_precision("float16", 0)
    message = str(refused.value)
    assert "\n" not in message and "no GPU" in message
    assert "use auto" in message and "bfloat16" in message and "make setup GPU=1" in message


def test_keras_policies():
    assert [keras_policy(p) for p in ("float32", "float16", "bfloat16")] == \
        ["float32", "mixed_float16", "mixed_bfloat16"]


def test_the_config_check_rejects_a_bad_value_in_one_line_without_tensorflow(tmp_path):
    refused = run_cli_traced("train", "--store", str(tmp_path / "store"), "--set", "train.mixed_precision=half")
    assert refused.returncode == 1
    assert refused.stderr == "error: train.mixed_precision is 'half': use one of auto, float32, float16, bfloat16\n"
    assert tensorflow_imports(refused) == []


def test_the_policy_is_set_while_training_and_restored_after():
    import keras

    from models.backbones import build_head
    from models.precision import training_precision

    logged: list[str] = []
    assert keras.mixed_precision.global_policy().name == "float32"
    with training_precision("bfloat16", logged.append, gpus=0) as precision:
        assert precision == "bfloat16" and keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        head = build_head(16, 3, 0.2)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert logged == ["train: mixed_bfloat16 precision"]
    # 16-bit inside, float32 probabilities out.
    assert head.get_layer("dropout").compute_dtype == "bfloat16"
    assert head.get_layer("predictions").compute_dtype == "float32"
    assert head.predict(np.ones((2, 16), "float32"), verbose=0).dtype == np.float32

    with pytest.raises(RuntimeError), training_precision("bfloat16", logged.append, gpus=0):
        raise RuntimeError("a failed training run")
    assert keras.mixed_precision.global_policy().name == "float32"

    with pytest.raises(UserError), training_precision("float16", logged.append, gpus=0):
        pass
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.skipif("tensorflow-cpu" not in {d.metadata["Name"].lower().replace("_", "-")
                                              for d in importlib.metadata.distributions()},
                    reason="the GPU build of TensorFlow is installed: auto may mean float16 here")
def test_auto_is_float32_with_the_cpu_build():
    from models.precision import training_precision, visible_gpus

    assert visible_gpus() == 0
    with training_precision("auto", lambda line: None) as precision:
        assert precision == "float32"


def stored_file(store: Path, shown: dict, name: str) -> Path:
    digest = shown["files"][name]["digest"]
    return store / "objects" / "sha256" / digest[:2] / digest[2:]


def score_columns(store: Path, ref: str, args: list[str]) -> pd.DataFrame:
    shown = json.loads(run_cli("show", ref, "--json", *args).stdout)
    table = pd.read_parquet(stored_file(store, shown, "predictions.parquet"))
    return table[[c for c in table.columns if c.startswith("score_")]]


@pytest.mark.slow
def test_a_bfloat16_model_trains_saves_loads_and_writes_float32_scores(tmp_path):
    data, store = tmp_path / "data", tmp_path / "store"
    made = run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "12")
    assert made.returncode == 0, made.stderr
    args = ["--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
            "--set", f"ingest.source={data}"]
    trained = run_cli("run", *args, "--set", "stages=[ingest, split, train, infer]",
                      "--set", "train.mixed_precision=bfloat16", "--set", "train.epochs_finetune=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "mixed_bfloat16" in trained.stdout + trained.stderr

    shown = json.loads(run_cli("show", "model:v1", "--json", *args).stdout)
    assert shown["meta"]["precision"] == "bfloat16"
    with zipfile.ZipFile(stored_file(store, shown, "model.keras")) as saved:
        config = saved.read("config.json").decode()
    assert "mixed_bfloat16" in config  # the saved layers compute in bfloat16 …
    # … but the classifier's last layer in float32.
    head = next(layer for layer in json.loads(config)["config"]["layers"] if layer["name"] == "head")
    predictions = next(layer for layer in head["config"]["layers"] if layer["name"] == "predictions")
    assert predictions["config"]["dtype"]["config"]["name"] == "float32"

    for ref in ("predictions:v1", "predictions:v2"):  # train's val predictions, infer's test predictions
        scores = score_columns(store, ref, args)
        assert len(scores) > 0 and (scores.dtypes == np.float32).all(), scores.dtypes
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-3)
