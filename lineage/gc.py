"""Garbage collection: remove objects, manifests and staging files that nothing live refers to.

Live is what a finished run made: the manifests its run record names, and every object those
name. Anything else was left by a run that failed or was killed, and is garbage. What a run in
progress is staging looks exactly like that garbage, so gc never sweeps while a run is in
progress: it holds the store exclusively for the whole sweep (lineage/inprogress.py), and a
run cannot stage while it does. A grace period stays as a second line of defence only (say, a
run started by an older version of this code): it keeps anything changed recently, measured by
the later of mtime and ctime. mtime alone lies: a hard link keeps its source's mtime, and both
link() and rename() set the ctime to now. A recent orphan manifest keeps its objects too.

gc never follows a symlink inside the store and never deletes one: a linked folder or file
could point anywhere, so it is reported as foreign, to be removed by hand.

Packs (lineage/packs.py) are collected by the same rule, one pack at a time so memory stays bounded:
each index's digests are looked up in the live set at once. A pack none of whose objects is live is
removed (index first, then pack); a pack with some dead objects is rewritten without them, every live
object re-hashed on the way, and the old one removed once the new one is in place. A live object whose
bytes are damaged is never dropped: its pack is kept whole and reported (verify --repair deals with
damage). A .pack without its .idx was left by a writer killed between its two renames: garbage. An
index that does not check out is damage, left alone for verify.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lineage.digestset import DigestSet, drain, empty, pack_hex, pack_strings
from lineage.display import human_size
from lineage.errors import UserError
from lineage.inprogress import RunInProgress, in_progress_records, sweep_hold
from lineage.packs import PACK_MAGIC, DamagedPack, Pack, index_size, read_index, remove_pack, write_pack
from lineage.records import Manifest, VersionRef, is_digest
from lineage.store import Store, sha256_file

FOREIGN = "is a symlink, not part of the store: remove it by hand"
REHASH_BATCH_BYTES = 8 << 20  # a rewrite looks up liveness this many bytes of objects at a time


@dataclass
class DeadInPack:
    """A pack holding objects nothing live names: removed whole when none of them is live, else rewritten."""

    pack_path: Path
    index_path: Path
    dead: int
    live: int
    frees: int  # bytes: the old pack and index, less the new ones

    @property
    def whole(self) -> bool:
        return self.live == 0

    def line(self, deleted: bool) -> str:
        if self.whole:
            return (f"{'removed' if deleted else 'would remove'} pack {self.pack_path} and its index: none of its "
                    f"{self.dead} object(s) is referenced ({human_size(self.frees)})")
        return (f"{'rewrote' if deleted else 'would rewrite'} pack {self.pack_path} without its {self.dead} "
                f"unreferenced object(s), keeping {self.live} ({human_size(self.frees)} freed)")


@dataclass
class Garbage:
    """What a sweep found (and, with `deleted`, removed)."""

    objects: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    staging: list[Path] = field(default_factory=list)
    stale_records: list[RunInProgress] = field(default_factory=list)  # left by runs that were killed
    packs: list[DeadInPack] = field(default_factory=list)
    orphan_packs: list[Path] = field(default_factory=list)  # .pack files without their .idx
    # "<path> <why>", reported as left alone: links (never followed, never deleted), damaged pack indexes
    # and packs that hold a damaged live object (verify's business)
    foreign: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "<path>: <reason>" for removals that failed
    in_progress: list[RunInProgress] = field(default_factory=list)  # a listing made while runs were staging
    bytes: int = 0
    deleted: bool = False

    @property
    def count(self) -> int:
        """Items: each loose object, manifest and staging entry, each dead packed object, each orphan pack."""
        return len(self.objects) + len(self.manifests) + len(self.staging) + sum(p.dead for p in self.packs) \
            + len(self.orphan_packs)

    def pack_lines(self) -> list[str]:
        """One report line per pack gc removes or rewrites (or would), orphan packs included."""
        verb = "removed" if self.deleted else "would remove"
        return [p.line(self.deleted) for p in self.packs] + \
            [f"{verb} pack {path} (no index: left by a writer killed between its two renames)"
             for path in self.orphan_packs]


def collect_garbage(store: Store, delete: bool, grace_seconds: float, wait: bool = False,
                    log: Callable[[str], None] = print) -> Garbage:
    """List (and with delete=True remove) what nothing live refers to and that is older than the grace.

    Deleting holds the store exclusively: with runs in progress it fails naming them or, with
    `wait`, waits for them. A listing made while runs are in progress says so in `in_progress`."""
    store.refuse_symlinks()
    garbage = Garbage(deleted=delete)
    with sweep_hold(store, wait=wait, required=delete, log=log) as running, store.locked():
        garbage.in_progress = running
        kept = _find(store, garbage, cutoff=time.time() - grace_seconds)
        if delete:
            for path in garbage.objects + garbage.manifests + garbage.staging + garbage.orphan_packs \
                    + [r.path for r in garbage.stale_records]:
                try:
                    _remove(path)
                except OSError as error:
                    garbage.failed.append(f"{path}: {error.strerror or error}")
            _collect_packs(store, garbage, kept)
            store.forget_listings()  # this process's listing of objects and packs is stale now
    return garbage


def _find(store: Store, garbage: Garbage, cutoff: float) -> DigestSet:
    """Fill `garbage`; returns the digests of the objects kept, which a pack's rewrite keeps too."""
    live = live_versions(store)
    protected = _live_objects(store, live)
    manifests = dict(_manifest_files(store, garbage.foreign))
    for key in sorted(set(manifests) - live):
        path = manifests[key]
        if _changed(path) < cutoff:
            garbage.manifests.append(path)
        else:  # a run of an older gc-unaware version may be about to commit it: keep what it names
            protected.append(_objects_named(store, key))
    kept = DigestSet(drain(protected))
    for prefix, files in _object_folders(store, garbage.foreign):
        for entry, referenced in zip(files, _referenced(prefix, files, kept)):
            if not referenced and _changed(Path(entry.path)) < cutoff:
                garbage.objects.append(Path(entry.path))
    _find_in_packs(store, garbage, kept, cutoff)
    garbage.staging = [p for p in _staging_entries(store, garbage.foreign) if _changed(p) < cutoff]
    # Once the sweep holds the store no run is alive, so every record left is stale; a listing
    # made while runs are in progress only names the records whose runs are gone.
    garbage.stale_records = [r for r in in_progress_records(store) if not r.alive]
    files = garbage.objects + garbage.manifests + garbage.staging + garbage.orphan_packs
    garbage.bytes = sum(_size(p) for p in files) + sum(p.frees for p in garbage.packs)
    return kept


