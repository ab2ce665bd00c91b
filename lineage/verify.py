"""`verify` re-hashes everything and checks that manifests, runs and the graph agree;
`gc` (lineage/gc.py) removes what nothing references.

A problem is damage (a blob whose bytes no longer hash to its name, a manifest naming a
missing object, a graph that disagrees with runs/). Garbage is not damage: objects and
manifests left by an interrupted or failed run are unreferenced, invisible, and gc's job.

At a million objects: the re-hash runs in worker processes (lineage/rehash.py) while this process
checks manifests and rows, and which objects are present or referenced is kept packed
(lineage/digestset.py), rows digests taken batch by batch from the one read that checks them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lineage.digestset import DigestSet, empty, pack_strings, unpack
from lineage.errors import UserError
from lineage.gc import object_intact
from lineage.graph import Graph
from lineage.records import CorruptRecord, Manifest, RunRecord, VersionRef, is_digest, is_name, parse_json
from lineage.rehash import Rehash
from lineage.rows import packed_digests
from lineage.store import Store, read_no_follow, rerun_fix


@dataclass
class Damage:
    """One damaged file: `verify --repair` moves it to quarantine/<kind>/ and `fix` rewrites it."""

    kind: str  # objects, manifests or runs
    path: Path
    fix: str


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    checked_objects: int = 0
    checked_manifests: int = 0
    checked_runs: int = 0
    garbage_objects: int = 0
    garbage_manifests: int = 0
    staging_leftovers: int = 0
    graph_damaged: bool = False

    def add(self, kind: str, path: Path, what: str, fix: str) -> None:
        self.problems.append(f"{what}: {fix}")
        self.damaged.append(Damage(kind, path, fix))


def verify(store: Store, workers: int | None = None) -> Report:
    """Check every object, manifest, run record and lineage.json; never raises on damage, it reports it.
    Objects are re-hashed in `workers` processes (default: one per core) while this one checks the rest."""
    report = Report()
    try:
        Graph.load(store)  # heals a graph that lags behind a committed run (a crash between the two writes)
    except UserError:
        pass  # a damaged run record: reported below, with its fix
    records = _check_runs(store, report)
    producers = {o.key: r.stage for r in records if r.status == "finished" for o in r.outputs}
    live = set(producers) | store.quarantined_versions()  # what gc keeps (lineage/gc.py live_versions)
    with Rehash(_object_folders(store, report), workers or os.cpu_count() or 1) as rehash:
        readable = _check_manifests(store, report, records)
        rows_named = _read_rows(store, report, records, readable)
        bad, present = _object_results(report, rehash.results())
    _check_references(store, report, records, readable, rows_named, present)
    _name_object_fixes(store, report, bad, readable, rows_named, producers)
    _check_run_references(store, report, records, readable, producers)
    if len(records) == report.checked_runs:
        _check_graph(store, report)
    report.garbage_manifests = len(set(readable) - live)
    # While a live manifest is unreadable, which objects it needs is unknown: none is counted as garbage.
    unknown = any(key not in readable or (readable[key].rows is not None and key not in rows_named) for key in live)
    report.garbage_objects = 0 if unknown else _unreferenced(readable, live, rows_named, present)
    report.staging_leftovers = sum(1 for _ in store.tmp_dir.iterdir()) if store.tmp_dir.exists() else 0
    return report


def _check_runs(store: Store, report: Report) -> list[RunRecord]:
    records, damaged = store.scan_runs()
    for path, why in damaged:
        report.add("runs", path, f"run record {path} is damaged ({why})",
                   "`pipeline.py lineage --rebuild` moves it to quarantine/runs/ and keeps the versions it made")
    report.checked_runs = len(records) + len(damaged)
    return records


def _object_folders(store: Store, report: Report) -> list[tuple[str, str]]:
    """(prefix, path) of every two-digit object folder; anything else there is reported."""
    folders = []
    for prefix in _entries(store.objects_dir):
        if not prefix.is_dir(follow_symlinks=False):
            report.add("objects", Path(prefix.path), f"{prefix.path} is not an object folder",
                       "`pipeline.py verify --repair` moves it to quarantine/")
            continue
        folders.append((prefix.name, prefix.path))
    return folders


def _object_results(report: Report, results: list[dict]) -> tuple[dict[str, tuple[Path, str]], DigestSet]:
    """The re-hash's findings: digest → (path, what is wrong) for the damaged objects, and every object
    present (packed: 40 bytes each, where a set of str costs several times that)."""
    bad: dict[str, tuple[Path, str]] = {}
    for result in results:
        for path in result["strays"]:
            report.add("objects", Path(path), f"{path} is not an object (its name is no digest)",
                       "`pipeline.py verify --repair` moves it to quarantine/")
        bad.update((name, (Path(path), why)) for name, path, why in result["damaged"])
        report.checked_objects += result["count"]
    return bad, DigestSet(result["names"] for result in results)


def _check_manifests(store: Store, report: Report, records: list[RunRecord]) -> dict[VersionRef, Manifest]:
    """Check every file under manifests/; returns the readable manifests by (name, digest)."""
    readable = {}
    for folder in _entries(store.manifests_dir):
        if not folder.is_dir(follow_symlinks=False) or not is_name(folder.name):
            report.add("manifests", Path(folder.path), f"{folder.path} is not a manifest folder",
                       "`pipeline.py verify --repair` moves it to quarantine/")
            continue
        for entry in _entries(folder.path):
            path, digest = Path(entry.path), entry.name.removesuffix(".json")
            ref = VersionRef(folder.name, digest)
            report.checked_manifests += 1
            if not entry.name.endswith(".json") or not is_digest(digest):
                report.add("manifests", path, f"{path} is not a manifest (its name is no digest)",
                           "`pipeline.py verify --repair` moves it to quarantine/")
                continue
            try:
                if entry.is_symlink():
                    raise CorruptRecord("a symlink: the store never makes one")
                readable[ref] = store.read_manifest_or_corrupt(ref)
            except (CorruptRecord, FileNotFoundError) as why:
                report.add("manifests", path, f"manifest {path} is corrupt ({why})", store.manifest_fix(ref, records))
    return readable


def _read_rows(store: Store, report: Report, records: list[RunRecord],
               readable: dict[VersionRef, Manifest]) -> dict[VersionRef, np.ndarray]:
    """Each rows object must hold the rows whose stream digest the manifest (so the version's name) holds: a
    manifest edited to name another valid Parquet object keeps its digest, as the object's name is not part
    of it. Returns, packed, the object digests the rows of each version name whose rows could be read. A
    rows object that is missing or does not hash to its name is left to the re-hash, which reports it."""
    named = {}
    for ref, manifest in readable.items():
        rows = manifest.rows
        if rows is None or not object_intact(store, rows.object):
            continue
        digests = []  # packed batch by batch as the check reads them: one read, bounded memory
        why = store.rows_problem(manifest, lambda batch: digests.append(packed_digests(batch.column("digest"))))
        if why is not None:
            path = store.manifest_path(ref)
            report.add("manifests", path, f"manifest {path} names rows object {rows.object[:12]}, which does "
                       f"not hold its rows ({why})", store.manifest_fix(ref, records))
            continue
        named[ref] = np.concatenate(digests) if digests else empty()
    return named


def _check_references(store: Store, report: Report, records: list[RunRecord], readable: dict[VersionRef, Manifest],
                      rows_named: dict[VersionRef, np.ndarray], present: DigestSet) -> None:
    """Every object a readable manifest names must be present (the rows' objects only if its rows could
    be read)."""
    for ref, manifest in readable.items():
        count, first = 0, None
        for named in (_packed_inline(manifest.inline_objects()), rows_named.get(ref, empty())):
            missing = ~present.contains(named)
            count += int(missing.sum())
            if first is None and missing.any():
                first = unpack(named[missing.argmax()])
        if count:
            report.problems.append(f"manifest {ref.short} references {count} missing object(s), "
                                   f"first {first[:12]}: {store.manifest_fix(ref, records)}")


def _name_object_fixes(store: Store, report: Report, bad: dict[str, tuple[Path, str]],
                       readable: dict[VersionRef, Manifest], rows_named: dict[VersionRef, np.ndarray],
                       producers: dict[VersionRef, str]) -> None:
    """Each damaged object, with the stage that rewrites it: the one whose version holds it as an entry
    or file (a split only refers to raw-data's images; re-running split writes none of them)."""
    owners: dict[str, set[str]] = {}
    damaged = DigestSet([pack_strings(bad)])
    for key, manifest in readable.items():
        if not bad or key not in producers:
            continue
        owned = _packed_inline(manifest.owned_objects())
        if manifest.owns_rows and key in rows_named:
            owned = np.concatenate([owned, rows_named[key]])
        for row in owned[damaged.contains(owned)]:
            owners.setdefault(unpack(row), set()).add(producers[key])
    for digest, (path, why) in sorted(bad.items()):
        stages = sorted(owners.get(digest, ()))
        if stages:
            fix = " or ".join(f"`pipeline.py {s} --force`" for s in stages)
            fix = f"re-run {fix} with the config that made it to rewrite it (or `pipeline.py verify --repair` " \
                  "moves it to quarantine/ first)"
        else:
            fix = "no version needs it: `pipeline.py verify --repair` moves it to quarantine/"
        report.add("objects", path, f"object {digest[:12]} is corrupt ({why}), at {path}", fix)


def _check_run_references(store: Store, report: Report, records: list[RunRecord],
                          readable: dict[VersionRef, Manifest], producers: dict[VersionRef, str]) -> None:
    for record in records:
        if record.status != "finished":
            continue
        for key in [i.key for i in record.inputs] + [o.key for o in record.outputs]:
            if key in readable:
                continue
            path = store.manifest_path(key)
            if not path.exists() and not path.is_symlink():
                stage = producers.get(key)
                fix = rerun_fix(stage) if stage else "no run record names the stage that made it"
                report.problems.append(f"run {record.id} ({record.stage}) names {key.short}, "
                                       f"whose manifest is missing: {fix}")


def _check_graph(store: Store, report: Report) -> None:
    rebuilt = Graph.rebuild(store)
    expected = rebuilt.to_json()
    fix = "`pipeline.py lineage --rebuild` rewrites it"
    try:
        actual = parse_json(read_no_follow(store.graph_path))
    except FileNotFoundError:
        if rebuilt.runs:
            report.problems.append(f"lineage.json is missing: {fix}")
            report.graph_damaged = True
        return
    except (OSError, CorruptRecord) as why:
        report.problems.append(f"lineage.json is damaged ({why}): {fix}")
        report.graph_damaged = True
        return
    if actual != expected:
        report.problems.append(f"lineage.json disagrees with runs/: {fix}")
        report.graph_damaged = True


def _unreferenced(readable: dict[VersionRef, Manifest], live: set[VersionRef],
                  rows_named: dict[VersionRef, np.ndarray], present: DigestSet) -> int:
    """How many objects present no live version names: each present object a live version names is marked
    (one flag per object; no second set of a million digests is built)."""
    named = np.zeros(len(present), dtype=bool)
    inline = [d for key in live if key in readable for d in readable[key].inline_objects()]
    for part in [_packed_inline(inline)] + [rows_named[key] for key in live if key in rows_named]:
        found = present.locate(part)
        named[found[found >= 0]] = True
    return int((~named).sum())


def _packed_inline(digests: list[str]) -> np.ndarray:
    """A manifest's own digests, packed (records.py checked them when it was read)."""
    return pack_strings(d for d in digests if is_digest(d))


def _entries(folder: str | Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
