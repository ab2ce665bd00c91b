"""Packs: many small objects in one file, with an index by digest (git's answer to the same cost).

A store of a million 300-byte images cannot afford a million files: on this disk creating one costs
more than reading and hashing the image (bench/bench_scale.py's write floor). So ingest appends the
objects of at most PACK_OBJECT_LIMIT bytes to a pack, and an index names each one by its digest:

    objects/packs/<name>.pack   PACK_MAGIC, then the objects' bytes back to back
    objects/packs/<name>.idx    INDEX_MAGIC, count (u64 LE), the digests (32 bytes each, strictly
                                ascending), offsets and sizes (u64 LE each), then the sha256 of all of
                                that, whose hex is <name>

The index is named by the hash of its bytes and it fixes the pack's bytes (each object must hash to its
digest), so the store's one rule still holds: a thing's name is the hash of its content. A pack is built
in tmp/, fsynced with its index and renamed into place before it: a pack without its index is garbage
that gc removes. An index is used only once its own hash matches its name; its order and bounds are
verify's check (`structure_problem`), since a reader re-hashes every object it reads (one pread), so a
bad index can make an object look missing or corrupt, never wrong. Packs are never appended to: gc
rewrites one without its dead objects under the exclusive lock, and verify re-hashes every object.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import stat
import struct
import threading
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from lineage.atomic import fsync_path, read_no_follow

if TYPE_CHECKING:  # numpy is imported where it is needed: loading an index needs none
    import numpy as np

PACK_MAGIC = b"KLPACK1\n"
INDEX_MAGIC = b"KLIDX01\n"
PACK_OBJECT_LIMIT = 128 << 10  # larger objects stay loose: their file costs little next to their bytes
PACK_BYTES = 256 << 20  # a pack is closed past this, so gc's rewrite of one stays bounded
_HEADER = len(INDEX_MAGIC) + 8
SMALL_SET = 200_000


class DamagedPack(Exception):
    """An index that cannot be trusted; the message says what is wrong with it."""


@dataclass
class Pack:
    """One pack as its checked index describes it: digests ascending, with their offsets and sizes."""

    name: str
    folder: Path
    count: int
    index: bytes = field(repr=False)  # the whole index file, checked

    @property
    def pack_path(self) -> Path:
        return self.folder / f"{self.name}.pack"

    @property
    def index_path(self) -> Path:
        return self.folder / f"{self.name}.idx"

    def digest(self, position: int) -> bytes:
        start = _HEADER + 32 * position
        return self.index[start:start + 32]

    def digest_block(self) -> bytes:
        """The count x 32 digest bytes, ascending."""
        return self.index[_HEADER:_HEADER + 32 * self.count]

    def location(self, position: int) -> tuple[int, int]:
        """(offset, size) of the object at `position` in digest order."""
        at = _HEADER + 32 * self.count + 8 * position
        offset = struct.unpack_from("<Q", self.index, at)[0]
        size = struct.unpack_from("<Q", self.index, at + 8 * self.count)[0]
        return offset, size

    def position(self, digest: bytes) -> int | None:
        """Where a 32-byte digest sits in the index, or None: a bisection on the index bytes (no numpy)."""
        position = bisect.bisect_left(range(self.count), digest, key=self.digest)
        return position if position < self.count and self.digest(position) == digest else None

    def columns(self):
        """(digests as numpy S32, offsets, sizes): for many lookups at once (gc, verify, presence checks)."""
        import numpy as np

        digests = np.frombuffer(self.index, dtype="S32", count=self.count, offset=_HEADER)
        offsets = np.frombuffer(self.index, dtype="<u8", count=self.count, offset=_HEADER + 32 * self.count)
        sizes = np.frombuffer(self.index, dtype="<u8", count=self.count, offset=_HEADER + 40 * self.count)
        return digests, offsets, sizes

    def contains(self, digests) -> np.ndarray:
        """Which of these digests (numpy S32) this pack holds: a bool mask."""
        import numpy as np

        mine = self.columns()[0]
        if not self.count or not len(digests):
            return np.zeros(len(digests), dtype=bool)
        at = np.minimum(np.searchsorted(mine, digests), self.count - 1)
        return mine[at] == digests

    def read(self, offset: int, size: int) -> bytes:
        """The bytes at (offset, size), read without following a symlink (the store never makes one). An
        index edited to claim a huge object gives b"", which hashes to no object's name."""
        if size > PACK_BYTES or offset > 1 << 62:
            return b""
        fd = os.open(self.pack_path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def objects(self, chunk_bytes: int = 8 << 20) -> Iterator[tuple[bytes, bytes]]:
        """Every (digest, bytes) in pack order, read in large chunks: what verify and gc re-hash. DamagedPack
        first if the index's layout is wrong (structure_problem), so no read is sized by a bad index."""
        problem = structure_problem(self)
        if problem is not None:
            raise DamagedPack(problem)
        digests, offsets, sizes = self.columns()
        order = offsets.argsort(kind="stable")
        fd = os.open(self.pack_path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            start = 0
            while start < len(order):
                first = int(offsets[order[start]])
                stop = start
                while stop < len(order) and (stop == start or int(offsets[order[stop]]) + int(sizes[order[stop]])
                                             - first <= chunk_bytes):
                    stop += 1
                last = order[stop - 1]
                block = os.pread(fd, int(offsets[last]) + int(sizes[last]) - first, first)
                for position in order[start:stop].tolist():
                    offset, size = int(offsets[position]) - first, int(sizes[position])
                    yield self.digest(position), block[offset:offset + size]
                start = stop
        finally:
            os.close(fd)


def read_index(path: Path) -> Pack:
    """A pack's index, checked: magic, length, its own hash against its name, and its pack a plain file (no
    numpy: a no-op run reads indexes; `structure_problem` is verify's deeper check). DamagedPack says what
    is wrong; OSError if it cannot be read."""
    data = read_no_follow(path)
    name = path.name[:-len(".idx")]
    if data[:len(INDEX_MAGIC)] != INDEX_MAGIC or len(data) < _HEADER + 32:
        raise DamagedPack("not a pack index (its header is wrong)")
    count = struct.unpack_from("<Q", data, len(INDEX_MAGIC))[0]
    if len(data) != index_size(count):
        raise DamagedPack(f"cut short or padded: {len(data)} bytes for {count} objects")
    if hashlib.sha256(data[:-32]).digest() != data[-32:] or data[-32:].hex() != name:
        raise DamagedPack("its bytes no longer hash to its name")
    pack = Pack(name, path.parent, count, data)
    try:
        info = os.lstat(pack.pack_path)
    except FileNotFoundError:
        raise DamagedPack(f"its pack {pack.pack_path.name} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise DamagedPack(f"its pack {pack.pack_path.name} is not a plain file")
    return pack


def index_size(count: int) -> int:
    """The bytes of the index of a pack of `count` objects: header, digests, offsets, sizes, its own hash."""
    return _HEADER + 48 * count + 32


def structure_problem(pack: Pack) -> str | None:
    """What is wrong with a hash-checked index's layout, or None: digests not strictly ascending, or an object
    outside the pack file. verify asks; readers need not, since every object read is re-hashed (an index
    written by hand with a matching name can only make objects look missing or corrupt, never wrong)."""
    import numpy as np

    digests, offsets, sizes = pack.columns()
    if not pack.count:
        return None
    if not bool(np.all(digests[1:] > digests[:-1])):
        return "its digests are not in ascending order"
    try:
        end = os.lstat(pack.pack_path).st_size
    except OSError as error:
        return f"its pack is unreadable ({error.strerror})"
    if int(offsets.min()) < len(PACK_MAGIC) or int((offsets + sizes).max()) > end:
        return "an object's offset or size leaves the pack file"
    return None


class PackSet:
    """Every trusted pack of a store, loaded on first use; `damaged` lists the indexes that were not."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.packs: list[Pack] = []
        self.damaged: list[tuple[Path, str]] = []
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            names = []
        for name in names:
            if name.endswith(".idx"):
                try:
                    self.packs.append(read_index(folder / name))
                except (DamagedPack, OSError) as why:
                    self.damaged.append((folder / name, str(why) if isinstance(why, DamagedPack) else
                                         f"unreadable: {why.strerror}"))

    def add(self, pack: Pack) -> None:
        self.packs.append(pack)

    def locate(self, digest: str) -> Iterator[tuple[Pack, int, int]]:
        """Each (pack, offset, size) holding this object (two packs may both hold one)."""
        raw = bytes.fromhex(digest)
        for pack in self.packs:
            position = pack.position(raw)
            if position is not None:
                yield (pack, *pack.location(position))

    def holds(self, digest: str) -> bool:
        """Whether some pack's index names this object (not re-hashed)."""
        return next(self.locate(digest), None) is not None

    def read(self, digest: str) -> bytes | None:
        """The object's bytes from the first pack whose copy hashes to its name; None if no pack has one."""
        for pack, offset, size in self.locate(digest):
            try:
                data = pack.read(offset, size)
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == digest:
                return data
        return None

    def contains(self, digests) -> np.ndarray:
        """Which of these digests (numpy S32 or (n, 32) uint8) some pack holds: a bool mask."""
        import numpy as np

        digests = np.ascontiguousarray(digests).view("S32").reshape(-1) if getattr(digests, "dtype", None) \
            is not None and digests.dtype == np.uint8 else np.asarray(digests, dtype="S32")
        present = np.zeros(len(digests), dtype=bool)
        for pack in self.packs:
            present |= pack.contains(digests)
        return present

    def unpacked(self, block: bytes) -> bytes:
        """The digests of `block` (32 bytes each, ascending) that no pack holds, in order: the no-op run's
        presence check. Below SMALL_SET digests in all, sets of bytes (numpy's import costs more than that)."""
        if not self.packs or not block:
            return block
        if len(block) // 32 + sum(p.count for p in self.packs) < SMALL_SET:
            packed = set()
            for pack in self.packs:
                digests = pack.digest_block()
                packed.update(digests[at:at + 32] for at in range(0, len(digests), 32))
            return b"".join(block[at:at + 32] for at in range(0, len(block), 32) if block[at:at + 32] not in packed)
        import numpy as np

        wanted = np.frombuffer(block, dtype="S32")
        return wanted[~self.contains(wanted)].tobytes()


class PackWriter:
    """Appends objects to a pack in tmp/, from many threads; `close` renames each finished pack into place.

    Packs roll over past PACK_BYTES. An object added twice is indexed once (its second copy is dead bytes,
    a few hundred of them). `discard` drops the unfinished pack; finished ones are already in place and,
    if nothing ends up naming their objects, garbage for gc like any leftover object."""

    def __init__(self, folder: Path, temp_dir: Path, on_commit: Callable[[Pack], None] = lambda pack: None,
                 limit_bytes: int = PACK_BYTES):
        self.folder, self.temp_dir, self.on_commit, self.limit_bytes = folder, temp_dir, on_commit, limit_bytes
        self._lock = threading.Lock()
        self._file: io.BufferedWriter | None = None
        self._staging: Path | None = None
        self.committed: list[Pack] = []

    def add(self, digest: str, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._start()
            self._digests += bytes.fromhex(digest)
            self._offsets.append(self._end)
            self._sizes.append(len(data))
            self._file.write(data)
            self._end += len(data)
            if self._end >= self.limit_bytes:
                self._finish()

    def close(self) -> list[Pack]:
        """Finish the open pack (if any) and return every pack this writer put in place."""
        with self._lock:
            if self._file is not None:
                self._finish()
        return self.committed

    def discard(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                _remove(self._staging)

    def _start(self) -> None:
        self._staging = self.temp_dir / f"{uuid.uuid4().hex}.pack"
        self._file = open(self._staging, "wb", buffering=1 << 20)
        self._file.write(PACK_MAGIC)
        self._end = len(PACK_MAGIC)
        self._digests, self._offsets, self._sizes = bytearray(), array("Q"), array("Q")

    def _finish(self) -> None:
        """Index the open pack, fsync both, rename the pack and then its index into place."""
        import numpy as np

        file, staging = self._file, self._staging
        self._file = None
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            # The index is built with one copy of each column and joined once: at 1,000,000 objects each extra
            # copy of the digests is 32 MB, and this runs at the end of ingest, its peak.
            digests = np.frombuffer(self._digests, dtype="S32")
            unique, first = np.unique(digests, return_index=True)  # sorted; a repeat keeps its first copy
            del digests
            self._digests = bytearray()
            count = len(unique)
            parts = [INDEX_MAGIC + struct.pack("<Q", count), unique.tobytes()]
            del unique
            for column in (self._offsets, self._sizes):
                parts.append(np.frombuffer(column, dtype=np.uint64)[first].astype("<u8").tobytes())
            del first
            hashed = hashlib.sha256()
            for part in parts:
                hashed.update(part)
            index = b"".join(parts + [hashed.digest()])
            del parts
            name = index[-32:].hex()
            index_staging = self.temp_dir / f"{uuid.uuid4().hex}.idx"
            with open(index_staging, "wb") as handle:
                handle.write(index)
                handle.flush()
                os.fsync(handle.fileno())
            self.folder.mkdir(parents=True, exist_ok=True)
            os.replace(staging, self.folder / f"{name}.pack")
            os.replace(index_staging, self.folder / f"{name}.idx")
            fsync_path(str(self.folder))
        except BaseException:
            _remove(staging)
            raise
        pack = Pack(name, self.folder, count, index)
        self.committed.append(pack)
        self.on_commit(pack)


def write_pack(folder: Path, temp_dir: Path, objects: Iterator[tuple[str, bytes]]) -> list[Pack]:
    """Write these (digest, bytes) into new packs, in place once whole: gc's and repair's rewrite."""
    writer = PackWriter(folder, temp_dir)
    try:
        for digest, data in objects:
            writer.add(digest, data)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


def remove_pack(pack_path: Path, index_path: Path) -> None:
    """Index first, then the pack: a kill in between leaves a pack without an index, which is garbage."""
    _remove(index_path)
    _remove(pack_path)


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
