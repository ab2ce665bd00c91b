"""A store and a config, opened from Python: what `pipeline.py ls|show|lineage|compare|<stage>|run` do,
returning objects instead of printing.

Every call reads the store afresh (another process may have committed since), resolves references
with the graph's own resolver and runs stages through workflow/execute.py, the CLI's code path: the
same config checks before any work, the same cache, the same one-line `UserError`s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lineage.contract import Artifact, ViewContext
from lineage.errors import UserError
from lineage.graph import Graph
from lineage.store import Store
from workflow.config import Config, load_config

from keras_lineage.display import ComparisonView, LineageGraph
from keras_lineage.logged_run import LoggedRun, start_run
from keras_lineage.model import quiet_tensorflow
from keras_lineage.version import Version

Overrides = Mapping[str, Any]  # "stage.key" → value, as --set stage.key=value


class Workspace:
    """An artifact store, with the config that stages run with. Make one with `keras_lineage.open`."""

    def __init__(self, store: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 overrides: Overrides | None = None):
        self._store_arg = os.fspath(store) if store is not None else None
        self.config_path = os.fspath(config) if config is not None else None
        self.overrides = dict(overrides or {})
        self.root = Path(self.config().store).absolute()  # the config is checked now: a typo fails here
        self._store: Store | None = None

    def __repr__(self) -> str:
        return f"<Workspace {self.root}" + (f" config {self.config_path}" if self.config_path else "") + ">"

    # -- the store and the config ----------------------------------------------------------

    def config(self, overrides: Overrides | None = None) -> Config:
        """The config file with the workspace's overrides and then these, every key checked."""
        settings = _settings({**self.overrides, **(overrides or {})})
        return load_config(self.config_path, settings, self._store_arg)

    def store(self, create: bool = False) -> Store:
        """The store (lineage/store.py); it must exist unless `create` (ingest creates it)."""
        if self._store is None:
            self._store = Store.open(self.root, create=create)
        return self._store

    def _graph(self) -> Graph:
        return Graph.load(self.store())

    # -- reading ---------------------------------------------------------------------------

    def artifacts(self) -> list[str]:
        """The artifact names that have versions (raw-data, split, model, predictions, eval)."""
        return sorted(self._graph().versions)

    def versions(self, name: str | None = None) -> list[Version]:
        """Every version (or every version of `name`), by artifact then number, as `pipeline.py ls` lists them."""
        graph = self._graph()
        if name is not None and name not in graph.versions:
            graph.resolve(name)  # the CLI's message: which artifacts this store has
        chains = {name: graph.versions[name]} if name is not None else graph.versions
        return [Version(self, v) for _, chain in sorted(chains.items()) for v in chain]

    def version(self, ref: str) -> Version:
        """Any reference the CLI takes: `split:v3`, `split:latest`, `model:best`, `split` (its latest), or a
        digest prefix of at least 4 characters."""
        if not isinstance(ref, str):
            raise UserError(f"a version reference is text such as 'split:v1' or 'model:latest', got {ref!r}")
        return Version(self, self._graph().resolve(ref))

    __getitem__ = version

    def lineage(self, ref: str | None = None) -> LineageGraph:
        """The whole store's graph, or the part around `ref` (its ancestors and descendants), as a picture."""
        graph = self._graph()
        if ref is None:
            return LineageGraph(self.store(), graph, graph.all_versions(), f"Lineage of {self.root}")
        from lineage.draw import around

        return LineageGraph(self.store(), graph, around(graph, graph.resolve(ref)), f"Lineage around {ref}")

    def compare(self, a: str | Version, b: str | Version, filter: str | None = None) -> ComparisonView:
        """`pipeline.py compare A B`: two predictions versions joined on image id; `filter` is over the joined
        rows (guess_a, guess_b, correct_a, correct_b, shift, …)."""
        from tables.compare import compare_predictions
        from tables.predictions import read_predictions

        store, graph = self.store(), self._graph()
        artifacts = [Artifact.open(store, graph, graph.resolve(item.ref if isinstance(item, Version) else item,
                                                               expected_name="predictions")) for item in (a, b)]
        result = compare_predictions(*[read_predictions(x) for x in artifacts], *[x.ref for x in artifacts],
                                     filter=filter)
        return ComparisonView(result, self.thumbnails(artifacts[0]), self.thumbnail_px)

    def alias(self, ref: str | Version, alias: str) -> Version:
        """`pipeline.py alias REF NAME`: the alias moves to this version from any other of its artifact."""
        from lineage.runner import set_alias

        store, graph = self.store(), self._graph()
        set_alias(store, graph.resolve(ref.ref if isinstance(ref, Version) else ref), alias)
        target = graph.resolve(ref.ref if isinstance(ref, Version) else ref)
        return Version(self, self._graph().find(target.name, target.digest))

    # -- running ---------------------------------------------------------------------------

    def run_stage(self, stage: str, overrides: Overrides | None = None, *, aliases: Iterable[str] = (),
                  force: bool = False, quiet: bool = False, progress: bool | None = None) -> Version:
        """`pipeline.py STAGE --set …`: run one stage through the cache and return the version it made
        (train's model; its validation predictions are `ws['predictions:latest']`). A cache hit returns the
        version made before, and runs nothing."""
        from stages import load_stage
        from workflow.execute import run_one_stage

        config = self.config(overrides)
        quiet_tensorflow()  # train and infer import it
        result = run_one_stage(config, stage, self.store, force=force, aliases=list(aliases),
                               log=_logger(quiet), progress=_progress(progress))
        _say(result, quiet)
        return self._primary(load_stage(stage).OUTPUT, result.outputs)

    def run(self, stages: Iterable[str] | None = None, overrides: Overrides | None = None, *, force: bool = False,
            quiet: bool = False, progress: bool | None = None) -> dict[str, Version]:
        """`pipeline.py run`: the config's stages (or these, in pipeline order), each only if something it
        depends on changed; every stage's settings are checked before the first starts. Returns stage →
        the version it made."""
        from stages import load_stage
        from workflow.execute import run_configured_stages

        chosen = {**(overrides or {}), **({"stages": list(stages)} if stages is not None else {})}
        config = self.config(chosen)
        quiet_tensorflow()  # train and infer import it
        results = run_configured_stages(config, self.store, force=force, log=_logger(quiet),
                                        progress=_progress(progress), each=lambda result: _say(result, quiet))
        return {r.stage: self._primary(load_stage(r.stage).OUTPUT, r.outputs) for r in results}

    def start_run(self, stage: str, inputs: dict[str, str] | None = None, params: dict | None = None, *,
                  aliases: Iterable[str] = ()) -> LoggedRun:
        """`kl.start_run` on this workspace's store: log your own training as a run named `stage` reading
        `inputs` ({"split": "split:v3"}); what the block logs commits when it ends without an exception."""
        return start_run(stage, inputs, params, store=self.root, aliases=aliases)

    def _primary(self, output: str, versions) -> Version:
        chosen = next((v for v in versions if v.name == output), versions[0])
        return Version(self, chosen)

    # -- thumbnails, for tables ------------------------------------------------------------

    @property
    def thumbnail_px(self) -> int:
        """The evaluation report's thumbnail size (evaluate.thumbnail_px): tables share its cached JPEGs."""
        return self.config().params("evaluate").thumbnail_px

    def thumbnails(self, artifact: Artifact) -> Callable[[list[str]], dict[str, bytes]]:
        """For a table of this version's rows: small JPEGs of the stored images among a list of ids, made
        as the report makes them, in the same cache."""
        from stages import evaluate

        params = self.config().params("evaluate")
        context = ViewContext(artifact.store, "view", log=lambda message: None, progress=False)
        return lambda ids: evaluate.thumbnails(artifact, ids, params, context)


