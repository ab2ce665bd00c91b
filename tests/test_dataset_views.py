"""Dataset views (issue 11): `pipeline.py table raw-data:vN | split:vN` reads a version's images as rows
(id, path, label, split, format, width, height, bytes) with the filter, sort, group-by and formats of a
prediction table; old inline manifests read the same; a split's rows agree with its source's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pytest

from conftest import make_class_folders, run_cli, run_cli_traced, tensorflow_imports
from lineage import runner
from lineage.contract import Artifact
from lineage.errors import UserError
from lineage.graph import Graph, Version
from lineage.records import VersionRef
from lineage.store import Store, canonical_json, sha256_bytes
from stages import ingest, split
from tables.datasets import DATASET_COLUMNS, dataset_frame, dataset_grouping, group_dataset_rows
from tables.table import query_table

PER_CLASS = {"Amphibia": 5, "Aves": 4, "Fungi": 3}
CUT = {"train": 2, "val": 1, "test": 0}


def _execute(store: Store, stage, params):
    return runner.execute(store, stage, params, log=lambda m: None, progress=False)


def _build(store: Store, source) -> None:
    _execute(store, ingest, ingest.Params(source=str(source)))
    _execute(store, split, split.Params(per_class=dict(CUT)))


@pytest.fixture
def source(tmp_path):
    return make_class_folders(tmp_path / "src", PER_CLASS)


@pytest.fixture
def store(tmp_path, source) -> Store:
    made = Store.open(tmp_path / "store", create=True)
    _build(made, source)
    return made


def _artifact(store: Store, ref: str) -> Artifact:
    graph = Graph.load(store)
    return Artifact.open(store, graph, graph.resolve(ref))


def _table(store: Store, *args: str) -> str:
    result = run_cli("table", *args, "--store", str(store.root))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def test_raw_data_rows_are_the_ingested_files(store, source):
    rows = json.loads(_table(store, "raw-data:v1", "--format", "json"))
    files = sorted(p for p in source.rglob("*.png"))
    assert [r["path"] for r in rows] == [str(p.relative_to(source)) for p in files]
    assert list(rows[0]) == list(DATASET_COLUMNS)
    for row, path in zip(rows, files):
        assert row["label"] == path.parent.name and row["split"] is None and row["format"] == "PNG"
        assert (row["width"], row["height"], row["bytes"]) == (24, 20, path.stat().st_size)
        assert store.read_object(row["id"]) == path.read_bytes()  # id = the content digest (the image is packed)


def test_split_rows_join_their_source_and_keep_the_split(store, source):
    raw = {r["id"]: r for r in json.loads(_table(store, "raw-data:v1", "--format", "json"))}
    rows = json.loads(_table(store, "split:v1", "--format", "json"))
    cut = _artifact(store, "split:v1")
    expected = sorted((name, label, d) for name in cut.split_names() for label, ds in cut.split_digests(name).items()
                      for d in ds)
    assert sorted((r["split"], r["label"], r["id"]) for r in rows) == expected
    assert len(rows) == sum(CUT.values()) * len(PER_CLASS)
    for row in rows:
        assert {k: row[k] for k in ("path", "label", "format", "width", "height", "bytes")} == \
            {k: raw[row["id"]][k] for k in ("path", "label", "format", "width", "height", "bytes")}


def test_group_by_split_is_the_split_by_class_distribution(store):
    assert _table(store, "split:v1", "--group-by", "split") == (
        "split  Amphibia  Aves  Fungi  total\n"
        "-----  --------  ----  -----  -----\n"
        "train         2     2      2      6\n"
        "val           1     1      1      3\n")
    assert _table(store, "split:v1", "--group-by", "label", "--format", "csv") == (
        "label,train,val,total\nAmphibia,2,1,3\nAves,2,1,3\nFungi,2,1,3\n")
    # raw-data has no splits: its labels are plain counts, like any other column's values
    assert _table(store, "raw-data:v1", "--group-by", "label", "--format", "csv") == \
        "label,count\nAmphibia,5\nAves,4\nFungi,3\n"
    assert _table(store, "split:v1", "--filter", 'x["label"] != "Aves" and x["split"] = "train"', "--group-by",
                  "split", "--columns", "split,total", "--format", "csv") == "split,total\ntrain,4\n"


def test_filter_sort_columns_and_limit_work_as_for_predictions(store):
    text = _table(store, "raw-data:v1", "--filter", 'x["label"] = "Aves" and x["split"] = null', "--sort", "path",
                  "--desc", "--columns", "path,bytes", "--limit", "2", "--format", "csv")
    assert text.splitlines()[0] == "path,bytes"
    assert [line.split(",")[0] for line in text.splitlines()[1:]] == ["Aves/img_003.png", "Aves/img_002.png"]
    markdown = _table(store, "split:v1", "--filter", 'x["split"] = "val"', "--format", "markdown")
    assert markdown.count("\n") == 2 + 3 and "| split |" in markdown


@pytest.mark.parametrize("args, message", [
    (["split:v1", "--filter", 'x["splt"] = "val"'],
     'error: filter: unknown column "splt"; did you mean "split"? columns: split,'),
    (["raw-data:v1", "--sort", "size"], 'error: sort: unknown column "size"'),
    (["raw-data:v1", "--group-by", "truth"], 'error: group by: unknown column "truth"'),
    (["split:v9"], "error: split:v9 does not exist: split has v1..v1"),
])
def test_mistakes_are_one_line_errors(store, args, message):
    result = run_cli("table", *args, "--store", str(store.root))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr


def test_table_of_a_dataset_never_imports_tensorflow(store):
    for ref in ("raw-data:v1", "split:v1"):
        result = run_cli_traced("table", ref, "--group-by", "split", "--store", str(store.root))
        assert result.returncode == 0, result.stderr
        assert tensorflow_imports(result) == []


def _write_inline(store: Store, manifest: dict) -> Version:
    """A manifest as the code before rows objects wrote it (every row in its JSON), named by its hash."""
    data = canonical_json(manifest)
    ref = VersionRef(manifest["name"], sha256_bytes(data))
    store.manifest_path(ref).parent.mkdir(parents=True, exist_ok=True)
    store.manifest_path(ref).write_bytes(data)
    return Version(ref.name, None, ref.digest, None, None)


def test_old_inline_manifests_give_the_same_table(store):
    raw, cut = _artifact(store, "raw-data:v1"), _artifact(store, "split:v1")
    splits: dict = {}
    for row in cut.rows().to_pylist():
        splits.setdefault(row["split"], {}).setdefault(row["label"], []).append(row["digest"])
    old_raw = _write_inline(store, {"name": "raw-data", "entries": raw.rows().to_pylist(), "meta": raw.manifest.meta})
    old_split = _write_inline(store, {"name": "split", "source": {"name": "raw-data", "digest": old_raw.digest},
                                      "entries": splits, "meta": cut.manifest.meta})
    for new, old in ((raw, old_raw), (cut, old_split)):
        opened = Artifact.open(store, None, old)
        assert opened.manifest.rows is None and opened.manifest.entry_count() == new.manifest.rows.count
        pd.testing.assert_frame_equal(dataset_frame(opened), dataset_frame(new))


def test_a_split_naming_images_its_source_lacks_is_a_user_error(store):
    raw = _artifact(store, "raw-data:v1")
    cut = _artifact(store, "split:v1")
    images = raw.rows()
    fewer = images.filter(pa.array([not p.startswith("Fungi/") for p in images.column("path").to_pylist()]))
    fake_source = SimpleNamespace(ref=raw.ref, rows=lambda columns=None: fewer.select(columns) if columns else fewer)
    cut.source = lambda: fake_source
    with pytest.raises(UserError, match=r"split:v1 names 3 image\(s\) that its source raw-data:v1 does not hold"):
        dataset_frame(cut)


def test_group_by_crosstab_orders_classes_and_splits_and_keeps_clashing_names():
    rows = pd.DataFrame({"split": ["val", "train", "train", None, "test"],
                         "label": ["total", "b", "a", "a", "split"]})
    grouped = group_dataset_rows(rows, "split", ["b", "a"], splits=("train", "val", "test"))
    expected = pd.DataFrame({"split": ["train", "val", "test", "(none)"], "b": [1, 0, 0, 0], "a": [1, 0, 0, 1],
                             "label=split": [0, 0, 1, 0], "label=total": [0, 1, 0, 0], "total": [2, 1, 1, 1]})
    pd.testing.assert_frame_equal(grouped, expected, check_dtype=False)
    by_label = group_dataset_rows(rows, "label", ["b", "a"], splits=("train", "val", "test"))
    assert by_label["label"].tolist() == ["b", "a", "split", "total"]
    assert list(by_label.columns) == ["label", "train", "val", "test", "(none)", "total"]
    assert by_label["total"].tolist() == [1, 2, 1, 1]


def test_query_table_uses_the_dataset_grouping(store):
    cut = _artifact(store, "split:v1")
    frame = dataset_frame(cut)
    grouped = query_table(frame, group_by="split", sort="total", descending=True, **dataset_grouping(cut))
    assert grouped.to_dict("records") == [{"split": "train", "Amphibia": 2, "Aves": 2, "Fungi": 2, "total": 6},
                                          {"split": "val", "Amphibia": 1, "Aves": 1, "Fungi": 1, "total": 3}]


def _page_data(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8").split('id="dataset-data">')[1].split("</script>")[0])


def test_report_of_a_split_writes_its_page_without_tensorflow(store, tmp_path):
    out = tmp_path / "pages" / "split.html"
    result = run_cli_traced("report", "split:v1", "--out", str(out), "--store", str(store.root))
    assert result.returncode == 0, result.stderr
    assert tensorflow_imports(result) == []
    assert result.stdout == f"report: {out.resolve()}\n"
    data = _page_data(out)
    assert data["chart"] == {"splits": ["train", "val"], "labels": ["Amphibia", "Aves", "Fungi"],
                             "counts": [[2, 1], [2, 1], [2, 1]]}
    ids = {row[0] for row in data["rows"]}
    assert len(ids) == 9 and set(data["thumbnails"]) == ids
    assert all(uri.startswith("data:image/jpeg;base64,") for uri in data["thumbnails"].values())
    # a view: no new version, and the thumbnails went to evaluate's cache (shared with eval pages)
    assert sorted(p.name for p in (store.root / "cache" / "thumbnails" / "48").iterdir()) == sorted(ids)
    assert Graph.load(Store.open(store.root)).resolve("split:latest").v == 1


def test_report_of_raw_data_goes_to_reports_by_default(store, tmp_path):
    result = run_cli("report", "raw-data:v1", "--store", str(store.root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = _page_data(tmp_path / "reports" / "raw-data-v1.html")
    assert data["chart"]["splits"] == ["(no split)"] and data["total"] == sum(PER_CLASS.values())
    assert [n for (n,) in data["chart"]["counts"]] == list(PER_CLASS.values())


@pytest.mark.parametrize("args, message", [
    (["split:v1", "raw-data:v1"], "error: split:v1 is a split version: a dataset page shows one version"),
    (["split:v1", "--compare", "raw-data:v1"], "error: split:v1 is a split version: a dataset page shows one"),
    (["split:v1", "--out", "."], "error: --out . is a folder"),
])
def test_report_mistakes_on_a_dataset_are_one_line(store, args, message):
    result = run_cli("report", *args, "--store", str(store.root))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
