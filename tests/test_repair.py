"""A damaged store is never a dead end: every kind of damage is one line naming the file and the fix,
and following that advice literally leaves `verify` clean with every committed version still there.

Each test damages a real store the way a power loss, an editor or a hostile hand would (truncated,
binary garbage, `[]`, `{}`, `null`, wrong-typed fields, a digest that climbs out of the store), runs
the real CLI, then runs the very command the message printed. TensorFlow stays out: ingest and split
are enough to make every kind of store file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import make_class_folders, run_cli, stored_rows, write_image
from lineage.errors import UserError
from lineage.records import CorruptRecord, VersionRef
from lineage.store import Store, canonical_json, sha256_bytes

ESCAPE = "../" * 16 + "etc/passwd"  # deep enough to reach / from any store
DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "binary": lambda data: bytes(range(256)) * 3,
    "list": lambda data: b"[]",
    "empty": lambda data: b"{}",
    "null": lambda data: b"null",
}


@pytest.fixture
def committed(tmp_path):
    """A store with raw-data:v1, split:v1 and split:v2, and the config that made them. Its images are small,
    so ingest packs them (lineage/packs.py)."""
    return _commit(tmp_path, {"Aves": 6, "Fungi": 6})


@pytest.fixture
def committed_large(tmp_path):
    """The same, with one image over PACK_OBJECT_LIMIT too, which ingest stores as a loose object."""
    from lineage.packs import PACK_OBJECT_LIMIT

    large = write_image(tmp_path / "src" / "Aves" / "large.png", seed=77, size=(320, 256))
    assert large.stat().st_size > PACK_OBJECT_LIMIT
    return _commit(tmp_path, {"Aves": 5, "Fungi": 6})


def _commit(tmp_path: Path, classes: dict[str, int]):
    source = make_class_folders(tmp_path / "src", classes)
    store = tmp_path / "store"
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {store}\nstages: [ingest, split]\ningest:\n  source: {source}\n"
                      "split:\n  per_class: {train: 3, val: 2, test: 1}\n")
    assert run_cli("run", "--config", str(config)).returncode == 0
    assert run_cli("split", "--config", str(config), "--set", "split.seed=7").returncode == 0
    versions = {row["ref"]: row["digest"] for row in json.loads(cli(config, "ls", "--json").stdout)}
    assert set(versions) == {"raw-data:v1", "split:v1", "split:v2"}
    return config, store, versions


def cli(config: Path, *args: str):
    return run_cli(*args, "--config", str(config))


def one_error_line(result) -> str:
    """The CLI failed the way a user error must: exit 1, one `error:` line on stderr, no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def advice(message: str) -> list[list[str]]:
    """The `pipeline.py …` commands a message tells the user to run, in order."""
    return [command.split()[1:] for command in re.findall(r"`(pipeline\.py [^`]+)`", message)]


def follow(config: Path, message: str, only: str | None = None) -> None:
    """Run what the message says (with the user's config), as a user would; `only` picks one command."""
    commands = [c for c in advice(message) if only is None or c[0] == only]
    assert commands, f"no command to follow in: {message}"
    for command in commands[:1] if only else commands:
        result = cli(config, *command)
        assert "Traceback" not in result.stderr, result.stderr