def live_versions(store: Store) -> set[VersionRef]:
    """The (name, digest) of every version a finished run made, and of every version a quarantined run
    record may have made (a damaged record must never cost the versions it committed): what gc keeps."""
    return {o.key for r in store.read_runs() if r.status == "finished" for o in r.outputs} \
        | store.quarantined_versions()


def _live_objects(store: Store, live: set[VersionRef]) -> list[np.ndarray]:
    """Every object a live manifest names, packed (lineage/digestset.py: a million of them as strs would cost
    hundreds of MB). One that cannot be read stops gc: what it needs is unknown. Objects a quarantined
    manifest still names stay too, until the stage that made it has run again."""
    referenced = [pack_strings(sorted(store.quarantine_mentions("manifests")))]
    for ref in sorted(live):
        path = store.manifest_path(ref)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # already damage (verify says so); nothing it named can be read anyway
            continue
        if stat.S_ISLNK(mode):
            raise UserError(f"manifest {path} of a live version {FOREIGN}, then re-run the stage that made "
                            f"{ref.name} with --force; gc will not guess which objects it needs")
        try:
            referenced.append(_referenced_objects(store, store.read_manifest(ref)))
        except UserError as error:
            raise UserError(f"gc cannot tell which objects {ref.short} needs ({error}); nothing was removed") from None
    return referenced


def _objects_named(store: Store, ref: VersionRef) -> np.ndarray:
    try:
        manifest = store.read_manifest(ref)
    except UserError:  # a damaged orphan protects nothing
        return empty()
    try:
        return _referenced_objects(store, manifest)
    except UserError:  # its rows object is damaged: it protects that object and its files
        return _packed(manifest.inline_objects())


def _referenced_objects(store: Store, manifest: Manifest) -> np.ndarray:
    """Store.referenced_objects, packed, in bounded memory: the rows object is read batch by batch, and only
    from an object that hashes to its name and holds the rows the version's name stands for."""
    from lineage.rows import packed_digests

    named = [_packed(manifest.inline_objects())]
    if manifest.rows is not None:
        if not object_intact(store, manifest.rows.object):
            raise UserError(f"rows object {manifest.rows.object[:12]} of {manifest.name} is missing or corrupt: run "
                            "`pipeline.py verify`, which names the stage to re-run")
        why = store.rows_problem(manifest, lambda batch: named.append(packed_digests(batch.column("digest"))))
        if why is not None:
            raise UserError(f"rows object {manifest.rows.object[:12]} of {manifest.name} does not hold its rows "
                            f"({why}): run `pipeline.py verify`, which names the stage to re-run")
    return np.concatenate(named)


