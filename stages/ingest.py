"""ingest: a folder with one subfolder per class becomes `raw-data:vN`.

Every file is read once: hashed, checked from its header (images/check.py) and, if the
store lacks its content, staged as an object, all from the same bytes: a small one (most images of a
large dataset) appended to a pack (lineage/packs.py), since creating a file per image costs more than
reading and hashing it. Threads do the work in
parallel because hashing and file I/O release the GIL. A stat cache of (size, mtime_ns, inode)
(images/statcache.py) lets an unchanged file skip all of that, and the runner's cache key uses the same stat data
(`fingerprint`), so re-ingesting an unchanged folder reads no file content at all.
"""

from __future__ import annotations

import errno
import hashlib
import operator
import os
import unicodedata
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Annotated, Iterator, Literal, NamedTuple

from images.check import DEFAULT_MAX_PIXELS, Rejected, inspect_image, inspect_large_file
from images import statcache
from lineage.contract import Fingerprint, Output, StageContext
from lineage.display import format_counts, printable_name
from lineage.errors import UserError
from lineage.packs import PACK_OBJECT_LIMIT
from lineage.params import Range
from lineage.records import Manifest
from lineage.rows import take_ascending
from lineage.store import canonical_json

NAME = "ingest"
OUTPUT = "raw-data"
CODE = ("stages/ingest.py", "images/check.py", "images/statcache.py")
PROGRESS_MIN_FILES = 500
CHUNK_FILES = 64
FINGERPRINT_FILES = 65536
ARROW_SLICE_FILES = 65536
THREADED_MEAN_BYTES = 32 << 10
LARGE_FILE_BYTES = 64 << 20  # above this a file is streamed, never read whole (see _examine_large)


@dataclass
class Params:
    source: str = ""
    on_label_conflict: Literal["error", "drop"] = "error"
    full_decode: bool = False
    max_pixels: Annotated[int, Range(1)] = DEFAULT_MAX_PIXELS
    # copy (safe), or hardlink: no bytes copied (same filesystem only, else copied), as DVC's
    # cache.type: hardlink; a source file then edited in place changes the object, and verify says so.
    link: Literal["copy", "hardlink"] = field(default="copy", metadata={"cache": False})
    # Threads for files of THREADED_MEAN_BYTES or more on average: one per core measured fastest (hashing and
    # I/O release the GIL; more threads only contend). Smaller files take one thread (see _examine_all).
    workers: Annotated[int, Range(1, 256)] = field(default_factory=lambda: os.cpu_count() or 2,
                                                   metadata={"cache": False})


class Examined(NamedTuple):
    """What reading one file found: an image's digest (32 bytes), format and size, or why it was rejected.
    `cacheable` is False when the result must not be cached (unreadable, changed while read)."""

    cacheable: bool
    digest: bytes | None = None
    format: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None


@dataclass
class Scan:
    """The source's files as parallel columns in scan order (class folder by class folder, each sorted by
    path): a million files are a list of str and three int arrays, not a million tuples."""

    paths: list[str] = field(default_factory=list)  # posix paths under the source root, the entries' `path`
    sizes: array = field(default_factory=lambda: array("q"))
    mtimes: array = field(default_factory=lambda: array("q"))
    inodes: array = field(default_factory=lambda: array("Q"))
    classes: list[str] = field(default_factory=list)  # the label of each class folder with files
    ends: list[int] = field(default_factory=list)  # class folder i's files end at ends[i]
    problems: list[dict] = field(default_factory=list)  # {"path", "reason"}: what is not part of any class

    def class_ranges(self) -> Iterator[tuple[str, int, int]]:
        """(label, first, end) per class folder, in scan order."""
        for label, first, end in zip(self.classes, [0] + self.ends[:-1], self.ends):
            yield label, first, end


def input_refs(params: Params) -> dict[str, str]:
    return {}


