"""The runner: everything around a stage's pure step.

A stage module declares NAME, CODE (its source files), a Params dataclass, `input_refs(params)`
and `run(inputs, params, ctx) -> list[Output]`; ingest adds `fingerprint(params)` for the
folder it reads. The runner resolves the inputs, computes the cache key, reuses a finished run
with the same key, hands the stage a StageContext for the only writes it may make (content-
addressed objects, disposable cache files), then commits the outputs: manifests, the run
record (the commit point) and the graph.

    cache key = sha256(stage name, stage code digest, canonical params, input version digests)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import platform
import shutil
import subprocess
import sys
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from lineage.errors import UserError
from lineage.graph import Graph, Version, record_run
from lineage.inprogress import run_in_progress
from lineage.store import Store, canonical_json, sha256_bytes, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECORDED_PACKAGES = ("numpy", "pandas", "pillow", "scikit-learn", "tensorflow-cpu", "tensorflow", "keras",
                     "pyarrow", "matplotlib")


@dataclass
class Artifact:
    """A resolved input version as a stage sees it: its manifest and where its objects are."""

    version: Version
    manifest: dict
    store: Store = field(repr=False)
    graph: Graph | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return self.version.ref

    @property
    def digest(self) -> str:
        return self.version.digest

    def object_path(self, digest: str) -> Path:
        return self.store.object_path(digest)

    @classmethod
    def open(cls, store: Store, graph: Graph | None, version: Version) -> "Artifact":
        return cls(version, store.read_manifest(version.name, version.digest), store, graph)

    def source(self) -> "Artifact":
        """The version this one was cut from (a split's raw-data), named in its own manifest.

        Reading it is as deterministic as reading this manifest: the reference is by digest."""
        name, digest = self.manifest["source"]["name"], self.manifest["source"]["digest"]
        version = (self.graph and self.graph.find(name, digest)) or Version(name, 0, digest, None, None)
        return Artifact.open(self.store, self.graph, version)

    @contextlib.contextmanager
    def named_file(self, name: str) -> Iterator[Path]:
        """The file under its own name (a symlink in tmp/), for readers that insist on an extension."""
        folder = self.store.temp_path("-named")
        folder.mkdir()
        try:
            link = folder / name
            link.symlink_to(self.file_path(name).resolve())
            yield link
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def file_path(self, name: str) -> Path:
        """Path of one of the version's named files (model.keras, predictions.parquet, …)."""
        try:
            return self.store.object_path(self.manifest["files"][name]["digest"])
        except KeyError:
            raise UserError(f"{self.ref} has no file {name!r}: it holds "
                            f"{', '.join(self.manifest.get('files', {})) or 'no files'}") from None


@dataclass
class Output:
    """One artifact version a stage produced: `body` becomes its manifest (plus its name)."""

    name: str
    body: dict
    aliases: list[str] = field(default_factory=list)


@dataclass
class StageContext:
    """The only ways a stage touches the store: staging content and using its cache folder."""

    store: Store = field(repr=False)
    stage: str
    log: Callable[[str], None] = print
    progress: bool = True
    temp_dirs: list[Path] = field(default_factory=list, repr=False)
    # The run was asked for with --force: objects already in the store are re-hashed before they are
    # trusted, so re-running a stage rewrites any that `verify` found corrupt (a normal run checks sizes only).
    force: bool = False

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        return self.store.put_bytes(data, digest, recheck=self.force)

    def put_blob(self, data: bytes) -> dict:
        """Stage bytes as an object; returns the {digest, size} a manifest's `files` entry holds."""
        return {"digest": self.store.put_bytes(data, recheck=self.force), "size": len(data)}

    def write_cache(self, path: Path, data: bytes) -> None:
        self.store.write_atomic(path, data, durable=False)

    def put_file(self, path: str | os.PathLike) -> dict:
        digest, size = self.store.put_file(path, recheck=self.force)
        return {"digest": digest, "size": size}

    def missing_objects(self, digests: list[str]) -> list[str]:
        return self.store.missing_objects(digests)

    def add_object(self, data: bytes, digest: str, link_from: str | None = None) -> None:
        self.store.add_object(data, digest, link_from, recheck=self.force)

    def cache_dir(self, *parts: str) -> Path:
        """A folder under the store's cache/ (derived, disposable; shared between stages)."""
        folder = self.store.cache_dir.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def temp_dir(self) -> Path:
        """A scratch folder under tmp/, removed by the runner when the stage is done."""
        folder = self.store.temp_path("-stage")
        folder.mkdir()
        self.temp_dirs.append(folder)
        return folder


@dataclass
class Plan:
    """What a stage would run on, and the key that names that run."""

    stage: ModuleType
    params: Any
    inputs: dict[str, Version]
    code_digest: str
    fingerprint: str | None

    @functools.cached_property
    def cache_key(self) -> str:
        return sha256_bytes(canonical_json({"stage": self.stage.NAME, **self.key_parts()}))

    def key_parts(self) -> dict:
        return {"code": self.code_digest, "params": cache_params(self.params),
                "inputs": {name: v.digest for name, v in sorted(self.inputs.items())},
                "source": self.fingerprint}


@dataclass
class RunResult:
    stage: str
    outputs: list[Version]
    reused: bool
    run_id: str


def plan(store: Store, graph: Graph, stage: ModuleType, params: Any) -> Plan:
    """Resolve a stage's inputs and compute its cache key, without running anything."""
    # Input keys are artifact names, or `name#role` where a stage reads several versions of one name.
    inputs = {key: graph.resolve(ref, expected_name=key.split("#")[0])
              for key, ref in stage.input_refs(params).items()}
    fingerprint = stage.fingerprint(params) if hasattr(stage, "fingerprint") else None
    return Plan(stage, params, inputs, code_digest(stage.CODE), fingerprint)


def execute(store: Store, stage: ModuleType, params: Any, *, force: bool = False, aliases: list[str] = (),
            log: Callable[[str], None] = print, progress: bool = True) -> RunResult:
    """Run one stage through the cache: reuse a finished identical run, or run and commit it."""
    for alias in aliases:
        check_alias(alias)
    graph = Graph.load(store)
    the_plan = plan(store, graph, stage, params)
    if not force:
        reused = _reuse(store, graph, the_plan, aliases)
        if reused is not None:
            return reused

    run_id = _new_run_id()
    # From before the stage stages (or finds an object already present) until its record is committed,
    # the run holds its place in the store: gc cannot sweep what it is about to make live.
    with run_in_progress(store, run_id, stage.NAME, log):
        return _run_and_commit(store, stage, params, the_plan, graph, run_id, force, aliases, log, progress)


def _run_and_commit(store: Store, stage: ModuleType, params: Any, the_plan: Plan, graph: Graph, run_id: str,
                    force: bool, aliases: list[str], log: Callable[[str], None], progress: bool) -> RunResult:
    started = _now()
    t0 = time.perf_counter()
    inputs = {name: Artifact.open(store, graph, v) for name, v in the_plan.inputs.items()}
    context = StageContext(store, stage.NAME, log, progress, force=force)
    record = _run_record(run_id, the_plan, started)
    try:
        outputs = stage.run(inputs, params, context)
    except (UserError, KeyboardInterrupt) as error:
        record.update(status="failed", finished=_now(), duration_s=round(time.perf_counter() - t0, 3),
                      error=str(error) or type(error).__name__)
        record_run(store, record)
        raise
    finally:  # what a stage staged into objects/ is already in place; its scratch files are not needed
        for folder in context.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    written = []
    for output in outputs:
        manifest = {"name": output.name, **output.body}
        digest = store.put_manifest(manifest)
        written.append({"name": output.name, "digest": digest, "size": _version_size(store, manifest, digest),
                        "count": _entry_count(manifest)})
        record["aliases"] += [{"name": output.name, "digest": digest, "alias": a} for a in output.aliases]
    record["aliases"] += [{"name": o["name"], "digest": o["digest"], "alias": a} for o in written for a in aliases]
    record.update(status="finished", outputs=written, finished=_now(),
                  duration_s=round(time.perf_counter() - t0, 3))
    try:
        graph = record_run(store, record)
    except BaseException as error:  # Ctrl-C or a full disk: the CLI must say whether the run record made it
        if store.run_path(run_id).exists():
            error.committed_refs = [f"{o['name']}@{o['digest'][:12]}" for o in written]
        raise
    versions = [graph.find(o["name"], o["digest"]) for o in written]
    return RunResult(stage.NAME, versions, reused=False, run_id=run_id)


def _reuse(store: Store, graph: Graph, the_plan: Plan, aliases: list[str]) -> RunResult | None:
    """A finished run with the same key whose outputs are intact stands in for a new one."""
    found = graph.finished_run_with_key(the_plan.cache_key)
    if found is None:
        return None
    run_id, run = found
    versions = [graph.find(o["name"], o["digest"]) for o in run["outputs"]]
    if any(v is None or not outputs_intact(store, v) for v in versions):
        return None
    stale = [v for v in versions if "latest" not in v.aliases or any(a not in v.aliases for a in aliases)]
    if stale:
        # Re-running an older configuration makes its versions `latest` again. Record that as a
        # (cheap) run of its own, so the graph stays derivable from runs/ alone.
        record = _run_record(_new_run_id(), the_plan, _now())
        record.update(status="finished", finished=_now(), duration_s=0.0, reused_run=run_id,
                      outputs=[{"name": v.name, "digest": v.digest, "size": v.size, "count": v.count}
                               for v in versions],
                      aliases=[{"name": v.name, "digest": v.digest, "alias": a} for v in versions for a in aliases])
        graph = record_run(store, record)
        versions = [graph.find(v.name, v.digest) for v in versions]
    return RunResult(the_plan.stage.NAME, versions, reused=True, run_id=run_id)


ALIAS_MAX_CHARS = 100


def check_alias(alias: str) -> None:
    """`latest` and `vN` are the runner's; a colon or `@` would not resolve back; blank, control
    characters, edge whitespace or a page-long name would print as something other than what was typed."""
    shown = repr(alias[:40] + "…" if len(alias) > 40 else alias)
    why = None
    if not alias.strip():
        why = "is blank"
    elif len(alias) > ALIAS_MAX_CHARS:
        why = f"is {len(alias):,} characters long (at most {ALIAS_MAX_CHARS})"
    elif any(unicodedata.category(c)[0] == "C" for c in alias):
        why = "contains control or unprintable characters"
    elif alias != alias.strip():
        why = "starts or ends with whitespace"
    elif ":" in alias or "@" in alias:
        why = "contains ':' or '@', which separate a reference's parts"
    elif alias == "latest" or alias[0] == "v" and alias[1:].isdigit():
        why = "is reserved (latest and vN are set by the runner)"
    if why:
        raise UserError(f"alias {shown} {why}: pick a name like best or production "
                        f"(printable, no ':' or '@', at most {ALIAS_MAX_CHARS} characters)")


def set_alias(store: Store, version: Version, alias: str) -> None:
    """Name an existing version. Recorded as a run of its own, so lineage.json stays derivable
    from runs/ alone; the alias moves off whichever version had it."""
    check_alias(alias)
    now = _now()
    record_run(store, {"id": _new_run_id(), "stage": "alias", "status": "finished", "started": now,
                       "finished": now, "params": {"alias": alias}, "cache_key": None, "inputs": [],
                       "outputs": [], "aliases": [{"name": version.name, "digest": version.digest, "alias": alias}],
                       "host": platform.node(), "argv": sys.argv})


def outputs_intact(store: Store, version: Version) -> bool:
    """The manifest and every object it names are present (not re-hashed: that is `verify`)."""
    path = store.manifest_path(version.name, version.digest)
    if not path.exists():
        return False
    manifest = store.read_manifest(version.name, version.digest)
    return not store.missing_objects(referenced_objects(manifest))


def referenced_objects(manifest: dict) -> list[str]:
    """Every object digest a manifest refers to: its entries' and its files'."""
    digests = [f["digest"] for f in manifest.get("files", {}).values()]
    entries = manifest.get("entries", [])
    if isinstance(entries, dict):  # a split: {split name: {class: [digest, …]}}
        digests += [d for per_class in entries.values() for chunk in per_class.values() for d in chunk]
    else:
        digests += [e["digest"] for e in entries]
    return digests


REF = {"cache": False}  # metadata for a Params field that names an input version: the key holds its digest


def cache_params(params: Any) -> dict:
    """The params that define a run's result. Fields marked cache=False are left out: workers and
    verbosity change nothing, and input references (`split:latest` or `split:v3`) count by the
    digest they resolve to, which the key already holds."""
    if not dataclasses.is_dataclass(params):
        return params
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.metadata.get("cache", True)}


