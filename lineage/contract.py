"""The stage contract: what a stage module provides, and what it is handed.

A stage is a module (stages/<name>.py) with the members `Stage` lists. The runner calls
`input_refs(params)` to learn which versions it reads, `fingerprint(params)` for anything it
reads from outside the store (a digest, or a `Fingerprint` that also hands `run` what it found
there, as `ctx.source`), and `run(inputs, params, ctx)`, which returns the versions it
made as `Output`s. A stage reads its inputs as `Artifact`s and writes only through its
`StageContext`: objects (content-addressed, so a write is idempotent), and files under the
store's cache/ and tmp/. The runner does the rest (cache key, reuse, manifests, run record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from lineage.errors import UserError
from lineage.graph import Graph, Version
from lineage.packs import PackWriter
from lineage.records import FileRef, Manifest
from lineage.store import Store

REF = {"cache": False}  # metadata for a Params field that names an input version: the key holds its digest


class Stage(Protocol):
    """What a stage module provides (checked by `check_stage` when it is loaded)."""

    NAME: str  # the stage's name: its CLI subcommand and its config section
    OUTPUT: str  # the artifact name of the version(s) it makes
    CODE: tuple[str, ...]  # its source files and folders, relative to the project root: their hash is in the cache key
    Params: type  # a dataclass; fields with metadata REF name input versions, cache=False fields change nothing

    def input_refs(self, params: Any) -> dict[str, str]:
        """The versions it reads: {artifact name (or `name#role`): reference such as `split:latest`}."""

    def fingerprint(self, params: Any) -> "str | Fingerprint | None":
        """A digest of what it reads from outside the store (a source folder, a weights file), or None."""

    def run(self, inputs: dict[str, "Artifact"], params: Any, ctx: "StageContext") -> list["Output"]:
        """Do the work: read `inputs`, stage objects through `ctx`, return the versions made."""


@runtime_checkable
class NamesClasses(Protocol):
    """A stage whose params name classes of its data (evaluate.scatter) also provides this hook; the
    config calls it as soon as the data's classes are known, before any stage trains."""

    def check_classes(self, params: Any, classes: list[str], where: str) -> None:
        """Raise UserError if params name a class not in `classes` (the data's, read from `where`)."""


# Each function member and its parameters, as the Protocols above declare them.
_FUNCTIONS = {name: list(inspect.signature(member).parameters)[1:]
              for name, member in vars(Stage).items() if inspect.isfunction(member) and not name.startswith("_")}
_HOOKS = {name: list(inspect.signature(member).parameters)[1:]
          for name, member in vars(NamesClasses).items() if inspect.isfunction(member) and not name.startswith("_")}


def check_stage(module: ModuleType) -> Stage:
    """The module, if it provides every member of `Stage`; otherwise a UserError naming what is missing."""
    where = f"stage module {module.__name__} ({getattr(module, '__file__', '?')})"
    problems = []
    for name, kind in (("NAME", str), ("OUTPUT", str), ("CODE", tuple)):
        if not isinstance(getattr(module, name, None), kind):
            problems.append(f"{name} ({kind.__name__})")
    if isinstance(getattr(module, "CODE", None), tuple) and not all(isinstance(p, str) for p in module.CODE):
        problems.append("CODE (a tuple of paths)")
    if not dataclasses.is_dataclass(getattr(module, "Params", None)):
        problems.append("Params (a dataclass)")
    for name, parameters in {**_FUNCTIONS, **{h: p for h, p in _HOOKS.items() if hasattr(module, h)}}.items():
        function = getattr(module, name, None)
        if not callable(function):
            problems.append(f"{name}({', '.join(parameters)})")
            continue
        try:
            inspect.signature(function).bind(*parameters)
        except TypeError:
            problems.append(f"{name}({', '.join(parameters)}) with those parameters")
    if problems:
        raise UserError(f"{where} does not satisfy the stage contract: it lacks {', '.join(problems)} "
                        "(see lineage/contract.py Stage)")
    return module  # type: ignore[return-value]  # a module that has every member is a Stage


