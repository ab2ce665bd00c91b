"""A version's rows as a columnar object: a raw-data version's images and a split's digests.

At a million images a manifest that embeds every row is a 170 MB JSON file that every command parses
whole. So a version's rows live in a Parquet object, and its small JSON manifest names it with
`{"format", "count", "digest", "object"}`. Parquet bytes depend on the library that wrote them
(version, compression, row groups), so the version's digest never covers them: `digest` is the
sha256 of a canonical stream of the rows' values (`stream_digest`, defined below and nowhere else),
and the manifest's digest leaves `object` out (lineage/store.py `manifest_digest`). The same rows
give the same version on any machine; `verify` recomputes the stream from the object it names.

The canonical stream (format `images-v1` or `splits-v1`): rows sorted by the format's key; then, for
each column in the format's order, the sha256 of its values and, for text, of their lengths:
text as UTF-8 bytes back to back with the byte lengths as little-endian int64 alongside, integers
as little-endian int64. The digest is the sha256 of the canonical JSON of
`{"format", "count", "columns": [[name, type, sha256 of lengths or null, sha256 of values], …]}`.
Column-wise, so it is computed from Arrow buffers batch by batch, without a Python object per row.

pyarrow is imported inside the functions: a no-op `run` must not pay for it (lineage/store.py reads
a version's digests from a plain cache file when it only checks that objects are present).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Iterable

from lineage.records import CorruptRecord

# format → [(column, "str" | "int")], in stream order; and the sort key of the stream.
FORMATS: dict[str, list[tuple[str, str]]] = {
    "images-v1": [("path", "str"), ("digest", "str"), ("size", "int"), ("label", "str"), ("format", "str"),
                  ("width", "int"), ("height", "int")],
    "splits-v1": [("split", "str"), ("label", "str"), ("digest", "str")],
}
SORT_KEYS = {"images-v1": ("path",), "splits-v1": ("split", "label", "digest")}
BATCH_ROWS = 65536


def images_table(entries: list[dict]):
    """A raw-data version's rows (ingest's entry dicts) as a table in stream order."""
    import pyarrow as pa

    ordered = sorted(entries, key=lambda e: e["path"])
    return pa.table({name: pa.array([e[name] for e in ordered], type=_arrow_type(kind))
                     for name, kind in FORMATS["images-v1"]})


def return_freed_memory() -> None:
    """Have Arrow hand freed buffers straight back to the system: mimalloc, pyarrow's default, keeps them, so a
    million rows' transient columns (sorts, takes, Parquet pages) stay in the process's memory after they are
    freed (at 100,000 rows a split peaked 30 MB higher, and reading the stat cache 40 MB). jemalloc with no
    decay returns them at once; malloc where pyarrow was built without it. Changes no result."""
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


def table_from_columns(fmt: str, columns: dict[str, Any]):
    """A version's rows given as columns (Arrow arrays or sequences, one per column of the format) as a table
    in stream order: what a stage builds for a million rows without a dict per row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({name: columns[name].cast(_arrow_type(kind))
                      if isinstance(columns[name], (pa.Array, pa.ChunkedArray))
                      else pa.array(columns[name], type=_arrow_type(kind)) for name, kind in FORMATS[fmt]})
    order = pc.sort_indices(table, sort_keys=[(key, "ascending") for key in SORT_KEYS[fmt]]).to_numpy()
    if (order == np.arange(len(order))).all():  # already in order (as stages build them): no copy of the rows
        return table
    return table.take(order)


def take_ascending(column, rows):
    """The values of a (chunked) Arrow column at these ascending row numbers (a numpy array), from a slice
    spanning them. ChunkedArray.take concatenates every chunk first: a million paths copied once per batch of
    rows (ingest's chunks of 64 files, the stat cache's slices) cost about 100 s, and a transient copy of the
    whole column each time. Successive batches' slices do not overlap, so together they touch each value once."""
    import pyarrow as pa

    first, last = int(rows[0]), int(rows[-1])
    window = column.slice(first, last - first + 1)
    return window if len(window) == len(rows) else window.take(pa.array(rows - first))