def _settings(overrides: Overrides) -> list[str]:
    """Python values as the CLI's `--set key=value` strings. JSON is YAML 1.2, so each value reads back as
    exactly itself: "1e-3" stays text, None is null, a dict a mapping."""
    settings = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key.strip():
            raise UserError(f"override key {key!r}: write it as 'stage.key', e.g. {{'split.seed': 3}}")
        try:
            text = json.dumps(value, default=_plain, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError):
            raise UserError(f"override {key}: {value!r} is not a plain value (text, a number, true/false, None, "
                            "a list or a mapping)") from None
        settings.append(f"{key}={text}")
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        raise TypeError("a set has no order")
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    raise TypeError(type(value).__name__)


def _logger(quiet: bool) -> Callable[[str], None]:
    return (lambda message: None) if quiet else print


def _progress(progress: bool | None) -> bool:
    """Bars for a person watching: on a terminal, or in a Jupyter kernel where ipywidgets can draw
    tqdm.auto's notebook form (without it tqdm would print text bars and a warning into the cell);
    never into a log file."""
    if progress is not None:
        return progress
    if "ipykernel" in sys.modules:
        return importlib.util.find_spec("ipywidgets") is not None
    return sys.stderr.isatty()


def _say(result, quiet: bool) -> None:
    if not quiet:
        refs = ", ".join(v.ref for v in result.outputs)
        print(f"{result.stage}: up to date, {refs}" if result.reused else f"{result.stage}: wrote {refs}")
