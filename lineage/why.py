"""`pipeline.py why STAGE`: what would make a stage run now, against its last finished run."""

from __future__ import annotations

from typing import Any

from lineage.contract import Stage
from lineage.graph import Graph
from lineage.plan import cache_params, plan
from lineage.records import RunSummary
from lineage.store import Store


def last_run(graph: Graph, stage: str) -> tuple[str, RunSummary] | None:
    runs = [(rid, r) for rid, r in graph.runs_of_stage(stage) if r.status == "finished"]
    return max(runs, key=lambda item: (item[1].finished or "", item[0])) if runs else None


def explain(store: Store, graph: Graph, stage: Stage, params: Any) -> list[str]:
    """Why would `stage` run now? Compare what it would run on with its last run; [] if it would not."""
    found = last_run(graph, stage.NAME)
    if found is None:
        return [f"{stage.NAME} has never run in this store"]
    run_id, _ = found
    record = store.read_run(run_id)  # a damaged record is a UserError naming it and `lineage --rebuild`
    if record is None:
        return [f"{stage.NAME}'s last run {run_id} has no run record: run `pipeline.py lineage --rebuild`"]
    current = plan(graph, stage, params)
    if current.cache_key == record.cache_key:
        return []
    reasons = []
    if current.code_digest != record.code_digest:
        reasons.append(f"code changed: {', '.join(stage.CODE)} ({(record.code_digest or '')[:12]} → "
                       f"{current.code_digest[:12]})")
    old_params, new_params = record.params or {}, cache_params(params)
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key) != new_params.get(key):
            reasons.append(f"param {stage.NAME}.{key}: {old_params.get(key)!r} → {new_params.get(key)!r}")
    old_inputs = {i.name: i for i in record.inputs}
    for name, version in current.inputs.items():
        before = old_inputs.get(name)
        if before is None or before.digest != version.digest:
            was = graph.find(name, before.digest).ref if before and graph.find(name, before.digest) else "none"
            reasons.append(f"input {name}: {was} → {version.ref}")
    if current.fingerprint != record.source_fingerprint:
        reasons.append("source folder changed: files added, removed or modified since the last ingest")
    return reasons or [f"last run {run_id} differs in its cache key only (made by an older version of the runner)"]