def fingerprint(params: Params) -> Fingerprint:
    """The folder's identity from stat data alone: what the cache key sees of the source. The scan goes to `run`
    with it (ctx.source), so a cold ingest walks a million files once, and ingests the files its key names."""
    root = source_root(params)
    scan = scan_source(root)
    digest = hashlib.sha256(canonical_json(scan.problems))
    # Column by column, a slice at a time: the paths joined by NUL, then the sizes, mtimes and inodes as their
    # machine bytes (formatting a line per file cost more than the walk). A million files never become one string.
    for label, first, end in scan.class_ranges():
        digest.update(b"%s\0%d\n" % (label.encode(), end - first))
        for start in range(first, end, FINGERPRINT_FILES):
            stop = min(start + FINGERPRINT_FILES, end)
            digest.update("\0".join(scan.paths[start:stop]).encode() + b"\n")
            for column in (scan.sizes, scan.mtimes, scan.inodes):
                digest.update(column[start:stop].tobytes())
    return Fingerprint(digest.hexdigest(), scan)


def source_root(params: Params) -> Path:
    if not params.source:
        raise UserError("ingest needs a source folder: `pipeline.py ingest FOLDER` or ingest.source in the config")
    root = Path(params.source).expanduser()
    if not root.is_dir():
        raise UserError(f"source folder {root} does not exist or is not a folder")
    return root.resolve()


