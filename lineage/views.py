"""What `ls`, `show`, `lineage` and `why` print: views of the graph as text, JSON, DOT or Mermaid."""

from __future__ import annotations

import json
from typing import Any

from lineage.display import format_counts, human_size
from lineage.graph import Graph, Version
from lineage.records import SPLIT_NAMES, RunRecord, VersionRef
from lineage.store import Store


def list_versions(graph: Graph, name: str | None) -> list[dict]:
    chains = {name: graph.versions.get(name, [])} if name else graph.versions
    return [{"ref": v.ref, "name": v.name, "version": v.v, "digest": v.digest, "aliases": v.aliases,
             "size": v.size, "count": v.count, "created": v.created, "run": v.run}
            for _, chain in sorted(chains.items()) for v in chain]


def format_ls(rows: list[dict]) -> str:
    if not rows:
        return "no artifacts yet: run `pipeline.py ingest FOLDER` or `make demo`"
    lines = [f"{'version':<18}{'digest':<14}{'entries':>9}{'size':>11}  {'created':<20}aliases"]
    for row in rows:
        created = (row["created"] or "")[:19].replace("T", " ")
        lines.append(f"{row['ref']:<18}{row['digest'][:12]:<14}{row['count']:>9,}{human_size(row['size']):>11}  "
                     f"{created:<20}{', '.join(row['aliases'])}")
    return "\n".join(lines)


def describe_version(store: Store, graph: Graph, version: Version) -> dict:
    """Everything `show` says about one version, as data."""
    manifest = store.read_manifest(version.key)
    run = graph.producer(version)
    record = _read_run(store, version.run)
    meta = manifest.meta
    summary: dict[str, Any] = {
        "ref": version.ref, "digest": version.digest, "aliases": version.aliases, "size": version.size,
        "entries": version.count, "created": version.created,
        "made_by": {"run": version.run, "stage": run and run.stage,
                    "inputs": [_ref(graph, i) for i in run.inputs] if run else [],
                    "params": record.all_params if record else None,
                    "code_digest": record.code_digest if record else None,
                    "git": record.git if record else None},
        "used_by": [{"run": rid, "stage": r.stage, "outputs": [_ref(graph, o) for o in r.outputs]}
                    for rid, r in graph.consumers(version)],
        "meta": {k: v for k, v in meta.items() if k not in ("rejected", "duplicates")},
        "files": {name: item.to_json() for name, item in manifest.files.items()},
    }
    if "rejected" in meta:
        summary["rejected"] = meta["rejected"]
    if manifest.source:
        summary["source"] = _ref(graph, manifest.source)
    return summary


def format_show(summary: dict) -> str:
    try:
        return _format_show(summary)
    except (KeyError, TypeError, ValueError, AttributeError):  # metadata a hand-made record mistyped
        return (f"{summary['ref']}: its manifest or run record holds metadata of unexpected types, shown raw:\n"
                + json.dumps(summary, indent=1, default=str))


def _format_show(summary: dict) -> str:
    made = summary["made_by"]
    lines = [f"{summary['ref']}  ({', '.join(summary['aliases']) or 'no aliases'})",
             f"  digest   {summary['digest']}",
             f"  created  {summary['created']}",
             f"  size     {human_size(summary['size'])}, {summary['entries']:,} entries",
             f"  made by  {made['stage']} run {made['run']}" + (f" from {', '.join(made['inputs'])}"
                                                                 if made["inputs"] else "")]
    if summary.get("source"):
        lines.append(f"  source   {summary['source']}")
    if made.get("git"):
        lines.append(f"  code     {made['code_digest'][:12]} at git {made['git']['commit'][:12]}"
                     + (" (uncommitted changes)" if made["git"]["dirty"] else ""))
    for use in summary["used_by"]:
        lines.append(f"  used by  {use['stage']} run {use['run']} → {', '.join(use['outputs'])}")
    meta = summary["meta"]
    if "counts" in meta:  # a split: columns in train, val, test order (the manifest's keys are sorted)
        order = sorted(meta["counts"], key=lambda n: SPLIT_NAMES.index(n) if n in SPLIT_NAMES else len(SPLIT_NAMES))
        lines += ["", format_counts({n: meta["counts"][n] for n in order}, meta["classes"])]
    elif "class_counts" in meta:
        lines += ["", format_counts({"images": meta["class_counts"]}, meta["classes"])]
    for name, item in summary["files"].items():
        lines.append(f"  file     {name}  {human_size(item['size'])}  {item['digest'][:12]}")
    for key in ("metrics", "best"):
        if key in meta:
            lines.append(f"  {key:<8} " + ", ".join(f"{k} {_fmt(v)}" for k, v in meta[key].items()
                                                   if not isinstance(v, (dict, list))))
    rejected = summary.get("rejected") or []
    if rejected:
        lines.append(f"\n  {len(rejected)} rejected:")
        lines += [f"    {r['path']}: {r['reason']}" for r in rejected[:50]]
        if len(rejected) > 50:
            lines.append(f"    … {len(rejected) - 50} more (--json lists all)")
    return "\n".join(lines)


