"""train.distribute: the TF_CONFIG checks, the strategy each setting gives, and a real two-worker cluster.

The cluster test starts two `pipeline.py train` processes with TF_CONFIG for a two-worker
MultiWorkerMirroredStrategy on free localhost ports, over one shared store: every gradient step is a
real all-reduce between the two processes. Only the chief may commit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import PROJECT, run_cli, run_cli_traced, tensorflow_imports
from lineage.errors import UserError
from lineage.plan import cache_params
from models.distribute import choose_strategy, cluster_size, read_cluster
from stages import train as train_stage

# Two CPU workers train the smoke data with a global batch of 16 instead of 8, so half as many steps: on
# this easy task both reach the same validation accuracy (measured: 1.0 and 1.0 on 32 val images). 0.1 is
# three images of 32, room for the halved step count without letting a broken cluster (chance is 0.25) pass.
ACCURACY_TOLERANCE = 0.1
WORKER_TIMEOUT_S = 420  # a worker whose peer died waits for it for ever: the test kills it instead

TRAIN_SETTINGS = ["--set", "train.epochs_head=4", "--set", "train.epochs_finetune=1",
                  "--set", "train.augmentation={}", "--set", "train.early_stopping_patience=null"]


def cluster_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now: bound to port 0 (the kernel picks), then released for the workers."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------------------
# TF_CONFIG, without TensorFlow


def test_cluster_roles_chief_and_position():
    workers = read_cluster({"TF_CONFIG": cluster_config([1111, 2222], 1)})
    assert (workers.workers, workers.is_chief, workers.position) == (2, False, 1)
    assert read_cluster({"TF_CONFIG": cluster_config([1111, 2222], 0)}).is_chief
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}
    worker = read_cluster({"TF_CONFIG": json.dumps(with_chief)})
    assert (worker.workers, worker.is_chief, worker.position) == (3, False, 1)
    chief = read_cluster({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})})
    assert (chief.is_chief, chief.position) == (True, 0)


@pytest.mark.parametrize("tf_config, says", [
    ("", "TF_CONFIG is not set"),
    ("{cluster: ", "TF_CONFIG is not JSON"),
    ("[1, 2]", "needs a \"cluster\" object and a \"task\" object"),
    (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}), "'ps' role"),
    (json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}), "\"host:port\""),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "is not in its cluster"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": True}}), "is not in its cluster"),
])
def test_bad_tf_config_is_one_line_naming_the_fix(tf_config, says):
    with pytest.raises(UserError) as error:
        read_cluster({"TF_CONFIG": tf_config})
    assert says in str(error.value) and "\n" not in str(error.value)


def test_distribute_is_part_of_the_cache_key_and_multi_worker_counts_the_workers(monkeypatch):
    """The setting changes the global batch, so the model: it is in the key; so is the cluster's size."""
    assert cache_params(train_stage.Params())["distribute"] == "auto"
    monkeypatch.setenv("TF_CONFIG", cluster_config([1111, 2222], 1))
    assert cluster_size("multi_worker") == 2 and cluster_size("mirrored") is None
    two = train_stage.fingerprint(train_stage.Params(distribute="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", cluster_config([1111, 2222, 3333], 0))
    assert train_stage.fingerprint(train_stage.Params(distribute="multi_worker")) not in (two, None)
    assert train_stage.fingerprint(train_stage.Params(distribute="none")) is None  # as before this setting


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    """Synthetic photos, ingested and split by the real CLI (no TensorFlow), in configs/smoke.yaml's store layout."""
    root = tmp_path_factory.mktemp("distribute")
    data, store = root / "data", root / "store"
    made = run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "30")
    assert made.returncode == 0, made.stderr
    args = ["--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
            "--set", f"ingest.source={data}"]
    split = run_cli("run", *args, "--set", "stages=[ingest, split]",
                    "--set", "split.per_class={train: 16, val: 8, test: 6}")
    assert split.returncode == 0, split.stderr
    return {"store": store, "args": args}


@pytest.mark.parametrize("tf_config, says", [
    ("", "error: train.distribute is multi_worker but TF_CONFIG is not set: set it on every machine, e.g. "
         "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}"),
    ("{\"cluster\": [", "error: TF_CONFIG is not JSON (Expecting value at character 13): set it to an object like"),
])
def test_multi_worker_with_a_missing_or_broken_tf_config_fails_in_one_line_before_tensorflow(split_store,
                                                                                             tf_config, says):
    runs_before = sorted((split_store["store"] / "runs").iterdir())
    result = run_cli_traced("train", *split_store["args"], "--set", "train.distribute=multi_worker",
                            env={"TF_CONFIG": tf_config})
    assert result.returncode == 1
    assert result.stderr.startswith(says) and result.stderr.count("\n") == 1, result.stderr
    assert tensorflow_imports(result) == []
    assert sorted((split_store["store"] / "runs").iterdir()) == runs_before  # nothing started, nothing recorded


# ---------------------------------------------------------------------------------------
# the strategies, in this process