def object_intact(store: Store, digest: str) -> bool:
    """Whether the object is there and its bytes hash to its name (read once, never through a link)."""
    try:
        return sha256_file(store.object_path(digest), follow_symlinks=False) == digest
    except OSError:
        return False


def _packed(digests: list[str]) -> np.ndarray:
    """A manifest's own digests, packed (lineage/records.py checked them when it was read)."""
    return pack_strings(d for d in digests if is_digest(d))


def _object_folders(store: Store, foreign: list[str]) -> Iterator[tuple[str, list[os.DirEntry]]]:
    """(prefix, its object files) per two-digit folder, in name order, never following a link. Links (and
    folders where an object file should be) are not objects: they go to `foreign`."""
    for folder in _scan(store.objects_dir):
        if folder.is_symlink():
            _note(foreign, folder.path, FOREIGN)
        elif folder.is_dir(follow_symlinks=False):
            files = []
            for entry in _scan(folder.path):
                if entry.is_symlink():
                    _note(foreign, entry.path, FOREIGN)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry)
                else:
                    _note(foreign, entry.path, "is not an object file: remove it by hand")
            yield folder.name, files


def _find_in_packs(store: Store, garbage: Garbage, kept: DigestSet, cutoff: float) -> None:
    """Packs with objects `kept` lacks, and orphan .pack files, older than the cutoff. One index at a time,
    read without following a link; a damaged one is left alone and reported, a link noted as foreign."""
    entries = _scan(store.packs_dir)
    indexes = {e.name[:-len(".idx")] for e in entries if e.name.endswith(".idx")}
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            _note(garbage.foreign, entry.path, FOREIGN)
        elif not entry.is_file(follow_symlinks=False) or not entry.name.endswith((".pack", ".idx")):
            _note(garbage.foreign, entry.path, "is not a pack or a pack index: remove it by hand")
        elif entry.name.endswith(".pack"):
            if entry.name[:-len(".pack")] not in indexes and _changed(path) < cutoff:
                garbage.orphan_packs.append(path)
        else:
            try:
                pack = read_index(path)
            except (DamagedPack, OSError) as why:
                reason = str(why) if isinstance(why, DamagedPack) else f"unreadable: {why.strerror or why}"
                _note(garbage.foreign, entry.path, f"is a pack index that does not check out ({reason}): run "
                      "`pipeline.py verify`, whose --repair deals with it")
                continue
            if max(_changed(pack.pack_path), _changed(path)) < cutoff:
                dead = _dead_in(pack, kept)
                if dead is not None:
                    garbage.packs.append(dead)


def _dead_in(pack: Pack, kept: DigestSet) -> DeadInPack | None:
    """What removing or rewriting this pack would free, or None when every object in it is live."""
    _, _, sizes = pack.columns()
    live = kept.contains(_digest_rows(pack.digest_block()))
    if live.all():
        return None
    old_bytes = _size(pack.pack_path) + _size(pack.index_path)
    count = int(live.sum())
    new_bytes = 0 if not count else len(PACK_MAGIC) + int(sizes[live].sum()) + index_size(count)
    return DeadInPack(pack.pack_path, pack.index_path, dead=len(live) - count, live=count,
                      frees=old_bytes - new_bytes)


def _digest_rows(block: bytes) -> np.ndarray:
    """32-byte digests back to back, as DigestSet's (n, 32) rows."""
    return np.frombuffer(block, dtype=np.uint8).reshape(-1, 32)


class _DamagedLive(Exception):
    """A live object in a pack whose bytes do not hash to its digest: the pack must be kept whole."""


def _collect_packs(store: Store, garbage: Garbage, kept: DigestSet) -> None:
    """Remove the wholly dead packs and rewrite the others without their dead objects. A rewrite whose
    pack holds a damaged live object, or cannot be read, keeps the old pack and says so instead."""
    for dead in list(garbage.packs):
        if not dead.whole:
            try:
                pack = read_index(dead.index_path)  # checked again: the sweep may run long after the listing
                write_pack(store.packs_dir, store.tmp_dir, _live_objects_in(pack, kept))
            except _DamagedLive as damaged:
                _keep(garbage, dead, f"holds live object {damaged} whose bytes no longer hash to its name, so it "
                      "was kept whole: run `pipeline.py verify --repair`, then gc again")
                continue
            except DamagedPack as why:
                _keep(garbage, dead, f"was kept: its index no longer checks out ({why}): run `pipeline.py verify`")
                continue
            except OSError as error:
                garbage.failed.append(f"{dead.pack_path}: rewriting it failed ({error.strerror or error})")
                garbage.packs.remove(dead)
                garbage.bytes -= dead.frees
                continue
        try:
            remove_pack(dead.pack_path, dead.index_path)
        except OSError as error:
            garbage.failed.append(f"{dead.index_path}: {error.strerror or error}")


