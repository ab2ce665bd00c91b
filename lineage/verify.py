"""`verify` re-hashes everything and checks that manifests, runs and the graph agree;
`gc` finds what nothing references.

A problem is damage (a blob whose bytes no longer hash to its name, a manifest naming a
missing object, a graph that disagrees with runs/). Garbage is not damage: objects and
manifests left by an interrupted or failed run are unreferenced, invisible, and gc's job.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lineage.graph import Graph
from lineage.runner import referenced_objects
from lineage.store import Store, sha256_bytes, sha256_file


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked_objects: int = 0
    checked_manifests: int = 0
    checked_runs: int = 0
    garbage_objects: int = 0
    garbage_manifests: int = 0
    staging_leftovers: int = 0


def verify(store: Store, workers: int = 4) -> Report:
    report = Report()
    Graph.load(store)  # heals a graph that lags behind a committed run (a crash between the two writes)
    _check_objects(store, report, workers)
    live = _check_manifests_and_runs(store, report)
    _check_graph(store, report)
    all_manifests = set(store.list_manifests())
    report.garbage_manifests = len(all_manifests - live)
    report.garbage_objects = len(unreferenced_objects(store, live))
    report.staging_leftovers = sum(1 for _ in store.tmp_dir.iterdir()) if store.tmp_dir.exists() else 0
    return report


def _check_objects(store: Store, report: Report, workers: int) -> None:
    paths = list(_object_files(store))

    def check(path: Path) -> str | None:
        expected = path.parent.name + path.name
        actual = sha256_file(path)
        return None if actual == expected else f"object {expected[:12]} is corrupt: its bytes hash to {actual[:12]}"

    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL: threads hash in parallel
        report.problems += [p for p in pool.map(check, paths) if p]
    report.checked_objects = len(paths)


def _check_manifests_and_runs(store: Store, report: Report) -> set[tuple[str, str]]:
    """Check every manifest and run record; return the manifests that finished runs made (live)."""
    readable: dict[tuple[str, str], dict] = {}
    for name, digest in store.list_manifests():
        data = store.manifest_path(name, digest).read_bytes()
        report.checked_manifests += 1
        if sha256_bytes(data) != digest:
            report.problems.append(f"manifest {name}@{digest[:12]} is corrupt: its bytes no longer hash to its name")
            continue
        manifest = json.loads(data)
        readable[(name, digest)] = manifest
        missing = store.missing_objects(referenced_objects(manifest))
        if missing:
            report.problems.append(f"manifest {name}@{digest[:12]} references {len(missing)} missing object(s), "
                                   f"first {missing[0][:12]}: re-run the stage that made it with --force")
    live = set()
    for record in store.read_runs():
        report.checked_runs += 1
        if record.get("status") != "finished":
            continue
        for item in record.get("inputs", []) + record.get("outputs", []):
            key = (item["name"], item["digest"])
            if key not in readable and not store.manifest_path(*key).exists():
                report.problems.append(f"run {record['id']} ({record['stage']}) names {key[0]}@{key[1][:12]}, "
                                       "whose manifest is missing")
        live.update((o["name"], o["digest"]) for o in record.get("outputs", []))
    return live


def _check_graph(store: Store, report: Report) -> None:
    expected = Graph.rebuild(store).to_json()
    try:
        actual = json.loads(store.graph_path.read_bytes())
    except FileNotFoundError:
        if expected["runs"]:
            report.problems.append("lineage.json is missing: run `pipeline.py lineage --rebuild`")
        return
    except json.JSONDecodeError:
        report.problems.append("lineage.json is corrupt: run `pipeline.py lineage --rebuild`")
        return
    if actual != expected:
        report.problems.append("lineage.json disagrees with runs/ and manifests/: run `pipeline.py lineage --rebuild`")


def live_versions(store: Store) -> set[tuple[str, str]]:
    """The (name, digest) of every version a finished run made: what gc must keep."""
    return {(o["name"], o["digest"]) for r in store.read_runs() if r.get("status") == "finished"
            for o in r.get("outputs", [])}


def unreferenced_objects(store: Store, live: set[tuple[str, str]] | None = None) -> list[str]:
    """Objects that no live manifest (one a finished run made) refers to."""
    if live is None:
        live = live_versions(store)
    referenced: set[str] = set()
    for name, digest in live:
        path = store.manifest_path(name, digest)
        if path.exists():
            referenced.update(referenced_objects(json.loads(path.read_bytes())))
    return [p.parent.name + p.name for p in _object_files(store) if p.parent.name + p.name not in referenced]


def collect_garbage(store: Store, delete: bool, grace_seconds: float) -> dict:
    """List (and with delete=True remove) unreferenced objects, orphan manifests and staging files
    older than the grace period, which protects a run that is staging its outputs right now."""
    cutoff = time.time() - grace_seconds
    with store.locked():
        live = live_versions(store)
        objects = [store.object_path(d) for d in unreferenced_objects(store, live)]
        manifests = [store.manifest_path(n, d) for n, d in set(store.list_manifests()) - live]
        staging = list(store.tmp_dir.iterdir()) if store.tmp_dir.exists() else []
        doomed = [p for p in objects + manifests + staging if _mtime(p) < cutoff]
        freed = sum(_size(p) for p in doomed)
        if delete:
            for path in doomed:
                _remove(path)
    return {"objects": [p for p in doomed if p in objects], "manifests": [p for p in doomed if p in manifests],
            "staging": [p for p in doomed if p in staging], "bytes": freed, "deleted": delete}


def _object_files(store: Store):
    if not store.objects_dir.exists():
        return
    for prefix in sorted(os.scandir(store.objects_dir), key=lambda e: e.name):
        if prefix.is_dir():
            for entry in sorted(os.scandir(prefix.path), key=lambda e: e.name):
                yield Path(entry.path)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
