"""Typed records read and write the store's files exactly as earlier versions of this code wrote them.

A manifest's digest is the hash of its canonical bytes, so a manifest read and written again must give
the same bytes, and a manifest built by a stage must have the keys it always had (no `"source": null`,
no `"files": {}`), or every existing store would see new versions of unchanged data.
"""

from __future__ import annotations

import json

from lineage import runner
from lineage.contract import Artifact
from lineage.graph import Graph
from lineage.records import FileRef, Manifest, RunRecord, VersionRef
from lineage.store import Store, canonical_json, sha256_bytes
from lineage.verify import verify
from lineage.why import explain
from stages import ingest, split

SPLIT = VersionRef("split", "1" * 64)
PREDICTIONS = VersionRef("predictions", "2" * 64)
FILES = {"model.keras": {"digest": "3" * 64, "size": 1234}, "history.json": {"digest": "4" * 64, "size": 56}}
REPORT = {"report.html": {"digest": "5" * 64, "size": 789}}
TABLE = {"predictions.parquet": {"digest": "6" * 64, "size": 4321}}

# Manifests as the stages wrote them before the records were typed: key for key.
OLD_FORMAT = {
    "model": {"name": "model", "source": SPLIT.to_json(), "files": FILES,
              "meta": {"classes": ["a", "b"], "input_size": 224, "history": {"loss": [0.5]}, "weights": None}},
    "predictions": {"name": "predictions", "files": TABLE,
                    "meta": {"classes": ["a", "b"], "rows": 10, "split": "val", "labelled": 10, "accuracy": 0.5,
                             "split_ref": "split:v1"}},
    "eval": {"name": "eval", "source": PREDICTIONS.to_json(), "files": REPORT,
             "meta": {"metrics": {"accuracy": 0.5}, "predictions": "predictions:v1", "classes": ["a", "b"],
                      "compare_with": None}},
}



def _refs(files: dict[str, dict]) -> dict[str, FileRef]:
    return {name: FileRef(item["digest"], item["size"]) for name, item in files.items()}


# The same versions, built the way the stages build them now.
BUILT = {
    "model": lambda: Manifest("model", source=SPLIT, files=_refs(FILES), meta=OLD_FORMAT["model"]["meta"]),
    "predictions": lambda: Manifest("predictions", files=_refs(TABLE), meta=OLD_FORMAT["predictions"]["meta"]),
    "eval": lambda: Manifest("eval", source=PREDICTIONS, files=_refs(REPORT), meta=OLD_FORMAT["eval"]["meta"]),
}


def _committed(tmp_path, image_root) -> Store:
    store = Store.open(tmp_path / "s", create=True)
    runner.execute(store, ingest, ingest.Params(source=str(image_root)), log=lambda m: None, progress=False)
    runner.execute(store, split, split.Params(per_class={"train": 6, "val": 2, "test": 2}), log=lambda m: None,
                   progress=False)
    return store