@dataclass
class Artifact:
    """A resolved input version as a stage sees it: its manifest and where its objects are."""

    version: Version
    manifest: Manifest
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

    def open_object(self, digest: str):
        """An image's bytes as a binary file, loose or packed (Store.open_object)."""
        return self.store.open_object(digest)

    @classmethod
    def open(cls, store: Store, graph: Graph | None, version: Version) -> "Artifact":
        return cls(version, store.read_manifest(version.key), store, graph)

    def source(self) -> "Artifact":
        """The version this one was cut from (a split's raw-data), named in its own manifest.

        Reading it is as deterministic as reading this manifest: the reference is by digest."""
        source = self.manifest.source
        if source is None:
            raise UserError(f"{self.ref} names no source version: only a split, model or eval version has one")
        version = (self.graph and self.graph.find(source.name, source.digest)) \
            or Version(source.name, None, source.digest, None, None)
        return Artifact.open(self.store, self.graph, version)

    def rows(self, columns: list[str] | None = None):
        """Its rows as a pyarrow Table, only the `columns` named (lineage/rows.py FORMATS lists them):
        a raw-data version's images, a split's (split, label, digest)."""
        return self.store.read_rows(self.manifest, columns)

    def split_names(self) -> list[str]:
        """The parts of a split that hold images (train, val, …)."""
        if self.manifest.rows is None:
            return [name for name, per_class in self.manifest.splits.items() if any(per_class.values())]
        import pyarrow.compute as pc

        return sorted(pc.unique(self.rows(["split"]).column("split")).to_pylist())

    def split_digests(self, name: str) -> dict[str, list[str]]:
        """One part of a split: {class: [object digest, …]}, classes and digests sorted."""
        if self.manifest.rows is None:
            return {label: sorted(d) for label, d in sorted(self.manifest.splits.get(name, {}).items())}
        import pyarrow.compute as pc

        table = self.rows(["split", "label", "digest"])
        part = table.filter(pc.equal(table.column("split"), name)).sort_by([("label", "ascending"),
                                                                            ("digest", "ascending")])
        by_class: dict[str, list[str]] = {}
        for label, digest in zip(part.column("label").to_pylist(), part.column("digest").to_pylist()):
            by_class.setdefault(label, []).append(digest)
        return by_class

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
        item = self.manifest.file(name)
        if item is None:
            raise UserError(f"{self.ref} has no file {name!r}: it holds {', '.join(self.manifest.files) or 'no files'}")
        return self.store.object_path(item.digest)


class WorkerDone(Exception):
    """Raised by a stage in a process that did its share of a distributed run but does not commit it (a
    training worker that is not the chief): the runner commits and records nothing, and the CLI prints the
    message, one line, and exits 0. The chief, running the same stage, commits the versions."""


@dataclass
class Output:
    """One artifact version a stage produced: the runner writes its manifest and sets its aliases."""

    manifest: Manifest
    aliases: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name


@dataclass(frozen=True)
class Fingerprint:
    """What `fingerprint` may return in place of a bare digest: the digest, and what computing it found (ingest's
    scan of a folder). The runner hands `found` to that run as `ctx.source`, so a million files are walked once;
    a cache hit, which never runs the stage, lets it go with the plan."""

    digest: str
    found: Any = field(default=None, repr=False, compare=False)


@dataclass
class StageContext:
    """How a stage writes: staging objects, and its cache and scratch folders."""

    store: Store = field(repr=False)
    stage: str
    log: Callable[[str], None] = print
    progress: bool = True
    temp_dirs: list[Path] = field(default_factory=list, repr=False)
    # The run was asked for with --force: objects already in the store are re-hashed before they are
    # trusted, so re-running a stage rewrites any that `verify` found corrupt (a normal run checks sizes only).
    force: bool = False
    source: Any = field(default=None, repr=False)  # what the stage's fingerprint found (Fingerprint.found)

    def write_object(self, data: bytes, digest: str | None = None, link_from: str | None = None) -> FileRef:
        """Stage bytes as an object (an image, a version's named file); returns the digest and size a
        manifest holds. `digest` if the caller already hashed them; see Store.write_object for `link_from`."""
        return FileRef(self.store.write_object(data, digest, link_from, recheck=self.force), len(data))

    def pack_writer(self) -> PackWriter:
        """A writer of packs for many small objects (lineage/packs.py): `close` it once they are all written,
        `discard` it on failure."""
        return self.store.pack_writer()

    def pack_object(self, writer: PackWriter, data: bytes, digest: str) -> FileRef:
        """Stage a small object (at most PACK_OBJECT_LIMIT bytes) into `writer`'s pack, unless it is here."""
        return FileRef(self.store.pack_object(writer, data, digest, recheck=self.force), len(data))

    def copy_object(self, path: str | os.PathLike) -> FileRef:
        """Stage a file on disk as an object, streamed (a model file, a large image)."""
        return FileRef(*self.store.copy_object(path, recheck=self.force))

    def missing_objects(self, digests: list[str]) -> list[str]:
        return self.store.missing_objects(digests)

    def write_cache(self, path: Path, data: bytes) -> None:
        """Replace a file under cache/ atomically (not fsynced: a cache lost to a crash is recomputed)."""
        self.store.write_atomic(path, data, durable=False)

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


class ViewContext(StageContext):
    """For a page or table that only views a version (`report split:vN`, a notebook's table): thumbnails are
    a cache, so a read-only or full store still shows its view, made without one."""

    def write_cache(self, path: Path, data: bytes) -> None:
        try:
            super().write_cache(path, data)
        except OSError:
            pass

    def cache_dir(self, *parts: str) -> Path:
        try:
            return super().cache_dir(*parts)
        except OSError:
            return self.store.cache_dir.joinpath(*parts)
