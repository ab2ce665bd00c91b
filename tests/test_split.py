"""split: counts, fractions, balance, determinism and the too-small class."""

from __future__ import annotations

import pytest

from conftest import make_class_folders, stored_rows
from lineage import runner
from lineage.errors import UserError
from lineage.records import VersionRef
from lineage.store import Store
from stages import ingest, split


@pytest.fixture
def raw_store(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Aves": 20, "Fungi": 14, "Insecta": 25})
    store = Store.open(tmp_path / "store", create=True)
    runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None)
    return store


def _split(store, messages=None, **kw):
    result = runner.execute(store, split, split.Params(**kw), log=(messages.append if messages is not None
                                                                    else lambda m: None))
    manifest = store.read_manifest(result.outputs[0].key).to_json()  # the manifest as stored
    return {**manifest, "entries": stored_rows(store, manifest)}, result


def _all_digests(manifest):
    return [d for per_class in manifest["entries"].values() for chunk in per_class.values() for d in chunk]


def test_counts_per_class_and_no_image_in_two_splits(raw_store):
    manifest, _ = _split(raw_store, per_class={"train": 8, "val": 3, "test": 2})
    assert manifest["meta"]["counts"] == {n: {c: k for c in ("Aves", "Fungi", "Insecta")}
                                          for n, k in (("train", 8), ("val", 3), ("test", 2))}
    digests = _all_digests(manifest)
    assert len(digests) == len(set(digests)) == 39
    raw = raw_store.read_manifest(VersionRef("raw-data", manifest["source"]["digest"])).to_json()
    labels = {e["digest"]: e["label"] for e in stored_rows(raw_store, raw)}
    for per_class in manifest["entries"].values():
        for label, chunk in per_class.items():
            assert {labels[d] for d in chunk} == {label}


def test_balanced_fractions_follow_the_smallest_class(raw_store):
    manifest, _ = _split(raw_store, per_class={"train": 0.5, "val": 0.5}, balanced=True)
    assert manifest["meta"]["counts"]["train"] == {"Aves": 7, "Fungi": 7, "Insecta": 7}
    assert "test" not in manifest["entries"]
    unbalanced, _ = _split(raw_store, per_class={"train": 0.8, "val": 0.2}, balanced=False)
    assert unbalanced["meta"]["counts"]["train"] == {"Aves": 16, "Fungi": 11, "Insecta": 20}


def test_same_input_and_params_give_the_same_digest(raw_store, tmp_path):
    _, first = _split(raw_store, per_class={"train": 5, "val": 2}, seed=7)
    _, again = _split(raw_store, per_class={"train": 5, "val": 2}, seed=7, )
    assert again.reused
    other = Store.open(tmp_path / "other", create=True)
    runner.execute(other, ingest, ingest.Params(source=str(tmp_path / "src")), log=lambda m: None)
    _, elsewhere = _split(other, per_class={"train": 5, "val": 2}, seed=7)
    assert elsewhere.outputs[0].digest == first.outputs[0].digest
    _, reseeded = _split(raw_store, per_class={"train": 5, "val": 2}, seed=8)
    assert reseeded.outputs[0].digest != first.outputs[0].digest


def test_too_small_class_is_an_error_naming_it(raw_store):
    with pytest.raises(UserError, match=r"class 'Fungi' has 14 images, too few for the split: 16 were asked "
                                        r"\(train 10, val 4, test 2\)"):
        _split(raw_store, per_class={"train": 10, "val": 4, "test": 2})


def test_allow_small_classes_warns_and_scales(raw_store):
    messages = []
    manifest, _ = _split(raw_store, messages, per_class={"train": 10, "val": 4, "test": 2},
                         allow_small_classes=True, balanced=False)
    assert any(m.startswith("warning: class 'Fungi' has 14 images") for m in messages)
    counts = manifest["meta"]["counts"]
    assert (counts["train"]["Fungi"], counts["val"]["Fungi"], counts["test"]["Fungi"]) == (9, 3, 2)
    assert counts["train"]["Aves"] == 10
    balanced, _ = _split(raw_store, per_class={"train": 10, "val": 4, "test": 2}, allow_small_classes=True)
    assert balanced["meta"]["counts"]["train"] == {"Aves": 9, "Fungi": 9, "Insecta": 9}


@pytest.mark.parametrize("per_class, message", [
    ({"train": 5, "holdout": 2}, "split.per_class has holdout"),
    ({"val": 5}, "split.per_class has no train"),
    ({"train": 0.7, "val": 0.5}, "fractions add up to 1.2"),
    ({"train": 5, "val": 0.5}, "not a mix"),
])
def test_bad_split_params(per_class, message):
    with pytest.raises(UserError, match=message):
        split.Params(per_class=per_class)


def test_split_is_the_seeded_shuffle_of_each_class_sorted_digests(raw_store):
    """The split shuffles positions, not digest strings, to stay columnar: it must pick exactly what shuffling
    each class's sorted digests with random.Random(f"{seed}:{class}") picks (the rule the digest rests on)."""
    import random

    from lineage.records import Manifest

    made, result = _split(raw_store, per_class={"train": 0.5, "val": 0.25}, balanced=False, seed=11)
    rows = raw_store.read_rows(raw_store.read_manifest(VersionRef("raw-data", made["source"]["digest"])),
                               ["label", "digest"]).to_pylist()
    expected = {"train": {}, "val": {}}
    for label in sorted({row["label"] for row in rows}):
        shuffled = sorted(row["digest"] for row in rows if row["label"] == label)
        random.Random(f"11:{label}").shuffle(shuffled)
        train, val = int(0.5 * len(shuffled)), int(0.25 * len(shuffled))
        expected["train"][label] = sorted(shuffled[:train])
        expected["val"][label] = sorted(shuffled[train:train + val])
    assert made["entries"] == expected
    reference = raw_store.write_manifest(Manifest("split", splits=expected, source=VersionRef(**made["source"]),
                                                  meta=made["meta"]))
    assert reference == result.outputs[0].key  # the same rows give the same version
