"""push and pull: move what the other side lacks, in the store's own commit order.

Both directions keep the rule the store keeps locally: objects first, then manifests, then run records
(the commit point). So a reader of the remote never sees a run whose data is missing, and a pull that is
killed leaves only objects (and manifests) that no run names yet: garbage for gc, reused by the next pull.
Every file name is a content hash or a unique run id, so "what is missing" is a set difference of two
listings, a re-run continues where a killed one stopped, and two pushes of the same name write the same
bytes. Nothing that arrives is trusted: each object is hashed on arrival and refused (with its name) if the
bytes do not match, each manifest must hash to its name, each run record must pass its check.

What moves: `push [REF…]` sends the named versions (all versions without REF) with their ancestors, so the
remote can always answer `pull --with-ancestors`. `pull [REF…]` brings the run records and manifests of the
named versions and their ancestors (the lineage stays whole), and the objects of the named versions only;
`--with-ancestors` brings the ancestors' objects too.

A remote holds loose objects only (objects/sha256/ab/cdef…), whatever the stores that push to it keep: a
packed object (lineage/packs.py) is pushed as its own checked bytes, so any store can pull any object by its
name. A pull packs the small images it brings, as ingest does, and keeps the rest loose (files, rows objects
and large images: what readers open by path).
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable

from lineage.errors import UserError
from lineage.graph import PULL_STAGE, Graph
from lineage.packs import PACK_OBJECT_LIMIT, PackWriter
from lineage.records import CorruptRecord, Manifest, RunRecord, VersionRef, is_digest, is_name, parse_json
from lineage.remote import Remote
from lineage.store import Store, manifest_digest, read_no_follow, sha256_bytes, sha256_file

OBJECTS = "objects/sha256/"
MANIFESTS = "manifests/"
RUNS = "runs/"
SMALL_OBJECT = 8 << 20  # up to this size an object is pushed from memory: 16 threads hold at most 128 MiB


@dataclass
class Transfer:
    """What one push or pull moved, for its summary line."""

    direction: str
    remote: str
    objects: int = 0
    bytes: int = 0
    manifests: int = 0
    runs: int = 0
    present: int = 0  # objects the other side had already
    versions_present: int = 0  # versions whose run records the remote has (so their objects too)
    seconds: float = 0.0

    def summary(self) -> str:
        from lineage.display import human_size

        to = "to" if self.direction == "push" else "from"
        return (f"{self.direction} {to} {self.remote}: {self.objects:,} object(s) ({human_size(self.bytes)}), "
                f"{self.manifests} manifest(s), {self.runs} run record(s) in {self.seconds:.1f} s; "
                f"{self.present:,} object(s) already there"
                + (f", {self.versions_present} version(s) already committed there" if self.versions_present else ""))


@dataclass
class Selection:
    runs: list[RunRecord]
    manifests: set[VersionRef]  # whose manifests move
    with_objects: set[VersionRef]  # whose objects move


def select(records: list[RunRecord], graph: Graph, refs: list[str], ancestors: bool) -> Selection:
    """The finished runs, manifests and objects that `refs` (every version, without refs) stand for."""
    finished = [r for r in records if r.status == "finished"]
    if not refs:
        named = {o.key for r in finished for o in r.outputs}
    else:
        named = {graph.resolve(ref).key for ref in refs}
    producers: dict[VersionRef, list[RunRecord]] = {}
    for record in finished:
        for output in record.outputs:
            producers.setdefault(output.key, []).append(record)
    closure, todo = set(), list(named)
    while todo:
        key = todo.pop()
        if key not in closure:
            closure.add(key)
            todo.extend(i.key for r in producers.get(key, []) for i in r.inputs)
    runs = [r for r in finished if any(o.key in closure for o in r.outputs) or any(a.key in closure for a in r.aliases)]
    siblings = {o.key for r in runs for o in r.outputs}  # a train run's predictions travel with its model
    manifests = closure | siblings | {i.key for r in runs for i in r.inputs}
    if ancestors or not refs:
        with_objects = set(manifests)
    else:
        with_objects = named | {o.key for r in runs if any(o2.key in named for o2 in r.outputs) for o in r.outputs}
    return Selection(runs, manifests, with_objects)


# -- push --------------------------------------------------------------------------------------------

def push(store: Store, remote: Remote, refs: list[str], workers: int = 16, progress: bool = False) -> Transfer:
    started = time.perf_counter()
    transfer = Transfer("push", remote.name)
    graph = Graph.load(store)
    chosen = select(store.read_runs(), graph, refs, ancestors=True)
    # A run record on the remote is its commit point there: every pusher sent that run's objects and manifests
    # first, so the versions it made need no object listing (a no-op push is one listing of runs/).
    remote_runs = set(remote.list_keys(RUNS))
    committed = {o.key for r in chosen.runs if _run_key(r.id) in remote_runs for o in r.outputs}
    pending = sorted(chosen.manifests - committed)
    transfer.versions_present = len(chosen.manifests) - len(pending)
    manifests = {key: store.read_manifest(key) for key in pending}
    needed: dict[str, int] = {}
    for key in pending:
        # The store's digest cache of a version's rows (written with its rows object) spares pyarrow here; a
        # remote missing an object that a stale cache hid is refused by `pull`, never taken as complete.
        digests = store.referenced_objects(manifests[key], cached=True)
        absent = store.missing_objects(digests)
        if absent:
            raise UserError(f"object {absent[0][:12]} of {key.short} is missing from this store, so it cannot be "
                            "pushed: run `pipeline.py verify`, which names the stage that rewrites it")
        needed.update(dict.fromkeys(digests, 0))
    for digest in needed:
        needed[digest] = store.object_size(digest)  # loose or packed
    there = _remote_objects(remote) if needed else {}
    todo = [d for d, size in needed.items() if there.get(d) != size]  # a short object on the remote is replaced
    transfer.present = len(needed) - len(todo)

    def send(digest: str) -> int:
        _send_object(store, remote, digest, needed[digest])
        return needed[digest]

    transfer.bytes = _parallel(todo, send, workers, progress, "push", sum(needed[d] for d in todo))
    transfer.objects = len(todo)
    # Manifests only once every object they name is there; run records (the commit point) last.
    remote_manifests = set(remote.list_keys(MANIFESTS)) if pending else set()
    new_manifests = [k for k in pending if _manifest_key(k) not in remote_manifests]
    _parallel(new_manifests, lambda k: remote.upload_bytes(_manifest_key(k), read_no_follow(store.manifest_path(k)))
              or 0, workers, False, "", 0)
    transfer.manifests = len(new_manifests)
    new_runs = [r for r in chosen.runs if _run_key(r.id) not in remote_runs]
    _parallel(new_runs, lambda r: remote.upload_bytes(_run_key(r.id), read_no_follow(store.run_path(r.id))) or 0,
              workers, False, "", 0)
    transfer.runs = len(new_runs)
    transfer.seconds = time.perf_counter() - started
    return transfer


def _send_object(store: Store, remote: Remote, digest: str, size: int) -> None:
    """One object up, checked against its name first: a store's file that rotted (or was edited) must not
    reach the remote under a name it does not hash to, where every pull would refuse it. A small object is
    read once, for the hash and the PUT (which carries that hash for S3 to check on arrival); a large one is
    hashed, then streamed. A packed object has no file of its own: its bytes come from its pack, checked by
    Store.read_object, and go up as a loose object (a remote holds no packs)."""
    path = store.object_path(digest)
    try:
        if size <= SMALL_OBJECT:
            data = read_no_follow(path)
            actual = sha256_bytes(data)
        else:
            data, actual = None, sha256_file(path, follow_symlinks=False)
    except FileNotFoundError:
        try:
            data, actual = store.read_object(digest), digest
        except UserError:
            raise UserError(f"object {digest[:12]} of this store is missing, or damaged in its pack, so it was not "
                            "pushed: run `pipeline.py verify`, which names the stage that rewrites it") from None
    except OSError as error:
        raise UserError(f"object {digest[:12]} of this store cannot be read ({error.strerror}), so it was not "
                        "pushed: run `pipeline.py verify`, which names the stage that rewrites it") from None
    if actual != digest:
        raise UserError(f"object {digest[:12]} of this store is damaged (its bytes hash to {actual[:12]}), so it "
                        "was not pushed: run `pipeline.py verify --repair`, then re-run the stage that made it")
    if data is None:
        remote.upload(_object_key(digest), str(path), sha256=digest)
    else:
        remote.upload_bytes(_object_key(digest), data, sha256=digest)


# -- pull --------------------------------------------------------------------------------------------

class _Records:
    """Enough of a store for Graph.rebuild: the run records it would number versions from."""

    def __init__(self, records: list[RunRecord]):
        self._records = records

    def read_runs(self) -> list[RunRecord]:
        return self._records


def pull(store: Store, remote: Remote, refs: list[str], with_ancestors: bool = False, workers: int = 16,
         progress: bool = False) -> Transfer:
    from lineage.inprogress import run_in_progress

    started = time.perf_counter()
    transfer = Transfer("pull", remote.name)
    # Held shared like a run's: gc cannot sweep what this pull stages before its run records land.
    with run_in_progress(store, f"pull-{uuid.uuid4().hex[:16]}", "pull", log=lambda message: None):
        local = store.read_runs()
        known = {r.id for r in local}
        ids = [key[len(RUNS):-len(".json")] for key in remote.list_keys(RUNS) if key.endswith(".json")]
        fetched = _parallel_map([i for i in ids if is_name(i) and i not in known],
                                lambda run_id: _fetch_run(remote, run_id), workers)
        graph = Graph.rebuild(_Records(local + [record for record, _ in fetched]))
        chosen = select(local + [record for record, _ in fetched], graph, refs, ancestors=with_ancestors)
        chosen_ids = {r.id for r in chosen.runs}
        new_runs = [(record, data) for record, data in fetched if record.id in chosen_ids]

        wanted = [k for k in sorted(chosen.manifests) if not store.manifest_path(k).exists()]
        remote_manifests = set(remote.list_keys(MANIFESTS)) if wanted else set()
        absent = [k for k in wanted if _manifest_key(k) not in remote_manifests]
        if absent:
            raise UserError(f"remote {remote.name} has no manifest of {absent[0].short}: push it again from the "
                            "store that made it (`pipeline.py push`), then pull")
        arrived = dict(_parallel_map(wanted, lambda key: (key, _fetch_manifest(remote, key)), workers))
        manifests = {key: arrived[key][0] if key in arrived else store.read_manifest(key)
                     for key in chosen.with_objects}

        there: dict[str, int] = {}  # the remote's objects, listed once, and only if something is missing here
        first = {d for m in manifests.values() for d in m.inline_objects()}  # files and rows objects
        _fetch_objects(store, remote, sorted(first), there, transfer, workers, progress)
        # A version already here reads its rows' digests from the store's cache; one that just arrived from its
        # rows object, checked against its name on arrival.
        rows = {d for key, m in manifests.items() if m.rows is not None
                for d in store.row_digests(m, cached=key not in arrived)}
        _fetch_objects(store, remote, sorted(rows - first), there, transfer, workers, progress, pack=True)

        for key, (_, data) in sorted(arrived.items()):
            store.write_atomic(store.manifest_path(key), data)
        transfer.manifests = len(arrived)
        with store.locked():
            for record, data in new_runs:
                store.write_atomic(store.run_path(record.id), data)
            if new_runs:
                store.write_run(_pull_record(remote, [record.id for record, _ in new_runs]))
            if new_runs or not store.graph_path.exists():
                Graph.rebuild(store).save(store)
        transfer.runs = len(new_runs)
    transfer.seconds = time.perf_counter() - started
    return transfer


def _pull_record(remote: Remote, brought: list[str]) -> RunRecord:
    """The record of this pull, committed with the runs it brought: the graph numbers their versions from its
    commit, after every version already here, so no number this machine has shown ever changes
    (lineage/graph.py arrival_order). Stamped under the store's lock, as a run's commit is."""
    import datetime
    import platform

    from lineage.provenance import new_run_id

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    return RunRecord(new_run_id(), PULL_STAGE, "finished", started=stamp, finished=stamp, committed=stamp,
                     params={"remote": remote.name, "brought": sorted(brought)}, host=platform.node())


def _fetch_run(remote: Remote, run_id: str) -> tuple[RunRecord, bytes]:
    data = remote.read(f"{RUNS}{run_id}.json")
    try:
        return RunRecord.from_json(parse_json(data), run_id), data
    except CorruptRecord as why:
        raise UserError(f"remote {remote.name}: run record {RUNS}{run_id}.json is damaged ({why}); nothing was "
                        "pulled: remove it from the remote, or push it again from the store that made it") from None


def _fetch_manifest(remote: Remote, key: VersionRef) -> tuple[Manifest, bytes]:
    """A manifest from the remote, checked as the store checks its own: it must hash to its name."""
    data = remote.read(_manifest_key(key))
    try:
        value = parse_json(data)
        if sha256_bytes(data) != key.digest and not (isinstance(value, dict) and "rows" in value
                                                    and manifest_digest(value) == key.digest):
            raise CorruptRecord("its bytes no longer hash to its name")
        return Manifest.from_json(value, key.name), data
    except CorruptRecord as why:
        raise UserError(f"remote {remote.name}: manifest {_manifest_key(key)} is corrupt ({why}); it was not "
                        "pulled: push it again from a store whose `pipeline.py verify` is clean") from None


def _fetch_objects(store: Store, remote: Remote, digests: list[str], there: dict[str, int], transfer: Transfer,
                   workers: int, progress: bool, pack: bool = False) -> None:
    """Bring the objects missing here, each hashed on arrival. With `pack` (a version's images, which are
    only ever decoded, never opened by path), those of at most PACK_OBJECT_LIMIT bytes go into new packs, as
    ingest's do: a file per small image would cost more than its bytes; the rest land as loose objects."""
    todo = store.missing_objects(digests)
    transfer.present += len(digests) - len(todo)
    if todo and not there:
        there.update(_remote_objects(remote))
    absent = [d for d in todo if d not in there]
    if absent:
        raise UserError(f"remote {remote.name} has no object {_object_key(absent[0])} ({len(absent)} missing): "
                        "push again from the store that made these versions, then pull")

    def check_arrived(digest: str, actual: str) -> None:
        if actual != digest:
            raise UserError(f"remote {remote.name}: object {_object_key(digest)} is corrupt (its bytes hash to "
                            f"{actual[:12]}, not to its name); it was not pulled: push it again from a store "
                            "whose `pipeline.py verify` is clean, or remove it from the remote")

    writer: PackWriter | None = store.pack_writer() if pack else None

    def fetch(digest: str) -> int:
        if writer is not None and there[digest] <= PACK_OBJECT_LIMIT:
            data = remote.read(_object_key(digest))
            check_arrived(digest, sha256_bytes(data))
            writer.add(digest, data)  # in place once the writer closes: before any manifest names it
            return len(data)
        staging = str(store.temp_path())
        try:
            actual, size = remote.download(_object_key(digest), staging)
            check_arrived(digest, actual)
            target = store.object_path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
            return size
        finally:
            if os.path.exists(staging):
                os.remove(staging)

    try:
        transfer.bytes += _parallel(todo, fetch, workers, progress, "pull", sum(there[d] for d in todo))
    except BaseException:
        if writer is not None:
            writer.discard()  # packs already closed stay: their objects count as here for the next pull
        raise
    if writer is not None:
        writer.close()
    transfer.objects += len(todo)
    store.forget_listings()