def hex_digests(packed):
    """32-byte digests (a numpy uint8 array of shape (n, 32)) as a string array of 64 lowercase hex
    characters each, built into one buffer a slice at a time: no Python string per digest, and no
    temporary larger than a slice."""
    import numpy as np
    import pyarrow as pa

    count = len(packed)
    text = np.empty((count, 64), dtype=np.uint8)
    chars = _hex_tables()[0]
    for start in range(0, count, BATCH_ROWS):
        part = packed[start:start + BATCH_ROWS]
        text[start:start + BATCH_ROWS, 0::2] = chars[part >> 4]
        text[start:start + BATCH_ROWS, 1::2] = chars[part & 15]
    offsets = np.arange(0, 64 * count + 1, 64, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def packed_digests(column):
    """A checked digest column (64 lowercase hex characters a row) as a (n, 32) uint8 numpy array: the inverse
    of `hex_digests`, read from the column's buffers a slice at a time."""
    import numpy as np
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    packed = np.empty((len(column), 32), dtype=np.uint8)
    values = _hex_tables()[1]
    row = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        offsets, data = _text_buffers(chunk)
        text = data[int(offsets[0]):int(offsets[-1])].reshape(len(chunk), 64)
        for start in range(0, len(chunk), BATCH_ROWS):
            part = text[start:start + BATCH_ROWS]
            packed[row:row + len(part)] = (values[part[:, 0::2]] << 4) | values[part[:, 1::2]]
            row += len(part)
    return packed


def _text_buffers(chunk):
    """A string array's offsets (this chunk's, numpy) and data bytes (numpy uint8), without a copy."""
    import numpy as np
    import pyarrow as pa

    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        chunk = chunk.cast(pa.large_string())
    width = "<i8" if pa.types.is_large_string(chunk.type) else "<i4"
    offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset:chunk.offset + len(chunk) + 1]
    data = chunk.buffers()[2]
    return offsets, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8))


@functools.cache
def _hex_tables():
    """The 16 hex characters as bytes, and each byte's value as a hex digit (numpy, made on first use)."""
    import numpy as np

    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    values = np.zeros(256, dtype=np.uint8)
    values[chars] = np.arange(16, dtype=np.uint8)
    return chars, values


def splits_table(splits: dict[str, dict[str, list[str]]]):
    """A split's digests ({split: {class: [digest, …]}}) as a table in stream order."""
    import pyarrow as pa

    columns: dict[str, list[str]] = {"split": [], "label": [], "digest": []}
    for split_name in sorted(splits):
        for label in sorted(splits[split_name]):
            digests = sorted(splits[split_name][label])
            columns["split"] += [split_name] * len(digests)
            columns["label"] += [label] * len(digests)
            columns["digest"] += digests
    return pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})


