"""What a well-formed manifest, run record or reference looks like, checked when it is read.

Every file in the store is untrusted: truncated by a power loss, edited by hand, or hostile.
A digest and an artifact name are the only parts of a record that become paths, so a digest
must be 64 lowercase hex characters and a name a plain folder name before any path is built
from them (`../../etc/passwd` never reaches the filesystem). A record that fails a check
raises CorruptRecord with the reason; the store turns that into a UserError that names the
file and the command that repairs it.

Each kind of record is a dataclass with one reader, `from_json`, which runs its check, and one
writer, `to_json`, which gives back exactly the dict the store holds: a manifest's digest is the
hash of those bytes, so a manifest read and written again keeps its digest. Rows that come by the
hundred thousand (a raw-data version's entries, a split's digests) live in a columnar object that the
manifest names (`RowsRef`, lineage/rows.py); manifests written before that hold them inline, as plain
lists and dicts typed by TypedDict, and are read (and written back) as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict, get_args

DIGEST = re.compile(r"[0-9a-f]{64}")
_HEX_RUN = re.compile(r"[0-9a-f]*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # artifact names and run ids: one plain path part


class CorruptRecord(ValueError):
    """A store file that does not hold what its kind must hold; the message says what is wrong."""


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None and value not in (".", "..")


def all_digests(values: Any) -> bool:
    """Every item is a digest. In C loops (a join and a regex), not one match per item: a split
    lists 100,000 digests and is read on every cache hit."""
    if not isinstance(values, list):
        return False
    try:
        return set(map(len, values)) <= {64} and _HEX_RUN.fullmatch("".join(values)) is not None
    except TypeError:  # an item is not a string (or has no len)
        return False


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptRecord("not JSON: truncated or garbled") from None


def check_ref(item: Any, where: str) -> dict:
    """A {name, digest} reference to a version, as run records and manifests hold them."""
    if not isinstance(item, dict):
        raise CorruptRecord(f"{where} is not an object")
    if not is_name(item.get("name")):
        raise CorruptRecord(f"{where} has a bad name {_short(item.get('name'))}")
    if not is_digest(item.get("digest")):
        raise CorruptRecord(f"{where} has a bad digest {_short(item.get('digest'))}")
    return item


def check_manifest(value: Any, name: str) -> dict:
    """A manifest: an object named after its folder, with well-typed entries, files and source."""
    if not isinstance(value, dict):
        raise CorruptRecord(f"holds {type(value).__name__}, not a manifest object")
    if value.get("name") != name:
        raise CorruptRecord(f"its name is {_short(value.get('name'))}, not {name!r}")
    _check_entries(value.get("entries", []))
    files = value.get("files", {})
    if not isinstance(files, dict):
        raise CorruptRecord("its files are not an object")
    for file_name, item in files.items():
        if not isinstance(item, dict) or not is_digest(item.get("digest")) or not is_count(item.get("size", 0)):
            raise CorruptRecord(f"its file {_short(file_name)} has a bad digest or size")
    if value.get("source") is not None:
        check_ref(value["source"], "its source")
    if "rows" in value:
        check_rows(value["rows"])
        if "entries" in value:
            raise CorruptRecord("it has both entries and rows")
    if not isinstance(value.get("meta", {}), dict):
        raise CorruptRecord("its meta is not an object")
    return value


ROW_FORMATS = ("images-v1", "splits-v1")  # lineage/rows.py FORMATS: a raw-data version's images, a split's digests


def check_rows(rows: Any) -> None:
    """A reference to a version's rows object (lineage/rows.py): its format, count, stream digest, object."""
    if not isinstance(rows, dict):
        raise CorruptRecord("its rows are not an object")
    if rows.get("format") not in ROW_FORMATS:
        raise CorruptRecord(f"its rows have an unknown format {_short(rows.get('format'))}")
    if not is_count(rows.get("count")) or not is_digest(rows.get("digest")) or not is_digest(rows.get("object")):
        raise CorruptRecord("its rows have a bad count, digest or object")


