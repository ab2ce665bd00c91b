"""ingest: formats, every kind of bad input, the folder rules."""

from __future__ import annotations

import hashlib
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_class_folders, stored_rows, write_image
from lineage import runner
from lineage.errors import UserError
from lineage.packs import remove_pack, write_pack
from lineage.store import Store
from lineage.verify import verify
from stages import ingest


def _ingest(tmp_path, root, **kw):
    store = Store.open(tmp_path / "store", create=True)
    messages = []
    result = runner.execute(store, ingest, ingest.Params(source=str(root), **kw), log=messages.append)
    manifest = store.read_manifest(result.outputs[0].key).to_json()  # the manifest as stored
    return {**manifest, "entries": stored_rows(store, manifest)}, messages


def _drop_object(store, digest: str) -> None:
    """Take one image's object out of the store as gc takes a dead one: a loose file is unlinked, a packed
    object's pack is rewritten without it."""
    loose = store.object_path(digest)
    if loose.exists():
        loose.unlink()
        return
    store.forget_listings()
    holding = [pack for pack, _, _ in store.packs.locate(digest)]
    assert holding, f"object {digest} is neither loose nor packed"
    for pack in holding:
        write_pack(store.packs_dir, store.tmp_dir,
                   ((raw.hex(), data) for raw, data in pack.objects() if raw.hex() != digest))
        remove_pack(pack.pack_path, pack.index_path)
    store.forget_listings()
    assert not store.has_object(digest)


def _jpeg_bytes(seed=0, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG")
    return buffer.getvalue()


def test_every_accepted_format_is_read_with_its_size(tmp_path):
    root = tmp_path / "src"
    formats = {"a.jpg": "JPEG", "b.png": "PNG", "c.gif": "GIF", "d.bmp": "BMP", "e.webp": "WEBP", "f.tif": "TIFF"}
    for i, (name, fmt) in enumerate(formats.items()):
        write_image(root / "Aves" / name, seed=i, size=(31 + i, 17), fmt=fmt)
    gray = Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20))
    gray.save(root / "Aves" / "gray.png")
    manifest, _ = _ingest(tmp_path, root)
    by_path = {e["path"]: e for e in manifest["entries"]}
    for i, (name, fmt) in enumerate(formats.items()):
        entry = by_path[f"Aves/{name}"]
        assert (entry["format"], entry["width"], entry["height"]) == (fmt, 31 + i, 17)
        assert entry["label"] == "Aves" and entry["size"] == (root / "Aves" / name).stat().st_size
    assert by_path["Aves/gray.png"]["width"] == 20
    assert manifest["meta"]["rejected_count"] == 0