def scan_source(root: Path) -> Scan:
    """Walk the class folders. Hidden names are skipped; symlinks are followed only inside the root,
    and never back into a folder they sit in (a loop). What is left out is listed with the reason."""
    scan = Scan()
    problems = scan.problems
    root_real = os.path.realpath(root)
    for entry in sorted(_list_folder(str(root), "", problems), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        skipped = _skip_reason(root, entry, entry.name, (root_real,))
        if skipped:
            problems.append({"path": printable_name(entry.name), "reason": skipped})
        elif entry.is_dir():
            label = unicodedata.normalize("NFC", entry.name)
            if _scan_class(root, entry, label, scan, (root_real,)):
                scan.classes.append(label)
                scan.ends.append(len(scan.paths))
            else:
                problems.append({"path": entry.name + "/", "reason": "empty class folder (no files), skipped"})
        else:
            problems.append({"path": entry.name, "reason": "file directly under the source folder "
                                                          "(not in a class folder), skipped"})
    if not scan.classes:
        raise UserError(f"no class folders with files in {root}: expected one subfolder per class, "
                        f"e.g. {root}/Aves/img001.jpg")
    return scan


def _scan_class(root: Path, folder: os.DirEntry, label: str, scan: Scan, chain: tuple[str, ...]) -> int:
    """Append a class folder's files to the scan's columns, sorted by path; returns how many."""
    problems = scan.problems
    paths, sizes, mtimes, inodes = scan.paths, scan.sizes, scan.mtimes, scan.inodes
    first = len(paths)
    # Each folder carries the real paths of the folders above it: a symlink into one of them is a loop.
    stack = [(folder.path, chain + (os.path.realpath(folder.path),))]
    skip = len(str(root)) + 1  # plain string slicing: pathlib costs ~30 µs a file here
    while stack:
        current, above = stack.pop()
        folder_relative = current[skip:].replace(os.sep, "/")
        under = folder_relative + "/"
        # This runs for every file on every re-ingest, so the common case (a plain ASCII-named file, no link)
        # goes through list comprehensions, a folder at a time; only the rest takes the loop below, one check
        # after another. The scan then costs little more than the stat calls themselves.
        entries = [entry for entry in _list_folder(current, folder_relative, problems) if entry.name[0] != "."]
        # In name order, so a class of one folder comes out sorted and the sort below only confirms it.
        entries.sort(key=_name)
        plain = [entry for entry in entries if entry.name.isascii() and not entry.is_symlink() and entry.is_file()] \
            if under.isascii() else []
        try:
            stats = [entry.stat() for entry in plain]
        except OSError:  # a file gone or unreadable since the listing: the loop below says which
            plain, stats = [], []
        if plain:
            paths.extend([under + entry.name for entry in plain])
            sizes.extend([info.st_size for info in stats])
            mtimes.extend([info.st_mtime_ns for info in stats])
            inodes.extend([info.st_ino for info in stats])
            if len(plain) == len(entries):  # the usual folder: every entry a plain file
                entries = []
            else:
                done = {id(entry) for entry in plain}
                entries = [entry for entry in entries if id(entry) not in done]
        for entry in entries:
            name = entry.name
            relative = under + name
            if not relative.isascii() or entry.is_symlink():
                skipped = _skip_reason(root, entry, relative, above)
                if skipped:
                    problems.append({"path": printable_name(relative), "reason": skipped})
                    continue
            if entry.is_file():
                try:
                    stat = entry.stat()
                except OSError as error:
                    problems.append({"path": relative, "reason": f"unreadable: {error.strerror}, skipped"})
                    continue
                paths.append(relative)
                sizes.append(stat.st_size)
                mtimes.append(stat.st_mtime_ns)
                inodes.append(stat.st_ino)
            elif entry.is_dir():
                real = os.path.realpath(entry.path) if entry.is_symlink() else f"{above[-1]}/{name}"
                stack.append((entry.path, above + (real,)))
    if any(map(operator.ge, islice(paths, first, None), islice(paths, first + 1, None))):  # paths are unique
        order = sorted(range(first, len(paths)), key=paths.__getitem__)
        paths[first:] = [paths[i] for i in order]
        for column in (sizes, mtimes, inodes):
            column[first:] = array(column.typecode, [column[i] for i in order])
    return len(paths) - first


_name = operator.attrgetter("name")


def _list_folder(path: str, relative: str, problems: list[dict]) -> list[os.DirEntry]:
    """A folder's entries; one that cannot be listed is a problem of the scan, not a crash."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError as error:
        if not relative:
            raise UserError(f"source folder {path} cannot be read ({error.strerror}): fix its permissions") from None
        problems.append({"path": printable_name(relative) + "/",
                         "reason": f"unreadable folder ({error.strerror}), skipped"})
        return []


def _skip_reason(root: Path, entry: os.DirEntry, relative: str, above: tuple[str, ...]) -> str | None:
    """Why an entry is left out of the scan, or None. Only symlinks and undecodable names cost a check."""
    if not relative.isascii():
        try:
            relative.encode()
        except UnicodeEncodeError:
            return "name is not valid UTF-8 (shown with \\x escapes), skipped: rename it"
    if not entry.is_symlink():
        return None
    try:
        os.stat(entry.path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop (the link resolves to itself), not followed"
        return f"dangling symlink to {printable_name(os.readlink(entry.path))} ({error.strerror}), skipped"
    if not _inside(root, entry):
        return "symlink that leaves the source folder, not followed"
    if entry.is_dir() and os.path.realpath(entry.path) in above:
        return "symlink loop (points back to a folder that contains it), not followed"
    return None


def _inside(root: Path, entry: os.DirEntry) -> bool:
    if not entry.is_symlink():
        return True
    target = Path(os.path.realpath(entry.path))
    return target == root or root in target.parents


def run(inputs: dict, params: Params, ctx: StageContext) -> list[Output]:
    import numpy as np

    from lineage.rows import return_freed_memory

    return_freed_memory()
    root = source_root(params)
    scan = ctx.source if isinstance(ctx.source, Scan) else scan_source(root)  # fingerprint's, from the runner
    ctx.source = None  # its paths move into Arrow below; nothing else may hold the list
    checks = {"full_decode": params.full_decode, "max_pixels": params.max_pixels}
    cache_path = ctx.cache_dir("stat") / (hashlib.sha256(str(root).encode()).hexdigest()[:24] + ".parquet")
    paths = _arrow_paths(scan.paths)
    found = Found(len(paths))
    # --force re-reads every file, so each object is re-hashed and a corrupt one rewritten (StageContext.force).
    if not ctx.force:
        statcache.reuse(cache_path, checks, scan, paths, found, ctx.store)
    todo = found.unknown_rows()
    if len(todo):
        packer = ctx.pack_writer()
        try:
            _examine_all(root, scan, paths, todo, params, ctx, found, packer)
        except BaseException:
            packer.discard()
            raise
        packer.close()
    statcache.save(ctx.store, cache_path, checks, scan, paths, found)

    rejected = list(scan.problems) + [{"path": paths[row].as_py(), "reason": found.reasons[row]}
                                      for row in sorted(found.reasons)]
    kept, duplicates, conflicts = _resolve_repeats(scan, paths, found, params.on_label_conflict)
    rejected += conflicts
    labels = scan_labels(scan)
    counts: dict[str, int] = {}
    for label, count in zip(scan.classes, np.bincount(labels[kept], minlength=len(scan.classes)).tolist()):
        if count:  # two folders can hold one label (the same name in two Unicode forms)
            counts[label] = counts.get(label, 0) + count
    classes = sorted(counts)
    rejected += [{"path": label + "/", "reason": "class folder with no readable image, skipped"}
                 for label in scan.classes if label not in counts]
    if not len(kept):
        raise UserError(f"no readable image in {root}: {len(rejected)} file(s) rejected, "
                        f"first: {rejected[0]['path']} ({rejected[0]['reason']})" if rejected else
                        f"no readable image in {root}")

    _report(ctx, root, len(paths), todo, rejected, duplicates, counts)
    table = _images_table(scan, paths, found, kept, labels)
    meta = {"classes": classes, "class_counts": dict(sorted(counts.items())),
            "rejected": sorted(rejected, key=lambda r: r["path"]), "rejected_count": len(rejected),
            "duplicates": duplicates, "checks": checks}
    return [Output(Manifest(OUTPUT, table=table, meta=meta))]


def _arrow_paths(paths: list[str]):
    """The scan's paths moved into Arrow, a slice at a time from the end, each slice's strings freed as it goes:
    from here on there is no Python object per path (converting the whole list at once costs twice its size)."""
    import pyarrow as pa

    chunks = []
    for start in reversed(range(0, len(paths), ARROW_SLICE_FILES)):
        chunks.append(pa.array(paths[start:], pa.string()))
        del paths[start:]
    return pa.chunked_array(chunks[::-1], pa.string())


class Found:
    """What reading each file found (or the stat cache remembers), as columns by scan row: 32-byte digests,
    format codes and sizes in numpy arrays; the rare rejection by row."""

    def __init__(self, count: int):
        import numpy as np

        self.digests = np.zeros((count, 32), dtype=np.uint8)
        self.formats = np.full(count, -1, dtype=np.int16)  # index into format_names; -1: not known yet
        self.format_names: list[str] = []
        self.widths = np.zeros(count, dtype=np.int64)
        self.heights = np.zeros(count, dtype=np.int64)
        self.reasons: dict[int, str] = {}  # rejected rows
        self.uncacheable: set[int] = set()  # results that must not be cached (unreadable, changed while read)

    def format_code(self, name: str) -> int:
        if name not in self.format_names:
            self.format_names.append(name)
        return self.format_names.index(name)

    def forget(self, rows=None) -> None:
        """Drop what the stat cache said of these rows (None: of every row), so they are read again."""
        if rows is None:
            self.formats[:] = -1
            self.reasons.clear()
            return
        self.formats[rows] = -1
        self.digests[rows] = 0
        self.widths[rows] = self.heights[rows] = 0

    def unknown_rows(self):
        """Rows neither the stat cache nor a read has answered: the files to read."""
        import numpy as np

        unknown = self.formats < 0
        unknown[list(self.reasons)] = False
        return np.flatnonzero(unknown)

    def record(self, rows: list[int], results: list[Examined]) -> None:
        """A chunk's results: the images' columns set with one numpy assignment each, not one per row."""
        import numpy as np

        images, digests, formats, widths, heights = [], [], [], [], []
        for row, result in zip(rows, results):
            if not result.cacheable:
                self.uncacheable.add(row)
            if result.reason is not None:
                self.reasons[row] = result.reason
                continue
            images.append(row)
            digests.append(result.digest)
            formats.append(self.format_code(result.format))
            widths.append(result.width)
            heights.append(result.height)
        if images:
            self.digests[images] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)
            self.formats[images], self.widths[images], self.heights[images] = formats, widths, heights


def scan_labels(scan: Scan):
    """Each row's class folder, as an index into scan.classes (numpy)."""
    import numpy as np

    return np.repeat(np.arange(len(scan.classes)), np.diff([0] + scan.ends))


def _images_table(scan: Scan, paths, found: Found, kept, labels):
    """The kept rows as the raw-data version's columns (lineage/rows.py), sorted by path there."""
    import numpy as np
    import pyarrow as pa

    from lineage import rows

    every = len(kept) == len(paths)  # the usual case: the columns as they are, no copy of a million rows each

    def pick(column):
        return column if every else column[kept]

    columns = {"path": paths if every else paths.take(pa.array(kept)), "digest": rows.hex_digests(pick(found.digests)),
               "size": pick(np.frombuffer(scan.sizes, dtype=np.int64)),
               "label": pa.array(scan.classes, pa.string()).take(pa.array(pick(labels))),
               "format": pa.array(found.format_names, pa.string()).take(pa.array(pick(found.formats))),
               "width": pick(found.widths), "height": pick(found.heights)}
    return rows.table_from_columns("images-v1", columns)


def _examine_all(root: Path, scan: Scan, paths, todo, params: Params, ctx: StageContext, found: Found,
                 packer) -> None:
    """Examine files on a thread pool, a chunk per task: a future per file would cost more in the
    main thread than the hashing saves, and hold 100,000 futures in memory on a large folder. Small
    images go into `packer`'s packs; with link: hardlink every image stays a loose object (a link)."""
    import numpy as np

    prefix = f"{root}/"
    link = params.link == "hardlink"

    def examine(row: int, relative: str) -> Examined:
        path = prefix + relative
        size = scan.sizes[row]
        if size > LARGE_FILE_BYTES:
            return _examine_large(path, size, params, ctx)
        try:
            data = _read_file(path, size)
        except OSError as error:
            return Examined(False, reason=f"unreadable: {error.strerror}")
        if len(data) != size:
            return Examined(False, reason="changed while being read; ingest again")
        try:
            info = inspect_image(data, params.full_decode, params.max_pixels)
        except Rejected as why:
            return Examined(True, reason=str(why))
        digest = hashlib.sha256(data)
        if link or len(data) > PACK_OBJECT_LIMIT:
            ctx.write_object(data, digest.hexdigest(), link_from=path if link else None)
        else:
            ctx.pack_object(packer, data, digest.hexdigest())
        return Examined(True, digest.digest(), info.format, info.width, info.height)

    bar = None
    if ctx.progress and len(todo) >= PROGRESS_MIN_FILES:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="ingest", unit="file")
    chunks = (todo[start:start + CHUNK_FILES] for start in range(0, len(todo), CHUNK_FILES))
    # hashlib and file I/O release the GIL, so threads pay for large files; for small ones (most of a large
    # dataset) the work is Python's, and a second thread only contends (measured: 4 KiB files 23 us each on one
    # thread, 25 on two; 64 KiB 95 and 62).
    mean_size = int(np.frombuffer(scan.sizes, dtype=np.int64)[todo].mean())
    threads = max(1, params.workers) if mean_size >= THREADED_MEAN_BYTES else 1
    if threads == 1:  # in this thread: handing each chunk to another one costs more GIL hand-offs than it saves
        for chunk in chunks:
            rows = chunk.tolist()
            found.record(rows, [examine(*item) for item in zip(rows, _names(paths, chunk))])
            if bar is not None:
                bar.update(len(rows))
    else:
        with ThreadPoolExecutor(threads) as pool:
            # A bounded window of chunks in flight: a million files never become a million pending results.
            window = 4 * threads
            pending: list = []
            for chunk in chunks:
                rows, names = chunk.tolist(), _names(paths, chunk)
                pending.append((rows, pool.submit(lambda rows, names: [examine(*item) for item in zip(rows, names)],
                                                  rows, names)))
                if len(pending) >= window:
                    _collect(pending.pop(0), found, bar)
            for item in pending:
                _collect(item, found, bar)
    if bar is not None:
        bar.close()