def lineage_tree(graph: Graph, version: Version) -> str:
    """Ancestors above the version, descendants below, each through the run that links them."""
    lines = [f"{version.ref}  {version.digest[:12]}", "  ancestors:"]
    lines += _walk(graph, version, upward=True, depth=2, seen=set()) or ["    (none)"]
    lines.append("  descendants:")
    lines += _walk(graph, version, upward=False, depth=2, seen=set()) or ["    (none)"]
    return "\n".join(lines)


def _walk(graph: Graph, version: Version, upward: bool, depth: int, seen: set) -> list[str]:
    lines = []
    if upward:
        links = [(version.run, graph.producer(version))] if graph.producer(version) else []
    else:
        links = graph.consumers(version)
    for run_id, run in links:
        if run_id in seen:
            continue
        seen.add(run_id)
        neighbours = run.inputs if upward else run.outputs
        pad = "  " * depth
        lines.append(f"{pad}{'↑' if upward else '↓'} {run.stage} (run {run_id})")
        for item in neighbours:
            neighbour = graph.find(item.name, item.digest)
            if neighbour is None:
                continue
            lines.append(f"{pad}  {neighbour.ref}  {neighbour.digest[:12]}")
            lines += _walk(graph, neighbour, upward, depth + 2, seen)
    return lines


def export_graph(graph: Graph, fmt: str) -> str:
    nodes = {f"{v.name}@{v.digest}": v.ref for v in graph.all_versions()}
    edges = [e for e in graph.edges() if e[0] in nodes or e[1] in nodes]
    linked = {node for edge in edges for node in edge}  # alias runs touch no version: left out
    runs = {f"run:{rid}": f"{r.stage} {rid}" for rid, r in graph.runs.items() if f"run:{rid}" in linked}
    if fmt == "json":
        return json.dumps(graph.to_json(), indent=1)
    ids = {key: f"n{i}" for i, key in enumerate(list(nodes) + list(runs))}
    if fmt == "dot":
        out = ["digraph lineage {", "  rankdir=LR;"]
        out += [f'  {ids[k]} [label="{label}", shape=box];' for k, label in nodes.items()]
        out += [f'  {ids[k]} [label="{label}", shape=ellipse];' for k, label in runs.items()]
        out += [f"  {ids[a]} -> {ids[b]};" for a, b in edges if a in ids and b in ids]
        return "\n".join(out + ["}"])
    out = ["flowchart LR"]
    out += [f'  {ids[k]}["{label}"]' for k, label in nodes.items()]
    out += [f'  {ids[k]}(["{label}"])' for k, label in runs.items()]
    out += [f"  {ids[a]} --> {ids[b]}" for a, b in edges if a in ids and b in ids]
    return "\n".join(out)


def _ref(graph: Graph, item: VersionRef) -> str:
    version = graph.find(item.name, item.digest)
    return version.ref if version else item.short


def _read_run(store: Store, run_id: str | None) -> RunRecord | None:
    """The run record that made a version; a damaged one is a UserError naming it and its fix."""
    return store.read_run(run_id) if run_id else None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
