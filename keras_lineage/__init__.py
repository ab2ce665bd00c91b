"""keras_lineage: the artifact store and the pipeline from Python (a notebook at the repository root).

    import keras_lineage as kl

    ws = kl.open("artifacts", config="configs/demo.yaml")
    ws.versions("model")                       # like `pipeline.py ls model`
    split = ws["split:latest"]                 # any REF the CLI takes
    split.table(group_by="split")              # in Jupyter: the first rows, with thumbnails
    model = ws.run_stage("train", {"train.epochs_head": 1})   # a cache hit returns the existing version
    model.ancestors(), ws.lineage(model.ref)   # the graph, drawn inline

    with ws.start_run("my-train", inputs={"split": "split:latest"}) as run:   # your own Keras training
        ...; run.log_model(keras_model, run.classes)                          # commits when the block ends

Reading the store never imports TensorFlow; `Version.load_model()` and running train or infer do.
Every error is a `UserError` whose message is the CLI's one line (Jupyter shows just that line).
docs/api.md lists every public name. This is the top layer: it may import every package of the
project, and none of them imports it.
"""

from __future__ import annotations

import os

from lineage.errors import UserError

from keras_lineage.display import ComparisonView, LineageGraph, Table
from keras_lineage.logged_run import LoggedRun, start_run
from keras_lineage.model import LoadedModel
from keras_lineage.version import Version
from keras_lineage.workspace import Workspace

__all__ = ["open", "start_run", "Workspace", "Version", "Table", "LineageGraph", "ComparisonView", "LoadedModel",
           "LoggedRun", "UserError"]


def open(store: str | os.PathLike | None = None, config: str | os.PathLike | None = None,  # noqa: A001
         overrides: dict | None = None) -> Workspace:
    """The store at `store` (else the config's `store`, else artifacts/), with `config` (a YAML file, as
    --config) and `overrides` ({"stage.key": value}, as --set) for the stages it runs. The config is checked
    now; the store is opened when first read, so a notebook can open a store its first ingest creates."""
    return Workspace(store, config, overrides)