def assert_intact(config: Path, versions: dict[str, str]) -> None:
    """`verify` is clean and every committed version resolves to the digest it had."""
    checked = cli(config, "verify")
    assert checked.returncode == 0 and " 0 problem(s)" in checked.stdout, checked.stdout + checked.stderr
    for ref, digest in versions.items():
        shown = cli(config, "show", ref, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["digest"] == digest


def run_record_of(store: Path, stage: str) -> Path:
    found = [p for p in (store / "runs").glob("*.json") if json.loads(p.read_bytes())["stage"] == stage]
    return sorted(found)[0]


# -- run records --------------------------------------------------------------------------

def _wrong_types(data: bytes) -> bytes:
    record = json.loads(data)
    record.update(stage=5, outputs="raw-data")
    return json.dumps(record).encode()


def _escaping_digest(data: bytes) -> bytes:
    record = json.loads(data)
    record["outputs"][0]["digest"] = ESCAPE
    return json.dumps(record).encode()


RUN_DAMAGES = {**DAMAGES, "wrong_types": _wrong_types, "escaping_digest": _escaping_digest}


@pytest.mark.parametrize("damage", sorted(RUN_DAMAGES))
def test_damaged_run_record_is_one_line_and_lineage_rebuild_recovers_it(committed, damage):
    config, store, versions = committed
    record = run_record_of(store, "ingest")
    record.write_bytes(RUN_DAMAGES[damage](record.read_bytes()))

    message = one_error_line(cli(config, "show", "raw-data:v1"))  # show reads the record that made it
    assert str(record) in message and "`pipeline.py lineage --rebuild`" in message
    assert one_error_line(cli(config, "gc")) == message  # gc cannot tell what is live: it stops
    checked = cli(config, "verify")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert str(record) in checked.stdout and "`pipeline.py lineage --rebuild`" in checked.stdout

    follow(config, message)
    assert_intact(config, versions)
    assert (store / "quarantine" / "runs" / record.name).exists()  # moved aside, not deleted
    recovered = json.loads(record.read_bytes())
    assert recovered["recovered"] and recovered["outputs"][0]["digest"] == versions["raw-data:v1"]


def test_run_record_lost_with_lineage_json_is_recorded_again_by_rerunning_its_stage(committed):
    config, store, versions = committed
    record = run_record_of(store, "ingest")
    record.write_bytes(record.read_bytes()[:-40])  # truncated: its output digest survives, lineage.json does not
    (store / "lineage.json").write_bytes(b"null")

    message = one_error_line(cli(config, "ls"))  # a rebuild is needed, and a record is damaged
    assert str(record) in message and "lineage --rebuild" in message
    rebuilt = cli(config, "lineage", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"raw-data@{versions['raw-data:v1'][:12]} lost its run record" in rebuilt.stdout
    kept = Store.open(store).quarantined_versions()
    assert kept == {VersionRef("raw-data", versions["raw-data:v1"])}, kept  # what gc keeps until the stage runs again
    follow(config, rebuilt.stdout, only="ingest")
    assert_intact(config, versions)


# -- manifests ----------------------------------------------------------------------------

def _manifest_path(store: Path, name: str, digest: str) -> Path:
    return store / "manifests" / name / f"{digest}.json"


def _entries_wrong_type(data: bytes) -> bytes:
    return canonical_json({**json.loads(data), "entries": "everything"})


def _entry_escapes(data: bytes) -> bytes:
    """A rows object's name is left out of the version's digest (lineage/rows.py), so this edit keeps the
    manifest's name: only the check of its fields can catch it."""
    manifest = json.loads(data)
    if "rows" in manifest:
        manifest["rows"]["object"] = ESCAPE
    else:
        manifest["entries"][0]["digest"] = ESCAPE
    return canonical_json(manifest)


MANIFEST_DAMAGES = {**DAMAGES, "wrong_types": _entries_wrong_type, "escaping_digest": _entry_escapes}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGES))
def test_damaged_manifest_names_the_stage_that_rewrites_it(committed, damage):
    config, store, versions = committed
    path = _manifest_path(store, "raw-data", versions["raw-data:v1"])
    path.write_bytes(MANIFEST_DAMAGES[damage](path.read_bytes()))

    message = one_error_line(cli(config, "show", "raw-data:v1"))
    assert str(path) in message and "`pipeline.py ingest --force`" in message
    assert "ingest --force" in one_error_line(cli(config, "split", "--force"))  # split reads it as its input
    assert "Traceback" not in cli(config, "gc").stderr
    checked = cli(config, "verify")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert str(path) in checked.stdout and "`pipeline.py ingest --force`" in checked.stdout

    follow(config, message, only="ingest")
    assert_intact(config, versions)


