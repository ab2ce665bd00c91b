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

from lineage.contract import Artifact, Stage, StageContext
from lineage.errors import UserError
from lineage.graph import Graph, Version, record_run
from lineage.inprogress import run_in_progress
from lineage.plan import Plan, cache_params, plan
from lineage.provenance import environment, new_run_id, now
from lineage.records import referenced_objects
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

    run_id = new_run_id()
    # From before the stage stages (or finds an object already present) until its record is committed,
    # the run holds its place in the store: gc cannot sweep what it is about to make live.
    with run_in_progress(store, run_id, stage.NAME, log):
        return _run_and_commit(store, stage, params, the_plan, graph, run_id, force, aliases, log, progress)


def _run_and_commit(store: Store, stage: Stage, params: Any, the_plan: Plan, graph: Graph, run_id: str,
                    force: bool, aliases: list[str], log: Callable[[str], None], progress: bool) -> RunResult:
    started = now()
    t0 = time.perf_counter()
    inputs = {name: Artifact.open(store, graph, v) for name, v in the_plan.inputs.items()}
    context = StageContext(store, stage.NAME, log, progress, force=force)
    record = _run_record(run_id, the_plan, started)
    try:
        outputs = stage.run(inputs, params, context)
    except (UserError, KeyboardInterrupt) as error:
        record.update(status="failed", finished=now(), duration_s=round(time.perf_counter() - t0, 3),
                      error=str(error) or type(error).__name__)
        record_run(store, record)
        raise
    finally:  # what a stage staged into objects/ is already in place; its scratch files are not needed
        for folder in context.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    written = []
    for output in outputs:
        manifest = {"name": output.name, **output.body}
        digest = store.put_manifest(manifest)
        written.append({"name": output.name, "digest": digest, "size": _version_size(store, manifest, digest),
                        "count": _entry_count(manifest)})
        record["aliases"] += [{"name": output.name, "digest": digest, "alias": a} for a in output.aliases]
    record["aliases"] += [{"name": o["name"], "digest": o["digest"], "alias": a} for o in written for a in aliases]
    record.update(status="finished", outputs=written, finished=now(),
                  duration_s=round(time.perf_counter() - t0, 3))
    try:
        graph = record_run(store, record)
    except BaseException as error:  # Ctrl-C or a full disk: the CLI must say whether the run record made it
        if store.run_path(run_id).exists():
            error.committed_refs = [f"{o['name']}@{o['digest'][:12]}" for o in written]
        raise
    versions = [graph.find(o["name"], o["digest"]) for o in written]
    return RunResult(stage.NAME, versions, reused=False, run_id=run_id)


def _reuse(store: Store, graph: Graph, the_plan: Plan, aliases: list[str]) -> RunResult | None:
    """A finished run with the same key whose outputs are intact stands in for a new one."""
    found = graph.finished_run_with_key(the_plan.cache_key)
    if found is None:
        return None
    run_id, run = found
    versions = [graph.find(o["name"], o["digest"]) for o in run["outputs"]]
    if any(v is None or not outputs_intact(store, v) for v in versions):
        return None
    stale = [v for v in versions if "latest" not in v.aliases or any(a not in v.aliases for a in aliases)]
    if stale:
        # Re-running an older configuration makes its versions `latest` again. Record that as a
        # (cheap) run of its own, so the graph stays derivable from runs/ alone.
        record = _run_record(new_run_id(), the_plan, now())
        record.update(status="finished", finished=now(), duration_s=0.0, reused_run=run_id,
                      outputs=[{"name": v.name, "digest": v.digest, "size": v.size, "count": v.count}
                               for v in versions],
                      aliases=[{"name": v.name, "digest": v.digest, "alias": a} for v in versions for a in aliases])
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
    record_run(store, {"id": new_run_id(), "stage": "alias", "status": "finished", "started": stamp,
                       "finished": stamp, "params": {"alias": alias}, "cache_key": None, "inputs": [],
                       "outputs": [], "aliases": [{"name": version.name, "digest": version.digest, "alias": alias}],
                       **environment()})


def outputs_intact(store: Store, version: Version) -> bool:
    """The manifest and every object it names are present (not re-hashed: that is `verify`)."""
    path = store.manifest_path(version.name, version.digest)
    if not path.exists():
        return False
    manifest = store.read_manifest(version.name, version.digest)
    return not store.missing_objects(referenced_objects(manifest))


def _run_record(run_id: str, the_plan: Plan, started: str) -> dict:
    return {
        "id": run_id,
        "stage": the_plan.stage.NAME,
        "status": "running",
        "params": cache_params(the_plan.params),
        "all_params": dataclasses.asdict(the_plan.params) if dataclasses.is_dataclass(the_plan.params) else None,
        "cache_key": the_plan.cache_key,
        "code_digest": the_plan.code_digest,
        "source_fingerprint": the_plan.fingerprint,
        "inputs": [{"name": v.name, "ref": v.ref, "digest": v.digest} for v in the_plan.inputs.values()],
        "outputs": [],
        "aliases": [],
        "started": started,
        **environment(),
    }


def _version_size(store: Store, manifest: dict, digest: str) -> int:
    entries = manifest.get("entries", [])
    entry_bytes = sum(e.get("size", 0) for e in entries) if isinstance(entries, list) else 0
    file_bytes = sum(f.get("size", 0) for f in manifest.get("files", {}).values())
    return entry_bytes + file_bytes + store.manifest_path(manifest["name"], digest).stat().st_size


def _entry_count(manifest: dict) -> int:
    entries = manifest.get("entries", [])
    if isinstance(entries, dict):
        return sum(len(chunk) for per_class in entries.values() for chunk in per_class.values())
    return len(entries) or len(manifest.get("files", {}))
