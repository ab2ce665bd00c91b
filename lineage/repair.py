"""Repairs: damaged files move to quarantine/, lineage.json is rebuilt, and the user is told what to re-run.

Nothing is deleted. A damaged object or manifest moves to quarantine/<kind>/, where no reader looks,
and the next run of the stage that made it writes it afresh (same inputs give the same digest).

A pack is never edited: one holding damaged objects has its intact objects written into a new pack
(checked again as they are copied), then its index and pack move to quarantine/packs/, index first (a
kill in between leaves a pack without an index: garbage, and its objects are in the new pack). The
damaged objects are then missing, exactly as a quarantined loose object is, until their stage re-runs.
A damaged index moves with its pack: what it held is missing, and verify names the stage to re-run. One
whose hash checks out but whose layout does not (its pack cut short) still says where each object was, so
the objects that still hash are copied out first, as from a pack with damaged objects.

A damaged run record is the delicate case: the record is what makes its versions committed. So
before it moves, its run is recovered from lineage.json, which holds every run's stage, status,
times, inputs and outputs: a record rebuilt from that keeps each version under its number and
digest, marked `recovered`. When lineage.json cannot tell (it is damaged too, or never saw the
run), the versions whose digests the damaged bytes still mention are named with the stage to
re-run, and `Store.quarantined_versions` keeps gc off their manifests until then.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from lineage.graph import Graph
from lineage.packs import DamagedPack, read_index, structure_problem, write_pack
from lineage.records import AliasRef, CorruptRecord, InputRef, OutputRef, RunRecord, parse_json
from lineage.store import Store, read_no_follow

RECOVERED_NOTE = ("rebuilt from lineage.json by `pipeline.py lineage --rebuild`; "
                  "the damaged original is in quarantine/runs/")


_STAGE_BYTES = re.compile(rb'"stage":\s*"([A-Za-z0-9_-]{1,40})"')


def repair(store: Store, report) -> list[str]:
    """Move what `verify` found damaged (a lineage/verify.py Report) to quarantine/, recover damaged run
    records and rebuild lineage.json. Returns the lines to print, ending with what to re-run."""
    lines = []
    store.forget_listings()  # verify's checked indexes: a pack to rewrite is read afresh, and one copy is enough
    with store.locked():
        for damage in report.damaged:
            if damage.kind == "runs" or not (damage.path.exists() or damage.path.is_symlink()):
                continue  # run records are recovered below, from lineage.json, before it is rebuilt
            if damage.kind == "packs":
                lines += _repair_pack(store, damage.path)
                continue
            target = store.quarantine(damage.path, damage.kind)
            lines.append(f"moved {damage.path} to {target}")
        store.forget_listings()  # the packs changed
        lines += _rebuild_locked(store, keep_graph=not report.graph_damaged)
    fixes = sorted({d.after or d.fix for d in report.damaged if d.kind != "runs" and "--force" in (d.after or d.fix)})
    lines += [f"next: {fix}" for fix in fixes]
    if fixes:
        lines.append("then `pipeline.py verify` should find no problem")
    return lines


def _repair_pack(store: Store, path: Path) -> list[str]:
    """Set aside one damaged thing in objects/packs/: a pack holding damaged objects (its intact ones are
    written into a new pack first), a damaged index with its pack, or a link or stray on its own."""
    index, pack = path.with_suffix(".idx"), path.with_suffix(".pack")
    if path != index and (path.is_symlink() or path != pack or not path.is_file()):
        return [f"moved {path} to {store.quarantine(path, 'packs')}"]
    lines = []
    # A pack holding damaged objects, or an index whose hash checks out but not its layout (its pack cut short:
    # the objects before the cut are whole): what still hashes to its name goes into a new pack first.
    salvage = path == pack or (not index.is_symlink() and pack.is_file() and not pack.is_symlink()
                               and _readable_index(index))
    if salvage:
        try:
            kept = write_pack(store.packs_dir, store.tmp_dir, _intact_objects(read_index(index)))
        except (DamagedPack, OSError) as why:  # changed since verify read it: what it held is lost with it
            lines.append(f"could not copy the intact objects out of {pack} ({why}): they are missing now")
        else:
            if any(p.name == pack.stem for p in kept):  # every object hashed after all: the copy is the pack itself
                return [f"{pack} holds no damaged object any more: left as it is"]
            names = ", ".join(p.name for p in kept) or "none (it held no intact object)"
            lines.append(f"copied the {sum(p.count for p in kept)} intact objects of {pack.name} to new pack(s): "
                         f"{names}")
    for part in (index, pack):  # index first: a kill in between leaves a pack without an index, garbage for gc
        if os.path.lexists(part):
            lines.append(f"moved {part} to {store.quarantine(part, 'packs')}")
    return lines


def _readable_index(index: Path) -> bool:
    try:
        read_index(index)
        return True
    except (DamagedPack, OSError):
        return False


def _intact_objects(pack):
    """A pack's objects whose bytes still hash to their digests: in pack order, read in large chunks, when the
    index's layout is sound; else one read each, where the index says (every object is re-hashed, so a bad
    offset or size only loses that object; an object past the end of a cut-short pack reads short)."""
    if structure_problem(pack) is None:
        for digest, data in pack.objects():
            if hashlib.sha256(data).digest() == digest:
                yield digest.hex(), data
        return
    for position in range(pack.count):
        digest = pack.digest(position)
        try:
            data = pack.read(*pack.location(position))
        except OSError:
            continue
        if hashlib.sha256(data).digest() == digest:
            yield digest.hex(), data


def rebuild_lineage(store: Store) -> list[str]:
    """`pipeline.py lineage --rebuild`: quarantine damaged run records (recovering their runs from
    lineage.json where it knows them), then rebuild lineage.json from runs/. Returns the lines to print."""
    with store.locked():
        return _rebuild_locked(store, keep_graph=True)


def _rebuild_locked(store: Store, keep_graph: bool) -> list[str]:
    lines = []
    old = _old_graph(store)  # read first: even a graph that disagrees with runs/ still knows their runs
    if not keep_graph and (store.graph_path.exists() or store.graph_path.is_symlink()):
        lines.append(f"moved {store.graph_path} to {store.quarantine(store.graph_path, 'graph')}")
    records, damaged = store.scan_runs()
    recovered = []
    for path, why in damaged:
        raw = _read_raw(path)
        target = store.quarantine(path, "runs")
        lines.append(f"moved damaged run record {path} ({why}) to {target}")
        record = _recover(old, path.stem)
        if record is not None:
            store.write_run(record)
            recovered.append(record)
            refs = ", ".join(o.key.short for o in record.outputs) or "no versions"
            lines.append(f"  recovered run {record.id} ({record.stage}, {refs}) from lineage.json")
        else:
            lines += _unrecoverable(store, raw, records)
    graph = Graph.rebuild(store)
    if recovered and old is not None:
        _restore_aliases(store, graph, old, recovered[-1])
        graph = Graph.rebuild(store)
    graph.save(store)
    lines.append(f"lineage.json rebuilt from runs/: {len(graph.all_versions())} versions, {len(graph.runs)} runs")
    return lines


def _old_graph(store: Store) -> Graph | None:
    try:
        return Graph.from_json(parse_json(read_no_follow(store.graph_path)))
    except (OSError, CorruptRecord):
        return None


def _read_raw(path: Path) -> bytes:
    try:
        return read_no_follow(path)
    except OSError:
        return b""


def _recover(old: Graph | None, run_id: str) -> RunRecord | None:
    """A run record rebuilt from lineage.json's summary of the run, or None if it does not know it."""
    summary = old.runs.get(run_id) if old is not None else None
    if summary is None or not isinstance(summary.status, str):
        return None

    def sized(item) -> OutputRef:
        version = old.find(item.name, item.digest)
        return OutputRef(item.name, item.digest, version.size if version else 0, version.count if version else 0)

    def text(value) -> str | None:  # lineage.json is derived data, taken as it is: only strings are kept
        return value if isinstance(value, str) else None

    # The original commit time is lost with the record; its finish time, a moment earlier, keeps the order.
    return RunRecord(run_id, summary.stage, summary.status, cache_key=text(summary.cache_key),
                     started=text(summary.started), finished=text(summary.finished),
                     committed=text(summary.finished), inputs=[InputRef(i.name, i.digest) for i in summary.inputs],
                     outputs=[sized(o) for o in summary.outputs], recovered=RECOVERED_NOTE)