def code_digest(paths: tuple[str, ...]) -> str:
    """sha256 over the stage's source files (folders expand to every file but caches: .js and .css too)."""
    digest_parts = []
    for relative in paths:
        path = PROJECT_ROOT / relative
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest_parts.append([str(file.relative_to(PROJECT_ROOT)), sha256_file(file)])
    return sha256_bytes(canonical_json(digest_parts))


def last_run(graph: Graph, stage: str) -> tuple[str, dict] | None:
    runs = [(rid, r) for rid, r in graph.runs_of_stage(stage) if r.get("status") == "finished"]
    return max(runs, key=lambda item: (item[1].get("finished") or "", item[0])) if runs else None


def _run_record(run_id: str, the_plan: Plan, started: str) -> dict:
    return {
        "id": run_id,
        "stage": the_plan.stage.NAME,
        "status": "running",
        "params": cache_params(the_plan.params),
        "all_params": dataclasses.asdict(the_plan.params) if dataclasses.is_dataclass(the_plan.params) else None,
        "cache_key": the_plan.cache_key,
        "code_digest": the_plan.code_digest,
        "source_fingerprint": the_plan.fingerprint,
        "inputs": [{"name": v.name, "ref": v.ref, "digest": v.digest} for v in the_plan.inputs.values()],
        "outputs": [],
        "aliases": [],
        "started": started,
        "host": platform.node(),
        "python": platform.python_version(),
        "packages": _package_versions(),
        "git": _git_commit(),
        "argv": sys.argv,
    }


