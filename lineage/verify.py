"""`verify` re-hashes everything and checks that manifests, runs and the graph agree;
`gc` (lineage/gc.py) removes what nothing references.

A problem is damage (a blob whose bytes no longer hash to its name, a manifest naming a
missing object, a graph that disagrees with runs/). Garbage is not damage: objects and
manifests left by an interrupted or failed run are unreferenced, invisible, and gc's job.

At a million objects: the re-hash runs in worker processes (lineage/rehash.py) while this process
checks manifests and rows, and which objects are present or referenced is kept packed
(lineage/digestset.py), rows digests taken batch by batch from the one read that checks them.

Packed objects (lineage/packs.py) are present once their pack's index checks out; the workers re-hash
them a run of a pack at a time. A packed object that no longer hashes to its digest cannot be rewritten
in place (packs are never appended to or edited), so its fix is `verify --repair`, which writes the
pack's intact objects into a new pack and moves the old one to quarantine/packs/, then the re-run of the
stage that owns it. A damaged index, or one whose pack is gone, loses every object it held: repair
quarantines it, and the objects it held are then missing, named with their stage like any missing
object. A pack without its index is what a run killed between the two renames leaves: garbage for gc.
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
from lineage.packs import Pack, structure_problem
from lineage.records import CorruptRecord, Manifest, RunRecord, VersionRef, is_digest, is_name, parse_json
from lineage.rehash import Rehash
from lineage.rows import packed_digests
from lineage.store import Store, read_no_follow, rerun_fix


@dataclass
class Damage:
    """One damaged file: `verify --repair` moves it to quarantine/<kind>/ and `fix` rewrites it."""

    kind: str  # objects, packs, manifests or runs
    path: Path
    fix: str
    after: str = ""  # what to run once --repair has moved it, where `fix` says more (a packed object's)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    checked_objects: int = 0
    checked_manifests: int = 0
    checked_runs: int = 0
    garbage_objects: int = 0
    garbage_manifests: int = 0
    staging_leftovers: int = 0  # tmp/ entries, and packs without an index (`orphan_packs`)
    orphan_packs: int = 0
    graph_damaged: bool = False

    def add(self, kind: str, path: Path, what: str, fix: str, after: str = "") -> None:
        self.problems.append(f"{what}: {fix}")
        self.damaged.append(Damage(kind, path, fix, after))


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
    store.forget_listings()  # the packs as they are now, their indexes checked
    packs, misshapen = _trusted_packs(store)
    with Rehash(_object_folders(store, report), workers or os.cpu_count() or 1, packs) as rehash:
        damaged_indexes = _check_pack_files(store, report, misshapen)
        pack_lines_at = len(report.problems)  # a damaged index is said here, once its fix is known
        readable = _check_manifests(store, report, records)
        rows_named = _read_rows(store, report, records, readable)
        bad, present = _object_results(report, rehash.results(), packs)
    lost = _check_references(store, report, records, readable, rows_named, present, producers)
    _report_damaged_indexes(report, damaged_indexes, lost, pack_lines_at, {path for path, _ in misshapen})
    _name_object_fixes(store, report, bad, readable, rows_named, producers)
    _check_run_references(store, report, records, readable, producers)
    if len(records) == report.checked_runs:
        _check_graph(store, report)
    report.garbage_manifests = len(set(readable) - live)
    # While a live manifest is unreadable, which objects it needs is unknown: none is counted as garbage.
    unknown = any(key not in readable or (readable[key].rows is not None and key not in rows_named) for key in live)
    report.garbage_objects = 0 if unknown else _unreferenced(readable, live, rows_named, present)
    report.staging_leftovers = (sum(1 for _ in store.tmp_dir.iterdir()) if store.tmp_dir.exists() else 0) \
        + report.orphan_packs
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


QUARANTINE_FIX = "`pipeline.py verify --repair` moves it to quarantine/"


def _trusted_packs(store: Store) -> tuple[list[Pack], list[tuple[Path, str]]]:
    """The packs whose index's layout is sound too (digests ascending, every object inside the pack), and
    (index path, what is wrong) for the others: only a hand makes one, and a lookup by bisection in it can miss
    objects, so it is treated as a damaged index and its objects as lost."""
    trusted, misshapen = [], []
    for pack in store.packs.packs:
        why = structure_problem(pack)
        if why is None:
            trusted.append(pack)
        else:
            misshapen.append((pack.index_path, why))
    return trusted, misshapen


def _check_pack_files(store: Store, report: Report, misshapen: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Report what in objects/packs/ is no pack: symlinks and strays (damage), packs without an index
    (garbage, counted). Returns the damaged indexes, reported once the missing objects are known."""
    damaged = dict(store.packs.damaged + misshapen)
    for entry in _entries(store.packs_dir):
        path = Path(entry.path)
        stem, _, suffix = entry.name.rpartition(".")
        if entry.is_symlink() and suffix == "idx":  # an index that cannot be trusted: its objects are lost
            damaged[path] = "a symlink: the store never makes one"
        elif entry.is_symlink() and path.with_suffix(".idx") in damaged:
            continue  # its index says so ("its pack … is not a plain file"), and repair moves both
        elif entry.is_symlink():
            report.add("packs", path, f"{path} is a symlink, not part of the store", QUARANTINE_FIX)
        elif path in damaged:
            continue
        elif not entry.is_file(follow_symlinks=False) or suffix not in ("pack", "idx") or not is_digest(stem):
            report.add("packs", path, f"{path} is not part of a pack", QUARANTINE_FIX)
        elif suffix == "pack" and not os.path.lexists(path.with_suffix(".idx")):
            report.orphan_packs += 1  # a run killed between the pack's rename and its index's: gc removes it
    return sorted(damaged.items())