def _names(paths, rows) -> list[str]:
    """The paths of these ascending scan rows (lineage/rows.py: take_ascending)."""
    return take_ascending(paths, rows).to_pylist()


def _collect(item, found: Found, bar) -> None:
    chunk, future = item
    found.record(chunk, future.result())
    if bar is not None:
        bar.update(len(chunk))


def _examine_large(path: str, size: int, params: Params, ctx: StageContext) -> Examined:
    """A file too large to hold in memory twice: checked from its header and tail, then hashed
    while it is copied in chunks (a hard link is not worth the special case at this size)."""
    try:
        info = inspect_large_file(path, size, params.full_decode, params.max_pixels)
    except Rejected as why:
        return Examined(True, reason=str(why))
    except OSError as error:
        return Examined(False, reason=f"unreadable: {error.strerror}")
    stored = ctx.copy_object(path)
    if stored.size != size:
        return Examined(False, reason="changed while being read; ingest again")
    return Examined(True, bytes.fromhex(stored.digest), info.format, info.width, info.height)


def _read_file(path: str, size: int) -> bytes:
    """One unbuffered read of the whole file (open() adds an isatty and a seek per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, size + 1)]
        while chunks[-1] and sum(map(len, chunks)) <= size:
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _resolve_repeats(scan: Scan, paths, found: Found, on_conflict: str):
    """Same content twice in a class: keep the first path. Same content under two classes: a label
    conflict, an error by default or, with on_label_conflict: drop, every copy is left out.

    Returns the kept rows (numpy, scan order), the duplicates and the conflicts. Repeats are found by sorting
    the 32-byte digests, so only the (rare) repeated ones become Python objects."""
    import numpy as np

    accepted = np.ones(len(paths), dtype=bool)
    accepted[list(found.reasons)] = False
    rows = np.flatnonzero(accepted)
    keys = np.ascontiguousarray(found.digests[rows]).view("V32").ravel()
    order = np.argsort(keys, kind="stable")  # equal digests stay in scan order
    ordered = keys[order]
    groups: dict[int, list[int]] = {}  # first row of a repeated digest -> its rows, in scan order
    previous = -2
    for position in np.flatnonzero(ordered[1:] == ordered[:-1]).tolist():  # equal to the next one
        if position != previous + 1:
            group = [int(rows[order[position]])]
            groups[group[0]] = group
        group.append(int(rows[order[position + 1]]))
        previous = position
    labels = scan_labels(scan) if groups else None
    duplicates, conflicts, dropped = [], [], []
    for first in sorted(groups):  # in order of first appearance, as the rows were read
        group = groups[first]
        names = sorted({scan.classes[labels[row]] for row in group})
        if len(names) > 1:
            conflicts += [{"path": paths[row].as_py(), "reason": f"label conflict: same content under "
                                                              f"{' and '.join(names)}"} for row in group]
            dropped += group
            continue
        duplicates += [{"path": paths[row].as_py(), "same_as": paths[first].as_py()} for row in group[1:]]
        dropped += group[1:]
    if conflicts and on_conflict == "error":
        first = conflicts[0]
        raise UserError(f"{len(conflicts)} files carry the same content under different classes, first "
                        f"{first['path']} ({first['reason']}): fix the folders, or set "
                        "ingest.on_label_conflict: drop to leave every copy out")
    if dropped:
        accepted[dropped] = False
        rows = np.flatnonzero(accepted)
    return rows, duplicates, conflicts


def _report(ctx, root, count, todo, rejected, duplicates, counts) -> None:
    ctx.log(f"ingest: {root}: {count:,} files, {len(todo):,} read, "
            f"{count - len(todo):,} unchanged (stat cache)")
    for item in rejected[:20]:
        ctx.log(f"  rejected {item['path']}: {item['reason']}")
    if len(rejected) > 20:
        ctx.log(f"  … and {len(rejected) - 20} more rejected (see `pipeline.py show raw-data:latest`)")
    if duplicates:
        ctx.log(f"  {len(duplicates)} duplicate file(s) within a class kept once")
    ctx.log(format_counts({"images": dict(counts)}, sorted(counts)))