def _restore_aliases(store: Store, graph: Graph, old: Graph, record: RunRecord) -> None:
    """Aliases that only the damaged records set (`alias` runs) are added back to the last recovered record."""
    lost = []
    for version in old.all_versions():
        now = graph.find(version.name, version.digest)
        for alias in version.aliases:
            if alias != "latest" and (now is None or alias not in now.aliases):
                lost.append(AliasRef(version.name, version.digest, alias))
    if lost:
        record.aliases = lost
        store.write_run(record)


def _unrecoverable(store: Store, raw: bytes, records: list[RunRecord]) -> list[str]:
    """Name the versions the damaged record may have committed that no other run records."""
    recorded = {o.key for r in records for o in r.outputs}
    mentioned = {key for key in store.quarantined_versions() if key.digest.encode() in raw} - recorded
    if not mentioned:
        return ["  lineage.json did not know this run and no version it made can be told: nothing more to do "
                "unless `pipeline.py ls` misses a version, whose stage you then re-run with --force"]
    stage_of = {o.name: r.stage for r in records for o in r.outputs}
    named = _STAGE_BYTES.search(raw)  # the damaged bytes may still say which stage it was
    lines = []
    for ref in sorted(mentioned):
        stage = named.group(1).decode() if named else stage_of.get(ref.name, f"<the stage that makes {ref.name}>")
        lines.append(f"  {ref.short} lost its run record: re-run `pipeline.py {stage} --force` with the "
                     "config that made it to record it again (same inputs give the same digest); gc keeps its "
                     "manifest meanwhile")
    return lines
