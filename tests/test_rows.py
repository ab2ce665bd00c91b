"""A version's rows as a columnar object (lineage/rows.py): a digest of the content, never of the Parquet
bytes; old inline manifests still read, verify and gc; a damaged rows object is found, named with its fix,
quarantined by `verify --repair`, and never collected by gc while its version is live."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_class_folders, run_cli, stored_rows
from lineage import rows, runner
from lineage.contract import Artifact
from lineage.gc import collect_garbage
from lineage.graph import Graph
from lineage.records import Manifest, RowsRef
from lineage.store import Store, manifest_digest, sha256_file
from lineage.verify import verify
from stages import ingest, split


def _execute(store: Store, stage, params):
    return runner.execute(store, stage, params, log=lambda m: None, progress=False)


def _object_file(store: Store | Path, digest: str) -> Path:
    root = store if isinstance(store, Path) else store.root
    return root / "objects" / "sha256" / digest[:2] / digest[2:]


@pytest.fixture
def source(tmp_path) -> Path:
    return make_class_folders(tmp_path / "src", {"Aves": 6, "Fungi": 5})


def test_the_version_digest_is_the_rows_not_the_parquet_bytes(tmp_path, source):
    store = Store.open(tmp_path / "s", create=True)
    raw = _execute(store, ingest, ingest.Params(source=str(source))).outputs[0]
    made = store.read_manifest(raw.key)
    table = store.read_rows(made)
    digests = set()
    objects = set()
    for settings in ({"row_group_size": 2, "compression": "none"}, {"row_group_size": 1000, "compression": "gzip"},
                     {"compression": "zstd", "use_dictionary": False}):
        again = Manifest("raw-data", entries=table.to_pylist(), meta=made.meta)
        again.rows = store.write_rows(again, **settings)
        objects.add(again.rows.object)
        digests.add(store.write_manifest(again).digest)
    assert len(objects) == 3  # three different Parquet files…
    assert digests == {raw.digest}  # …one version
    # The stream is the rows' values: any row changed, added or reordered is another digest.
    changed = table.to_pylist()
    changed[0]["size"] += 1
    assert rows.stream_digest("images-v1", [rows.images_table(changed)]) != made.rows.digest
    reordered = table.take(list(reversed(range(table.num_rows))))
    assert rows.stream_digest("images-v1", [reordered]) != made.rows.digest
    assert rows.stream_digest("images-v1", [table.slice(0, 4), table.slice(4)]) == made.rows.digest
    # A version's digest leaves the object's name out, nothing else.
    value = made.to_json()
    assert manifest_digest(value) == raw.digest
    assert manifest_digest({**value, "rows": {**value["rows"], "count": made.rows.count + 1}}) != raw.digest


def _old_form_store(tmp_path, source, monkeypatch) -> Store:
    """A store as the code before rows objects wrote it: every row inline in the manifest."""
    real = Store.write_manifest

    def write_inline(self, manifest):
        if manifest.table is not None:  # today's stages hand their rows over as columns
            rows, manifest.table = manifest.table.to_pylist(), None
            if "counts" in manifest.meta:  # a split: {split: {class: [digest, …]}}, empty classes included
                manifest.splits = {name: {label: [] for label in per_class}
                                   for name, per_class in manifest.meta["counts"].items()}
                for row in rows:
                    manifest.splits[row["split"]][row["label"]].append(row["digest"])
            else:
                manifest.entries = rows
        manifest.json_keys = manifest.json_keys or frozenset(manifest._keys_of_values())
        return real(self, manifest)

    monkeypatch.setattr(Store, "write_manifest", write_inline)
    store = Store.open(tmp_path / "old", create=True)
    _execute(store, ingest, ingest.Params(source=str(source)))
    _execute(store, split, split.Params(per_class={"train": 3, "val": 1, "test": 1}))
    monkeypatch.setattr(Store, "write_manifest", real)
    return Store.open(tmp_path / "old")


def test_an_old_store_with_inline_rows_still_reads_verifies_and_collects(tmp_path, source, monkeypatch):
    old = _old_form_store(tmp_path, source, monkeypatch)
    graph = Graph.load(old)
    raw_version, split_version = graph.resolve("raw-data:v1"), graph.resolve("split:v1")
    for version in (raw_version, split_version):
        stored = json.loads(old.manifest_path(version.key).read_bytes())
        assert "entries" in stored and "rows" not in stored
    raw = Artifact.open(old, graph, raw_version)
    digests = raw.rows(["digest"]).column("digest").to_pylist()
    assert sorted(digests) == sorted(e["digest"] for e in raw.manifest.entries)
    cut = Artifact.open(old, graph, split_version)
    assert cut.split_names() == ["test", "train", "val"]
    assert cut.split_digests("train") == {label: sorted(d) for label, d in cut.manifest.splits["train"].items()}
    report = verify(old)
    assert not report.problems and report.garbage_objects == 0, report.problems
    assert collect_garbage(old, delete=True, grace_seconds=0, log=lambda m: None).objects == []
    assert not verify(Store.open(old.root)).problems
    # The same rows, cut by today's split, give the same split as one cut from a new raw-data version.
    new = Store.open(tmp_path / "new", create=True)
    _execute(new, ingest, ingest.Params(source=str(source)))
    params = split.Params(per_class={"train": 2, "val": 2}, seed=3)
    from_old, from_new = _execute(old, split, params).outputs[0], _execute(new, split, params).outputs[0]
    assert "rows" in json.loads(new.manifest_path(from_new.key).read_bytes())
    assert stored_rows(old, old.read_manifest(from_old.key).to_json()) == \
        stored_rows(new, new.read_manifest(from_new.key).to_json())
    # Ingesting the same folder again writes the new form: a new digest, and one line that says why.
    for expected in (True, False):
        messages = []
        runner.execute(old, ingest, ingest.Params(source=str(source)), force=True, log=messages.append, progress=False)
        notes = [m for m in messages if m.startswith("note: raw-data:v2 keeps its rows in a columnar object")]
        assert len(notes) == int(expected), messages
    assert Graph.load(old).resolve("raw-data:latest").digest == new.read_manifest(from_new.key).source.digest


@pytest.fixture
def committed(tmp_path, source):
    store = tmp_path / "store"
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {store}\nstages: [ingest, split]\ningest:\n  source: {source}\n"
                      "split:\n  per_class: {train: 3, val: 1, test: 1}\n")
    assert run_cli("run", "--config", str(config)).returncode == 0
    versions = {row["ref"]: row["digest"] for row in json.loads(run_cli("ls", "--json", "--config",
                                                                          str(config)).stdout)}
    return config, store, versions


def _cli(config, *args):
    result = run_cli(*args, "--config", str(config))
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def _raw_rows_ref(store: Path, versions: dict) -> RowsRef:
    stored = json.loads((store / "manifests" / "raw-data" / f"{versions['raw-data:v1']}.json").read_bytes())
    return RowsRef(**stored["rows"])


def _intact(config, versions) -> None:
    checked = _cli(config, "verify")
    assert checked.returncode == 0 and " 0 problem(s)" in checked.stdout, checked.stdout
    for ref, digest in versions.items():
        assert json.loads(_cli(config, "show", ref, "--json").stdout)["digest"] == digest


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_a_damaged_rows_object_is_named_with_its_fix_and_quarantined(committed, damage):
    config, store, versions = committed
    ref = _raw_rows_ref(store, versions)
    blob = _object_file(store, ref.object)
    intact = blob.read_bytes()
    blob.write_bytes(intact[: len(intact) // 2] if damage == "truncated" else intact[:100] + b"X" + intact[101:])

    checked = _cli(config, "verify")
    assert checked.returncode == 1
    line = next(line for line in checked.stdout.splitlines() if ref.object[:12] in line and "corrupt" in line)
    assert "`pipeline.py ingest --force`" in line
    assert _cli(config, "split", "--force").returncode == 1  # split reads the rows: one line, the fix
    assert _cli(config, "gc").returncode == 1  # gc cannot tell what raw-data needs: it removes nothing

    if damage == "edited":  # the fix as given: the re-run rewrites a rows object of the right size, too
        assert _cli(config, "ingest", "--force").returncode == 0
        assert blob.read_bytes() == intact
        _intact(config, versions)
        return
    repaired = _cli(config, "verify", "--repair")
    assert (store / "quarantine" / "objects" / ref.object[:2] / ref.object[2:]).read_bytes() != intact
    assert "next: re-run `pipeline.py ingest --force`" in repaired.stdout
    assert _cli(config, "ingest", "--force").returncode == 0
    assert blob.read_bytes() == intact
    _intact(config, versions)


def test_a_manifest_naming_other_valid_rows_is_damage_verify_reports(committed):
    config, store, versions = committed
    path = store / "manifests" / "raw-data" / f"{versions['raw-data:v1']}.json"
    stored = json.loads(path.read_bytes())
    ref = RowsRef(**stored["rows"])
    table = pq.read_table(_object_file(store, ref.object))
    label = table.column("label").to_pylist()
    label[0] = "Fungi" if label[0] == "Aves" else "Aves"  # one row relabelled: a valid Parquet file
    forged = table.set_column(table.schema.get_field_index("label"), "label", pa.array(label))
    staging = store / "forged.parquet"
    pq.write_table(forged, staging)
    digest = sha256_file(staging)
    _object_file(store, digest).parent.mkdir(exist_ok=True)
    staging.rename(_object_file(store, digest))
    stored["rows"]["object"] = digest
    path.write_text(json.dumps(stored))  # the manifest's name still matches: the object is not part of it

    checked = _cli(config, "verify")
    assert checked.returncode == 1
    line = next(line for line in checked.stdout.splitlines() if "does not hold its rows" in line)
    assert str(path) in line and "`pipeline.py ingest --force`" in line
    repaired = _cli(config, "verify", "--repair")
    assert (store / "quarantine" / "manifests" / "raw-data" / path.name).exists() and not path.exists()
    assert "next: re-run `pipeline.py ingest --force`" in repaired.stdout
    assert _cli(config, "ingest", "--force").returncode == 0
    _intact(config, versions)


def test_gc_never_deletes_a_live_rows_object(committed, tmp_path):
    config, store, versions = committed
    live = [_raw_rows_ref(store, versions).object]
    split_manifest = json.loads((store / "manifests" / "split" / f"{versions['split:v1']}.json").read_bytes())
    live.append(split_manifest["rows"]["object"])
    orphan = Store.open(store)
    garbage_rows = orphan.write_rows(Manifest("raw-data", entries=[{"path": "a/x.png", "digest": "7" * 64, "size": 1,
                                                                   "label": "a", "format": "PNG", "width": 1,
                                                                   "height": 1}]))
    swept = collect_garbage(orphan, delete=True, grace_seconds=0, log=lambda m: None)
    assert _object_file(store, garbage_rows.object) in swept.objects  # nothing names it: garbage
    assert all(_object_file(store, digest).exists() for digest in live)
    _intact(config, versions)


def test_take_ascending_gives_the_values_at_those_rows_across_chunks():
    """What ingest's chunks and the stat cache's slices read their paths with: a slice spanning the rows, not
    ChunkedArray.take (which copies the whole column first)."""
    import numpy as np

    values = [f"Aves/{index:04d}.png" for index in range(50)]
    column = pa.chunked_array([values[:7], values[7:30], values[30:]], pa.string())
    for wanted in ([0], [3, 4, 5, 6, 7, 8], list(range(50)), [1, 8, 29, 30, 49], [6, 7, 40]):
        taken = rows.take_ascending(column, np.asarray(wanted))
        assert taken.to_pylist() == [values[row] for row in wanted], wanted
