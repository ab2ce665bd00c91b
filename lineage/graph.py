"""The lineage graph: versions with vN numbers and aliases, runs, and the edges between them.

lineage.json is derived data. The truth is runs/ (each finished run names the versions it
read and wrote) and manifests/ (the versions themselves). Version numbers follow the order
in which runs first produced each digest on this machine (a pulled run counts from the pull:
`arrival_order`), so rebuilding from those two folders gives the same graph back. A store
whose lineage.json lags behind runs/ (a crash after a run record was committed but before the
graph was rewritten) is healed on the next open.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field

from lineage import interrupts
from lineage.errors import UserError
from lineage.records import (CorruptRecord, RunRecord, RunSummary, VersionRef, is_count, is_digest, is_name,
                             parse_json)
from lineage.store import Store, read_no_follow

GRAPH_FORMAT = 1
DIGEST_PREFIX_MIN = 4
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass
class Version:
    """One artifact version as the graph knows it (`v` is None for one it does not: a source named by digest)."""

    name: str
    v: int | None
    digest: str
    run: str | None
    created: str | None
    size: int = 0
    count: int = 0
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.v}" if self.v is not None else self.key.short

    @property
    def key(self) -> VersionRef:
        return VersionRef(self.name, self.digest)

    def to_json(self) -> dict:
        aliases = sorted(self.aliases, key=lambda a: (a != "latest", a))  # canonical: `latest` first
        return {"v": self.v, "digest": self.digest, "run": self.run, "created": self.created,
                "size": self.size, "count": self.count, "aliases": aliases}


@dataclass
class Graph:
    versions: dict[str, list[Version]]
    runs: dict[str, RunSummary]
    runs_seen: int

    # -- building ----------------------------------------------------------------------

    @classmethod
    def rebuild(cls, store: Store) -> "Graph":
        """Derive the whole graph from runs/ alone (a damaged record is a UserError naming it).

        Every version a finished run committed keeps its number even while its manifest is missing
        or quarantined: numbers never shift under `show name:vN`, and re-running the stage that made
        it brings the manifest back under the same number."""
        records = sorted(store.read_runs(), key=lambda r: (r.committed or "", r.id))
        versions: dict[str, list[Version]] = {}
        by_digest: dict[VersionRef, Version] = {}
        runs: dict[str, RunSummary] = {}
        aliases: dict[tuple[str, str], Version] = {}
        latest: dict[str, Version] = {}
        for record in arrival_order(records):  # numbers: in the order versions reached this store
            for output in record.outputs if record.status == "finished" else ():
                if output.key not in by_digest:
                    chain = versions.setdefault(output.name, [])
                    version = Version(output.name, len(chain) + 1, output.digest, record.id, record.finished,
                                      output.size, output.count)
                    chain.append(version)
                    by_digest[output.key] = version
        for record in records:  # `latest` and aliases: in the order runs committed, wherever that was
            runs[record.id] = RunSummary.of(record)
            if record.status != "finished":
                continue
            for output in record.outputs:
                latest[output.name] = by_digest[output.key]
            for alias in record.aliases:
                target = by_digest.get(alias.key)
                if target is not None:
                    aliases[(alias.name, alias.alias)] = target
        for (name, alias), version in aliases.items():
            version.aliases.append(alias)
        # `latest` follows the newest run, so re-running an older configuration makes its
        # (already existing) version the latest again, as W&B and `dvc repro` would.
        for version in latest.values():
            version.aliases.insert(0, "latest")
        return cls(versions, runs, runs_seen=len(records))

    @classmethod
    def load(cls, store: Store) -> "Graph":
        """Read lineage.json, rebuilding it when it is missing, corrupt or behind runs/."""
        runs_on_disk = sum(1 for name in _listdir(store.runs_dir) if name.endswith(".json"))
        try:  # lineage.json is derived: any damage to it (binary, truncated, [], {}, null) is a rebuild
            data = parse_json(read_no_follow(store.graph_path))
            if isinstance(data, dict) and data.get("format") == GRAPH_FORMAT and data.get("runs_seen") == runs_on_disk:
                return cls.from_json(data)
        except (OSError, CorruptRecord):
            pass
        with store.locked():
            graph = cls.rebuild(store)
            graph.save(store)
        return graph

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        """The graph as save() wrote it; CorruptRecord if it is anything else (callers rebuild then)."""
        if not isinstance(data, dict) or not isinstance(data.get("versions"), dict) \
                or not isinstance(data.get("runs"), dict) or not is_count(data.get("runs_seen")):
            raise CorruptRecord("lineage.json is not a graph")
        versions = {}
        for name, chain in data["versions"].items():
            if not is_name(name) or not isinstance(chain, list):
                raise CorruptRecord(f"lineage.json: artifact {name[:40]!r} is malformed")
            versions[name] = [_version_from_json(name, number, entry) for number, entry in enumerate(chain, 1)]
        runs = {run_id: RunSummary.from_json(run, run_id) for run_id, run in data["runs"].items()}
        return cls(versions, runs, data["runs_seen"])

    def to_json(self) -> dict:
        return {
            "format": GRAPH_FORMAT,
            "runs_seen": self.runs_seen,
            "versions": {name: [v.to_json() for v in chain] for name, chain in sorted(self.versions.items())},
            "runs": {run_id: run.to_json() for run_id, run in self.runs.items()},
            "edges": self.edges(),
        }

    def save(self, store: Store) -> None:
        store.write_atomic(store.graph_path, json.dumps(self.to_json(), indent=1).encode())

    # -- queries -----------------------------------------------------------------------

    def edges(self) -> list[list[str]]:
        """Edges between version nodes (`name@digest`) and run nodes (`run:<id>`)."""
        edges = []
        for run_id, run in self.runs.items():
            if run.status != "finished":
                continue
            for item in run.inputs:
                edges.append([f"{item.name}@{item.digest}", f"run:{run_id}"])
            for item in run.outputs:
                edges.append([f"run:{run_id}", f"{item.name}@{item.digest}"])
        return sorted(edges)

    def all_versions(self) -> list[Version]:
        return [v for chain in self.versions.values() for v in chain]

    def find(self, name: str, digest: str) -> Version | None:
        for version in self.versions.get(name, []):
            if version.digest == digest:
                return version
        return None

    def runs_of_stage(self, stage: str) -> list[tuple[str, RunSummary]]:
        return [(rid, run) for rid, run in self.runs.items() if run.stage == stage]

    def finished_run_with_key(self, cache_key: str) -> tuple[str, RunSummary] | None:
        found = None
        for run_id, run in self.runs.items():
            if run.cache_key == cache_key and run.status == "finished":
                found = (run_id, run)
        return found

    def resolve(self, ref: str, expected_name: str | None = None) -> Version:
        """`name:vN`, `name:latest`, `name:<alias>`, `name` (= latest), or a digest prefix."""
        version = self._resolve(ref.strip())
        if expected_name and version.name != expected_name:
            raise UserError(f"{ref} is a {version.name} version, but a {expected_name} version is needed here")
        return version

    def _resolve(self, ref: str) -> Version:
        name, _, tag = ref.partition(":")
        if not tag and "@" in ref:
            name, _, tag = ref.partition("@")
        if name in self.versions:
            chain = self.versions[name]
            tag = tag or "latest"
            if re.fullmatch(r"v\d+", tag):
                number = int(tag[1:])
                if 1 <= number <= len(chain):
                    return chain[number - 1]
            for version in chain:
                if tag in version.aliases:
                    return version
            if len(tag) >= DIGEST_PREFIX_MIN and _HEX.match(tag):
                return self._by_prefix(tag, chain, ref)
            aliases = sorted({a for v in chain for a in v.aliases})
            raise UserError(f"{ref} does not exist: {name} has v1..v{len(chain)}"
                            + (f" and aliases {', '.join(aliases)}" if aliases else ""))
        if not tag and len(ref) >= DIGEST_PREFIX_MIN and _HEX.match(ref):
            return self._by_prefix(ref, self.all_versions(), ref)
        known = ", ".join(sorted(self.versions)) or "none yet (run `pipeline.py ingest`)"
        raise UserError(f"no artifact named {name!r}: artifacts in this store: {known}")

    def _by_prefix(self, prefix: str, candidates: list[Version], ref: str) -> Version:
        matches = [v for v in candidates if v.digest.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"no version's digest starts with {prefix!r} ({ref}): see `pipeline.py ls`")
        listed = ", ".join(f"{v.ref} ({v.digest[:12]})" for v in matches[:6])
        raise UserError(f"digest prefix {prefix!r} is ambiguous: it matches {listed}; give more digits")

    def producer(self, version: Version) -> RunSummary | None:
        return self.runs.get(version.run) if version.run else None

    def consumers(self, version: Version) -> list[tuple[str, RunSummary]]:
        key = version.key
        return [(rid, run) for rid, run in self.runs.items() if run.status == "finished" and key in run.inputs]


def record_run(store: Store, record: RunRecord) -> Graph:
    """Commit a run: write its record (the commit point), then rewrite the graph, under the lock."""
    with store.locked():
        # Stamped under the lock, so commit order (and so vN order) is the same in a rebuild.
        record.committed = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        made = list(record.outputs) if record.status == "finished" else []
        # A Ctrl-C waits until the record and this process's account of it agree (lineage/interrupts.py).
        with interrupts.deferred():
            try:
                store.write_run(record)
                graph = Graph.rebuild(store) if not store.graph_path.exists() else _extend(store, record)
                graph.save(store)
            except BaseException:  # a full disk (or an injected fault) after the commit point: still committed
                if made and store.run_path(record.id).exists():
                    interrupts.note_committed([o.key.short for o in made], graph_behind=True)
                raise
            interrupts.note_committed([graph.find(o.name, o.digest).ref for o in made])
    return graph


PULL_STAGE = "pull"  # the record a pull commits: params.brought lists the run ids it brought (lineage/sync.py)


def arrival_order(records: list[RunRecord]) -> list[RunRecord]:
    """Runs in the order they reached this store (records in commit order): a run made here at its own commit,
    a run brought by `pull` at the pull's commit. So a number, once shown, never changes on this machine, even
    when a pull brings runs that another machine committed earlier; the digest is the name every machine shares."""
    arrived: dict[str, tuple[str, str]] = {}
    for record in records:
        brought = (record.params or {}).get("brought") if record.stage == PULL_STAGE else None
        for run_id in brought if isinstance(brought, list) else ():
            if isinstance(run_id, str) and run_id not in arrived:  # the first pull that brought it
                arrived[run_id] = (record.committed or "", record.id)
    return sorted(records, key=lambda r: (*arrived.get(r.id, (r.committed or "", "")), r.committed or "", r.id))


def _extend(store: Store, record: RunRecord) -> Graph:
    """Add one run to the graph on disk; falls back to a rebuild if the file lags or is damaged."""
    runs_on_disk = sum(1 for name in _listdir(store.runs_dir) if name.endswith(".json"))
    try:
        graph = Graph.from_json(parse_json(read_no_follow(store.graph_path)))
    except (OSError, CorruptRecord):
        return Graph.rebuild(store)
    if graph.runs_seen != runs_on_disk - 1:
        return Graph.rebuild(store)
    graph.runs[record.id] = RunSummary.of(record)
    graph.runs_seen = runs_on_disk
    if record.status == "finished":
        for output in record.outputs:
            target = graph.find(output.name, output.digest)
            if target is None:
                chain = graph.versions.setdefault(output.name, [])
                target = Version(output.name, len(chain) + 1, output.digest, record.id, record.finished,
                                 output.size, output.count)
                chain.append(target)
            _move_alias(graph, target, "latest", first=True)
        for alias in record.aliases:
            target = graph.find(alias.name, alias.digest)
            if target is not None:
                _move_alias(graph, target, alias.alias)
    return graph


def _move_alias(graph: Graph, target: Version, alias: str, first: bool = False) -> None:
    """An alias names one version of an artifact at a time."""
    for version in graph.versions.get(target.name, []):
        if alias in version.aliases:
            version.aliases.remove(alias)
    if first:
        target.aliases.insert(0, alias)
    else:
        target.aliases.append(alias)


_VERSION_KEYS = {"v", "digest", "run", "created", "size", "count", "aliases"}


def _version_from_json(name: str, number: int, entry) -> Version:
    if not isinstance(entry, dict) or set(entry) != _VERSION_KEYS or entry["v"] != number \
            or not is_digest(entry["digest"]) or not (entry["run"] is None or is_name(entry["run"])) \
            or not (entry["created"] is None or isinstance(entry["created"], str)) \
            or not is_count(entry["size"]) or not is_count(entry["count"]) \
            or not isinstance(entry["aliases"], list) or not all(isinstance(a, str) for a in entry["aliases"]):
        raise CorruptRecord(f"lineage.json: {name}:v{number} is malformed")
    return Version(name=name, **entry)


def _listdir(path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
