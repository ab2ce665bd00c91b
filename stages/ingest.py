"""ingest: a folder with one subfolder per class becomes `raw-data:vN`.

Every file is read once: hashed, checked from its header (images/check.py) and, if the
store lacks its content, staged as an object, all from the same bytes. Threads do the work in
parallel because hashing and file I/O release the GIL. A stat cache of (size, mtime_ns, inode)
lets an unchanged file skip all of that, and the runner's cache key uses the same stat data
(`fingerprint`), so re-ingesting an unchanged folder reads no file content at all.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from images.check import DEFAULT_MAX_PIXELS, Rejected, inspect_image, inspect_large_file
from lineage.contract import Output, StageContext
from lineage.display import format_counts, printable_name
from lineage.errors import UserError
from lineage.params import Range
from lineage.records import Manifest, is_digest
from lineage.store import canonical_json

NAME = "ingest"
OUTPUT = "raw-data"
CODE = ("stages/ingest.py", "images/check.py")
PROGRESS_MIN_FILES = 500
CHUNK_FILES = 64
STAT_CACHE_FORMAT = 2
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
    # Threads: one per core measured fastest (hashing and I/O release the GIL; more threads only contend).
    workers: Annotated[int, Range(1, 256)] = field(default_factory=lambda: os.cpu_count() or 2,
                                                   metadata={"cache": False})


class SourceFile(NamedTuple):
    """One file of the scan. A tuple, not a dataclass: a million of them are built on every re-ingest,
    and a frozen dataclass costs twice the time and memory."""

    relative: str  # posix path under the source root, the entry's `path`
    label: str
    size: int
    mtime_ns: int
    inode: int


class Examined(NamedTuple):
    """What reading a file found (or the stat cache remembers): an image's digest, format and size, or
    why it was rejected. `stat` is None when the result must not be cached (unreadable, changed)."""

    stat: tuple[int, int, int] | None
    digest: str | None = None
    format: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None


@dataclass
class Scan:
    files: list[SourceFile]
    problems: list[dict]  # {"path", "reason"}: files and folders that are not part of any class
    classes: list[str]


def input_refs(params: Params) -> dict[str, str]:
    return {}


def fingerprint(params: Params) -> str:
    """The folder's identity from stat data alone: what the cache key sees of the source."""
    scan = scan_source(source_root(params))
    digest = hashlib.sha256(canonical_json(scan.problems))
    # One line per file (relative, label, size, mtime_ns, inode), %-formatted straight from the tuple: building
    # JSON for 100,000 rows costs more than the walk.
    digest.update("".join(["%s\0%s\0%d\0%d\0%d\n" % f for f in scan.files]).encode())
    return digest.hexdigest()


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
    files: list[SourceFile] = []
    problems: list[dict] = []
    classes = []
    root_real = os.path.realpath(root)
    for entry in sorted(_list_folder(str(root), "", problems), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        skipped = _skip_reason(root, entry, entry.name, (root_real,))
        if skipped:
            problems.append({"path": printable_name(entry.name), "reason": skipped})
        elif entry.is_dir():
            label = unicodedata.normalize("NFC", entry.name)
            found = _scan_class(root, entry, label, problems, (root_real,))
            if found:
                classes.append(label)
                files += found
            else:
                problems.append({"path": entry.name + "/", "reason": "empty class folder (no files), skipped"})
        else:
            problems.append({"path": entry.name, "reason": "file directly under the source folder "
                                                          "(not in a class folder), skipped"})
    if not classes:
        raise UserError(f"no class folders with files in {root}: expected one subfolder per class, "
                        f"e.g. {root}/Aves/img001.jpg")
    return Scan(files, problems, classes)


def _scan_class(root: Path, folder: os.DirEntry, label: str, problems: list[dict],
                chain: tuple[str, ...]) -> list[SourceFile]:
    found = []
    # Each folder carries the real paths of the folders above it: a symlink into one of them is a loop.
    stack = [(folder.path, chain + (os.path.realpath(folder.path),))]
    skip = len(str(root)) + 1  # plain string slicing: pathlib costs ~30 µs a file here
    while stack:
        current, above = stack.pop()
        folder_relative = current[skip:].replace(os.sep, "/")
        under = folder_relative + "/"
        # The loop runs once per file on every re-ingest: each check costs in proportion, so the common case
        # (a plain ASCII-named file, no link) takes the fewest calls.
        for entry in _list_folder(current, folder_relative, problems):
            name = entry.name
            if name[0] == ".":
                continue
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
                found.append(SourceFile(relative, label, stat.st_size, stat.st_mtime_ns, stat.st_ino))
            elif entry.is_dir():
                real = os.path.realpath(entry.path) if entry.is_symlink() else f"{above[-1]}/{name}"
                stack.append((entry.path, above + (real,)))
    found.sort()  # by relative path: the first field, unique
    return found


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
    root = source_root(params)
    scan = scan_source(root)
    checks = {"full_decode": params.full_decode, "max_pixels": params.max_pixels}
    cache_path = ctx.cache_dir("stat") / (hashlib.sha256(str(root).encode()).hexdigest()[:24] + ".parquet")
    # --force re-reads every file, so each object is re-hashed and a corrupt one rewritten (StageContext.force).
    cached = {} if ctx.force else _load_stat_cache(cache_path, checks)

    # A cached digest counts only while its object is still in the store (gc may have removed it).
    gone = set(ctx.missing_objects([h.digest for h in cached.values() if h.digest is not None]))
    results: dict[str, Examined] = {}
    todo = []
    for source in scan.files:
        hit = cached.pop(source.relative, None)
        if hit and hit.stat == (source.size, source.mtime_ns, source.inode) and hit.digest not in gone:
            results[source.relative] = hit
        else:
            todo.append(source)
    del cached, gone
    if todo:
        for source, result in zip(todo, _examine_all(root, todo, params, ctx)):
            results[source.relative] = result
    _save_stat_cache(ctx, cache_path, checks, results)

    entries, rejected = [], list(scan.problems)
    for source in scan.files:
        result = results.pop(source.relative)
        if result.reason is not None:
            rejected.append({"path": source.relative, "reason": result.reason})
        else:
            entries.append({"path": source.relative, "digest": result.digest, "size": source.size,
                            "label": source.label, "format": result.format,
                            "width": result.width, "height": result.height})
    entries, duplicates, conflicts = _resolve_repeats(entries, params.on_label_conflict)
    rejected += conflicts
    counts = Counter(e["label"] for e in entries)
    classes = sorted(counts)
    rejected += [{"path": label + "/", "reason": "class folder with no readable image, skipped"}
                 for label in scan.classes if label not in counts]
    if not entries:
        raise UserError(f"no readable image in {root}: {len(rejected)} file(s) rejected, "
                        f"first: {rejected[0]['path']} ({rejected[0]['reason']})" if rejected else
                        f"no readable image in {root}")

    _report(ctx, root, scan, todo, entries, rejected, duplicates, counts)
    meta = {"classes": classes, "class_counts": dict(sorted(counts.items())),
            "rejected": sorted(rejected, key=lambda r: r["path"]), "rejected_count": len(rejected),
            "duplicates": duplicates, "checks": checks}
    return [Output(Manifest(OUTPUT, entries=entries, meta=meta))]


def _examine_all(root: Path, todo: list[SourceFile], params: Params, ctx: StageContext) -> list[dict]:
    """Examine files on a thread pool, a chunk per task: a future per file would cost more in the
    main thread than the hashing saves, and hold 100,000 futures in memory on a large folder."""
    prefix = f"{root}/"
    link = params.link == "hardlink"

    def examine(source: SourceFile) -> Examined:
        path = prefix + source.relative
        if source.size > LARGE_FILE_BYTES:
            return _examine_large(path, source, params, ctx)
        try:
            data = _read_file(path, source.size)
        except OSError as error:
            return Examined(None, reason=f"unreadable: {error.strerror}")
        stat = (source.size, source.mtime_ns, source.inode)
        if len(data) != source.size:
            return Examined(None, reason="changed while being read; ingest again")
        try:
            info = inspect_image(data, params.full_decode, params.max_pixels)
        except Rejected as why:
            return Examined(stat, reason=str(why))
        digest = hashlib.sha256(data).hexdigest()
        ctx.write_object(data, digest, link_from=path if link else None)
        return Examined(stat, digest, info.format, info.width, info.height)

    chunks = [todo[start:start + CHUNK_FILES] for start in range(0, len(todo), CHUNK_FILES)]
    bar = None
    if ctx.progress and len(todo) >= PROGRESS_MIN_FILES:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="ingest", unit="file")
    results: list[Examined] = []
    with ThreadPoolExecutor(max(1, params.workers)) as pool:
        for chunk_results in pool.map(lambda chunk: [examine(source) for source in chunk], chunks):
            results += chunk_results
            if bar is not None:
                bar.update(len(chunk_results))
    if bar is not None:
        bar.close()
    return results


