"""Execution and commit: run one stage through the cache.

`execute` plans the stage (lineage/plan.py), reuses a finished run with the same cache key whose
outputs are intact, or runs the stage with a StageContext (lineage/contract.py) and commits what
it returned: manifests, then the run record (the commit point), then the graph, under the lock.
Aliases are committed the same way, as runs of their own, so lineage.json stays derivable from
runs/ alone.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from lineage.contract import Artifact, Output, Stage, StageContext
from lineage.errors import UserError
from lineage.graph import Graph, Version, record_run
from lineage.inprogress import run_in_progress
from lineage.plan import Plan, cache_params, plan
from lineage.provenance import environment, new_run_id, now
from lineage.records import AliasRef, InputRef, OutputRef, RunRecord
from lineage.store import Store


@dataclass
class RunResult:
    stage: str
    outputs: list[Version]
    reused: bool
    run_id: str


def execute(store: Store, stage: Stage, params: Any, *, force: bool = False, aliases: list[str] = (),
            log: Callable[[str], None] = print, progress: bool = True) -> RunResult:
    """Run one stage through the cache: reuse a finished identical run, or run and commit it."""
    for alias in aliases:
        check_alias(alias)
    graph = Graph.load(store)
    the_plan = plan(graph, stage, params)
    if not force:
        reused = _reuse(store, graph, the_plan, aliases)
        if reused is not None:
            return reused

    from lineage.sync import fetch_missing_inputs  # inputs only on the store's default remote come down first

    fetch_missing_inputs(store, the_plan.inputs.values(), log)
    run_id = new_run_id()
    # From before the stage stages (or finds an object already present) until its record is committed,
    # the run holds its place in the store: gc cannot sweep what it is about to make live.
    with run_in_progress(store, run_id, stage.NAME, log):
        return _run_and_commit(store, stage, params, the_plan, graph, run_id, force, aliases, log, progress)


def _run_and_commit(store: Store, stage: Stage, params: Any, the_plan: Plan, graph: Graph, run_id: str,
                    force: bool, aliases: list[str], log: Callable[[str], None], progress: bool) -> RunResult:
    started = now()
    t0 = time.perf_counter()
    before = graph
    inputs = {name: Artifact.open(store, graph, v) for name, v in the_plan.inputs.items()}
    context = StageContext(store, stage.NAME, log, progress, force=force, source=the_plan.source)
    record = _run_record(run_id, the_plan, started)
    try:
        outputs = stage.run(inputs, params, context)
    except (UserError, KeyboardInterrupt) as error:
        record_failed_run(store, record, str(error) or type(error).__name__, t0)
        raise
    finally:  # what a stage staged into objects/ is already in place; its scratch files are not needed
        for folder in context.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    versions = commit_run(store, record, outputs, t0, aliases, before, log)
    return RunResult(stage.NAME, versions, reused=False, run_id=run_id)


def commit_run(store: Store, record: RunRecord, outputs: list[Output], t0: float, aliases: list[str] = (),
               before: Graph | None = None, log: Callable[[str], None] = print) -> list[Version]:
    """Commit a run whose outputs' objects are staged: manifests, then the run record (the commit point, which
    tells lineage/interrupts.py what it committed), then the graph, under the lock. The one commit path of the
    built-in stages and of runs logged from the user's own code (keras_lineage/logged_run.py); the caller
    holds the run's place in the store (`run_in_progress`) around it. `t0` is the run's perf_counter start."""
    for output in outputs:
        ref = store.write_manifest(output.manifest)
        # A version's size counts its manifest file too.
        size = output.manifest.content_size() + store.manifest_path(ref).stat().st_size
        record.outputs.append(OutputRef(ref.name, ref.digest, size, output.manifest.entry_count()))
        record.aliases += [AliasRef(ref.name, ref.digest, a) for a in output.aliases]
    record.aliases += [AliasRef(o.name, o.digest, a) for o in record.outputs for a in aliases]
    record.status, record.finished = "finished", now()
    record.duration_s = round(time.perf_counter() - t0, 3)
    graph = record_run(store, record)
    versions = [graph.find(o.name, o.digest) for o in record.outputs]
    for output, version in zip(outputs, versions):
        if before is not None and output.manifest.rows is not None:
            _note_new_manifest_form(store, before, version, log)
    return versions


def record_failed_run(store: Store, record: RunRecord, error: str, t0: float) -> None:
    """A run that stopped (a UserError, Ctrl-C, or a logged run's exception) is recorded as failed: no version
    becomes visible, and what it staged is garbage for gc."""
    record.status, record.finished = "failed", now()
    record.duration_s, record.error = round(time.perf_counter() - t0, 3), error
    record_run(store, record)


def _note_new_manifest_form(store: Store, before: Graph, version: Version, log: Callable[[str], None]) -> None:
    """The first version written with its rows in a columnar object after one with its rows inline (a store
    made by an earlier version of this code) has a new digest even for the same content: say so, once."""
    chain = before.versions.get(version.name, [])
    latest = next((v for v in chain if "latest" in v.aliases), None)
    if latest is None or latest.digest == version.digest:
        return
    try:
        with open(store.manifest_path(latest.key), "rb") as handle:  # canonical JSON: "entries" sorts first
            inline = handle.read(11) == b'{"entries":'
    except OSError:
        return
    if inline:
        log(f"note: {version.ref} keeps its rows in a columnar object, a manifest form newer than {latest.ref}'s, "
            f"so its digest differs from {latest.ref}'s even where the content is the same; nothing needs doing")


def _reuse(store: Store, graph: Graph, the_plan: Plan, aliases: list[str]) -> RunResult | None:
    """A finished run with the same key whose outputs are intact stands in for a new one."""
    found = graph.finished_run_with_key(the_plan.cache_key)
    if found is None:
        return None
    run_id, run = found
    versions = [graph.find(o.name, o.digest) for o in run.outputs]
    if any(v is None or not outputs_intact(store, v) for v in versions):
        return None
    stale = [v for v in versions if "latest" not in v.aliases or any(a not in v.aliases for a in aliases)]
    if stale:
        # Re-running an older configuration makes its versions `latest` again. Record that as a
        # (cheap) run of its own, so the graph stays derivable from runs/ alone.
        record = _run_record(new_run_id(), the_plan, now())
        record.status, record.finished, record.duration_s, record.reused_run = "finished", now(), 0.0, run_id
        record.outputs = [OutputRef(v.name, v.digest, v.size, v.count) for v in versions]
        record.aliases = [AliasRef(v.name, v.digest, a) for v in versions for a in aliases]
        graph = record_run(store, record)
        versions = [graph.find(v.name, v.digest) for v in versions]
    return RunResult(the_plan.stage.NAME, versions, reused=True, run_id=run_id)


ALIAS_MAX_CHARS = 100


def check_alias(alias: str) -> None:
    """`latest` and `vN` are the runner's; a colon or `@` would not resolve back; blank, control
    characters, edge whitespace or a page-long name would print as something other than what was typed."""
    shown = repr(alias[:40] + "…" if len(alias) > 40 else alias)
    why = None
    if not alias.strip():
        why = "is blank"
    elif len(alias) > ALIAS_MAX_CHARS:
        why = f"is {len(alias):,} characters long (at most {ALIAS_MAX_CHARS})"
    elif any(unicodedata.category(c)[0] == "C" for c in alias):
        why = "contains control or unprintable characters"
    elif alias != alias.strip():
        why = "starts or ends with whitespace"
    elif ":" in alias or "@" in alias:
        why = "contains ':' or '@', which separate a reference's parts"
    elif alias == "latest" or alias[0] == "v" and alias[1:].isdigit():
        why = "is reserved (latest and vN are set by the runner)"
    if why:
        raise UserError(f"alias {shown} {why}: pick a name like best or production "
                        f"(printable, no ':' or '@', at most {ALIAS_MAX_CHARS} characters)")


def set_alias(store: Store, version: Version, alias: str) -> None:
    """Name an existing version. Recorded as a run of its own, so lineage.json stays derivable
    from runs/ alone; the alias moves off whichever version had it."""
    check_alias(alias)
    stamp = now()
    record_run(store, RunRecord(new_run_id(), "alias", "finished", started=stamp, finished=stamp,
                                params={"alias": alias}, aliases=[AliasRef(version.name, version.digest, alias)],
                                **environment()))


def outputs_intact(store: Store, version: Version) -> bool:
    """The manifest and every object it names are present (not re-hashed: that is `verify`)."""
    if not store.manifest_path(version.key).exists():
        return False
    manifest = store.read_manifest(version.key)
    if store.missing_objects(manifest.inline_objects()):
        return False
    return store.rows_present(manifest)


def _run_record(run_id: str, the_plan: Plan, started: str) -> RunRecord:
    return RunRecord(
        id=run_id,
        stage=the_plan.stage.NAME,
        status="running",
        params=cache_params(the_plan.params),
        all_params=dataclasses.asdict(the_plan.params) if dataclasses.is_dataclass(the_plan.params) else None,
        cache_key=the_plan.cache_key,
        code_digest=the_plan.code_digest,
        source_fingerprint=the_plan.fingerprint,
        inputs=[InputRef(v.name, v.digest, v.ref) for v in the_plan.inputs.values()],
        started=started,
        **environment(),
    )

