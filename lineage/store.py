"""The content-addressed store on disk: objects, manifests, run records, staging and the lock.

Layout (see docs/architecture.md):

    objects/sha256/ab/cdef…          one immutable blob per distinct content
    manifests/<name>/<digest>.json   one immutable manifest per artifact version; <digest> is the
                                     sha256 of the file's own bytes, so verify can re-hash it
    runs/<run-id>.json               one record per stage run: the commit point of a run
    lineage.json                     the graph, derived from manifests/ and runs/ (lineage/graph.py)
    cache/                           derived and disposable
    tmp/                             staging; every write lands here first and is renamed into place

One rule carries dedup, integrity and caching: a thing's name is the hash of its bytes.
Writing an object or a manifest that already exists is a no-op, and a half-written file
never has a name anyone reads, because it is only renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

from lineage.errors import UserError

HASH_CHUNK = 1 << 20
STORE_MARKER = "objects"


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that its digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """A store root on disk. Knows where things live and how to write them atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.objects_dir = self.root / "objects" / "sha256"
        self.manifests_dir = self.root / "manifests"
        self.runs_dir = self.root / "runs"
        self.cache_dir = self.root / "cache"
        self.tmp_dir = self.root / "tmp"
        self.graph_path = self.root / "lineage.json"
        self.lock_path = self.root / "lock"
        self._objects_prefix = f"{self.objects_dir}/"
        self._present: set[str] = set()  # objects seen by missing_objects: they are never removed mid-run
        self._listed: set[str] = set()

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = False) -> "Store":
        """Open a store, creating its folders when asked; refuse a folder that is not one."""
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise UserError(f"store {store.root} is a file, not a folder: pass --store with a folder")
        known = {"objects", "manifests", "runs", "cache", "tmp", "lineage.json", "lock", ".gitkeep"}
        if store.root.is_dir() and not (store.root / STORE_MARKER).is_dir():
            strangers = sorted(p.name for p in store.root.iterdir() if p.name not in known)
            if strangers:
                raise UserError(
                    f"{store.root} is not an artifact store (it holds {', '.join(strangers[:3])}): "
                    "pass --store with an empty or existing store folder")
        if not create and not (store.root / STORE_MARKER).is_dir():
            raise UserError(f"no artifact store at {store.root}: run `pipeline.py ingest` first, "
                            "or pass --store with the store's folder")
        for folder in (store.objects_dir, store.manifests_dir, store.runs_dir, store.cache_dir, store.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return store

    # -- atomic writes -----------------------------------------------------------------

    def temp_path(self, suffix: str = "") -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}"

    def write_atomic(self, path: Path, data: bytes, durable: bool = True) -> None:
        """Write to tmp/, fsync, rename over `path`: readers see the old file or the new one."""
        staging = self.temp_path()
        with open(staging, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, path)
        if durable:
            _fsync_dir(path.parent)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise commits across processes (run records and the graph)."""
        with open(self.lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- objects -----------------------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        return Path(self.object_file(digest))

    def object_file(self, digest: str) -> str:
        """The object's path as a string: the hot paths check 100,000 of these, and pathlib is slow."""
        return f"{self._objects_prefix}{digest[:2]}/{digest[2:]}"

    def has_object(self, digest: str) -> bool:
        return os.path.exists(self.object_file(digest))

    def missing_objects(self, digests: list[str]) -> list[str]:
        """Which of these objects are absent. For many, one listdir per prefix beats a stat per object."""
        if len(digests) < 512:
            return [d for d in digests if not self.has_object(d)]
        missing = [d for d in digests if d not in self._present]
        for prefix in {d[:2] for d in missing} - self._listed:  # each folder listed once per process
            self._listed.add(prefix)
            try:
                self._present.update(prefix + name for name in os.listdir(f"{self._objects_prefix}{prefix}"))
            except FileNotFoundError:
                pass
        return [d for d in missing if d not in self._present]

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store a blob; returns its digest. An object already present is not rewritten.

        Objects are not fsynced one by one (that would cost more than the whole ingest);
        a blob cut short by a power loss fails `verify`'s re-hash and ingest rewrites it.
        """
        digest = digest or sha256_bytes(data)
        self.add_object(data, digest)
        return digest

    @staticmethod
    def _rename_into_place(staging: str, target: str) -> None:
        try:
            os.replace(staging, target)
        except FileNotFoundError:  # the first object under this two-digit prefix; a mkdir per object costs more
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staging, target)

    def add_object(self, data: bytes, digest: str, link_from: str | None = None) -> None:
        """Store bytes whose digest the caller computed; with `link_from`, hard-link that file instead
        of writing the bytes (opt-in: editing the source in place would change the object too, which
        `verify` reports). Links fall back to writing across filesystems."""
        target = self.object_file(digest)
        if os.path.exists(target):
            return
        staging = f"{self.tmp_dir}/{uuid.uuid4().hex}"
        try:
            if link_from is None:
                raise OSError
            os.link(link_from, staging)
        except OSError:
            with open(staging, "wb") as handle:
                handle.write(data)
        self._rename_into_place(staging, target)

    def put_file(self, path: str | os.PathLike) -> tuple[str, int]:
        """Store a file's content, hashing while copying; returns (digest, size)."""
        staging = self.temp_path()
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as source, open(staging, "wb") as sink:
            while chunk := source.read(HASH_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
        hexdigest = digest.hexdigest()
        target = self.object_path(hexdigest)
        if os.path.exists(target):
            staging.unlink()
        else:
            target.parent.mkdir(exist_ok=True)
            os.replace(staging, target)
        return hexdigest, size

    def read_object(self, digest: str) -> bytes:
        try:
            return self.object_path(digest).read_bytes()
        except FileNotFoundError:
            raise UserError(f"object {digest[:12]} is missing from the store: run `pipeline.py verify`") from None

    # -- manifests and runs ------------------------------------------------------------

    def manifest_path(self, name: str, digest: str) -> Path:
        return self.manifests_dir / name / f"{digest}.json"

    def put_manifest(self, manifest: dict) -> str:
        """Write a version's manifest; its digest is the hash of its canonical bytes."""
        data = canonical_json(manifest)
        digest = sha256_bytes(data)
        path = self.manifest_path(manifest["name"], digest)
        if not path.exists():
            self.write_atomic(path, data)
        return digest

    def read_manifest(self, name: str, digest: str) -> dict:
        path = self.manifest_path(name, digest)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"manifest {name}@{digest[:12]} is missing: run `pipeline.py verify`") from None
        except json.JSONDecodeError:
            raise UserError(f"manifest {path} is corrupt: run `pipeline.py verify`") from None

    def run_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def put_run(self, record: dict) -> None:
        """Writing the run record is the commit point of a run."""
        self.write_atomic(self.run_path(record["id"]), json.dumps(record, indent=1, sort_keys=True).encode())

    def read_runs(self) -> list[dict]:
        records = []
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                records.append(json.loads(path.read_bytes()))
            except json.JSONDecodeError:
                raise UserError(f"run record {path} is corrupt: move it aside, then run "
                                "`pipeline.py lineage --rebuild`") from None
        return records

    def list_manifests(self) -> Iterator[tuple[str, str]]:
        for folder in sorted(self.manifests_dir.iterdir()) if self.manifests_dir.exists() else []:
            for path in sorted(folder.glob("*.json")):
                yield folder.name, path.stem


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
