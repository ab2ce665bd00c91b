"""`verify` re-hashes everything and checks that manifests, runs and the graph agree;
`gc` (lineage/gc.py) removes what nothing references.

A problem is damage (a blob whose bytes no longer hash to its name, a manifest naming a
missing object, a graph that disagrees with runs/). Garbage is not damage: objects and
manifests left by an interrupted or failed run are unreferenced, invisible, and gc's job.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lineage.errors import UserError
from lineage.gc import object_files
from lineage.graph import Graph
from lineage.records import CorruptRecord, Manifest, RunRecord, VersionRef, is_digest, is_name, parse_json
from lineage.store import Store, read_no_follow, rerun_fix, sha256_file


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


def verify(store: Store, workers: int = 4) -> Report:
    """Check every object, manifest, run record and lineage.json; never raises on damage, it reports it."""
    report = Report()
    try:
        Graph.load(store)  # heals a graph that lags behind a committed run (a crash between the two writes)
    except UserError:
        pass  # a damaged run record: reported below, with its fix
    records = _check_runs(store, report)
    producers = {o.key: r.stage for r in records if r.status == "finished" for o in r.outputs}
    live = set(producers) | store.quarantined_versions()  # what gc keeps (lineage/gc.py live_versions)
    bad_objects = _check_objects(store, report, workers)
    readable = _check_manifests(store, report, records)
    live_rows, rows_unread = _check_rows(store, report, records, readable, bad_objects, live)
    _name_object_fixes(store, report, bad_objects, readable, producers)
    _check_run_references(store, report, records, readable, producers)
    if len(records) == report.checked_runs:
        _check_graph(store, report)
    report.garbage_manifests = len(set(readable) - live)
    # While a live manifest is unreadable, which objects it needs is unknown: none is counted as garbage.
    unknown = any(key not in readable or key in rows_unread for key in live)
    report.garbage_objects = 0 if unknown else len(_unreferenced(store, readable, live, live_rows))
    report.staging_leftovers = sum(1 for _ in store.tmp_dir.iterdir()) if store.tmp_dir.exists() else 0
    return report


def _check_runs(store: Store, report: Report) -> list[RunRecord]:
    records, damaged = store.scan_runs()
    for path, why in damaged:
        report.add("runs", path, f"run record {path} is damaged ({why})",
                   "`pipeline.py lineage --rebuild` moves it to quarantine/runs/ and keeps the versions it made")
    report.checked_runs = len(records) + len(damaged)
    return records


def _check_objects(store: Store, report: Report, workers: int) -> dict[str, tuple[Path, str]]:
    """Re-hash every object; returns digest → (path, what is wrong) for the damaged ones. One task per
    two-digit folder, each listing and hashing its own: memory holds a folder's listing per thread, never a
    future or a path per object (a million of those cost gigabytes)."""
    bad: dict[str, tuple[Path, str]] = {}
    folders = []
    for prefix in _entries(store.objects_dir):
        if not prefix.is_dir(follow_symlinks=False):
            report.add("objects", Path(prefix.path), f"{prefix.path} is not an object folder",
                       "`pipeline.py verify --repair` moves it to quarantine/")
            continue
        folders.append((prefix.name, prefix.path))

    def check_folder(folder: tuple[str, str]) -> tuple[list[str], list[tuple[str, str, str]], int]:
        prefix, path = folder
        strays, damaged, count = [], [], 0
        for entry in _entries(path):
            name = prefix + entry.name
            if not is_digest(name):
                strays.append(entry.path)
                continue
            count += 1
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                damaged.append((name, entry.path, "a symlink or folder, not a file: the store never makes one"))
                continue
            try:
                actual = sha256_file(entry.path)
            except OSError as error:
                damaged.append((name, entry.path, f"unreadable: {error.strerror}"))
                continue
            if actual != name:
                damaged.append((name, entry.path, f"its bytes hash to {actual[:12]}"))
        return strays, damaged, count

    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL: threads hash in parallel
        for strays, damaged, count in pool.map(check_folder, folders):
            for path in strays:
                report.add("objects", Path(path), f"{path} is not an object (its name is no digest)",
                           "`pipeline.py verify --repair` moves it to quarantine/")
            bad.update((name, (Path(path), why)) for name, path, why in damaged)
            report.checked_objects += count
    return bad


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


def _check_rows(store: Store, report: Report, records: list[RunRecord], readable: dict[VersionRef, Manifest],
                bad: dict[str, tuple[Path, str]], live: set[VersionRef]) -> tuple[set[str], set[VersionRef]]:
    """Every object a readable manifest names must be present, and a rows object must hold the rows whose
    stream digest the manifest (so the version's name) holds: a manifest edited to name another valid
    Parquet object keeps its digest, as the object's name is not part of it. Returns the object digests
    live versions' rows name (one set: a split names raw-data's images again), and the versions whose rows
    could not be read."""
    live_rows: set[str] = set()
    unread: set[VersionRef] = set()
    for ref, manifest in readable.items():
        named = manifest.inline_objects()
        rows = manifest.rows
        if rows is not None:
            unread.add(ref)
        if rows is not None and rows.object not in bad and not store.missing_objects([rows.object]):
            why = store.rows_problem(manifest)
            if why is None:
                unread.discard(ref)
                digests = store.row_digests(manifest)
                if ref in live:
                    live_rows.update(digests)
                named = named + digests
                del digests
            else:
                path = store.manifest_path(ref)
                report.add("manifests", path, f"manifest {path} names rows object {rows.object[:12]}, which does "
                           f"not hold its rows ({why})", store.manifest_fix(ref, records))
        elif rows is None:
            named = store.referenced_objects(manifest)
        missing = store.missing_objects(named)
        if missing:
            report.problems.append(f"manifest {ref.short} references {len(missing)} missing object(s), "
                                   f"first {missing[0][:12]}: {store.manifest_fix(ref, records)}")
    return live_rows, unread


def _name_object_fixes(store: Store, report: Report, bad: dict[str, tuple[Path, str]],
                       readable: dict[VersionRef, Manifest], producers: dict[VersionRef, str]) -> None:
    """Each damaged object, with the stage that rewrites it: the one whose version holds it as an entry
    or file (a split only refers to raw-data's images; re-running split writes none of them)."""
    owners: dict[str, set[str]] = {}
    for key, manifest in readable.items():
        owned = manifest.owned_objects()
        if bad and manifest.rows is not None and manifest.owns_rows and manifest.rows.object not in bad:
            try:
                owned = store.owned_objects(manifest)
            except UserError:  # a rows object that cannot be read is reported on its own
                pass
        for digest in owned:
            if digest in bad and key in producers:
                owners.setdefault(digest, set()).add(producers[key])
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


def _unreferenced(store: Store, readable: dict[VersionRef, Manifest], live: set[VersionRef],
                  live_rows: set[str]) -> list[str]:
    referenced = {d for key in live if key in readable for d in readable[key].inline_objects()}
    return [digest for digest, _ in object_files(store) if digest not in referenced and digest not in live_rows]


def _entries(folder: str | Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