def test_bad_files_are_rejected_with_reasons(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Fungi": 3})
    bad = root / "Fungi"
    (bad / "notes.jpg").write_text("this is not an image at all")
    (bad / "empty.png").write_bytes(b"")
    (bad / "cut.jpg").write_bytes(_jpeg_bytes()[:-400])
    png = io.BytesIO()
    Image.new("RGB", (30, 30), "red").save(png, "PNG")
    (bad / "cut.png").write_bytes(png.getvalue()[:-20])
    write_image(bad / "huge.png", seed=5, size=(300, 300))
    manifest, messages = _ingest(tmp_path, root, max_pixels=50_000)
    reasons = {r["path"]: r["reason"] for r in manifest["meta"]["rejected"]}
    assert reasons["Fungi/notes.jpg"].startswith("not an image")
    assert reasons["Fungi/empty.png"] == "empty file (0 bytes)"
    assert reasons["Fungi/cut.jpg"].startswith("truncated JPEG")
    assert reasons["Fungi/cut.png"].startswith("truncated PNG")
    assert reasons["Fungi/huge.png"].startswith("decompression bomb: 300x300")
    assert manifest["meta"]["rejected_count"] == 5
    assert [e["path"] for e in manifest["entries"]] == [f"Fungi/img_00{i}.png" for i in range(3)]
    assert any("rejected Fungi/cut.jpg" in m for m in messages)


def test_full_decode_catches_damage_inside_the_image(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Fungi": 2})
    data = bytearray((root / "Fungi" / "img_000.png").read_bytes())
    data[60:80] = b"\x00" * 20  # inside the compressed pixel data; the file still ends with IEND
    (root / "Fungi" / "damaged.png").write_bytes(bytes(data))
    header_only, _ = _ingest(tmp_path, root)
    assert "Fungi/damaged.png" in {e["path"] for e in header_only["entries"]}
    full, _ = _ingest(tmp_path, root, full_decode=True)
    assert {r["path"] for r in full["meta"]["rejected"]} == {"Fungi/damaged.png"}


def test_folder_rules(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Aves": 2, "Plantae maybe": 2, "Mollusca_é": 2})
    write_image(root / "loose.png", seed=70)
    (root / "Empty").mkdir()
    (root / ".hidden").mkdir()
    write_image(root / ".hidden" / "x.png", seed=71)
    write_image(root / "Aves" / ".DS_Store.png", seed=72)
    write_image(root / "Aves" / "nested" / "deep.png", seed=73)
    outside = write_image(tmp_path / "elsewhere" / "out.png", seed=74)
    os.symlink(outside, root / "Aves" / "escape.png")
    os.symlink(root / "Aves" / "img_000.png", root / "Aves" / "inside-link.png")
    manifest, _ = _ingest(tmp_path, root)
    paths = {e["path"] for e in manifest["entries"]}
    assert "Aves/nested/deep.png" in paths and "Plantae maybe/img_000.png" in paths
    assert "Mollusca_é/img_001.png" in paths
    assert not any(".hidden" in p or ".DS_Store" in p for p in paths)
    reasons = {r["path"]: r["reason"] for r in manifest["meta"]["rejected"]}
    assert "not in a class folder" in reasons["loose.png"]
    assert "empty class folder" in reasons["Empty/"]
    assert "leaves the source folder" in reasons["Aves/escape.png"]
    assert manifest["meta"]["classes"] == ["Aves", "Mollusca_é", "Plantae maybe"]
    # The in-root symlink has the same content as its target: kept once, reported as a duplicate.
    assert {"path": "Aves/inside-link.png", "same_as": "Aves/img_000.png"} in manifest["meta"]["duplicates"]


def test_label_conflict_is_an_error_by_default_and_can_drop(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Aves": 3, "Insecta": 3})
    shutil.copy(root / "Aves" / "img_000.png", root / "Insecta" / "same.png")
    with pytest.raises(UserError, match=r"2 files carry the same content under different classes.*"
                                        r"on_label_conflict: drop"):
        _ingest(tmp_path, root)
    manifest, _ = _ingest(tmp_path, root, on_label_conflict="drop")
    paths = {e["path"] for e in manifest["entries"]}
    assert "Aves/img_000.png" not in paths and "Insecta/same.png" not in paths
    assert manifest["meta"]["class_counts"] == {"Aves": 2, "Insecta": 3}


def test_folder_without_classes_or_images(tmp_path):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", seed=1)
    with pytest.raises(UserError, match="no class folders with files"):
        _ingest(tmp_path, tmp_path / "flat")
    (tmp_path / "junk" / "Aves").mkdir(parents=True)
    (tmp_path / "junk" / "Aves" / "a.jpg").write_text("nope")
    with pytest.raises(UserError, match="no readable image"):
        _ingest(tmp_path, tmp_path / "junk")
    with pytest.raises(UserError, match="does not exist"):
        _ingest(tmp_path, tmp_path / "missing")


def test_hardlink_mode_links_the_source_files_and_verify_sees_them_edited(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Aves": 3, "Fungi": 3})
    stores, manifests = {}, {}
    for link in ("copy", "hardlink"):
        stores[link] = Store.open(tmp_path / f"store-{link}", create=True)
        result = runner.execute(stores[link], ingest, ingest.Params(source=str(root), link=link), log=lambda m: None)
        manifests[link] = result.outputs[0].digest, stores[link].read_manifest(result.outputs[0].key)
    assert manifests["hardlink"] == manifests["copy"]  # the mode changes how objects are stored, not the version
    entries = stored_rows(stores["hardlink"], manifests["hardlink"][1].to_json())
    assert len(entries) == 6
    for entry in entries:
        source = (root / entry["path"]).stat()
        linked = stores["hardlink"].object_path(entry["digest"]).stat()
        assert linked.st_ino == source.st_ino and linked.st_nlink >= 2
        # copy: small images are packed, their bytes copied into a pack of the store's own
        assert not stores["copy"].object_path(entry["digest"]).exists()
        [(pack, _, size)] = stores["copy"].packs.locate(entry["digest"])
        assert os.stat(pack.pack_path).st_ino != source.st_ino and size == source.st_size
        assert stores["copy"].read_object(entry["digest"]) == (root / entry["path"]).read_bytes()
    assert verify(stores["hardlink"]).problems == []

    edited = next(e for e in entries if e["path"] == "Fungi/img_001.png")
    with open(root / edited["path"], "r+b") as source:  # in place: the same inode, so the object changes too
        source.seek(0, os.SEEK_END)
        source.write(b"edited after ingest")
    problems = verify(stores["hardlink"]).problems
    assert len(problems) == 1 and problems[0].startswith(f"object {edited['digest'][:12]} is corrupt")
    assert verify(stores["copy"]).problems == []


# Below and above the count where loose presence is checked by listdir; copy packs the images, hardlink
# keeps them loose.
@pytest.mark.parametrize("files, link", [(12, "copy"), (600, "copy"), (12, "hardlink"), (600, "hardlink")])
def test_stat_cache_keeps_rejections_and_repeats_and_rereads_what_gc_removed(tmp_path, files, link, monkeypatch):
    """A changed folder re-reads only what changed: rejections, duplicates and conflicts the stat cache
    remembers come out as a full read gives them, and a cached image whose object is gone (a loose file
    deleted, or a pack rewritten without it) is read again."""
    from lineage import rows

    monkeypatch.setattr(rows, "BATCH_ROWS", 7)  # the cache is written and read back in many slices
    root = make_class_folders(tmp_path / "src", {"Aves": files // 2, "Insecta": files - files // 2})
    (root / "Aves" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shutil.copy(root / "Aves" / "img_001.png", root / "Aves" / "again.png")
    shutil.copy(root / "Aves" / "img_002.png", root / "Insecta" / "same.png")
    first, _ = _ingest(tmp_path, root, on_label_conflict="drop", link=link)
    store = Store.open(tmp_path / "store")
    gone = next(e["digest"] for e in first["entries"] if e["path"] == "Insecta/img_003.png")
    _drop_object(store, gone)
    (root / "Aves" / "img_000.png").unlink()  # a new file, not an edit of one a hard link shares
    write_image(root / "Aves" / "img_000.png", seed=4242)  # a change: the run is not a cache hit
    again, messages = _ingest(tmp_path, root, on_label_conflict="drop", link=link)
    assert f"{files + 3:,} files, 2 read, {files + 1:,} unchanged" in messages[0]
    store.forget_listings()
    assert store.read_object(gone) == (root / "Insecta" / "img_003.png").read_bytes()
    assert store.object_path(gone).is_file() == (link == "hardlink")
    for key in ("rejected", "duplicates", "rejected_count", "class_counts"):
        assert again["meta"][key] == first["meta"][key], key
    changed = {"Aves/img_000.png"}
    assert [e for e in again["entries"] if e["path"] not in changed] == \
        [e for e in first["entries"] if e["path"] not in changed]
    assert {"path": "Aves/img_001.png", "same_as": "Aves/again.png"} in again["meta"]["duplicates"]  # first by path
    assert {r["path"] for r in again["meta"]["rejected"]} >= {"Aves/broken.png", "Aves/img_002.png",
                                                              "Insecta/same.png"}


@pytest.mark.parametrize("link", ["copy", "hardlink"])  # packed images, loose ones
def test_a_cache_hit_needs_every_object_its_rows_name(tmp_path, link):
    """An unchanged folder is reused only while the store holds every image of its version: the check reads
    the sorted digest cache, searches the packs and then one object folder at a time, and must still see a
    single missing object."""
    root = make_class_folders(tmp_path / "src", {"Aves": 30, "Insecta": 30})
    made, _ = _ingest(tmp_path, root, link=link)
    store = Store.open(tmp_path / "store")
    assert list((store.cache_dir / "rows").glob("*.sorted-digests"))
    assert bool(store.packs.packs) == (link == "copy")
    digests = sorted(e["digest"] for e in made["entries"])
    shared = next(d for d, before in zip(digests[1:], digests) if d[:2] == before[:2])  # not first in its folder
    for digest in (digests[0], shared, digests[len(digests) // 2], digests[-1]):
        _drop_object(store, digest)
        result = runner.execute(store, ingest, ingest.Params(source=str(root), link=link), log=lambda m: None)
        store.forget_listings()
        assert not result.reused and store.has_object(digest)
    assert runner.execute(store, ingest, ingest.Params(source=str(root), link=link), log=lambda m: None).reused
    # A hit on packed rows notes the packs that held them, and later hits read no index while those packs are in
    # place; a pack rewritten without an object (its name changes) or a damaged note sends the check back to
    # the indexes.
    notes = list((store.cache_dir / "rows").glob("*.packed-in"))
    assert bool(notes) == (link == "copy")
    for note in notes:
        note.write_text("not a pack name\n")
    assert runner.execute(store, ingest, ingest.Params(source=str(root), link=link), log=lambda m: None).reused
    assert all(note.read_text() != "not a pack name\n" for note in notes)
    _drop_object(store, digests[1])
    store.forget_listings()
    assert not runner.execute(store, ingest, ingest.Params(source=str(root), link=link), log=lambda m: None).reused
    store.forget_listings()
    assert store.has_object(digests[1])


def test_an_ingest_walks_its_folder_once(tmp_path, monkeypatch):
    """The fingerprint's scan reaches run through the runner (contract.Fingerprint, ctx.source): a cold ingest
    walks the folder once, not once for the cache key and again for the work; a cache hit once, to decide."""
    root = make_class_folders(tmp_path / "src", {"Aves": 3, "Insecta": 3})
    store = Store.open(tmp_path / "store", create=True)
    walks = []
    scan_source = ingest.scan_source
    monkeypatch.setattr(ingest, "scan_source", lambda folder: walks.append(folder) or scan_source(folder))
    assert not runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None).reused
    assert len(walks) == 1
    assert runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None).reused
    assert len(walks) == 2


def test_a_class_is_scanned_in_path_order_across_its_subfolders(tmp_path):
    """Within a class the scan lists files by path, whatever order the folder is read in and however deep they
    sit: "Aves/b/x.png" between "Aves/a.png" and "Aves/c.png". The stat cache is merged in this order."""
    root = tmp_path / "src"
    names = ["a.png", "b/x.png", "b/y/z.png", "b0.png", "c.png", "d/e.png", "f.png"]
    for index, name in enumerate(reversed(names)):  # created last first: folder order is not path order
        write_image(root / "Aves" / name, seed=index)
    scan = ingest.scan_source(root)
    assert scan.paths == [f"Aves/{name}" for name in sorted(names)]
    assert list(scan.sizes) == [(root / path).stat().st_size for path in scan.paths]
    assert list(scan.inodes) == [(root / path).stat().st_ino for path in scan.paths]


def test_stat_cache_matches_in_scan_order_where_it_differs_from_path_order(tmp_path, monkeypatch):
    """The cache is merged into the scan a batch at a time, bounded by bisection in scan order (class folder
    name, then path). "Aves-2/…" sorts before "Aves/…" as a path but after it as a folder, so a bisection by
    plain path order would miss whole batches and read their files again."""
    from lineage import rows

    monkeypatch.setattr(rows, "BATCH_ROWS", 5)
    root = make_class_folders(tmp_path / "src", {"Aves": 12, "Aves-2": 12, "Aves_3": 6})
    (root / "Aves" / "deeper").mkdir()
    write_image(root / "Aves" / "deeper" / "img.png", seed=777)
    first, _ = _ingest(tmp_path, root)
    write_image(root / "Aves-2" / "img_005.png", seed=4242)  # a change: the run is not a cache hit
    again, messages = _ingest(tmp_path, root)
    assert "31 files, 1 read, 30 unchanged" in messages[0]
    assert [e for e in again["entries"] if e["path"] != "Aves-2/img_005.png"] == \
        [e for e in first["entries"] if e["path"] != "Aves-2/img_005.png"]


def test_a_stat_cache_in_another_order_gives_only_right_answers(tmp_path, monkeypatch):
    """A cache whose rows are not in scan order (edited, or another writer's) is still only a hint: what the
    merge cannot place is read again, and what it takes is the result a full read gives."""
    import pyarrow.parquet as pq

    from lineage import rows

    monkeypatch.setattr(rows, "BATCH_ROWS", 4)
    root = make_class_folders(tmp_path / "src", {"Aves": 9, "Insecta": 9})
    (root / "Aves" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    first, _ = _ingest(tmp_path, root)
    [cache] = (tmp_path / "store" / "cache" / "stat").glob("*.parquet")
    table = pq.read_table(cache)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    pq.write_table(shuffled.replace_schema_metadata(table.schema.metadata), cache)
    write_image(root / "Insecta" / "img_000.png", seed=4242)
    again, messages = _ingest(tmp_path, root)
    read = int(messages[0].split(" files, ")[1].split(" read")[0])
    assert 1 <= read < 19, messages[0]  # some rows still merge; the rest are read again
    assert [e for e in again["entries"] if e["path"] != "Insecta/img_000.png"] == \
        [e for e in first["entries"] if e["path"] != "Insecta/img_000.png"]
    changed = next(e for e in again["entries"] if e["path"] == "Insecta/img_000.png")
    assert changed["digest"] == hashlib.sha256((root / "Insecta" / "img_000.png").read_bytes()).hexdigest()
    assert again["meta"]["rejected"] == first["meta"]["rejected"]