def _report_damaged_indexes(report: Report, damaged: list[tuple[Path, str]], lost: set[str], at: int,
                            misshapen: set[Path]) -> None:
    """A damaged index loses every object it held: they count as missing, so the stages whose versions now
    miss objects they wrote are the ones to re-run once repair has moved it aside. Its lines go in at `at`,
    before the missing objects they explain. A misshapen one (its hash checks out, its layout does not, as
    when its pack was cut short) still says where each object was: repair keeps those that still hash."""
    later = report.problems[at:]
    del report.problems[at:]
    for path, why in damaged:
        move = "`pipeline.py verify --repair` moves it and its pack to quarantine/"
        if path in misshapen:
            move = ("`pipeline.py verify --repair` copies the objects of its pack that still hash to their names "
                    "into a new pack, then moves it and its pack to quarantine/")
        if lost:
            after = f"re-run {_rerun(lost)} with the config that made it to rewrite the objects it held"
            report.add("packs", path, f"pack index {path} is damaged ({why})", f"{move}, then {after}", after)
        else:
            report.add("packs", path, f"pack index {path} is damaged ({why})", f"{move}; no version misses an object")
    report.problems += later


class Present:
    """Every object in the store: the loose ones' digests packed in a DigestSet, the packed ones looked up in
    their packs' indexes, which the store holds anyway (a second copy of a million digests would cost 40 MB
    more, and twice that while it is sorted). An object in several places (loose and packed, or in two packs)
    is one object."""

    def __init__(self, loose: DigestSet, packs: list[Pack]):
        self.loose = loose
        # A trusted pack's index is ascending: its digests are a set as they are, a view of the index's bytes.
        self.packs = [DigestSet.ascending(pack.columns()[0].view(np.uint8).reshape(-1, 32)) for pack in packs]
        # Which of each pack's objects are in no earlier place: each object is counted once, there.
        self.first_copy = []
        for number, lookup in enumerate(self.packs):
            first = ~loose.contains(lookup.members)
            for earlier in self.packs[:number]:
                first &= ~earlier.contains(lookup.members)
            self.first_copy.append(first)

    def contains(self, packed: np.ndarray) -> np.ndarray:
        """For each (n, 32) query row, whether the object is here, loose or packed."""
        found = self.loose.contains(packed)
        for lookup in self.packs:
            rest = np.flatnonzero(~found)
            if not len(rest):
                break
            found[rest] = lookup.contains(packed[rest])
        return found

    def count_unnamed(self, parts: list[np.ndarray]) -> int:
        """How many objects here none of these packed digest arrays names (one flag per object)."""
        loose_named = np.zeros(len(self.loose), dtype=bool)
        pack_named = [np.zeros(len(lookup), dtype=bool) for lookup in self.packs]
        for part in parts:
            found = self.loose.locate(part)
            loose_named[found[found >= 0]] = True
            for lookup, named in zip(self.packs, pack_named):
                found = lookup.locate(part)
                named[found[found >= 0]] = True
        return int((~loose_named).sum()) + sum(int((first & ~named).sum())
                                               for first, named in zip(self.first_copy, pack_named))


def _object_results(report: Report, results: list[dict], packs: list[Pack]) -> tuple[list[tuple], Present]:
    """The re-hash's findings: (digest, kind, path, what is wrong) for each damaged copy, and every object
    present, loose or packed (loose ones packed: 40 bytes each, where a set of str costs several times that)."""
    bad: list[tuple[str, str, Path, str]] = []
    unreadable = set()
    for result in results:
        for path in result["strays"]:
            report.add("objects", Path(path), f"{path} is not an object (its name is no digest)", QUARANTINE_FIX)
        kind = "packs" if "pack" in result else "objects"
        bad += [(name, kind, Path(path), why) for name, path, why in result["damaged"]]
        report.checked_objects += result["count"]
        if result.get("problem") and result["pack"] not in unreadable:  # said once per pack, not per job
            unreadable.add(result["pack"])
            _report_unreadable_pack(report, Path(result["pack"]), result["problem"], result["missing"])
    return bad, Present(DigestSet(result["names"] for result in results if "pack" not in result), packs)