def _examine_large(path: str, source: SourceFile, params: Params, ctx: StageContext) -> Examined:
    """A file too large to hold in memory twice: checked from its header and tail, then hashed
    while it is copied in chunks (a hard link is not worth the special case at this size)."""
    stat = (source.size, source.mtime_ns, source.inode)
    try:
        info = inspect_large_file(path, source.size, params.full_decode, params.max_pixels)
    except Rejected as why:
        return Examined(stat, reason=str(why))
    except OSError as error:
        return Examined(None, reason=f"unreadable: {error.strerror}")
    stored = ctx.copy_object(path)
    if stored.size != source.size:
        return Examined(None, reason="changed while being read; ingest again")
    return Examined(stat, stored.digest, info.format, info.width, info.height)


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


def _resolve_repeats(entries: list[dict], on_conflict: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Same content twice in a class: keep the first path. Same content under two classes: a label
    conflict, an error by default or, with on_label_conflict: drop, every copy is left out."""
    by_digest: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_digest[entry["digest"]].append(entry)
    kept, duplicates, conflicts = [], [], []
    for digest, group in by_digest.items():
        labels = sorted({e["label"] for e in group})
        if len(labels) > 1:
            conflicts += [{"path": e["path"], "reason": f"label conflict: same content under {' and '.join(labels)}"}
                          for e in group]
            continue
        kept.append(group[0])
        duplicates += [{"path": e["path"], "same_as": group[0]["path"]} for e in group[1:]]
    if conflicts and on_conflict == "error":
        first = conflicts[0]
        raise UserError(f"{len(conflicts)} files carry the same content under different classes, first "
                        f"{first['path']} ({first['reason']}): fix the folders, or set "
                        "ingest.on_label_conflict: drop to leave every copy out")
    return sorted(kept, key=lambda e: e["path"]), duplicates, conflicts


# The stat cache, cache/stat/<root hash>.parquet: one row per file whose result can be reused, as columns
# (about a quarter of the JSON it replaces, and read without a dict per row). Its key/value metadata holds the
# format and the checks it was made with; a cache made with other checks is not used.
_STAT_COLUMNS = (("path", "str"), ("size", "int"), ("mtime_ns", "int"), ("inode", "int"), ("digest", "str"),
                 ("format", "str"), ("width", "int"), ("height", "int"), ("reason", "str"))


def _load_stat_cache(path: Path, checks: dict) -> dict[str, Examined]:
    """The cached results by relative path. The cache is disposable: a damaged file, or any row in it
    that is not what _examine_all writes, only means those files are read again (and the file rewritten)."""
    if not os.path.isfile(path):  # a first ingest: not worth pyarrow.dataset's import (0.4 s)
        return {}
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()
        metadata = table.schema.metadata or {}
        if metadata.get(b"format") != str(STAT_CACHE_FORMAT).encode() \
                or json.loads(metadata.get(b"checks", b"null")) != checks:
            return {}
        columns = [table.column(name).to_pylist() for name, _ in _STAT_COLUMNS]
    except (OSError, ValueError, KeyError, pa.ArrowException, RecursionError):  # missing, garbled, other columns
        return {}
    del table
    cached = {}
    for relative, size, mtime_ns, inode, digest, fmt, width, height, reason in zip(*columns):
        hit = Examined((size, mtime_ns, inode), digest, fmt, width, height, reason)
        if isinstance(relative, str) and _valid_hit(hit):
            cached[relative] = hit
    return cached


def _valid_hit(hit: Examined) -> bool:
    if not all(type(n) is int for n in hit.stat):
        return False
    if hit.reason is None:  # a digest becomes an object path and a manifest entry: it must be one
        return is_digest(hit.digest) and isinstance(hit.format, str) \
            and type(hit.width) is int and type(hit.height) is int
    return isinstance(hit.reason, str)


def _save_stat_cache(ctx: StageContext, path: Path, checks: dict, results: dict[str, Examined]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = [(relative, r) for relative, r in results.items() if r.stat is not None]
    values = {"path": [relative for relative, _ in kept], "size": [r.stat[0] for _, r in kept],
              "mtime_ns": [r.stat[1] for _, r in kept], "inode": [r.stat[2] for _, r in kept],
              "digest": [r.digest for _, r in kept], "format": [r.format for _, r in kept],
              "width": [r.width for _, r in kept], "height": [r.height for _, r in kept],
              "reason": [r.reason for _, r in kept]}
    del kept
    types = {"str": pa.string(), "int": pa.int64()}
    table = pa.table({name: pa.array(values.pop(name), type=pa.uint64() if name == "inode" else types[kind])
                      for name, kind in _STAT_COLUMNS},
                     metadata={"format": str(STAT_CACHE_FORMAT), "checks": json.dumps(checks, sort_keys=True)})
    staging = ctx.store.temp_path(".parquet")
    try:
        pq.write_table(table, staging, compression="zstd")
        os.replace(staging, path)  # not fsynced: a cache lost to a crash is recomputed
        path.with_suffix(".json").unlink(missing_ok=True)  # the JSON form of earlier versions
    except OSError:
        staging.unlink(missing_ok=True)
        raise


def _report(ctx, root, scan, todo, entries, rejected, duplicates, counts) -> None:
    ctx.log(f"ingest: {root}: {len(scan.files):,} files, {len(todo):,} read, "
            f"{len(scan.files) - len(todo):,} unchanged (stat cache)")
    for item in rejected[:20]:
        ctx.log(f"  rejected {item['path']}: {item['reason']}")
    if len(rejected) > 20:
        ctx.log(f"  … and {len(rejected) - 20} more rejected (see `pipeline.py show raw-data:latest`)")
    if duplicates:
        ctx.log(f"  {len(duplicates)} duplicate file(s) within a class kept once")
    ctx.log(format_counts({"images": dict(counts)}, sorted(counts)))
