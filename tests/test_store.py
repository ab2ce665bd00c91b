"""The store, the graph and version resolution."""

from __future__ import annotations

import json

import pytest

from file_access import watch_file_reads
from lineage import runner
from lineage.errors import UserError
from lineage.graph import Graph
from lineage.records import Manifest
from lineage.store import Store
from lineage.verify import verify
from stages import ingest, split


def _ingest(store, root, **kw):
    return runner.execute(store, ingest, ingest.Params(source=str(root), **kw), log=lambda m: None, progress=False)


def _split(store, **kw):
    params = split.Params(**{"per_class": {"train": 6, "val": 2, "test": 2}, **kw})
    return runner.execute(store, split, params, log=lambda m: None, progress=False)


def test_write_object_dedups_by_content(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    first = store.write_object(b"same bytes")
    second = store.write_object(b"same bytes")
    assert first == second
    assert len(list(store.objects_dir.rglob("*"))) == 2  # one prefix folder, one object
    assert store.read_object(first) == b"same bytes"


def test_manifest_digest_is_hash_of_its_bytes(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    ref = store.write_manifest(Manifest.from_json({"name": "x", "entries": [], "meta": {"b": 1, "a": 2}}, "x"))
    again = store.write_manifest(Manifest.from_json({"name": "x", "meta": {"a": 2, "b": 1}, "entries": []}, "x"))
    assert ref == again
    import hashlib
    assert hashlib.sha256(store.manifest_path(ref).read_bytes()).hexdigest() == ref.digest


def test_same_content_gives_same_version(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    first = _ingest(store, image_root)
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(image_root, copy)
    objects_before = sorted(p.name for p in store.objects_dir.rglob("*"))
    second = _ingest(store, copy)
    assert second.outputs[0].digest == first.outputs[0].digest
    assert second.outputs[0].ref == "raw-data:v1"
    assert sorted(p.name for p in store.objects_dir.rglob("*")) == objects_before


def test_version_resolution_and_errors(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    _ingest(store, image_root)
    v1 = _split(store, seed=1).outputs[0]
    v2 = runner.execute(store, split, split.Params(per_class={"train": 6, "val": 2, "test": 2}, seed=2),
                        aliases=["best"], log=lambda m: None).outputs[0]
    graph = Graph.load(store)
    assert graph.resolve("split:v1").digest == v1.digest
    assert graph.resolve("split:latest").digest == v2.digest
    assert graph.resolve("split").digest == v2.digest
    assert graph.resolve("split:best").digest == v2.digest
    assert graph.resolve(v1.digest[:10]).digest == v1.digest
    assert graph.resolve(f"split:{v1.digest[:8]}").digest == v1.digest
    with pytest.raises(UserError, match=r"split:v9 does not exist: split has v1..v2 and aliases best, latest"):
        graph.resolve("split:v9")
    with pytest.raises(UserError, match=r"no artifact named 'model': artifacts in this store: raw-data, split"):
        graph.resolve("model:latest")
    with pytest.raises(UserError, match="is a split version, but a raw-data version is needed"):
        graph.resolve("split:v1", expected_name="raw-data")
    with pytest.raises(UserError, match="no version's digest starts with"):
        graph.resolve("ffffffffff")


def test_ambiguous_digest_prefix_lists_the_matches():
    from lineage.graph import Version
    graph = Graph({"split": [Version("split", 1, "abcd1" + "0" * 59, None, None),
                             Version("split", 2, "abcd2" + "0" * 59, None, None)]}, {}, 0)
    with pytest.raises(UserError, match=r"'abcd' is ambiguous: it matches split:v1 \(abcd10000000\), split:v2"):
        graph.resolve("abcd")
    assert graph.resolve("abcd2").v == 2
    assert graph.resolve("split:abcd1").v == 1


def test_rerunning_an_older_config_makes_it_latest_again(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    _ingest(store, image_root)
    first = _split(store, seed=1)
    _split(store, seed=2)
    again = _split(store, seed=1)
    assert again.reused and again.outputs[0].ref == "split:v1"
    graph = Graph.load(store)
    assert graph.resolve("split:latest").digest == first.outputs[0].digest
    assert Graph.rebuild(store).to_json() == graph.to_json()


def test_graph_rebuilds_from_runs_and_manifests(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    _ingest(store, image_root)
    _split(store, seed=1)
    _split(store, seed=2)
    incremental = json.loads(store.graph_path.read_bytes())
    store.graph_path.unlink()
    assert Graph.load(store).to_json() == incremental
    store.graph_path.write_text("{ not json")
    assert Graph.load(store).to_json() == incremental
    assert len(incremental["edges"]) == 5  # ingest→raw, raw→split×2, split×2 outputs
    assert not verify(store).problems


def test_unchanged_reingest_is_a_cache_hit_and_reads_nothing(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    _ingest(store, image_root)
    with watch_file_reads(image_root) as access:
        again = _ingest(store, image_root)
        assert again.reused and again.outputs[0].ref == "raw-data:v1"
        assert access.collect() == set(), "an unchanged folder's files were opened or read"
        (image_root / "Aves" / "img_003.png").read_bytes()  # the watch itself sees a read
        assert access.collect() == {"Aves/img_003.png"}


def test_stat_cache_reads_only_changed_files(tmp_path, image_root):
    store = Store.open(tmp_path / "s", create=True)
    _ingest(store, image_root)
    from conftest import write_image
    write_image(image_root / "Aves" / "img_000.png", seed=999)
    messages = []
    result = runner.execute(store, ingest, ingest.Params(source=str(image_root)), log=messages.append)
    assert result.outputs[0].ref == "raw-data:v2"
    assert "30 files, 1 read, 29 unchanged" in messages[0]