def stream_digest(fmt: str, batches: Iterable[Any]) -> str:
    """The sha256 of the canonical stream of rows given as Arrow record batches (or tables) in stream
    order: the content's identity, whatever bytes Parquet wrote for it."""
    import numpy as np
    import pyarrow as pa

    columns = FORMATS[fmt]
    lengths = {name: hashlib.sha256() for name, kind in columns if kind == "str"}
    values = {name: hashlib.sha256() for name, _ in columns}
    count = 0
    for batch in batches:
        count += batch.num_rows
        for name, kind in columns:
            array = batch.column(name)
            chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
            for chunk in chunks:
                if kind == "int":
                    values[name].update(np.asarray(chunk.cast(pa.int64()), dtype="<i8").tobytes())
                    continue
                offsets, data = _text_buffers(chunk)
                lengths[name].update(np.diff(offsets).astype("<i8").tobytes())
                values[name].update(memoryview(data[int(offsets[0]):int(offsets[-1])]))
    summary = {"format": fmt, "count": count,
               "columns": [[name, kind, lengths[name].hexdigest() if kind == "str" else None,
                            values[name].hexdigest()] for name, kind in columns]}
    return hashlib.sha256(json.dumps(summary, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_parquet(table, path: str, **settings) -> None:
    """Write the rows; `settings` (row_group_size, compression) change the bytes, never the digest."""
    import pyarrow.parquet as pq

    settings.setdefault("compression", "zstd")
    pq.write_table(table, path, **settings)


def read_table(path: str, fmt: str, count: int, columns: list[str] | None = None):
    """The rows object at `path`, checked: a Parquet file with the format's columns and types, no nulls,
    `count` rows, and digests that are digests (they become object paths). CorruptRecord otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = columns or [name for name, _ in FORMATS[fmt]]
    try:
        # ParquetFile, not pq.read_table: no pyarrow.dataset import, and about 30 MB less at 100,000 rows.
        table = pq.ParquetFile(path).read(columns=wanted)
        absent = [name for name in wanted if name not in table.column_names]
        if absent:
            raise ValueError(f"no column {', '.join(absent)}")
    except (pa.ArrowException, OSError, ValueError) as error:
        raise CorruptRecord(f"not a readable Parquet file with columns {', '.join(wanted)} ({_first_line(error)})") \
            from None
    _check_table(table, fmt, count)
    return table


def iter_batches(path: str, fmt: str, count: int):
    """The whole rows object batch by batch (bounded memory), each checked as `read_table` checks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen = 0
    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows != count:
            raise CorruptRecord(f"holds {parquet.metadata.num_rows} rows, not the {count} its manifest names")
        for batch in parquet.iter_batches(BATCH_ROWS, columns=[name for name, _ in FORMATS[fmt]]):
            _check_table(batch, fmt, None)
            seen += batch.num_rows
            yield batch
    except (pa.ArrowException, OSError, ValueError) as error:
        if isinstance(error, CorruptRecord):
            raise
        raise CorruptRecord(f"not a readable Parquet file of {fmt} rows ({_first_line(error)})") from None
    if seen != count:
        raise CorruptRecord(f"holds {seen} rows, not the {count} its manifest names")


def _check_table(table, fmt: str, count: int | None) -> None:
    import pyarrow as pa

    kinds = dict(FORMATS[fmt])
    if count is not None and table.num_rows != count:
        raise CorruptRecord(f"holds {table.num_rows} rows, not the {count} its manifest names")
    for name in table.schema.names:
        column = table.column(name)
        expected = kinds.get(name)
        actual = column.type
        if expected == "str" and not (pa.types.is_string(actual) or pa.types.is_large_string(actual)) \
                or expected == "int" and not pa.types.is_integer(actual):
            raise CorruptRecord(f"its column {name} holds {actual}, not {expected}")
        if column.null_count:
            raise CorruptRecord(f"its column {name} has empty values")
        if expected == "int" and len(column) and _min(column) < 0:
            raise CorruptRecord(f"its column {name} has a negative value")
    if "digest" in table.schema.names and not _all_digests(table.column("digest")):
        raise CorruptRecord("its digest column holds a value that is not a digest")


def _all_digests(column) -> bool:
    """Every value is 64 lowercase hex characters (records.is_digest), checked in Arrow: a million rows as
    Python strings would cost 120 MB on every read."""
    import pyarrow.compute as pc

    return not len(column) or bool(pc.all(pc.match_substring_regex(column, "^[0-9a-f]{64}$")).as_py())


def _min(column) -> int:
    import pyarrow.compute as pc

    return pc.min(column).as_py()


def _arrow_type(kind: str):
    import pyarrow as pa

    return pa.string() if kind == "str" else pa.int64()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:120] if text else type(error).__name__
