"""Planning: what a stage would run on, and the cache key that names that run.

    cache key = sha256(stage name, code digest, params, input version digests, source fingerprint)

- code digest: the files and folders the stage lists in CODE;
- params: every field but those marked `cache: False` (workers, verbosity, and input references,
  which count by the digest they resolve to);
- source fingerprint: what the stage reads from outside the store (ingest's folder, a weights
  file, infer's folder), from the stage's `fingerprint(params)`.

Planning reads the graph and hashes source files; it imports no TensorFlow and writes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage.contract import Fingerprint, Stage
from lineage.graph import Graph, Version
from lineage.store import canonical_json, sha256_bytes, sha256_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Plan:
    """What a stage would run on, and the key that names that run."""

    stage: Stage
    params: Any
    inputs: dict[str, Version]
    code_digest: str
    fingerprint: str | None
    source: Any = field(default=None, repr=False)  # what the fingerprint found, for the run (Fingerprint.found)

    @functools.cached_property
    def cache_key(self) -> str:
        return run_key(self.stage.NAME, self.code_digest, self.params, self.inputs, self.fingerprint)


def run_key(stage: str, code: str | None, params: Any, inputs: dict[str, Version], source: str | None) -> str:
    """The name of a run's result: the same stage, code, params, input digests and source give the same key.
    A built-in stage's plan and a run logged from the user's code (keras_lineage/logged_run.py) both use it."""
    return sha256_bytes(canonical_json({"stage": stage, "code": code, "params": cache_params(params),
                                        "inputs": {name: v.digest for name, v in sorted(inputs.items())},
                                        "source": source}))


def plan(graph: Graph, stage: Stage, params: Any) -> Plan:
    """Resolve a stage's inputs and compute its cache key, without running anything."""
    # Input keys are artifact names, or `name#role` where a stage reads several versions of one name.
    inputs = {key: graph.resolve(ref, expected_name=key.split("#")[0])
              for key, ref in stage.input_refs(params).items()}
    found = stage.fingerprint(params)
    if isinstance(found, Fingerprint):
        return Plan(stage, params, inputs, code_digest(stage.CODE), found.digest, found.found)
    return Plan(stage, params, inputs, code_digest(stage.CODE), found)


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