def _check_entries(entries: Any) -> None:
    if isinstance(entries, dict):  # a split: {split name: {class: [digest, …]}}
        for per_class in entries.values():
            if not isinstance(per_class, dict) or not all(all_digests(chunk) for chunk in per_class.values()):
                raise CorruptRecord("its split entries are not lists of digests")
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CorruptRecord("its entries are not a list of objects")
    try:
        digests = [e["digest"] for e in entries]
        sizes = [e.get("size", 0) for e in entries]
    except KeyError:
        raise CorruptRecord("an entry has no digest") from None
    if not all_digests(digests):
        raise CorruptRecord("an entry has a bad digest")
    if not all(map(is_count, sizes)):
        raise CorruptRecord("an entry has a bad size")
    if not all(isinstance(e.get("label", ""), str) for e in entries):
        raise CorruptRecord("an entry has a bad label")


def check_run(value: Any, run_id: str) -> dict:
    """A run record: its own id, a stage, a status, and inputs/outputs/aliases that name versions."""
    if not isinstance(value, dict):
        raise CorruptRecord(f"holds {type(value).__name__}, not a run record object")
    if value.get("id") != run_id:
        raise CorruptRecord(f"its id is {_short(value.get('id'))}, not its file name {run_id!r}")
    if not is_name(value.get("stage")):
        raise CorruptRecord(f"its stage is {_short(value.get('stage'))}")
    if not isinstance(value.get("status"), str):
        raise CorruptRecord(f"its status is {_short(value.get('status'))}")
    for key in ("inputs", "outputs", "aliases"):
        items = value.get(key, [])
        if not isinstance(items, list):
            raise CorruptRecord(f"its {key} are not a list")
        for index, item in enumerate(items):
            check_ref(item, f"{key}[{index}]")
            if key == "outputs" and not (is_count(item.get("size", 0)) and is_count(item.get("count", 0))):
                raise CorruptRecord(f"outputs[{index}] has a bad size or count")
            if key == "aliases" and not isinstance(item.get("alias"), str):
                raise CorruptRecord(f"aliases[{index}] has no alias name")
    for key in ("committed", "started", "finished", "cache_key", "code_digest"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise CorruptRecord(f"its {key} is {_short(value[key])}")
    for key in ("params", "all_params"):
        if value.get(key) is not None and not isinstance(value[key], dict):
            raise CorruptRecord(f"its {key} are not an object")
    return value


def check_run_summary(value: Any, run_id: str) -> dict:
    """A run as lineage.json holds it (`RunSummary` below)."""
    if not is_name(run_id) or not isinstance(value, dict) or not is_name(value.get("stage")):
        raise CorruptRecord(f"run {_short(run_id)} is malformed")
    for key in ("inputs", "outputs"):
        items = value.get(key)
        if not isinstance(items, list):
            raise CorruptRecord(f"run {run_id}'s {key} are not a list")
        for index, item in enumerate(items):
            check_ref(item, f"run {run_id} {key}[{index}]")
    return value


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


# -- the records --------------------------------------------------------------------------
# References are NamedTuples rather than frozen dataclasses: as immutable, hashable and ordered, and
# defined in a tenth of the time. Every command imports this module, a no-op `run` included.


class VersionRef(NamedTuple):
    """A version by name and digest: how manifests, run records and the graph name one another."""

    name: str
    digest: str

    @property
    def short(self) -> str:
        return f"{self.name}@{self.digest[:12]}"

    @classmethod
    def from_json(cls, value: Any, where: str) -> "VersionRef":
        check_ref(value, where)
        return cls(value["name"], value["digest"])

    def to_json(self) -> dict:
        return {"name": self.name, "digest": self.digest}


class FileRef(NamedTuple):
    """One of a version's named files (model.keras, predictions.parquet, …): its object and size."""

    digest: str
    size: int

    def to_json(self) -> dict:
        return {"digest": self.digest, "size": self.size}


class RowsRef(NamedTuple):
    """A version's rows, stored as a columnar object (lineage/rows.py): what they are, how many, the digest
    of their canonical stream (part of the version's digest) and the Parquet object that holds them (not
    part of it: another pyarrow writes other bytes for the same rows)."""

    format: str
    count: int
    digest: str
    object: str

    def to_json(self) -> dict:
        return {"format": self.format, "count": self.count, "digest": self.digest, "object": self.object}


class EntryRow(TypedDict, total=False):
    """One image of a raw-data version (ingest writes every key; a check needs only digest)."""

    path: str
    digest: str
    size: int
    label: str
    format: str
    width: int
    height: int


SplitName = Literal["train", "val", "test"]  # the parts of a split: what split makes, train, infer and config name
SPLIT_NAMES: tuple[str, ...] = get_args(SplitName)
SplitDigests = dict[SplitName, dict[str, list[str]]]  # {split name: {class: [object digest, …]}}

_MANIFEST_KEYS = ("name", "entries", "rows", "files", "source", "meta")


@dataclass
class Manifest:
    """One version's manifest; its digest is the hash of `to_json()`'s canonical bytes.

    The JSON key "entries" holds one of two shapes, read here as two attributes so that no reader
    tests which: `entries`, a raw-data version's rows, and `splits`, a split's digests. Versions with
    named files (model, predictions, eval) have `files`; one cut from another names it as `source`.

    Those two hold the rows of a manifest in the old, inline form, and of a new one before it is written:
    `Store.write_manifest` moves them to a columnar object named by `rows`, and a manifest read in that form
    has `rows` and empty `entries` and `splits`. Read rows through `Store.read_rows`, which takes either."""

    name: str
    entries: list[EntryRow] = field(default_factory=list)
    splits: SplitDigests = field(default_factory=dict)
    files: dict[str, FileRef] = field(default_factory=dict)
    source: VersionRef | None = None
    meta: dict = field(default_factory=dict)
    rows: RowsRef | None = None
    # Which keys the stored JSON has ("splits" standing for an "entries" that holds a split) and any keys
    # this code does not know, so a manifest read from the store writes back the very bytes it was read
    # from. None for a new manifest: its keys follow from its values, as the stages always wrote them.
    json_keys: frozenset[str] | None = field(default=None, repr=False, compare=False)
    unknown: dict = field(default_factory=dict, repr=False, compare=False)
    # A new manifest's rows built as columns (a pyarrow Table from lineage/rows.py table_from_columns), for a
    # million rows without a dict each: Store.write_manifest stores it as the rows object, as it does `entries`.
    table: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any, name: str) -> "Manifest":
        """The manifest in `value`, read from manifests/<name>/; CorruptRecord if it is not one."""
        check_manifest(value, name)
        rows = value.get("entries", [])
        is_split = isinstance(rows, dict)
        source = value.get("source")
        rows_ref = value.get("rows")
        return cls(name,
                   entries=[] if is_split else rows, splits=rows if is_split else {},
                   files={n: FileRef(f["digest"], f.get("size", 0)) for n, f in value.get("files", {}).items()},
                   source=None if source is None else VersionRef(source["name"], source["digest"]),
                   meta=value.get("meta", {}),
                   rows=None if rows_ref is None else RowsRef(rows_ref["format"], rows_ref["count"],
                                                              rows_ref["digest"], rows_ref["object"]),
                   json_keys=frozenset("splits" if key == "entries" and is_split else key for key in value),
                   unknown={key: item for key, item in value.items() if key not in _MANIFEST_KEYS})

    def to_json(self) -> dict:
        keys = self.json_keys if self.json_keys is not None else self._keys_of_values()
        value: dict[str, Any] = {"name": self.name, **self.unknown}
        if "rows" in keys:
            value["rows"] = self.rows.to_json()
        elif "splits" in keys:
            value["entries"] = self.splits
        elif "entries" in keys:
            value["entries"] = self.entries
        if "files" in keys:
            value["files"] = {name: item.to_json() for name, item in self.files.items()}
        if "source" in keys:
            value["source"] = None if self.source is None else self.source.to_json()
        if "meta" in keys:
            value["meta"] = self.meta
        return value

    def _keys_of_values(self) -> set[str]:
        keys = {"meta"}
        if self.rows is not None:
            keys.add("rows")
        elif self.splits:
            keys.add("splits")
        elif self.entries:
            keys.add("entries")
        if self.files:
            keys.add("files")
        if self.source is not None:
            keys.add("source")
        return keys

    def file(self, name: str) -> FileRef | None:
        return self.files.get(name)

    def inline_objects(self) -> list[str]:
        """The object digests this JSON names itself: its files', its inline entries' and split's, its rows
        object. A version's rows object names more: `Store.referenced_objects` adds those."""
        digests = [item.digest for item in self.files.values()]
        if self.rows is not None:
            digests.append(self.rows.object)
        digests += [d for per_class in self.splits.values() for chunk in per_class.values() for d in chunk]
        digests += [entry["digest"] for entry in self.entries]
        return digests

    @property
    def owns_rows(self) -> bool:
        """Its rows' digests are objects its own stage wrote (a raw-data version's images), not references
        to another version's (a split's)."""
        return bool(self.entries) or self.rows is not None and self.rows.format == "images-v1"

    def owned_objects(self) -> list[str]:
        """The objects the stage that made this version wrote: its files and its entries' images. A split
        only refers to raw-data's images; re-running split writes none of them."""
        owned = [item.digest for item in self.files.values()] + [entry["digest"] for entry in self.entries]
        return owned + ([self.rows.object] if self.rows is not None else [])

    def entry_count(self) -> int:
        """Images in a split or a raw-data version, else its named files: the count `ls` shows."""
        if self.rows is not None:
            return self.rows.count
        if self.splits:
            return sum(len(chunk) for per_class in self.splits.values() for chunk in per_class.values())
        return len(self.entries) or len(self.files)

    def content_size(self) -> int:
        """Bytes of the objects it holds (a split's are raw-data's, so counted there only)."""
        in_table = 0
        if self.table is not None and "size" in self.table.column_names:
            import pyarrow.compute as pc

            in_table = pc.sum(self.table.column("size")).as_py() or 0
        return sum(entry.get("size", 0) for entry in self.entries) + sum(item.size for item in self.files.values()) \
            + in_table