def _keep(garbage: Garbage, dead: DeadInPack, why: str) -> None:
    garbage.packs.remove(dead)
    garbage.bytes -= dead.frees
    _note(garbage.foreign, str(dead.pack_path), why)


def _live_objects_in(pack: Pack, kept: DigestSet) -> Iterator[tuple[str, bytes]]:
    """(hex digest, bytes) of the pack's live objects in pack order, each checked against its digest. The
    live set is asked a batch at a time, so neither a Python set of digests nor the whole pack is held."""
    batch: list[tuple[bytes, bytes]] = []
    held = 0

    def flush() -> Iterator[tuple[str, bytes]]:
        live = kept.contains(_digest_rows(b"".join(raw for raw, _ in batch)))
        for (raw, data), wanted in zip(batch, live.tolist()):
            if wanted:
                if hashlib.sha256(data).digest() != raw:
                    raise _DamagedLive(raw.hex()[:12])
                yield raw.hex(), data
        batch.clear()

    for raw, data in pack.objects():
        batch.append((raw, data))
        held += len(data)
        if held >= REHASH_BATCH_BYTES or len(batch) >= 1 << 16:
            yield from flush()
            held = 0
    if batch:
        yield from flush()


def _referenced(prefix: str, files: list[os.DirEntry], kept: DigestSet) -> np.ndarray:
    """Which of a folder's files are objects `kept` holds, in one vectorised lookup per folder. A file
    whose folder and name do not spell a digest is never referenced: no reader looks for it there."""
    found = np.zeros(len(files), dtype=bool)
    rows = [i for i, entry in enumerate(files) if len(entry.name) == 62 and entry.name.isascii()]
    if not rows or len(prefix) != 2 or not prefix.isascii():
        return found
    chars = np.empty((len(rows), 64), dtype=np.uint8)
    chars[:, :2] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    chars[:, 2:] = np.frombuffer("".join(files[i].name for i in rows).encode("ascii"), dtype=np.uint8).reshape(-1, 62)
    packed, valid = pack_hex(chars)
    found[rows] = valid & kept.contains(packed)
    return found


def _manifest_files(store: Store, foreign: list[str]) -> Iterator[tuple[VersionRef, Path]]:
    for name, entry in _two_deep(store.manifests_dir, foreign):
        if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
            yield VersionRef(name, entry.name[:-len(".json")]), Path(entry.path)


def _two_deep(root: Path, foreign: list[str] | None) -> Iterator[tuple[str, os.DirEntry]]:
    """(folder name, entry) for every entry one folder below `root` (objects/sha256/ab/…,
    manifests/<name>/…), links noted as foreign at either level and never followed."""
    for folder in _scan(root):
        if folder.is_symlink():
            _note(foreign, folder.path, FOREIGN)
        elif folder.is_dir(follow_symlinks=False):
            for entry in _scan(folder.path):
                if entry.is_symlink():
                    _note(foreign, entry.path, FOREIGN)
                else:
                    yield folder.name, entry


def _staging_entries(store: Store, foreign: list[str]) -> list[Path]:
    """Files and folders under tmp/. A folder is removed whole; rmtree does not follow links inside it."""
    found = []
    for entry in _scan(store.tmp_dir):
        if entry.is_symlink():
            _note(foreign, entry.path, FOREIGN)
        else:
            found.append(Path(entry.path))
    return found


def _scan(folder: str | os.PathLike) -> list[os.DirEntry]:
    if os.path.islink(folder):  # the store refuses these on open; a Store built by hand gets here
        raise UserError(f"{folder} {FOREIGN}")
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _note(foreign: list[str] | None, path: str, why: str) -> None:
    if foreign is not None:
        foreign.append(f"{path} {why}")


def _changed(path: Path) -> float:
    """When the entry was last written, linked or renamed: a hard link can fake its mtime, not its ctime."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return float("inf")
    return max(info.st_mtime, info.st_ctime)


def _size(path: Path) -> int:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for folder, _, files in os.walk(path):  # os.walk does not descend into linked folders
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _remove(path: Path) -> None:
    """Remove a file or a real folder; never a link, never through one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # refuses a link at the top, unlinks (never follows) links inside
    else:
        path.unlink(missing_ok=True)