def _write_as_before(store: Store, manifest: dict) -> VersionRef:
    """What the old Store.put_manifest did: canonical bytes, named by their hash."""
    data = canonical_json(manifest)
    ref = VersionRef(manifest["name"], sha256_bytes(data))
    path = store.manifest_path(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return ref


def test_every_kind_of_manifest_reads_and_rewrites_to_the_same_bytes(tmp_path, image_root):
    store = _committed(tmp_path, image_root)
    for manifest in OLD_FORMAT.values():
        _write_as_before(store, manifest)
    # Shapes older stores may hold: an empty list of entries, an empty split, a null source, a key from elsewhere.
    _write_as_before(store, {"name": "x", "entries": [], "meta": {"a": 2, "b": 1}})
    _write_as_before(store, {"name": "y", "entries": {}, "source": None, "meta": {}})
    _write_as_before(store, {"name": "z", "files": {}, "format": 2})
    refs = list(store.list_manifests())
    assert {ref.name for ref in refs} == {"raw-data", "split", "model", "predictions", "eval", "x", "y", "z"}
    for ref in refs:
        path = store.manifest_path(ref)
        before = path.read_bytes()
        manifest = store.read_manifest(ref)
        assert canonical_json(manifest.to_json()) == before, ref
        assert store.write_manifest(manifest) == ref
        assert path.read_bytes() == before
    # New versions keep their rows in a columnar object (lineage/rows.py) that the manifest names.
    raw = next(ref for ref in refs if ref.name == "raw-data")
    assert set(json.loads(store.manifest_path(raw).read_bytes())) == {"name", "rows", "meta"}
    made_split = store.read_manifest(next(ref for ref in refs if ref.name == "split"))
    assert set(made_split.to_json()) == {"name", "source", "rows", "meta"} and made_split.source == raw
    assert made_split.entries == [] and made_split.entry_count() == 30  # 3 classes of image_root, 10 each
    # The hand-written versions name objects that are not there; nothing else is amiss.
    assert sorted(p.split("@")[0] for p in verify(store).problems) == \
        ["manifest eval", "manifest model", "manifest predictions"]


def test_a_manifest_a_stage_builds_has_the_keys_it_always_had():
    for kind, build in BUILT.items():
        manifest = build()
        assert manifest.to_json() == OLD_FORMAT[kind], kind
        assert canonical_json(manifest.to_json()) == canonical_json(OLD_FORMAT[kind])
    rows = [{"path": "a/1.png", "digest": "7" * 64, "size": 3, "label": "a", "format": "PNG", "width": 1,
             "height": 1}]
    assert Manifest("raw-data", entries=rows, meta={"classes": ["a"]}).to_json() == \
        {"name": "raw-data", "entries": rows, "meta": {"classes": ["a"]}}
    splits = {"train": {"a": ["7" * 64]}}
    assert Manifest("split", splits=splits, source=VersionRef("raw-data", "8" * 64), meta={}).to_json() == \
        {"name": "split", "source": {"name": "raw-data", "digest": "8" * 64}, "entries": splits, "meta": {}}


def test_run_records_missing_optional_keys_still_read(tmp_path, image_root):
    store = _committed(tmp_path, image_root)
    graph = Graph.load(store)
    ingest_run = graph.resolve("raw-data:v1").run
    path = store.run_path(ingest_run)
    full = json.loads(path.read_bytes())
    # As an older runner or `lineage --rebuild` left it: no params, provenance, or input refs; a key unknown here.
    old = {key: full[key] for key in ("id", "stage", "status", "started", "finished", "committed", "outputs")}
    old.update(inputs=[], aliases=[], handled_by="an older runner")
    path.write_text(json.dumps(old))
    record = store.read_run(ingest_run)
    assert record.code_digest is None and record.params is None and record.git is None
    assert record.to_json() == old
    rebuilt = Graph.rebuild(store)
    assert rebuilt.resolve("raw-data:v1").digest == graph.resolve("raw-data:v1").digest
    reasons = explain(store, rebuilt, ingest, ingest.Params(source=str(image_root)))
    # The old record names no code, params or source: `why` says each changed, and does not fail on them.
    assert reasons[0].startswith("code changed: stages/ingest.py") and reasons[-1].startswith("source folder"), \
        reasons
    assert RunRecord.from_json(full, ingest_run).to_json() == {k: v for k, v in full.items() if v is not None}


def test_a_source_the_graph_does_not_know_prints_by_digest(tmp_path, image_root):
    store = _committed(tmp_path, image_root)
    graph = Graph.load(store)
    made_split = Artifact.open(store, None, graph.resolve("split:v1"))
    source = made_split.source()
    assert source.ref == f"raw-data@{graph.resolve('raw-data:v1').digest[:12]}"
    assert Artifact.open(store, graph, graph.resolve("split:v1")).source().ref == "raw-data:v1"
