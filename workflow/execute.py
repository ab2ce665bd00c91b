"""Running a stage, or the configured stages in order, through the runner: what `pipeline.py <stage>`,
`pipeline.py run` and the Python API (keras_lineage) share, so a notebook's run checks the same things
before any work starts and is cached the same way as the command line's.

The caller opens the store (`open_store(create)`: only ingest may create one), after the config is
checked, so a bad config never leaves an empty store behind.
"""

from __future__ import annotations

from typing import Any, Callable

from lineage import runner
from lineage.graph import Graph
from lineage.runner import RunResult
from lineage.store import Store
from stages import load_stage
from workflow.config import Config

StoreOpener = Callable[[bool], Store]


def run_one_stage(config: Config, name: str, open_store: StoreOpener, *, force: bool = False,
                  aliases: list[str] = (), log: Callable[[str], None] = print, progress: bool = False) -> RunResult:
    """One stage with the config's params for it: reuses a finished identical run unless `force`."""
    params = config.check([name])[name]
    store = open_store(name == "ingest")
    return runner.execute(store, load_stage(name), params, force=force, aliases=list(aliases), log=log,
                          progress=progress)


def run_configured_stages(config: Config, open_store: StoreOpener, *, force: bool = False,
                          log: Callable[[str], None] = print, progress: bool = False,
                          each: Callable[[RunResult], Any] = lambda result: None) -> list[RunResult]:
    """The config's stages in order, each only if something it depends on changed; `each` sees every
    result as it comes (the CLI prints it at once).

    Every stage's params are checked before the first starts, and the class names later stages
    use as soon as the data's classes are known: a config that cannot succeed fails in seconds."""
    params = config.check(config.stages)
    store = open_store("ingest" in config.stages)
    first = load_stage(config.stages[0])
    if config.stages[0] != "ingest":  # its inputs exist already: their classes are known now
        graph = Graph.load(store)
        inputs = [graph.resolve(ref) for ref in first.input_refs(params[config.stages[0]]).values()]
        _check_known_classes(store, config, config.stages, inputs)
    results = []
    for position, name in enumerate(config.stages):
        result = runner.execute(store, load_stage(name), params[name], force=force, log=log, progress=progress)
        results.append(result)
        each(result)
        _check_known_classes(store, config, config.stages[position + 1:], result.outputs)
    return results


def _check_known_classes(store: Store, config: Config, stages: list[str], versions) -> None:
    """Check the later stages' class names against the first of these versions that has classes."""
    if not config.class_checkers(stages):
        return  # nothing later names classes: no manifest to read
    for version in versions:
        classes = store.read_manifest(version.key).meta.get("classes")
        if classes:
            config.check_classes(stages, classes, version.ref)
            return