def _report_unreadable_pack(report: Report, index: Path, problem: str, missing: bool) -> None:
    pack = index.with_suffix(".pack")
    if missing:  # gone or rewritten since its index was checked: gc, or a repair, ran meanwhile
        report.problems.append(f"pack {pack} {problem}: run `pipeline.py verify` again")
    else:
        report.add("packs", index, f"pack {pack} {problem}",
                   "`pipeline.py verify --repair` moves it and its index to quarantine/, then `pipeline.py verify` "
                   "names the stage to re-run")


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
                      rows_named: dict[VersionRef, np.ndarray], present: Present,
                      producers: dict[VersionRef, str]) -> set[str]:
    """Every object a readable manifest names must be present (the rows' objects only if its rows could
    be read). Returns the stages that made versions now missing objects they wrote themselves."""
    lost = set()
    for ref, manifest in readable.items():
        count, first, rows_missing = 0, None, False
        for named in (_packed_inline(manifest.inline_objects()), rows_named.get(ref, empty())):
            missing = ~present.contains(named)
            count += int(missing.sum())
            if first is None and missing.any():
                first = unpack(named[missing.argmax()])
            rows_missing = bool(missing.any())  # the last pass is the rows'
        if count:
            owned_missing = (rows_missing and manifest.owns_rows) \
                or not present.contains(_packed_inline(manifest.owned_objects())).all()
            # A split's missing images are its source's (raw-data's): re-running split writes none of them.
            fix = store.manifest_fix(ref, records) if owned_missing or manifest.source is None else \
                f"they are {manifest.source.short}'s: {store.manifest_fix(manifest.source, records)}"
            report.problems.append(f"manifest {ref.short} references {count} missing object(s), "
                                   f"first {first[:12]}: {fix}")
            if ref in producers and owned_missing:
                lost.add(producers[ref])
    return lost


def _name_object_fixes(store: Store, report: Report, bad: list[tuple[str, str, Path, str]],
                       readable: dict[VersionRef, Manifest], rows_named: dict[VersionRef, np.ndarray],
                       producers: dict[VersionRef, str]) -> None:
    """Each damaged object, with the stage that rewrites it: the one whose version holds it as an entry
    or file (a split only refers to raw-data's images; re-running split writes none of them)."""
    owners: dict[str, set[str]] = {}
    damaged = DigestSet([pack_strings({digest for digest, *_ in bad})])
    for key, manifest in readable.items():
        if not bad or key not in producers:
            continue
        owned = _packed_inline(manifest.owned_objects())
        if manifest.owns_rows and key in rows_named:
            owned = np.concatenate([owned, rows_named[key]])
        for row in owned[damaged.contains(owned)]:
            owners.setdefault(unpack(row), set()).add(producers[key])
    for digest, kind, path, why in sorted(bad, key=lambda item: (item[0], item[1], str(item[2]))):
        stages = owners.get(digest, set())
        if kind == "packs":
            _name_packed_fix(store, report, digest, path, why, stages)
        elif stages:
            fix = f"re-run {_rerun(stages)} with the config that made it to rewrite it (or `pipeline.py verify " \
                  "--repair` moves it to quarantine/ first)"
            report.add("objects", path, f"object {digest[:12]} is corrupt ({why}), at {path}", fix)
        else:
            report.add("objects", path, f"object {digest[:12]} is corrupt ({why}), at {path}",
                       f"no version needs it: {QUARANTINE_FIX}")


def _name_packed_fix(store: Store, report: Report, digest: str, pack: Path, why: str, stages: set[str]) -> None:
    """A packed copy cannot be rewritten in place: repair rewrites its pack without it, and then, unless an
    intact copy is already here (loose, or in another pack), the owning stage's re-run writes it again."""
    what = f"object {digest[:12]} in pack {pack} is corrupt ({why})"
    rewrite = "`pipeline.py verify --repair` rewrites its pack without it (the old pack goes to quarantine/packs/)"
    if object_intact(store, digest) or store.packs.read(digest) is not None:
        report.add("packs", pack, what, f"an intact copy is in the store: {rewrite}")
    elif stages:
        after = f"re-run {_rerun(stages)} with the config that made it to rewrite it"
        report.add("packs", pack, what, f"{rewrite}, then {after}", after)
    else:
        report.add("packs", pack, what, f"no version needs it: {rewrite}")


def _rerun(stages: set[str]) -> str:
    return " or ".join(f"`pipeline.py {stage} --force`" for stage in sorted(stages))


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
                  rows_named: dict[VersionRef, np.ndarray], present: Present) -> int:
    """How many objects present no live version names: each present object a live version names is marked
    (one flag per object; no second set of a million digests is built)."""
    inline = [d for key in live if key in readable for d in readable[key].inline_objects()]
    return present.count_unnamed([_packed_inline(inline)] + [rows_named[key] for key in live if key in rows_named])


def _packed_inline(digests: list[str]) -> np.ndarray:
    """A manifest's own digests, packed (records.py checked them when it was read)."""
    return pack_strings(d for d in digests if is_digest(d))


def _entries(folder: str | Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