# -- shared ------------------------------------------------------------------------------------------

def _remote_objects(remote: Remote) -> dict[str, int]:
    """digest → size of every object on the remote (keys that are not digests are not objects)."""
    found = {}
    for key, size in remote.list_keys(OBJECTS).items():
        digest = key[len(OBJECTS):].replace("/", "", 1)
        if key[len(OBJECTS) + 2:len(OBJECTS) + 3] == "/" and is_digest(digest):
            found[digest] = size
    return found


def _object_key(digest: str) -> str:
    return f"{OBJECTS}{digest[:2]}/{digest[2:]}"


def _run_key(run_id: str) -> str:
    return f"{RUNS}{run_id}.json"


def _manifest_key(key: VersionRef) -> str:
    return f"{MANIFESTS}{key.name}/{key.digest}.json"


def _parallel(items: list, work: Callable[[object], int], workers: int, progress: bool, desc: str,
              total: int) -> int:
    """Run `work` over items on a thread pool (I/O waits release the GIL); returns the sum of what it
    returned (bytes moved). The first error cancels what has not started and is raised."""
    if not items:
        return 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    moved = 0
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in as_completed(futures):
                size = future.result()
                moved += size
                if bar is not None:
                    bar.update(size)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return moved


def _parallel_map(items: Iterable, work: Callable, workers: int) -> list:
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# -- on demand -----------------------------------------------------------------------------------------

def fetch_missing_inputs(store: Store, inputs: Iterable, log: Callable[[str], None]) -> None:
    """Before a stage runs: bring from the store's default remote the objects of input versions that are only
    there (a store filled by `pull REF` holds its ancestors' records, not their objects). Without a default
    remote nothing happens here, and the stage says what is missing as before."""
    from lineage.remote import load_config, open_remote

    if load_config(store.root)[1] is None:
        return
    lacking = [v for v in inputs if not _present(store, v.key)]
    if not lacking:
        return
    remote = open_remote(store.root, None)
    log(f"fetching {', '.join(v.ref for v in lacking)} from remote {remote.name} (only there)")
    transfer = pull(store, remote, [f"{v.name}:{v.digest}" for v in lacking])
    log(f"  {transfer.summary()}")


def _present(store: Store, key: VersionRef) -> bool:
    if not store.manifest_path(key).exists():
        return False
    manifest = store.read_manifest(key)
    return not store.missing_objects(manifest.inline_objects()) and \
        not store.missing_objects(store.referenced_objects(manifest, cached=True))
