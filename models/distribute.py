"""Which tf.distribute strategy a training run uses, how many replicas it has, and who commits.

`train.distribute` is auto, none, mirrored or multi_worker. auto is mirrored when more than one GPU
is visible, else none. mirrored is MirroredStrategy over the local GPUs (or the CPU when there is
none). multi_worker is MultiWorkerMirroredStrategy across the machines TF_CONFIG lists; every
worker runs the same training, because each gradient step is an all-reduce that needs all of them,
and only the chief commits the model and its predictions.

`train.batch_size` is the batch of one replica: the global batch is batch_size × replicas, so
adding replicas keeps each device's memory use and makes fewer, larger steps.

TF_CONFIG is read and checked here without TensorFlow (`read_cluster`), so a bad one fails in one
line before anything is imported or decoded; `choose_strategy` imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from lineage.errors import UserError

Setting = Literal["auto", "none", "mirrored", "multi_worker"]  # train.distribute
SETTINGS = Setting.__args__
ROLES = ("chief", "worker")  # parameter servers and evaluators are not how this pipeline trains

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\' (index 1 on the second machine)')


@dataclass(frozen=True)
class Cluster:
    """This process's place in the TF_CONFIG cluster."""

    workers: int  # chief and workers together: every one of them holds replicas
    task_type: str
    task_index: int
    has_chief: bool = False  # a "chief" role in the cluster; without one, worker 0 is the chief

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief)

    @property
    def position(self) -> int:
        """0 for the chief, then the workers in order: what the log calls "worker N of M"."""
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.has_chief else 0)


@dataclass
class Distribution:
    """The strategy a run trains under and what the stage needs to know about it."""

    strategy: Any  # a tf.distribute.Strategy; the default strategy for none
    setting: str  # what the strategy resolved to: none, mirrored or multi_worker
    replicas: int  # devices across all workers that each hold a copy of the model
    cluster: Cluster | None  # multi_worker only

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.cluster is not None

    @property
    def worker(self) -> str:
        """This process in the log: worker 1 of 2 (the chief is worker 0)."""
        return "worker 0 of 1" if self.cluster is None else f"worker {self.cluster.position} of {self.cluster.workers}"

    def describe(self) -> str:
        if self.cluster is None:
            return f"{self.setting}, {self.replicas} replica{'s' if self.replicas != 1 else ''}"
        return f"multi_worker, {self.worker}{' (chief)' if self.is_chief else ''}, {self.replicas} replicas"


def read_cluster(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster TF_CONFIG describes, checked; a UserError naming the fix if it is missing or malformed."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise UserError(f"train.distribute is multi_worker but TF_CONFIG is not set: set it on every machine, e.g. "
                        f"{TF_CONFIG_EXAMPLE}, or use train.distribute=mirrored for one machine")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos}): set it to an object like "
                        f"{TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f"TF_CONFIG needs a \"cluster\" object and a \"task\" object: set it like {TF_CONFIG_EXAMPLE}")
    for role, addresses in cluster.items():
        if role not in ROLES:
            raise UserError(f"TF_CONFIG's cluster has a {role!r} role: multi_worker training uses only "
                            f"{' and '.join(ROLES)}; remove it")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
            raise UserError(f"TF_CONFIG's cluster.{role} must be a list of \"host:port\" addresses, got "
                            f"{json.dumps(addresses)[:80]}: set it like {TF_CONFIG_EXAMPLE}")
    if len(cluster.get("chief", [])) > 1:
        raise UserError("TF_CONFIG's cluster.chief lists more than one address: a cluster has one chief")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(cluster[task_type]):
        raise UserError(f"TF_CONFIG's task {json.dumps(task)[:80]} is not in its cluster "
                        f"({', '.join(f'{len(a)} {r}' for r, a in cluster.items())}): give this machine's "
                        f"\"type\" and 0-based \"index\" in that list")
    workers = sum(len(addresses) for addresses in cluster.values())
    return Cluster(workers, task_type, index, has_chief="chief" in cluster)


def cluster_size(setting: str, environ: Mapping[str, str] | None = None) -> int | None:
    """How many workers a multi_worker run has (it sets the global batch, so it is part of what a run depends
    on), or None for a one-machine setting. Checks TF_CONFIG, without TensorFlow."""
    return read_cluster(environ).workers if setting == "multi_worker" else None


def choose_strategy(setting: str, log: Callable[[str], None] = print) -> Distribution:
    """The strategy for `setting`. Call it before building any model: multi_worker must start its collectives
    before TensorFlow runs other ops, and variables are mirrored only when made inside `strategy.scope()`."""
    if setting not in SETTINGS:
        raise UserError(f"train.distribute is {setting!r}: use one of {', '.join(SETTINGS)}")
    cluster = read_cluster() if setting == "multi_worker" else None  # before TensorFlow: a bad TF_CONFIG fails fast
    import tensorflow as tf

    if setting == "auto":
        gpus = len(tf.config.list_physical_devices("GPU"))
        setting = "mirrored" if gpus > 1 else "none"
        log(f"train.distribute auto: {gpus} GPU{'s' if gpus != 1 else ''} visible, so {setting}")
    if setting == "none":
        strategy = tf.distribute.get_strategy()  # the default strategy: scope() changes nothing
    elif setting == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Distribution(strategy, setting, int(strategy.num_replicas_in_sync), cluster)


# ---------------------------------------------------------------------------------------
# training under a strategy (models/training.py)


def scope(distribution: Distribution | None):
    """Where models, optimizers and metrics are made: their variables are mirrored only when made in it."""
    return contextlib.nullcontext() if distribution is None else distribution.strategy.scope()


def shard_by_data(dataset):
    """Each worker keeps its share of every global batch. The pipeline starts from a range of row indices
    and gathers rows in Python (models/data.py), so there are no files to shard by; every worker reads the
    same seeded order, so the shares are disjoint and together cover each batch."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def prepare_for_fit(model, distribution: Distribution | None, element_spec) -> None:
    """Let a compiled model `fit` under MultiWorkerMirroredStrategy, which Keras 3 (3.15) cannot do as it is
    (keras-team/keras#20585): `fit` averages a first distributed batch with a collective reduce that takes no
    (x, y) pair, and reduces each step's scalar metrics with `strategy.reduce("MEAN", axis=0)`, which needs a
    batch axis. So the model's state is built here from the dataset's shapes, the model forgets the strategy
    it was made under (`fit` then runs inside `scope`, which gives it the same one), and each step's metrics
    get a batch axis of one, which the reduce averages over every replica. Nothing for one machine."""
    if distribution is None or not distribution.multi_worker:
        return
    with distribution.strategy.scope():
        model._symbolic_build(data_batch=element_spec)
    model._distribute_strategy = None
    import keras

    own_step = type(model).train_step.__get__(model)

    def train_step(data):
        return keras.tree.map_structure(lambda value: keras.ops.reshape(value, (1,)), own_step(data))

    model.train_step = train_step


def predict_all(model, dataset, distribution: Distribution | None):
    """The model's outputs for every batch of `dataset`, in order, as numpy.

    Across workers each one predicts the whole dataset itself, outside the strategy: `predict` under
    MultiWorkerMirroredStrategy would give each worker only its shard. Every worker then measures the same
    validation numbers, so early stopping and the learning-rate schedule decide alike everywhere (a worker
    that stopped alone would leave the others waiting in a collective for ever), and every worker's
    feature cache holds all rows."""
    import numpy as np

    if distribution is None or not distribution.multi_worker:
        return np.asarray(model.predict(dataset, verbose=0))
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(model(batch, training=False)) for batch in dataset])
