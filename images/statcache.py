"""ingest's stat cache, cache/stat/<root hash>.parquet: what reading each file found, remembered with the file's
(size, mtime_ns, inode), so a re-ingest whose cache key changed (new files, other settings, new code) reads only
the files whose stat data changed. The cache is disposable: anything wrong with it only means files are read again.

`scan` is ingest's Scan (paths in scan order: by class folder name, then by path; sizes, mtimes, inodes as int
arrays) with its paths moved into an Arrow column; `found` is ingest's Found, filled in place by `reuse`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STAT_CACHE_FORMAT = 2


# One row per file whose result can be reused, as columns
# (about a quarter of the JSON it replaces, and read without a dict per row). Its key/value metadata holds the
# format and the checks it was made with; a cache made with other checks is not used.
_STAT_COLUMNS = (("path", "str"), ("size", "int"), ("mtime_ns", "int"), ("inode", "uint"), ("digest", "str"),
                 ("format", "str"), ("width", "int"), ("height", "int"), ("reason", "str"))


def _open(path: Path, checks: dict):
    """The stat cache as an open Parquet file with the expected columns and checks, or None."""
    if not os.path.isfile(path):  # a first ingest: not worth pyarrow.parquet's import
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (OSError, ValueError, pa.ArrowException):
        return None
    metadata = schema.metadata or {}
    try:
        if metadata.get(b"format") != str(STAT_CACHE_FORMAT).encode() \
                or json.loads(metadata.get(b"checks", b"null")) != checks:
            return None
    except (ValueError, RecursionError):
        return None
    types = _stat_types()
    if [(f.name, f.type) for f in schema] != [(name, types[kind]) for name, kind in _STAT_COLUMNS]:
        return None
    return parquet


def reuse(cache_path: Path, checks: dict, scan, paths, found, store) -> None:
    """Take each file's cached result when its stat data still match and, for an image, its object is still
    in the store (gc may have removed it). The cache is disposable: a damaged file, or a row in it that is not
    what `save` writes, only means files are read again."""
    import pyarrow as pa

    parquet = _open(cache_path, checks)
    if parquet is None:
        return
    try:
        _match(parquet, scan, paths, store, found)
    except (OSError, ValueError, KeyError, pa.ArrowException):  # garbled pages: read every file again
        found.forget()


def _match(parquet, scan, paths, store, found) -> None:
    """A merge of the cache into the scan, one record batch of the cache at a time, both in scan order (the
    order `save` writes): a batch's paths can only match the scan rows between its first and last
    path, found by bisection, so each join hashes one batch and the cache's decoded columns are never held
    whole. At 1,000,000 files a join of the whole path columns cost more than everything else ingest holds.
    A cache in another order (edited, or from another version) still gives only right answers, fewer of
    them: a row is taken only when its path is equal and its stat data match."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from lineage import rows as row_format

    sizes = np.frombuffer(scan.sizes, dtype=np.int64)
    mtimes = np.frombuffer(scan.mtimes, dtype=np.int64)
    inodes = np.frombuffer(scan.inodes, dtype=np.uint64)
    answered = np.zeros(len(paths), dtype=bool)  # a path the cache holds twice is answered by its first row
    images = []  # per batch, the scan rows given an image result: their objects are checked at the end
    for batch in parquet.iter_batches(batch_size=row_format.BATCH_ROWS, use_threads=False):
        cached = batch.column("path")
        bounds = cached.drop_null()
        if not len(bounds):
            continue
        first = _scan_position(paths, bounds[0].as_py(), after=False)
        end = _scan_position(paths, bounds[-1].as_py(), after=True)
        if first >= end:
            continue
        where = pc.index_in(paths.slice(first, end - first), value_set=cached)
        rows = first + np.flatnonzero(where.is_valid().to_numpy(zero_copy_only=False))
        source = where.drop_null().to_numpy(zero_copy_only=False)
        fresh = ~answered[rows]
        rows, source = rows[fresh], source[fresh]
        same = np.ones(len(rows), dtype=bool)
        for name, scanned in (("size", sizes), ("mtime_ns", mtimes), ("inode", inodes)):
            column = batch.column(name)  # a null is no match; filled, so the values stay exact integers
            same &= (pc.fill_null(column, 0).to_numpy()[source] == scanned[rows]) \
                & column.is_valid().to_numpy(zero_copy_only=False)[source]
        rows, source = rows[same], pa.array(source[same])
        if not len(rows):
            continue
        answered[rows] = True
        hits = batch.select(["digest", "format", "width", "height", "reason"]).take(source)
        reason = hits.column("reason")
        rejects = np.flatnonzero(reason.is_valid().to_numpy(zero_copy_only=False))
        for row, text in zip(rows[rejects].tolist(), reason.take(pa.array(rejects)).to_pylist()):
            found.reasons[row] = text
        image = pc.fill_null(pc.and_(pc.and_(pc.is_null(reason), pc.match_substring_regex(hits.column("digest"),
                                                                                          "^[0-9a-f]{64}$")),
                                     pc.and_(pc.is_valid(hits.column("format")),
                                             pc.and_(pc.is_valid(hits.column("width")),
                                                     pc.is_valid(hits.column("height"))))), False)
        hits = hits.filter(image)
        if not len(hits):
            continue
        targets = rows[image.to_numpy(zero_copy_only=False)]
        formats = hits.column("format").dictionary_encode()
        codes = np.array([found.format_code(name) for name in formats.dictionary.to_pylist()], dtype=np.int16)
        found.digests[targets] = row_format.packed_digests(hits.column("digest"))
        found.formats[targets] = codes[formats.indices.to_numpy()]
        found.widths[targets] = hits.column("width").to_numpy()
        found.heights[targets] = hits.column("height").to_numpy()
        images.append(targets)
    if images:
        targets = np.concatenate(images)
        found.forget(targets[~store.objects_present(found.digests[targets])])