@pytest.mark.slow
def test_auto_is_none_without_two_gpus_and_mirrored_uses_the_cpu(tmp_path):
    import keras
    import tensorflow as tf

    from models.distribute import scope
    from test_training import colour_task, compose, quiet_config, tiny_extractor, tiny_head
    from models.training import train_two_phase

    lines: list[str] = []
    gpus = len(tf.config.list_physical_devices("GPU"))
    auto = choose_strategy("auto", lines.append)
    assert auto.setting == ("mirrored" if gpus > 1 else "none")
    assert lines == [f"train.distribute auto: {gpus} GPU{'s' if gpus != 1 else ''} visible, so {auto.setting}"]
    if gpus:
        pytest.skip("the rest checks MirroredStrategy on the CPU, which it uses only where there is no GPU")
    assert auto.strategy is tf.distribute.get_strategy() and auto.replicas == 1 and auto.is_chief

    train_x, train_y = colour_task(96, seed=1)
    val_x, val_y = colour_task(48, seed=2)
    results = {}
    for setting in ("none", "mirrored"):
        distribution = choose_strategy(setting, lines.append)
        keras.utils.set_random_seed(7)  # the same initial weights for both
        with scope(distribution):
            extractor, head = tiny_extractor(), tiny_head(16)
        log: list[str] = []
        results[setting] = train_two_phase(
            extractor, head, train_x, train_y, val_x, val_y, quiet_config(epochs_finetune=1, unfreeze=2),
            str(tmp_path / f"{setting}.weights.h5"), log=log.append, build_classifier=compose,
            distribution=distribution)
        results[setting].log = log
    mirrored = results["mirrored"]
    assert isinstance(choose_strategy("mirrored").strategy, tf.distribute.MirroredStrategy)
    assert "distribute: mirrored, 1 replica; global batch 16 = train.batch_size 16 per replica x 1 replica" \
        in mirrored.log
    assert not any(line.startswith("distribute:") for line in results["none"].log)
    # One replica on one CPU: the same steps as no strategy at all.
    assert [row["phase"] for row in mirrored.history] == ["head", "head", "finetune"]
    for plain, mirror in zip(results["none"].history, mirrored.history):
        assert mirror["val_accuracy"] == pytest.approx(plain["val_accuracy"], abs=0.05)
    assert mirrored.best["val_accuracy"] > 0.6  # it learnt: chance is 1/3


# ---------------------------------------------------------------------------------------
# two workers, two processes, one store


def start_worker(args: list[str], tf_config: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TF_CONFIG": tf_config}
    return subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "train", *args], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(worker: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGKILL)  # TensorFlow's collectives outlive SIGTERM while waiting for a peer
        out, err = worker.communicate()
    return worker.returncode, out, err


def model_meta(split_store, ref: str) -> dict:
    shown = run_cli("show", ref, "--json", *split_store["args"])
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["meta"]


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_commits(split_store):
    store, args = split_store["store"], [*split_store["args"], *TRAIN_SETTINGS]
    runs_before = set((store / "runs").iterdir())

    ports = free_ports(2)
    workers = [start_worker([*args, "--set", "train.distribute=multi_worker", "--set", "train.verbose=2"],
                            cluster_config(ports, index))
               for index in (0, 1)]
    (chief_rc, chief_out, chief_err), (other_rc, other_out, other_err) = [finish(w) for w in workers]
    assert chief_rc == 0, chief_err[-3000:]
    assert other_rc == 0, other_err[-3000:]

    assert "train: wrote model:v1, predictions:v1" in chief_out
    assert other_out.splitlines()[-1] == "worker 1 of 2: trained; the chief commits the model and its val predictions"
    assert "wrote" not in other_out
    for out, who in ((chief_out, "worker 0 of 2 (chief)"), (other_out, "worker 1 of 2")):
        assert f"distribute: multi_worker, {who}, 2 replicas; global batch 16 = train.batch_size 8 per replica " \
               "x 2 replicas" in out, out
    # 64 train images in global batches of 16: four steps an epoch on each worker (eight if the batch did not scale).
    steps = re.findall(r"^(\d+)/(?:\d+|Unknown) - ", chief_out, re.M)
    assert steps == ["4"] * 5, chief_out
    # One run record, the chief's; nothing staged or held by either worker is left behind.
    new_runs = set((store / "runs").iterdir()) - runs_before
    assert len(new_runs) == 1
    assert json.loads(new_runs.pop().read_text())["status"] == "finished"
    assert list((store / "tmp").iterdir()) == []
    assert list((store / "inprogress").iterdir()) == []
    listed = run_cli("ls", *split_store["args"]).stdout
    assert "model:v1" in listed and "predictions:v1" in listed and "model:v2" not in listed
    cluster = model_meta(split_store, "model:v1")
    assert (cluster["distribute"], cluster["replicas"], cluster["global_batch_size"]) == ("multi_worker", 2, 16)
    assert [row["phase"] for row in cluster["history"]] == ["head"] * 4 + ["finetune"]

    # The same settings on one worker, after (so the cluster computed the backbone features, on each worker).
    single = run_cli("train", *args, "--set", "train.distribute=none")
    assert single.returncode == 0, single.stderr[-3000:]
    alone = model_meta(split_store, "model:v2")
    assert (alone["distribute"], alone["replicas"], alone["global_batch_size"]) == ("none", 1, 8)
    assert cluster["best"]["val_accuracy"] == pytest.approx(alone["best"]["val_accuracy"], abs=ACCURACY_TOLERANCE)
    assert cluster["best"]["val_accuracy"] >= 0.9  # both learnt the task; chance is 0.25