class InputRef(NamedTuple):
    """A version a run read, and the reference it was asked for by (`split:latest`; absent in a
    record recovered from lineage.json)."""

    name: str
    digest: str
    ref: str | None = None

    @property
    def key(self) -> VersionRef:
        return VersionRef(self.name, self.digest)

    def to_json(self) -> dict:
        value = {"name": self.name, "digest": self.digest}
        if self.ref is not None:
            value["ref"] = self.ref
        return value


class OutputRef(NamedTuple):
    """A version a run made (or, for a reused run, made current again), with its size and entry count."""

    name: str
    digest: str
    size: int = 0
    count: int = 0

    @property
    def key(self) -> VersionRef:
        return VersionRef(self.name, self.digest)

    def to_json(self) -> dict:
        return {"name": self.name, "digest": self.digest, "size": self.size, "count": self.count}


class AliasRef(NamedTuple):
    """An alias a run set on a version."""

    name: str
    digest: str
    alias: str

    @property
    def key(self) -> VersionRef:
        return VersionRef(self.name, self.digest)

    def to_json(self) -> dict:
        return {"name": self.name, "digest": self.digest, "alias": self.alias}


@dataclass
class RunRecord:
    """runs/<id>.json: one stage run (or alias, or reuse), written once when it finishes or fails.

    Optional fields are None in records that lack them (older records, alias runs, runs recovered
    by `lineage --rebuild`), and a None field is left out of the JSON, as those records leave it out."""

    id: str
    stage: str
    status: str  # running (never on disk), finished or failed
    started: str | None = None
    finished: str | None = None
    committed: str | None = None  # stamped under the store's lock: the order of vN numbers
    duration_s: float | None = None
    params: dict | None = None  # those in the cache key
    all_params: dict | None = None
    cache_key: str | None = None
    code_digest: str | None = None
    source_fingerprint: str | None = None
    inputs: list[InputRef] = field(default_factory=list)
    outputs: list[OutputRef] = field(default_factory=list)
    aliases: list[AliasRef] = field(default_factory=list)
    error: str | None = None  # a failed run's one line
    reused_run: str | None = None  # a cache hit that made an older version latest again: the run reused
    recovered: str | None = None  # a note on a record rebuilt from lineage.json
    host: str | None = None
    python: str | None = None
    packages: dict | None = None
    git: dict | None = None  # {commit, dirty}
    argv: list | None = None
    unknown: dict = field(default_factory=dict, repr=False, compare=False)  # keys this code does not know

    @classmethod
    def from_json(cls, value: Any, run_id: str) -> "RunRecord":
        """The record in `value`, read from runs/<run_id>.json; CorruptRecord if it is not one."""
        check_run(value, run_id)
        known = {f: value[f] for f in _RUN_SCALARS if f in value}
        return cls(inputs=[InputRef(i["name"], i["digest"], i.get("ref")) for i in value.get("inputs", [])],
                   outputs=[OutputRef(o["name"], o["digest"], o.get("size", 0), o.get("count", 0))
                            for o in value.get("outputs", [])],
                   aliases=[AliasRef(a["name"], a["digest"], a["alias"]) for a in value.get("aliases", [])],
                   unknown={k: v for k, v in value.items() if k not in _RUN_KEYS}, **known)

    def to_json(self) -> dict:
        value = {name: getattr(self, name) for name in _RUN_SCALARS if getattr(self, name) is not None}
        value.update(self.unknown)
        value.update(inputs=[i.to_json() for i in self.inputs], outputs=[o.to_json() for o in self.outputs],
                     aliases=[a.to_json() for a in self.aliases])
        return value