def _scan_position(paths, path: str, after: bool) -> int:
    """The first scan row whose path comes after `path` (after=True) or not before it, in scan order: by class
    folder name, then by path (scan_source's order; a class folder's name is its paths' first part)."""
    target = (path.split("/", 1)[0], path)
    low, high = 0, len(paths)
    while low < high:
        middle = (low + high) // 2
        value = paths[middle].as_py()
        key = (value.split("/", 1)[0], value)
        if key < target or (after and key == target):
            low = middle + 1
        else:
            high = middle
    return low


def _stat_types() -> dict:
    import pyarrow as pa

    return {"str": pa.string(), "int": pa.int64(), "uint": pa.uint64()}


def save(store, path: Path, checks: dict, scan, paths, found) -> None:
    """Write every cacheable result, a slice of rows at a time: the hex digests and other columns of a million
    rows are never built at once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lineage import rows as row_format

    cacheable = np.ones(len(paths), dtype=bool)
    cacheable[list(found.uncacheable)] = False
    kept = np.flatnonzero(cacheable)
    rejected = np.zeros(len(paths), dtype=bool)
    rejected[list(found.reasons)] = True
    format_names = pa.array(found.format_names + [None], pa.string())
    types = _stat_types()
    schema = pa.schema([(name, types[kind]) for name, kind in _STAT_COLUMNS],
                       metadata={"format": str(STAT_CACHE_FORMAT), "checks": json.dumps(checks, sort_keys=True)})
    staging = store.temp_path(".parquet")
    try:
        with pq.ParquetWriter(staging, schema, compression="zstd") as writer:
            for start in range(0, len(kept), row_format.BATCH_ROWS):
                rows = kept[start:start + row_format.BATCH_ROWS]
                no_image = rejected[rows]
                values = {"path": row_format.take_ascending(paths, rows), "size": np.frombuffer(scan.sizes, dtype=np.int64)[rows],
                          "mtime_ns": np.frombuffer(scan.mtimes, dtype=np.int64)[rows],
                          "inode": np.frombuffer(scan.inodes, dtype=np.uint64)[rows],
                          "digest": _null_where(no_image, row_format.hex_digests(found.digests[rows])),
                          "format": format_names.take(pa.array(np.where(no_image, len(found.format_names),
                                                                        found.formats[rows]))),
                          "width": found.widths[rows], "height": found.heights[rows],
                          "reason": pa.array([found.reasons.get(row) for row in rows.tolist()], pa.string())
                          if found.reasons else pa.nulls(len(rows), pa.string())}
                writer.write_table(pa.table(values, schema=schema))
        os.replace(staging, path)  # not fsynced: a cache lost to a crash is recomputed
        path.with_suffix(".json").unlink(missing_ok=True)  # the JSON form of earlier versions
    except OSError:
        staging.unlink(missing_ok=True)
        raise


def _null_where(mask, values):
    """`values` with null where `mask` is set (a rejected file has no digest)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), pa.nulls(len(values), values.type), values)