def _version_size(store: Store, manifest: dict, digest: str) -> int:
    entries = manifest.get("entries", [])
    entry_bytes = sum(e.get("size", 0) for e in entries) if isinstance(entries, list) else 0
    file_bytes = sum(f.get("size", 0) for f in manifest.get("files", {}).values())
    return entry_bytes + file_bytes + store.manifest_path(manifest["name"], digest).stat().st_size


def _entry_count(manifest: dict) -> int:
    entries = manifest.get("entries", [])
    if isinstance(entries, dict):
        return sum(len(chunk) for per_class in entries.values() for chunk in per_class.values())
    return len(entries) or len(manifest.get("files", {}))


def _package_versions() -> dict:
    import importlib.metadata  # 30 ms to import: only real runs need it, not cache hits

    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _git_commit() -> dict | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def _new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def explain(store: Store, graph: Graph, stage: ModuleType, params: Any) -> list[str]:
    """Why would `stage` run now? Compare what it would run on with its last run (`pipeline.py why`)."""
    found = last_run(graph, stage.NAME)
    if found is None:
        return [f"{stage.NAME} has never run in this store"]
    run_id, _ = found
    record = store.read_run(run_id)  # a damaged record is a UserError naming it and `lineage --rebuild`
    if record is None:
        return [f"{stage.NAME}'s last run {run_id} has no run record: run `pipeline.py lineage --rebuild`"]
    current = plan(store, graph, stage, params)
    if current.cache_key == record["cache_key"]:
        return []
    reasons = []
    if current.code_digest != record["code_digest"]:
        reasons.append(f"code changed: {', '.join(stage.CODE)} ({record['code_digest'][:12]} → {current.code_digest[:12]})")
    old_params, new_params = record["params"], cache_params(params)
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key) != new_params.get(key):
            reasons.append(f"param {stage.NAME}.{key}: {old_params.get(key)!r} → {new_params.get(key)!r}")
    old_inputs = {i["name"]: i for i in record["inputs"]}
    for name, version in current.inputs.items():
        before = old_inputs.get(name)
        if before is None or before["digest"] != version.digest:
            was = graph.find(name, before["digest"]).ref if before and graph.find(name, before["digest"]) else "none"
            reasons.append(f"input {name}: {was} → {version.ref}")
    if current.fingerprint != record.get("source_fingerprint"):
        reasons.append("source folder changed: files added, removed or modified since the last ingest")
    return reasons or [f"last run {run_id} differs in its cache key only (made by an older version of the runner)"]