_RUN_LISTS = ("inputs", "outputs", "aliases")
_RUN_SCALARS = tuple(f for f in RunRecord.__dataclass_fields__ if f not in _RUN_LISTS + ("unknown",))
_RUN_KEYS = frozenset(_RUN_SCALARS + _RUN_LISTS)


@dataclass
class RunSummary:
    """A run as lineage.json keeps it: enough to number versions, draw edges and recover its record."""

    stage: str
    status: str | None
    cache_key: str | None
    started: str | None
    finished: str | None
    inputs: list[VersionRef]
    outputs: list[VersionRef]

    @classmethod
    def of(cls, record: RunRecord) -> "RunSummary":
        return cls(record.stage, record.status, record.cache_key, record.started, record.finished,
                   [i.key for i in record.inputs], [o.key for o in record.outputs])

    @classmethod
    def from_json(cls, value: Any, run_id: str) -> "RunSummary":
        """The summary in lineage.json's `runs`; CorruptRecord if it is malformed. Its status and times are
        taken as they are: lineage.json is derived, and the readers that need them typed check them."""
        check_run_summary(value, run_id)
        return cls(value["stage"], value.get("status"), value.get("cache_key"), value.get("started"),
                   value.get("finished"), [VersionRef(i["name"], i["digest"]) for i in value["inputs"]],
                   [VersionRef(o["name"], o["digest"]) for o in value["outputs"]])

    def to_json(self) -> dict:
        return {"stage": self.stage, "status": self.status, "cache_key": self.cache_key, "started": self.started,
                "finished": self.finished, "inputs": [i.to_json() for i in self.inputs],
                "outputs": [o.to_json() for o in self.outputs]}