def test_verify_repair_quarantines_a_damaged_manifest_and_its_stage_rewrites_it(committed):
    config, store, versions = committed
    path = _manifest_path(store, "split", versions["split:v1"])
    path.write_bytes(b"{}")
    repaired = cli(config, "verify", "--repair")
    assert repaired.returncode == 1 and "Traceback" not in repaired.stderr
    assert (store / "quarantine" / "manifests" / "split" / path.name).read_bytes() == b"{}"
    assert not path.exists()
    # numbers never shift while a manifest is away: split:v2 is still split:v2
    assert json.loads(cli(config, "show", "split:v2", "--json").stdout)["digest"] == versions["split:v2"]
    missing = one_error_line(cli(config, "show", "split:v1"))
    assert "is missing" in missing and "`pipeline.py split --force`" in missing
    assert "next: re-run `pipeline.py split --force`" in repaired.stdout
    follow(config, missing, only="split")  # split:v1 was made with the config's own seed
    assert_intact(config, versions)


def test_a_hostile_manifest_under_its_own_hash_never_reaches_outside_the_store(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    body = canonical_json({"name": "eval", "files": {"report.html": {"digest": ESCAPE, "size": 1}}})
    digest = sha256_bytes(body)
    path = store.manifest_path(VersionRef("eval", digest))
    path.parent.mkdir(parents=True)
    path.write_bytes(body)  # its name is its hash: only the check of its fields can catch it
    with pytest.raises(CorruptRecord, match="bad digest"):
        store.read_manifest_or_corrupt(VersionRef("eval", digest))
    with pytest.raises(UserError, match="is not an object digest"):
        store.read_object(ESCAPE)
    with pytest.raises(UserError, match="not a version reference"):
        store.manifest_path(VersionRef("../../x", digest))


# -- objects ------------------------------------------------------------------------------

def _image_digests(store: Path, versions: dict[str, str]) -> list[str]:
    manifest = json.loads(_manifest_path(store, "raw-data", versions["raw-data:v1"]).read_bytes())
    return [row["digest"] for row in stored_rows(store, manifest)]


def _an_object(store: Path, versions: dict[str, str]) -> Path:
    """The loose image (committed_large's large one): small images are packed."""
    [blob] = [path for digest in _image_digests(store, versions)
              if (path := store / "objects" / "sha256" / digest[:2] / digest[2:]).exists()]
    return blob


def test_truncated_object_is_rewritten_by_ingest_force(committed_large):
    config, store, versions = committed_large
    blob = _an_object(store, versions)
    intact = blob.read_bytes()
    blob.write_bytes(intact[:10])  # a power loss: objects are not fsynced one by one
    checked = cli(config, "verify")
    assert checked.returncode == 1 and f"object {blob.parent.name}" in checked.stdout
    line = next(line for line in checked.stdout.splitlines() if str(blob) in line)
    assert "`pipeline.py ingest --force`" in line
    follow(config, line, only="ingest")
    assert blob.read_bytes() == intact
    assert_intact(config, versions)


def test_flipped_byte_is_quarantined_by_repair_and_rewritten_by_ingest_force(committed_large):
    config, store, versions = committed_large
    blob = _an_object(store, versions)
    intact = bytearray(blob.read_bytes())
    intact[len(intact) // 2] ^= 0xFF
    blob.write_bytes(bytes(intact))  # same size: only a re-hash sees it
    repaired = cli(config, "verify", "--repair")
    assert repaired.returncode == 1 and "Traceback" not in repaired.stderr
    assert (store / "quarantine" / "objects" / blob.parent.name / blob.name).read_bytes() == bytes(intact)
    nexts = [line for line in repaired.stdout.splitlines() if line.startswith("repair: next:")]
    assert nexts and all("`pipeline.py ingest --force`" in line for line in nexts)
    follow(config, nexts[0], only="ingest")
    assert_intact(config, versions)


def test_flipped_byte_is_rewritten_by_ingest_force_alone(committed_large):
    config, store, versions = committed_large
    blob = _an_object(store, versions)
    intact = blob.read_bytes()
    blob.write_bytes(bytes([intact[0] ^ 1]) + intact[1:])
    assert cli(config, "ingest", "--force").returncode == 0
    assert blob.read_bytes() == intact
    assert_intact(config, versions)


def test_symlinked_object_is_reported_and_not_followed(committed_large, tmp_path):
    config, store, versions = committed_large
    blob = _an_object(store, versions)
    outside = tmp_path / "outside.png"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    checked = cli(config, "verify")
    assert checked.returncode == 1 and "symlink" in checked.stdout
    assert cli(config, "ingest", "--force").returncode == 0
    assert not blob.is_symlink() and outside.exists()
    assert_intact(config, versions)


# -- packed objects (small images: lineage/packs.py) ---------------------------------------

def _packed_image(store: Path, versions: dict[str, str]) -> tuple[str, Path, int, int]:
    """(digest, pack path, offset, size) of a packed image of raw-data:v1."""
    digest = _image_digests(store, versions)[3]
    pack, offset, size = next(Store.open(store).packs.locate(digest))
    return digest, pack.pack_path, offset, size


def _flip_packed_byte(store: Path, versions: dict[str, str]) -> tuple[str, Path, bytes]:
    """Flip one byte inside a packed image (same size: only a re-hash sees it); returns its digest, its pack
    and its intact bytes."""
    digest, pack, offset, size = _packed_image(store, versions)
    with open(pack, "r+b") as handle:
        handle.seek(offset)
        intact = handle.read(size)
        handle.seek(offset + size // 2)
        handle.write(bytes([intact[size // 2] ^ 0xFF]))
    return digest, pack, intact


def test_flipped_byte_in_a_pack_is_named_and_repair_keeps_the_rest_of_the_pack(committed):
    config, store, versions = committed
    digest, pack, intact = _flip_packed_byte(store, versions)
    checked = cli(config, "verify")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    [line] = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    assert f"object {digest[:12]} in pack {pack} is corrupt (its bytes hash to" in line
    assert "`pipeline.py verify --repair`" in line and "`pipeline.py ingest --force`" in line

    repaired = cli(config, "verify", "--repair")
    assert repaired.returncode == 1 and "Traceback" not in repaired.stderr
    damaged_bytes = (store / "quarantine" / "packs" / pack.name).read_bytes()
    assert (store / "quarantine" / "packs" / pack.with_suffix(".idx").name).exists()
    assert not pack.exists() and not pack.with_suffix(".idx").exists()
    assert intact not in damaged_bytes  # the damaged copy went to quarantine, nothing was deleted
    reopened = Store.open(store)
    others = [d for d in _image_digests(store, versions) if d != digest]
    assert all(sha256_bytes(reopened.read_object(d)) == d for d in others)  # the intact ones are in a new pack
    with pytest.raises(UserError, match="is missing"):
        reopened.read_object(digest)
    missing = cli(config, "verify")
    assert f"references 1 missing object(s), first {digest[:12]}: re-run `pipeline.py ingest --force`" \
        in missing.stdout
    # The split that refers to the image is sent to its source's stage: re-running split writes no image.
    raw_data = next(line for line in missing.stdout.splitlines() if line.startswith("problem: manifest raw-data@"))
    source = raw_data.split()[2]
    assert f"references 1 missing object(s), first {digest[:12]}: they are {source}'s: re-run " \
           "`pipeline.py ingest --force`" in missing.stdout
    assert "split --force" not in missing.stdout
    nexts = [line for line in repaired.stdout.splitlines() if line.startswith("repair: next:")]
    assert nexts == ["repair: next: re-run `pipeline.py ingest --force` with the config that made it to rewrite it"]
    follow(config, nexts[0], only="ingest")
    assert Store.open(store).read_object(digest) == intact
    assert_intact(config, versions)


def test_the_advice_for_a_flipped_byte_in_a_pack_followed_literally_leaves_verify_clean(committed):
    config, store, versions = committed
    digest, _, intact = _flip_packed_byte(store, versions)
    line = next(line for line in cli(config, "verify").stdout.splitlines() if digest[:12] in line)
    assert [c[0] for c in advice(line)] == ["verify", "ingest"]
    follow(config, line)  # verify --repair, then ingest --force
    assert Store.open(store).read_object(digest) == intact
    assert_intact(config, versions)


def test_ingest_force_alone_restores_a_packed_image_and_repair_drops_the_damaged_copy(committed):
    config, store, versions = committed
    digest, pack, intact = _flip_packed_byte(store, versions)
    assert cli(config, "ingest", "--force").returncode == 0
    assert Store.open(store).read_object(digest) == intact  # from its new pack: the damaged copy is passed over
    checked = cli(config, "verify")
    [line] = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    assert f"object {digest[:12]} in pack {pack}" in line and "an intact copy is in the store" in line
    assert "--force" not in line  # nothing to re-run
    repaired = cli(config, "verify", "--repair")
    assert repaired.returncode == 0 and "next:" not in repaired.stdout, repaired.stdout
    assert_intact(config, versions)


def _truncate_index(index: Path, outside: Path) -> None:
    index.write_bytes(index.read_bytes()[:100])


def _remove_pack(index: Path, outside: Path) -> None:
    index.with_suffix(".pack").unlink()


def _link_pack(index: Path, outside: Path) -> None:
    pack = index.with_suffix(".pack")
    outside.write_bytes(pack.read_bytes())
    pack.unlink()
    pack.symlink_to(outside)


def _link_index(index: Path, outside: Path) -> None:
    outside.write_bytes(index.read_bytes())
    index.unlink()
    index.symlink_to(outside)


def _truncate_pack(index: Path, outside: Path) -> None:
    pack = index.with_suffix(".pack")
    os.truncate(pack, pack.stat().st_size - 1)  # a power loss: the index is whole, its last object is not


PACK_DAMAGES = {"truncated index": (_truncate_index, "cut short"), "pack gone": (_remove_pack, "is missing"),
                "truncated pack": (_truncate_pack, "leaves the pack file"),
                "symlinked pack": (_link_pack, "is not a plain file"), "symlinked index": (_link_index, "a symlink")}


@pytest.mark.parametrize("damage", sorted(PACK_DAMAGES))
def test_a_damaged_index_loses_its_objects_and_its_stage_writes_them_again(committed, tmp_path, damage):
    config, store, versions = committed
    [index] = (store / "objects" / "packs").glob("*.idx")
    outside = tmp_path / "outside"
    harm, said = PACK_DAMAGES[damage]
    harm(index, outside)
    checked = cli(config, "verify")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    problems = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    first = problems[0]  # one line for the cause, before the missing objects it explains
    assert f"pack index {index} is damaged (" in first and said in first, checked.stdout
    assert ("`pipeline.py verify --repair` copies the objects of its pack that still hash to their names into a "
            "new pack, then moves it and its pack to quarantine/" if damage == "truncated pack" else
            "`pipeline.py verify --repair` moves it and its pack to quarantine/") in first
    assert not any(index.stem in line for line in problems[1:]), checked.stdout
    assert any("references 12 missing object(s)" in line and "`pipeline.py ingest --force`" in line
               for line in problems), checked.stdout
    assert [c[0] for c in advice(first)] == ["verify", "ingest"]
    follow(config, first)  # verify --repair, then ingest --force
    assert_intact(config, versions)
    quarantined = store / "quarantine" / "packs"
    assert os.path.lexists(quarantined / index.name)  # moved aside, never deleted
    assert os.path.lexists(quarantined / index.with_suffix(".pack").name) != (damage == "pack gone")
    if outside.exists():  # a link is moved as a link: its target is never followed, moved or emptied
        assert (quarantined / f"{index.stem}.{'idx' if damage == 'symlinked index' else 'pack'}").is_symlink()
        assert outside.stat().st_size > 0


def test_a_pack_cut_short_keeps_every_object_before_the_cut(committed, tmp_path):
    """The source photos are gone (the store is the archive) and the pack loses its tail: repair keeps each
    object that still hashes, so only the cut one is missing, and verify names just that one."""
    import shutil

    from lineage.packs import read_index
    from lineage.store import Store, sha256_bytes

    config, store, versions = committed
    [index] = (store / "objects" / "packs").glob("*.idx")
    pack = read_index(index)
    offsets = [pack.location(position) for position in range(pack.count)]
    last = max(range(pack.count), key=lambda position: offsets[position][0])
    cut = pack.digest(last).hex()
    shutil.rmtree(tmp_path / "src")
    _truncate_pack(index, tmp_path / "outside")
    repaired = cli(config, "verify", "--repair")
    assert "Traceback" not in repaired.stderr
    assert f"copied the 11 intact objects of {index.stem}.pack to new pack(s)" in repaired.stdout, repaired.stdout
    reopened = Store.open(store)
    kept = [digest for digest in _image_digests(store, versions) if digest != cut]
    assert len(kept) == 11 and all(sha256_bytes(reopened.read_object(digest)) == digest for digest in kept)
    assert not reopened.has_object(cut)
    assert os.path.lexists(store / "quarantine" / "packs" / f"{index.stem}.pack")  # set aside, never deleted
    missing = [line for line in cli(config, "verify").stdout.splitlines() if line.startswith("problem:")]
    assert missing and all(f"references 1 missing object(s), first {cut[:12]}" in line for line in missing)


def test_a_pack_without_its_index_is_garbage_not_damage(committed):
    """What a run killed between renaming its pack and its index leaves: gc's to remove, not a problem."""
    config, store, versions = committed
    [pack] = (store / "objects" / "packs").glob("*.pack")
    orphan = pack.with_name("0" * 64 + ".pack")
    orphan.write_bytes(pack.read_bytes())
    checked = cli(config, "verify")
    assert checked.returncode == 0 and " 0 problem(s)" in checked.stdout, checked.stdout
    assert "1 staging leftover(s)" in checked.stdout


def test_a_stray_in_the_packs_folder_is_quarantined(committed):
    config, store, versions = committed
    stray = store / "objects" / "packs" / "notes.txt"
    stray.write_bytes(b"not a pack")
    checked = cli(config, "verify")
    assert checked.returncode == 1 and f"{stray} is not part of a pack" in checked.stdout
    assert cli(config, "verify", "--repair").returncode == 0
    assert (store / "quarantine" / "packs" / "notes.txt").read_bytes() == b"not a pack"
    assert_intact(config, versions)


# -- lineage.json (derived: any damage is a silent rebuild) -------------------------------

def _graph_wrong_types(data: bytes) -> bytes:
    graph = json.loads(data)
    graph["versions"]["raw-data"][0]["v"] = "one"
    return json.dumps(graph).encode()


def _graph_escaping_digest(data: bytes) -> bytes:
    graph = json.loads(data)
    graph["versions"]["raw-data"][0]["digest"] = ESCAPE
    return json.dumps(graph).encode()


@pytest.mark.parametrize("damage", sorted({**DAMAGES, "wrong_types": _graph_wrong_types,
                                           "escaping_digest": _graph_escaping_digest}))
def test_damaged_lineage_json_is_rebuilt_silently(committed, damage):
    config, store, versions = committed
    graph = store / "lineage.json"
    damages = {**DAMAGES, "wrong_types": _graph_wrong_types, "escaping_digest": _graph_escaping_digest}
    graph.write_bytes(damages[damage](graph.read_bytes()))
    listed = cli(config, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {row["ref"]: row["digest"] for row in json.loads(listed.stdout)} == versions
    assert_intact(config, versions)


# -- caches (disposable: a damaged one is recomputed and overwritten, never an error) -------

@pytest.mark.parametrize("damage", sorted({**DAMAGES, "hostile_entry": None}))
def test_damaged_stat_cache_is_recomputed(committed, damage):
    config, store, versions = committed
    import pyarrow as pa
    import pyarrow.parquet as pq

    [cache] = (store / "cache" / "stat").glob("*.parquet")
    data = cache.read_bytes()
    if damage == "hostile_entry":  # unchanged files whose cached digest climbs out of the store (to a real file)
        stat_cache = pq.read_table(cache)
        column = stat_cache.schema.get_field_index("digest")
        pq.write_table(stat_cache.set_column(column, "digest", pa.array([ESCAPE] * stat_cache.num_rows)), cache)
    else:
        cache.write_bytes(DAMAGES[damage](data))
    source = Path(re.search(r"source: (.*)", config.read_text()).group(1))
    make_class_folders(source, {"Aves": 7}, seed=9)  # one new file: a real run that consults the cache
    again = cli(config, "ingest")
    assert again.returncode == 0 and "raw-data:v2" in again.stdout, again.stderr
    rewritten = pq.read_table(cache).column("digest").to_pylist()
    assert len(rewritten) == 13 and ESCAPE not in rewritten
    assert_intact(config, versions)


@pytest.mark.parametrize("damage", sorted({**DAMAGES, "wrong_types": None}))
def test_damaged_decode_cache_sidecar_is_recomputed(tmp_path, damage):
    from models.data import decode_images

    photos = make_class_folders(tmp_path / "photos", {"a": 3, "b": 3})
    paths = sorted(str(p) for p in photos.rglob("*.png"))
    cache_file = str(tmp_path / "cache" / "split.npy")
    first = np.array(decode_images(paths, 8, cache_file=cache_file, workers=1, progress=False).images)
    sidecar = Path(f"{cache_file}.json")
    if damage == "wrong_types":
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "failures": [[99, 1]]}))
    else:
        sidecar.write_bytes(DAMAGES[damage](sidecar.read_bytes()))
    again = decode_images(paths, 8, cache_file=cache_file, workers=1, progress=False)
    assert np.array_equal(np.array(again.images), first)
    assert json.loads(sidecar.read_text())["failures"] == []  # rewritten


@pytest.mark.parametrize("damage", ["truncated", "binary", "empty"])
def test_damaged_thumbnail_is_made_again(committed, damage):
    from lineage.graph import Graph
    from lineage.contract import Artifact, StageContext
    from stages import evaluate

    config, store_dir, versions = committed
    store = Store.open(store_dir)
    graph = Graph.load(store)
    raw = Artifact.open(store, graph, graph.resolve("raw-data:v1"))
    ids = raw.rows(["digest"]).column("digest").to_pylist()[:3] + [ESCAPE]
    params, ctx = evaluate.Params(workers=1), StageContext(store, "evaluate", log=lambda m: None)
    made = evaluate.thumbnails(raw, ids, params, ctx)
    assert set(made) == set(ids[:3])  # the id that is no digest gets no thumbnail, and no path
    cached = store.cache_dir / "thumbnails" / str(params.thumbnail_px) / ids[0]
    cached.write_bytes(b"" if damage == "empty" else DAMAGES[damage](cached.read_bytes()))
    again = evaluate.thumbnails(raw, ids, params, ctx)
    assert again == made and cached.read_bytes() == made[ids[0]]


def test_thumbnails_of_photos_use_threads_and_of_small_images_one(tmp_path, monkeypatch):
    """evaluate.workers threads for images of THREADED_MEAN_BYTES or more on average (decoding lets go of the
    GIL); one thread for small ones, where threads only contend. Either way, the same thumbnails."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from lineage.contract import StageContext
    from stages import evaluate

    pools = []

    class Recorded(ThreadPoolExecutor):
        def __init__(self, workers, *args, **kwargs):
            pools.append(workers)
            super().__init__(workers, *args, **kwargs)

    monkeypatch.setattr(evaluate, "ThreadPoolExecutor", Recorded)
    store = Store.open(tmp_path / "store", create=True)
    params, ctx = evaluate.Params(workers=3), StageContext(store, "evaluate", log=lambda m: None)
    for size, threads in ((16, []), (160, [3])):  # 16 px: under 1 KB; 160 px of noise: about 75 KB
        photos = make_class_folders(tmp_path / f"photos{size}", {"a": 4})
        ids = []
        for index, path in enumerate(sorted(photos.rglob("*.png"))):
            pixels = np.random.default_rng(index).integers(0, 255, (size, size, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            ids.append(store.write_object(buffer.getvalue()))
        assert (store.object_size(ids[0]) >= evaluate.THREADED_MEAN_BYTES) == bool(threads)
        pools.clear()
        made = evaluate.thumbnails(_StoreOnly(store), ids, params, ctx)
        assert pools == threads and set(made) == set(ids)
        for digest in ids:
            with Image.open(io.BytesIO(made[digest])) as thumbnail:
                assert thumbnail.format == "JPEG" and max(thumbnail.size) == min(size, params.thumbnail_px)


class _StoreOnly:
    """What thumbnails reads of an artifact: its store's objects."""

    def __init__(self, store):
        self.store = store

    def open_object(self, digest):
        return self.store.open_object(digest)


def test_writing_an_object_again_replaces_a_truncated_copy_without_force(tmp_path):
    """The one lstat a write makes anyway sees a wrong size: no --force needed for a power-loss cut."""
    store = Store.open(tmp_path / "s", create=True)
    digest = store.write_object(b"the whole blob")
    store.object_path(digest).write_bytes(b"the wh")
    assert store.write_object(b"the whole blob") == digest
    assert store.read_object(digest) == b"the whole blob"
