"""The content-addressed store on disk: objects, manifests, run records, staging and the lock.

Layout (see docs/architecture.md):

    objects/sha256/ab/cdef…          one immutable blob per distinct content
    objects/packs/<name>.pack, .idx  small objects packed together, indexed by digest (lineage/packs.py)
    manifests/<name>/<digest>.json   one immutable manifest per artifact version; <digest> is the
                                     sha256 of its canonical bytes, less the name of its rows
                                     object (lineage/rows.py), so verify can re-hash it
    runs/<run-id>.json               one record per stage run: the commit point of a run
    lineage.json                     the graph, derived from manifests/ and runs/ (lineage/graph.py)
    cache/                           derived and disposable
    tmp/                             staging; every write lands here first and is renamed into place

One rule carries dedup, integrity and caching: a thing's name is the hash of its bytes.
Writing an object or a manifest that already exists is a no-op, and a half-written file
never has a name anyone reads, because it is only renamed into place once complete.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lineage.atomic import read_no_follow, write_atomic
from lineage.errors import UserError
from lineage.packs import PackSet, PackWriter
from lineage.records import (CorruptRecord, Manifest, RowsRef, RunRecord, VersionRef, is_digest, is_name,
                              parse_json)

HASH_CHUNK = 1 << 20
STORE_MARKER = "objects"


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that its digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(value: dict) -> str:
    """A version's digest: the sha256 of its manifest's canonical JSON, less the name of its rows object (the
    Parquet bytes vary with the library that wrote them; the rows' stream digest, which stays, does not)."""
    rows = value.get("rows")
    if isinstance(rows, dict) and "object" in rows:
        value = {**value, "rows": {key: item for key, item in rows.items() if key != "object"}}
    return sha256_bytes(canonical_json(value))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, follow_symlinks: bool = True) -> str:
    """The file's sha256, read in chunks; without `follow_symlinks` a symlink is refused (ELOOP)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:  # os.read on the descriptor: a buffered file object costs more syscalls than a tiny object's read
        while chunk := os.read(fd, HASH_CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
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
        self.quarantine_dir = self.root / "quarantine"  # damaged files moved aside by `verify --repair`
        self.packs_dir = self.root / "objects" / "packs"
        self._objects_prefix = f"{self.objects_dir}/"
        self._packs: PackSet | None = None  # loaded on first use: most commands never read an image
        # Checked manifests by (name, digest): a manifest's name is the hash of its bytes, so one that has
        # passed the check once is the same wherever it is read again in this process.
        self._manifests: dict[VersionRef, Manifest] = {}
        # Object folder listings by two-digit prefix (names without the prefix), made by missing_objects: for
        # many objects one listdir per prefix beats a stat per object.
        self._listed: dict[str, set[str]] = {}

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = False) -> "Store":
        """Open a store, creating its folders when asked; refuse a folder that is not one."""
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise UserError(f"store {store.root} is a file, not a folder: pass --store with a folder")
        known = {"objects", "manifests", "runs", "cache", "tmp", "lineage.json", "lock", ".gitkeep", "quarantine",
                 "inprogress", "runs.lock", "remotes.json"}
        if store.root.is_dir() and not (store.root / STORE_MARKER).is_dir():
            strangers = sorted(p.name for p in store.root.iterdir() if p.name not in known)
            if strangers:
                raise UserError(
                    f"{store.root} is not an artifact store (it holds {', '.join(strangers[:3])}): "
                    "pass --store with an empty or existing store folder")
        if not create and not (store.root / STORE_MARKER).is_dir():
            raise UserError(f"no artifact store at {store.root}: run `pipeline.py ingest` first, "
                            "or pass --store with the store's folder")
        store.refuse_symlinks()
        for folder in (store.objects_dir, store.manifests_dir, store.runs_dir, store.cache_dir, store.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return store

    def refuse_symlinks(self) -> None:
        """A store never writes or deletes through a link inside itself: a linked folder could point anywhere."""
        for path in (self.objects_dir.parent, self.objects_dir, self.packs_dir, self.manifests_dir, self.runs_dir,
                     self.cache_dir, self.tmp_dir, self.root / "inprogress", self.lock_path, self.root / "runs.lock"):
            if os.path.islink(path):
                raise UserError(f"{path} is a symlink (to {os.readlink(path)}), not part of the store: the store "
                                "never follows links inside itself; replace it with a real folder, or remove it")

    def forget_listings(self) -> None:
        """Forget which objects were seen present: a run calls this when it takes its hold on the store,
        as gc may have swept between two runs of one process (see lineage/inprogress.py)."""
        self._listed.clear()
        self._packs = None

    @property
    def packs(self) -> PackSet:
        """The store's packs, their indexes checked once per process (forget_listings loads them again)."""
        if self._packs is None:
            self._packs = PackSet(self.packs_dir)
        return self._packs

    def pack_writer(self) -> PackWriter:
        """A writer of new packs; each finished pack is in place, and known to this store, at once."""
        return PackWriter(self.packs_dir, self.tmp_dir, on_commit=lambda pack: self.packs.add(pack))

    # -- atomic writes -----------------------------------------------------------------

    def temp_path(self, suffix: str = "") -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}"

    def write_atomic(self, path: Path, data: bytes, durable: bool = True) -> None:
        """Write to tmp/, fsync, rename over `path`: readers see the old file or the new one."""
        write_atomic(path, data, durable=durable, temp_dir=self.tmp_dir)

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
        """A loose object's path (a packed one has none: read it with read_object or open_object); a digest
        that is not 64 hex characters (`../../etc/passwd` from an edited manifest) is refused before any path
        is built from it."""
        if not is_digest(digest):
            raise UserError(f"{str(digest)[:80]!r} is not an object digest (64 hex characters): a manifest or "
                            "run record is damaged; run `pipeline.py verify`")
        return Path(self._object_file(digest))

    def _object_file(self, digest: str) -> str:
        """The object's path as a string, unchecked: for digests this process computed or read from a
        checked manifest, on paths that handle 100,000 of them (pathlib is slow)."""
        return f"{self._objects_prefix}{digest[:2]}/{digest[2:]}"

    def missing_objects(self, digests: list[str]) -> list[str]:
        """Which of these objects are absent, loose and packed. For many, one listdir per prefix beats a stat
        per object."""
        if len(digests) < 512:
            loose_missing = [d for d in digests if not os.path.exists(self._object_file(d))]
        else:
            listed = self._listed
            for prefix in {d[:2] for d in digests} - listed.keys():  # each folder listed once per process
                try:
                    listed[prefix] = set(os.listdir(f"{self._objects_prefix}{prefix}"))
                except FileNotFoundError:
                    listed[prefix] = set()
            loose_missing = [d for d in digests if d[2:] not in listed[d[:2]]]
        if not loose_missing or not self.packs.packs:
            return loose_missing
        if len(loose_missing) < 512:
            return [d for d in loose_missing if not self.packs.holds(d)]
        import numpy as np

        packed = self.packs.contains(np.array([bytes.fromhex(d) for d in loose_missing], dtype="S32"))
        return [d for d, here in zip(loose_missing, packed.tolist()) if not here]

    def has_object(self, digest: str) -> bool:
        """Whether the object is here, loose or packed (not re-hashed)."""
        return os.path.exists(self._object_file(digest)) or self.packs.holds(digest)

    def objects_present(self, digests):
        """Which of these 32-byte digests (a numpy (n, 32) uint8 array) name an object here, loose or packed:
        a bool mask. For many, one listdir per two-digit prefix, a prefix at a time, so a million names are
        never held at once; then one search per pack for the rest."""
        import numpy as np

        from lineage import rows as row_format

        present = np.zeros(len(digests), dtype=bool)
        if len(digests) < 512:
            for index, name in enumerate(row_format.hex_digests(digests).to_pylist()):
                present[index] = os.path.exists(self._object_file(name))
        else:
            first = digests[:, 0]
            order = np.argsort(first, kind="stable")
            bounds = np.searchsorted(first[order], np.arange(257))
            for prefix in range(256):
                rows = order[bounds[prefix]:bounds[prefix + 1]]
                if not len(rows):
                    continue
                try:
                    listed = set(os.listdir(f"{self._objects_prefix}{prefix:02x}"))
                except FileNotFoundError:
                    continue
                wanted = row_format.hex_digests(digests[rows]).to_pylist()
                present[rows] = [name[2:] in listed for name in wanted]
        absent = np.flatnonzero(~present)
        if len(absent) and self.packs.packs:
            present[absent] = self.packs.contains(digests[absent])
        return present

    def write_object(self, data: bytes, digest: str | None = None, link_from: str | None = None,
                     recheck: bool = False) -> str:
        """Store a blob; returns its digest (computed here unless the caller already hashed it). An intact
        object already present is not rewritten.

        With `link_from`, hard-link that file instead of writing the bytes (opt-in: editing the source
        in place would change the object too, which `verify` reports); links fall back to writing
        across filesystems. Objects are not fsynced one by one (that would cost more than the whole
        ingest). A blob cut short by a power loss has the wrong size, which the one stat made anyway
        catches, so the next write of the same content replaces it; a same-size corruption is caught
        by `verify`'s re-hash and replaced when the stage re-runs with --force (`recheck`).
        """
        digest = digest or sha256_bytes(data)
        target = self._object_file(digest)
        if self._object_intact(target, len(data), digest, recheck):
            return digest
        staging = f"{self.tmp_dir}/{uuid.uuid4().hex}"
        try:
            if link_from is None:
                raise OSError
            os.link(link_from, staging)
        except OSError:
            with open(staging, "wb") as handle:
                handle.write(data)
        self._rename_into_place(staging, target)
        return digest

    def pack_object(self, writer: PackWriter, data: bytes, digest: str, recheck: bool = False) -> str:
        """Store a small blob through a pack writer; returns its digest. An intact copy already here, loose or
        packed, is kept and nothing is written (with `recheck`, only one whose bytes hash to its name)."""
        if self._object_intact(self._object_file(digest), len(data), digest, recheck):
            return digest
        for _, _, size in self.packs.locate(digest):
            if size == len(data) and (not recheck or self.packs.read(digest) is not None):
                return digest
        writer.add(digest, data)
        return digest

    def copy_object(self, path: str | os.PathLike, recheck: bool = False) -> tuple[str, int]:
        """Store a file's content, hashing while copying (never whole in memory); returns (digest, size).
        A damaged object already there is replaced (see write_object)."""
        staging = self.temp_path()
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as source, open(staging, "wb") as sink:
            while chunk := source.read(HASH_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
        hexdigest = digest.hexdigest()
        target = self._object_file(hexdigest)
        if self._object_intact(target, size, hexdigest, recheck):
            staging.unlink()
        else:
            self._rename_into_place(str(staging), target)
        return hexdigest, size

    @staticmethod
    def _object_intact(target: str, size: int, digest: str, recheck: bool) -> bool:
        """Whether an existing object can stand: a plain file of the right size (one lstat, as cheap as
        the exists() it replaces), and with `recheck` its bytes hash to its name. A symlink never can."""
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
        return not recheck or sha256_file(target) == digest

    @staticmethod
    def _rename_into_place(staging: str, target: str) -> None:
        try:
            os.replace(staging, target)
        except FileNotFoundError:  # the first object under this two-digit prefix; a mkdir per object costs more
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staging, target)

    def read_object(self, digest: str) -> bytes:
        """An object's bytes, loose or packed, checked against its name."""
        path = self.object_path(digest)
        try:
            data = read_no_follow(path)
        except FileNotFoundError:
            packed = self.packs.read(digest)
            if packed is None and self._packs is not None:  # another process may have packed it since
                self._packs = None
                packed = self.packs.read(digest)
            if packed is not None:
                return packed
            if self.packs.holds(digest):
                raise UserError(f"object {digest[:12]} is corrupt in its pack: its bytes no longer hash to its "
                                "name; run `pipeline.py verify` to see which stage rewrites it") from None
            raise UserError(f"object {digest[:12]} is missing from the store: run `pipeline.py verify`") from None
        except OSError as error:  # ELOOP: a symlink, which the store never makes
            raise UserError(f"object {path} is unreadable ({error.strerror}): run `pipeline.py verify`") from None
        if sha256_bytes(data) != digest:
            raise UserError(f"object {path} is corrupt: its bytes no longer hash to its name; "
                            "run `pipeline.py verify` to see which stage rewrites it")
        return data

    def open_object(self, digest: str) -> BinaryIO:
        """An image's bytes as a file to decode: a loose object's file (not re-hashed, as a path would not be),
        or a packed object read and checked whole (packed objects are small)."""
        try:
            return open(os.open(self.object_path(digest), os.O_RDONLY | os.O_NOFOLLOW), "rb")
        except FileNotFoundError:
            return io.BytesIO(self.read_object(digest))

    def object_size(self, digest: str) -> int:
        """An object's size in bytes, loose or packed (FileNotFoundError if it is neither)."""
        try:
            return os.lstat(self._object_file(digest)).st_size
        except FileNotFoundError:
            for _, _, size in self.packs.locate(digest):
                return size
            raise

    # -- manifests and runs ------------------------------------------------------------

    def manifest_path(self, ref: VersionRef) -> Path:
        """A manifest's path; a name or digest that would leave manifests/ is refused first."""
        if not is_name(ref.name) or not is_digest(ref.digest):
            raise UserError(f"{str(ref.name)[:40]!r}@{str(ref.digest)[:80]!r} is not a version reference: a run "
                            "record or manifest is damaged; run `pipeline.py verify`")
        return self.manifests_dir / ref.name / f"{ref.digest}.json"

    def write_manifest(self, manifest: Manifest) -> VersionRef:
        """Write a version's manifest; its digest is the hash of its canonical bytes (`manifest_digest`). One
        already there is kept only if it holds exactly these bytes: a damaged one is rewritten, atomically.

        A new manifest's rows (`entries` or `splits`) go to a columnar object first (lineage/rows.py); a
        manifest read from the store is written back in the form it was read in, so its digest stays."""
        if manifest.json_keys is None and manifest.rows is None \
                and (manifest.entries or manifest.splits or manifest.table is not None):
            manifest.rows = self.write_rows(manifest)
        value = manifest.to_json()
        data = canonical_json(value)
        ref = VersionRef(manifest.name, manifest_digest(value))
        path = self.manifest_path(ref)
        try:
            intact = not path.is_symlink() and path.read_bytes() == data
        except OSError:
            intact = False
        if not intact:
            self.write_atomic(path, data)
        return ref

    def read_manifest_or_corrupt(self, ref: VersionRef) -> Manifest:
        """The checked manifest, or CorruptRecord saying what is wrong (FileNotFoundError if absent): for
        `verify` and `verify --repair`, which report damage instead of stopping at it."""
        if ref in self._manifests:
            return self._manifests[ref]
        data = _record_bytes(self.manifest_path(ref))
        if sha256_bytes(data) == ref.digest:  # the old, inline form
            value = parse_json(data)
        else:  # a manifest with rows: its digest leaves out the rows object's name
            try:
                value = parse_json(data)
            except CorruptRecord:
                value = None
            if not (isinstance(value, dict) and "rows" in value and manifest_digest(value) == ref.digest):
                raise CorruptRecord("its bytes no longer hash to its name")
        manifest = self._manifests[ref] = Manifest.from_json(value, ref.name)
        return manifest

    # -- a version's rows (lineage/rows.py) --------------------------------------------

    def write_rows(self, manifest: Manifest, **parquet_settings) -> RowsRef:
        """Store a new manifest's rows as a Parquet object; returns the reference its JSON keeps."""
        from lineage import rows

        if manifest.table is not None:  # built as columns by the stage, in stream order (rows.table_from_columns)
            table = manifest.table
            fmt = "splits-v1" if "split" in table.column_names else "images-v1"
        elif manifest.splits:
            fmt, table = "splits-v1", rows.splits_table(manifest.splits)
        else:
            fmt, table = "images-v1", rows.images_table(manifest.entries)
        staging = str(self.temp_path(".parquet"))
        rows.write_parquet(table, staging, **parquet_settings)
        digest, _ = self.copy_object(staging, recheck=True)  # a damaged rows object is replaced by any re-run
        if os.path.exists(staging):
            os.unlink(staging)
        ref = RowsRef(fmt, table.num_rows, rows.stream_digest(fmt, [table]), digest)
        if "digest" in table.column_names:
            import numpy as np

            packed = rows.packed_digests(table.column("digest"))
            leading = np.ascontiguousarray(packed[:, :8]).view(">u8").ravel()
            self._write_digest_cache(ref, packed[np.argsort(leading, kind="stable")].tobytes())
        return ref

    def read_rows(self, manifest: Manifest, columns: list[str] | None = None):
        """A version's rows as a pyarrow Table (only `columns`, if named): from its rows object, or built from
        an old manifest's inline entries. The object must hash to its name; a missing or damaged one is a
        UserError naming the fix. (That its rows hash to the manifest's stream digest is `verify`'s check.)"""
        from lineage import rows

        if manifest.rows is None:
            table = rows.splits_table(manifest.splits) if manifest.splits else rows.images_table(manifest.entries) \
                if manifest.entries else None
            if table is None:
                raise UserError(f"{manifest.name} holds no rows: only raw-data and split versions have them")
            return table.select(columns) if columns else table
        path = self._rows_object(manifest.rows)
        try:
            return rows.read_table(path, manifest.rows.format, manifest.rows.count, columns)
        except CorruptRecord as why:
            raise UserError(f"rows object {path} of {manifest.name} is damaged ({why}): run `pipeline.py verify`, "
                            "which names the stage to re-run") from None

    def _rows_object(self, ref: RowsRef) -> str:
        """The rows object's path, once its bytes are checked against its name (one read, as read_object)."""
        path = self._object_file(ref.object)
        try:
            actual = sha256_file(path, follow_symlinks=False)
        except FileNotFoundError:
            raise UserError(f"rows object {ref.object[:12]} is missing from the store: run `pipeline.py verify`") \
                from None
        except OSError as error:
            raise UserError(f"rows object {path} is unreadable ({error.strerror}): run `pipeline.py verify`") from None
        if actual != ref.object:
            raise UserError(f"rows object {path} is corrupt: its bytes no longer hash to its name; "
                            "run `pipeline.py verify` to see which stage rewrites it")
        return path

    def row_digests(self, manifest: Manifest, cached: bool = False) -> list[str]:
        """The object digests a version's rows name (images, for raw-data and a split). With `cached`, from a
        plain file under cache/rows/ when one is there: a no-op `run` checks presence without pyarrow. Only
        for that: gc and verify read the rows object itself (a cache file is not evidence)."""
        if manifest.rows is None:
            return [d for per_class in manifest.splits.values() for chunk in per_class.values() for d in chunk] \
                + [entry["digest"] for entry in manifest.entries]
        if cached:
            digests = self._read_digest_cache(manifest.rows)
            if digests is not None:
                return digests
        digests = self.read_rows(manifest, ["digest"]).column("digest").to_pylist()
        self._write_digest_cache(manifest.rows, bytes.fromhex("".join(sorted(digests))))
        return digests

    def referenced_objects(self, manifest: Manifest, cached: bool = False) -> list[str]:
        """Every object a version needs: its files, its rows object and the objects its rows name."""
        return manifest.inline_objects() + (self.row_digests(manifest, cached) if manifest.rows is not None else [])

    def owned_objects(self, manifest: Manifest) -> list[str]:
        """The objects the stage that made the version wrote: its files, rows object and, for raw-data, its
        images (a split only refers to raw-data's; re-running split writes none of them)."""
        owned = manifest.owned_objects()
        return owned + self.row_digests(manifest) if manifest.rows is not None and manifest.owns_rows else owned

    def rows_problem(self, manifest: Manifest, each_batch: Callable[[Any], None] | None = None) -> str | None:
        """What is wrong with a version's rows object, or None: it is read batch by batch (bounded memory)
        and its canonical stream must hash to the digest the manifest (and so the version's name) holds.
        `each_batch` sees every checked batch on the way (gc and verify take the digests from the one read)."""
        from lineage import rows

        if manifest.rows is None:
            return None
        path = self._object_file(manifest.rows.object)
        batches = rows.iter_batches(path, manifest.rows.format, manifest.rows.count)
        if each_batch is not None:
            batches = (each_batch(batch) or batch for batch in batches)
        try:
            actual = rows.stream_digest(manifest.rows.format, batches)
        except CorruptRecord as why:
            return str(why)
        except OSError as error:
            return f"unreadable: {error.strerror}"
        if actual != manifest.rows.digest:
            return f"its rows hash to {actual[:12]}, not to the {manifest.rows.digest[:12]} its manifest names"
        return None

    def rows_present(self, manifest: Manifest) -> bool:
        """Every object a version's rows name is present (not re-hashed: that is `verify`): what a cache hit
        checks. From the sorted digest cache when there is one: packed images by a search of each pack's
        index, loose ones a prefix folder at a time, so a million names are never held at once; no pyarrow."""
        if manifest.rows is None:
            return not self.missing_objects(manifest.inline_objects())
        if self._still_packed(manifest.rows):
            return True
        try:
            data = read_no_follow(Path(self._digest_cache_path(manifest.rows)))
        except OSError:
            data = b""
        count = manifest.rows.count
        if len(data) != 32 * count:
            return not self.missing_objects(self.row_digests(manifest))
        if self.packs.packs:  # packed images first, then the loose check for what is left
            data = self.packs.unpacked(data)
            count = len(data) // 32
            if not count:
                self._note_packed(manifest.rows)
        start = 0
        while start < count:
            prefix = data[32 * start]
            stop = bisect.bisect_right(range(count), prefix, lo=start, key=lambda row: data[32 * row])
            try:
                listed = set(os.listdir(f"{self._objects_prefix}{prefix:02x}"))
            except FileNotFoundError:
                return False
            text = data[32 * start:32 * stop].hex()
            if any(text[at + 2:at + 64] not in listed for at in range(0, len(text), 64)):
                return False
            start = stop
        return True

    # A version whose every row names a packed image is noted with the packs that held them: while those packs
    # are all in place, the next check reads no index (48 MB at 1,000,000 images). A pack's name is the hash of
    # its index, so a pack of that name holds what it held; gc removes or renames a pack it changes.
    def _packed_note_path(self, ref: RowsRef) -> str:
        return f"{self.cache_dir}/rows/{ref.object}.packed-in"

    def _note_packed(self, ref: RowsRef) -> None:
        names = "".join(f"{pack.name}\n" for pack in self.packs.packs)
        try:
            self.write_atomic(Path(self._packed_note_path(ref)), names.encode(), durable=False)
        except OSError:  # a note that cannot be written: the indexes are searched next time
            pass

    def _still_packed(self, ref: RowsRef) -> bool:
        try:
            names = read_no_follow(Path(self._packed_note_path(ref))).decode("ascii").split("\n")
        except (OSError, UnicodeDecodeError):
            return False
        if not names or names[-1] != "" or not all(is_digest(name) for name in names[:-1]):
            return False  # cut short or edited: ignored, and written again after the full check
        for name in names[:-1]:
            for suffix in (".idx", ".pack"):
                try:
                    if not stat.S_ISREG(os.lstat(f"{self.packs_dir}/{name}{suffix}").st_mode):
                        return False
                except OSError:
                    return False
        return len(names) > 1

    def _digest_cache_path(self, ref: RowsRef) -> str:
        # Sorted by digest (by its first 8 bytes), so a presence check takes one prefix folder at a time (the
        # `.digests` files of earlier versions held row order, which cannot be checked that way: left unread).
        return f"{self.cache_dir}/rows/{ref.object}.sorted-digests"

    def _write_digest_cache(self, ref: RowsRef, packed: bytes) -> None:
        """32 bytes per digest, sorted: read back without pyarrow or numpy."""
        path = Path(self._digest_cache_path(ref))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_atomic(path, packed, durable=False)
        except OSError:  # a cache that cannot be written is recomputed next time
            pass

    def _read_digest_cache(self, ref: RowsRef) -> list[str] | None:
        try:
            data = read_no_follow(Path(self._digest_cache_path(ref)))
        except OSError:
            return None
        if len(data) != 32 * ref.count:
            return None
        text = data.hex()
        return [text[start:start + 64] for start in range(0, len(text), 64)]

    def read_manifest(self, ref: VersionRef) -> Manifest:
        """A version's manifest; a missing or damaged one is a UserError that says how to rewrite it."""
        path = self.manifest_path(ref)
        try:
            return self.read_manifest_or_corrupt(ref)
        except FileNotFoundError:
            raise UserError(f"manifest {path} of {ref.short} is missing: {self.manifest_fix(ref)}") from None
        except CorruptRecord as why:
            raise UserError(f"manifest {path} is corrupt ({why}): {self.manifest_fix(ref)}") from None

    def manifest_fix(self, ref: VersionRef, records: list[RunRecord] | None = None) -> str:
        """The command that rewrites a version's manifest: a re-run of the stage that made it."""
        records = self.scan_runs()[0] if records is None else records
        stages = sorted({r.stage for r in records if r.status == "finished" and any(o.key == ref for o in r.outputs)})
        if not stages:
            return ("no finished run made it, so no version is lost: `pipeline.py verify --repair` moves it to "
                    "quarantine/")
        return rerun_fix(stages[0])

    def run_path(self, run_id: str) -> Path:
        if not is_name(run_id):
            raise UserError(f"{str(run_id)[:40]!r} is not a run id: lineage.json is damaged; "
                            "run `pipeline.py lineage --rebuild`")
        return self.runs_dir / f"{run_id}.json"

    def write_run(self, record: RunRecord) -> None:
        """Writing the run record is the commit point of a run."""
        self.write_atomic(self.run_path(record.id), json.dumps(record.to_json(), indent=1, sort_keys=True).encode())

    def read_run(self, run_id: str) -> RunRecord | None:
        """One run record (None if it is not there); a damaged one is a UserError with the fix."""
        path = self.run_path(run_id)
        try:
            return _read_run_file(path)
        except FileNotFoundError:
            return None
        except CorruptRecord as why:
            raise UserError(damaged_run_message(path, str(why))) from None

    def scan_runs(self) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
        """Every run record: the good ones, and (path, what is wrong) for each damaged one."""
        records, damaged = [], []
        for path in sorted(self.runs_dir.glob("*.json")) if self.runs_dir.is_dir() else []:
            try:
                records.append(_read_run_file(path))
            except FileNotFoundError:  # removed while listing (a quarantine by another process)
                continue
            except CorruptRecord as why:
                damaged.append((path, str(why)))
        return records, damaged

    def read_runs(self) -> list[RunRecord]:
        """Every run record; the first damaged one is a UserError naming it and `lineage --rebuild`."""
        records, damaged = self.scan_runs()
        if damaged:
            raise UserError(damaged_run_message(*damaged[0]))
        return records

    def list_manifests(self) -> Iterator[VersionRef]:
        """Every version with a manifest file. Files whose names are not a name and a digest are not
        manifests: `verify` reports them, and nothing else builds a path from them."""
        for folder in sorted(self.manifests_dir.iterdir()) if self.manifests_dir.exists() else []:
            if not is_name(folder.name):
                continue
            for path in sorted(folder.glob("*.json")):
                if is_digest(path.stem):
                    yield VersionRef(folder.name, path.stem)

    # -- quarantine --------------------------------------------------------------------

    def quarantine(self, path: Path, kind: str) -> Path:
        """Move a damaged file (or symlink, never followed) to quarantine/<kind>/…, keeping its path below
        its own folder; nothing is deleted, and the next run that writes it writes it afresh."""
        base = {"objects": self.objects_dir, "manifests": self.manifests_dir, "runs": self.runs_dir}.get(kind)
        relative = path.relative_to(base) if base is not None and base in path.parents else Path(path.name)
        target = self.quarantine_dir / kind / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        candidate, copy = target, 1
        while candidate.exists() or candidate.is_symlink():  # an earlier quarantine of the same name stays too
            candidate = target.with_name(f"{target.name}.{copy}")
            copy += 1
        os.rename(path, candidate)
        return candidate

    def quarantined_versions(self) -> set[VersionRef]:
        """Manifests that a quarantined run record may have committed: every (name, digest) in
        manifests/ whose digest appears in the bytes of a record in quarantine/runs/. gc keeps these,
        so a damaged record never costs the versions it made; re-running their stage records them again."""
        mentioned = self.quarantine_mentions("runs")
        return {ref for ref in self.list_manifests() if ref.digest in mentioned} if mentioned else set()

    def quarantine_mentions(self, kind: str) -> set[str]:
        """Every digest the bytes of quarantine/<kind>/ still mention. For gc: objects a quarantined
        manifest names stay until its stage has re-run, so a repair never costs a version its objects."""
        mentioned: set[str] = set()
        folder = self.quarantine_dir / kind
        for top, _, names in os.walk(folder) if folder.is_dir() else ():
            for name in names:
                path = os.path.join(top, name)
                if not os.path.islink(path):
                    with open(path, "rb") as handle:
                        mentioned.update(m.decode() for m in _DIGEST_BYTES.findall(handle.read()))
        return mentioned


_DIGEST_BYTES = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def rerun_fix(stage: str) -> str:
    return (f"re-run `pipeline.py {stage} --force` with the config that made it to rewrite it "
            "(same inputs give the same digest)")


def damaged_run_message(path: Path, why: str) -> str:
    return (f"run record {path} is damaged ({why}): run `pipeline.py lineage --rebuild`, which moves it to "
            "quarantine/runs/ and keeps the versions it made")


def _read_run_file(path: Path) -> RunRecord:
    """The checked run record in `path`, or CorruptRecord saying what is wrong (FileNotFoundError if absent)."""
    return RunRecord.from_json(parse_json(_record_bytes(path)), path.stem)


def _record_bytes(path: Path) -> bytes:
    """A manifest's or run record's bytes: FileNotFoundError if absent, CorruptRecord if unreadable
    (a symlink among them: the store never makes one)."""
    try:
        return read_no_follow(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CorruptRecord(f"unreadable: {error.strerror}") from None
