"""One artifact version as a notebook sees it: what `show`, `lineage`, `table` and infer read, as Python.

A `Version` is a reference resolved once (its vN, digest and aliases as the graph had them then)
plus the store it lives in; everything else (manifest, run record, files, rows) is read from the
store when asked for, through the same checked readers the CLI uses, so a damaged file is the
same one-line `UserError`. Only `load_model` imports TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lineage.contract import Artifact
from lineage.errors import UserError
from lineage.graph import Graph, Version as GraphVersion
from lineage.records import Manifest, RunRecord

from keras_lineage.display import LineageGraph, Table, version_html

if TYPE_CHECKING:
    from keras_lineage.model import LoadedModel
    from keras_lineage.workspace import Workspace

TABULAR = ("raw-data", "split", "predictions", "eval")


class Version:
    """An artifact version: `ws.version("split:v3")`, `ws["model:best"]`, or what `ws.run_stage` made."""

    def __init__(self, workspace: "Workspace", version: GraphVersion):
        self._workspace = workspace
        self._version = version

    # -- identity ------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        """`name:vN` (vN is per store; the digest is the name every store shares)."""
        return self._version.ref

    @property
    def name(self) -> str:
        """The artifact: raw-data, split, model, predictions or eval."""
        return self._version.name

    @property
    def number(self) -> int | None:
        """N of `name:vN`."""
        return self._version.v

    @property
    def digest(self) -> str:
        """The sha256 of the version's manifest: the same content is always the same digest."""
        return self._version.digest

    @property
    def aliases(self) -> list[str]:
        """Its aliases (`latest`, `best`, …) when it was resolved."""
        return list(self._version.aliases)

    @property
    def created(self) -> str | None:
        return self._version.created

    @property
    def size(self) -> int:
        """Bytes of its manifest and the objects it owns."""
        return self._version.size

    @property
    def count(self) -> int:
        """Its entries: images, rows or files."""
        return self._version.count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and (other.name, other.digest) == (self.name, self.digest)

    def __hash__(self) -> int:
        return hash((self.name, self.digest))

    def __repr__(self) -> str:
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        return f"<Version {self.ref}{aliases} {self.digest[:12]}>"

    # -- what the store holds about it ---------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """The checked manifest (lineage/records.py Manifest)."""
        return self._workspace.store().read_manifest(self._version.key)

    @property
    def meta(self) -> dict[str, Any]:
        """The manifest's metadata: classes, counts, metrics, training params and history, …"""
        return self.manifest.meta

    @property
    def run(self) -> RunRecord | None:
        """The record of the run that made it (params, code digest, inputs, host, times), or None."""
        return self._workspace.store().read_run(self._version.run) if self._version.run else None

    def summary(self) -> dict[str, Any]:
        """What `pipeline.py show REF --json` prints."""
        from lineage.views import describe_version

        store = self._workspace.store()
        return describe_version(store, Graph.load(store), self._version)

    def show(self) -> str:
        """What `pipeline.py show REF` prints."""
        from lineage.views import format_show

        return format_show(self.summary())

    def _repr_html_(self) -> str:
        return version_html(repr(self)[1:-1], self.show())

    def files(self) -> dict[str, Path]:
        """Its named files (model.keras, predictions.parquet, metrics.json, …) → the object holding each.
        The objects are the store's: read them, never write them (their name is the hash of their bytes).
        Named files are always loose objects, so each has a path: only images are packed (lineage/packs.py)."""
        store = self._workspace.store()
        return {name: store.object_path(item.digest) for name, item in self.manifest.files.items()}

    def read_bytes(self, name: str) -> bytes:
        """One named file's bytes."""
        path = self._artifact().file_path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{self.ref}'s file {name} is missing from the store (object {path.name[:12]}): run "
                            "`pipeline.py verify`, then re-run the stage that made it, or pull it") from None

    # -- lineage ---------------------------------------------------------------------------

    def ancestors(self) -> list["Version"]:
        """Every version this one was made from, nearest first."""
        from lineage.draw import ancestors

        graph = self._graph()
        return [self._wrap(v) for v in ancestors(graph, self._current(graph))[1:]]

    def descendants(self) -> list["Version"]:
        """Every version made from this one, nearest first."""
        graph = self._graph()
        found, todo, seen = [], [self._current(graph)], {self._version.key}
        while todo:
            for _, run in graph.consumers(todo.pop(0)):
                for item in run.outputs:
                    version = graph.find(item.name, item.digest)
                    if version is not None and version.key not in seen:
                        seen.add(version.key)
                        found.append(version)
                        todo.append(version)
        return [self._wrap(v) for v in found]

    def siblings(self) -> list["Version"]:
        """The other versions the run that made this one made: a model's validation predictions (train makes
        both), or the model behind such predictions."""
        graph = self._graph()
        run = graph.producer(self._current(graph))
        found = [graph.find(item.name, item.digest) for item in (run.outputs if run else [])]
        return [self._wrap(v) for v in found if v is not None and v.key != self._version.key]

    def lineage(self) -> LineageGraph:
        """Its ancestors, descendants and the runs between them, as a picture."""
        return self._workspace.lineage(self.ref if self.number is not None else self.digest)

    # -- rows ------------------------------------------------------------------------------

    def to_pandas(self) -> pd.DataFrame:
        """Its rows: a raw-data or split version's images (id, path, label, split, format, width, height,
        bytes), a predictions table (id, path, split, truth, guess, confidence, score_<class>…), or an eval
        version's metrics as a tidy frame (scope, metric, value: scope is `all`, a class, `micro` or `macro`)."""
        artifact = self._artifact()
        if self.name in ("raw-data", "split"):
            from tables.datasets import dataset_frame

            return dataset_frame(artifact)
        if self.name == "predictions":
            from tables.predictions import read_predictions

            return read_predictions(artifact)
        if self.name == "eval":
            return metrics_frame(json.loads(self.read_bytes("metrics.json")), self.ref)
        raise UserError(f"{self.ref} is a {self.name} version, which has no rows: to_pandas reads "
                        f"{', '.join(TABULAR)} versions" + ("; use load_model() for the model, and "
                                                            ".meta['history'] for its training curves"
                                                            if self.name == "model" else ""))

    def table(self, filter: str | None = None, sort: str | None = None, descending: bool = False,
              group_by: str | None = None, columns: list[str] | None = None, limit: int | None = None) -> Table:
        """`pipeline.py table REF` as an object: filter (the CLI's filter language, e.g.
        `x["truth"] != x["guess"]`), group (truth, guess, split, label or any column), sort, pick columns,
        cut. In Jupyter the first rows show with a thumbnail of each image."""
        from tables.datasets import dataset_grouping, is_dataset
        from tables.table import query_table

        frame, artifact = self.to_pandas(), self._artifact()
        grouping = dataset_grouping(artifact) if is_dataset(artifact) else {}
        result = query_table(frame, filter=filter, sort=sort, descending=descending, group_by=group_by,
                             columns=columns, limit=limit, **grouping)
        title = " ".join(part for part in (self.ref, f"where {filter}" if filter else "",
                                           f"grouped by {group_by}" if group_by else "") if part)
        return Table(result, title, self._workspace.thumbnails(artifact), self._workspace.thumbnail_px)

    # -- the model ---------------------------------------------------------------------------

    def load_model(self) -> "LoadedModel":
        """A model version's Keras model with its class names, input size, resize mode and preprocessing
        (this imports TensorFlow; nothing else here does)."""
        from keras_lineage.model import load_model

        if self.name != "model":
            raise UserError(f"{self.ref} is a {self.name} version: load_model needs a model version, e.g. "
                            "ws['model:latest']")
        return load_model(self._artifact())

    # -- plumbing ----------------------------------------------------------------------------

    def _graph(self) -> Graph:
        return Graph.load(self._workspace.store())

    def _current(self, graph: Graph) -> GraphVersion:
        return graph.find(self.name, self.digest) or self._version

    def _wrap(self, version: GraphVersion) -> "Version":
        return Version(self._workspace, version)

    def _artifact(self) -> Artifact:
        store = self._workspace.store()
        return Artifact.open(store, Graph.load(store), self._version)


def metrics_frame(metrics: dict, ref: str) -> pd.DataFrame:
    """metrics.json as rows of (scope, metric, value): the headline numbers under `all`, then each class,
    then the micro and macro averages. Nested tables (confusion, thresholds) stay in the file."""
    if not isinstance(metrics, dict):
        raise UserError(f"{ref}'s metrics.json is not an object: run `pipeline.py verify`")
    rows = [("all", key, value) for key, value in metrics.items() if _number(value)]
    unknown = metrics.get("unknown")
    if isinstance(unknown, dict):
        rows += [("all", f"unknown_{key}", value) for key, value in unknown.items() if _number(value)]
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    for scope, values in [*per_class.items(), ("micro", metrics.get("micro")), ("macro", metrics.get("macro"))]:
        if isinstance(values, dict):
            rows += [(scope, key, value) for key, value in values.items() if _number(value) or value is None]
    frame = pd.DataFrame(rows, columns=["scope", "metric", "value"])
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    return frame


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
