"""gc collects packed objects as it does loose ones: a pack nothing live names is removed, a pack with some
dead objects is rewritten without them, a live object with damaged bytes keeps its pack whole, a .pack
left without its index is garbage after the grace period, and damage and links are reported, not touched.

Dead packed objects come from where dead objects always come from: a run killed after it staged them.
Here a real `pipeline.py ingest` kills itself right after renaming a pack (or its index) into place."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from conftest import make_class_folders, run_cli, run_cli_killed_after_rename
from lineage.gc import collect_garbage
from lineage.packs import read_index
from lineage.store import Store


def _killed_ingest(store: Path, folder: Path, after: str = ".idx") -> None:
    """An ingest killed right after it renamed a pack file ending in `after` into objects/packs/: with its pack
    and index in place (".idx"), or only its pack (".pack")."""
    run_cli_killed_after_rename(rf"/objects/packs/[^/]*{re.escape(after)}$", "ingest", str(folder), "--store",
                                str(store), "-q")


def _ingest(store: Path, folder: Path) -> None:
    done = run_cli("ingest", str(folder), "--store", str(store), "-q")
    assert done.returncode == 0, done.stdout + done.stderr


def _gc(store: Path, *args: str) -> subprocess.CompletedProcess:
    swept = run_cli("gc", *args, "--store", str(store))
    assert swept.returncode == 0, swept.stdout + swept.stderr
    return swept


def _packs(store: Path) -> dict[str, bytes]:
    """Every file in objects/packs/ by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted((store / "objects" / "packs").iterdir())}


def _digests(folder: Path) -> dict[str, bytes]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _assert_verify_clean(store: Path) -> None:
    check = run_cli("verify", "--store", str(store))
    assert check.returncode == 0 and "0 problem(s)" in check.stdout, check.stdout + check.stderr


def _flip_packed_byte(store: Path, digest: str) -> Path:
    """Flip the first byte of a packed object inside its pack file; returns the pack."""
    pack, offset, _ = next(Store.open(store).packs.locate(digest))
    with open(pack.pack_path, "r+b") as handle:
        handle.seek(offset)
        first = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([first[0] ^ 0xFF]))
    return pack.pack_path


def _partly_dead_pack(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes], dict[str, bytes]]:
    """A store with one pack of 8 images, 5 of them live: an ingest killed once its pack was in place, then the
    same folder, less 3 files, ingested to the end (it finds the 5 already packed and writes no new pack).
    Returns (store, the pack, live digests → bytes, dead digests → bytes)."""
    store, photos = tmp_path / "store", make_class_folders(tmp_path / "photos", {"Aves": 4, "Fungi": 4}, seed=21)
    _killed_ingest(store, photos)
    before = _digests(photos)
    for path in sorted(photos.rglob("*.png"))[::3]:
        path.unlink()
    _ingest(store, photos)
    live = _digests(photos)
    dead = {d: data for d, data in before.items() if d not in live}
    (pack,) = (store / "objects" / "packs").glob("*.pack")
    assert len(live) == 5 and len(dead) == 3 and read_index(pack.with_suffix(".idx")).count == 8
    return store, pack, live, dead


def test_a_pack_nothing_live_names_is_removed_and_the_live_one_kept(tmp_path):
    store = tmp_path / "store"
    kept_photos = make_class_folders(tmp_path / "kept", {"Aves": 3, "Fungi": 3}, seed=20)
    _ingest(store, kept_photos)
    live_pack = set(_packs(store))
    dead_photos = make_class_folders(tmp_path / "dead", {"Aves": 4, "Fungi": 3}, seed=22)
    _killed_ingest(store, dead_photos)
    dead_pack = set(_packs(store)) - live_pack
    assert len(dead_pack) == 2  # the killed run's .pack and .idx

    fresh = _gc(store, "--yes")  # the default grace keeps what was written a moment ago
    assert "gc: 0 item(s) removed" in fresh.stdout and set(_packs(store)) == live_pack | dead_pack, fresh.stdout
    listed = _gc(store, "--grace-minutes", "0")
    assert "gc: 7 item(s) unreferenced" in listed.stdout and set(_packs(store)) == live_pack | dead_pack, \
        listed.stdout

    dead_bytes = sum(len(data) for name, data in _packs(store).items() if name in dead_pack)
    garbage = collect_garbage(Store.open(store), delete=True, grace_seconds=0, log=lambda m: None)
    (pack_name,) = (name for name in dead_pack if name.endswith(".pack"))
    assert garbage.pack_lines() == [f"removed pack {store / 'objects' / 'packs' / pack_name} and its index: none "
                                    f"of its 7 object(s) is referenced ({_human(garbage.bytes)})"]
    assert garbage.count == 7 and garbage.bytes == dead_bytes, garbage
    assert set(_packs(store)) == live_pack
    reopened = Store.open(store)
    assert all(reopened.read_object(d) == data for d, data in _digests(kept_photos).items())
    assert not any(reopened.has_object(d) for d in _digests(dead_photos))
    _assert_verify_clean(store)


def test_a_partly_dead_pack_is_rewritten_with_its_live_objects_only(tmp_path):
    store, old_pack, live, dead = _partly_dead_pack(tmp_path)
    _flip_packed_byte(store, next(iter(dead)))  # a dead object's damage does not stop the rewrite
    before = _packs(store)

    listed = _gc(store, "--grace-minutes", "0")
    assert "gc: 3 item(s) unreferenced" in listed.stdout and _packs(store) == before, listed.stdout
    dry = collect_garbage(Store.open(store), delete=False, grace_seconds=0, log=lambda m: None)
    new_bytes = 8 + sum(len(data) for data in live.values()) + 16 + 48 * len(live) + 32
    assert dry.bytes == sum(len(data) for data in before.values()) - new_bytes
    assert dry.pack_lines() == [f"would rewrite pack {old_pack} without its 3 unreferenced object(s), keeping 5 "
                                f"({_human(dry.bytes)} freed)"]
    assert _packs(store) == before

    swept = _gc(store, "--yes", "--grace-minutes", "0")
    assert "gc: 3 item(s) removed" in swept.stdout, swept.stdout
    assert not old_pack.exists() and not old_pack.with_suffix(".idx").exists()
    (new_index,) = (store / "objects" / "packs").glob("*.idx")
    rewritten = read_index(new_index)
    assert sorted(rewritten.digest(i).hex() for i in range(rewritten.count)) == sorted(live)
    assert sum(len(data) for data in _packs(store).values()) == new_bytes
    reopened = Store.open(store)
    assert all(reopened.read_object(d) == data for d, data in live.items())
    assert not any(reopened.has_object(d) for d in dead)
    _assert_verify_clean(store)
    assert "gc: 0 item(s) removed" in _gc(store, "--yes", "--grace-minutes", "0").stdout


def test_a_live_object_with_damaged_bytes_keeps_its_pack_whole(tmp_path):
    store, old_pack, live, dead = _partly_dead_pack(tmp_path)
    damaged = sorted(live)[2]
    _flip_packed_byte(store, damaged)
    before = _packs(store)

    garbage = collect_garbage(Store.open(store), delete=True, grace_seconds=0, log=lambda m: None)
    assert _packs(store) == before  # nothing rewritten, nothing removed, no new pack
    assert garbage.count == 0 and garbage.bytes == 0 and garbage.pack_lines() == [], garbage
    assert garbage.foreign == [f"{old_pack} holds live object {damaged[:12]} whose bytes no longer hash to its "
                               "name, so it was kept whole: run `pipeline.py verify --repair`, then gc again"]
    swept = _gc(store, "--yes", "--grace-minutes", "0")
    assert f"left alone: {old_pack} holds live object {damaged[:12]}" in swept.stdout, swept.stdout
    assert "gc: 0 item(s) removed" in swept.stdout and _packs(store) == before
    reopened = Store.open(store)
    assert all(reopened.read_object(d) == data for d, data in live.items() if d != damaged)


def test_a_pack_left_without_its_index_is_removed_after_the_grace(tmp_path):
    store = tmp_path / "store"
    kept_photos = make_class_folders(tmp_path / "kept", {"Aves": 2, "Fungi": 2}, seed=23)
    _ingest(store, kept_photos)
    live_pack = set(_packs(store))
    _killed_ingest(store, make_class_folders(tmp_path / "dead", {"Aves": 3}, seed=24), after=".pack")
    (orphan,) = (store / "objects" / "packs" / name for name in set(_packs(store)) - live_pack)
    assert orphan.suffix == ".pack"

    assert "gc: 0 item(s) removed" in _gc(store, "--yes").stdout and orphan.exists()  # within the grace
    dry = collect_garbage(Store.open(store), delete=False, grace_seconds=0, log=lambda m: None)
    assert dry.pack_lines() == [f"would remove pack {orphan} (no index: left by a writer killed between its two "
                                "renames)"]
    (staged_index,) = dry.staging  # the index the killed writer had staged in tmp/: the tmp/ sweep takes it
    assert staged_index.parent == store / "tmp" and staged_index.suffix == ".idx"
    assert dry.bytes == orphan.stat().st_size + staged_index.stat().st_size and orphan.exists()
    swept = _gc(store, "--yes", "--grace-minutes", "0")
    assert "gc: 2 item(s) removed" in swept.stdout and not orphan.exists() and not staged_index.exists(), swept.stdout
    assert set(_packs(store)) == live_pack
    _assert_verify_clean(store)


def test_a_damaged_index_and_links_in_packs_are_left_alone(tmp_path):
    store = tmp_path / "store"
    _killed_ingest(store, make_class_folders(tmp_path / "dead", {"Aves": 3}, seed=25))
    (index,) = (store / "objects" / "packs").glob("*.idx")
    pack = index.with_suffix(".pack")
    index.write_bytes(index.read_bytes()[:-1])  # cut short: which objects the pack holds is unknown
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = [outside / "thesis.pack", outside / "notes.idx"]
    for path in precious:
        path.write_text("not the store's")
    links = [store / "objects" / "packs" / "elsewhere.pack", store / "objects" / "packs" / ("ab" * 32 + ".idx")]
    for link, target in zip(links, precious):
        link.symlink_to(target)
    before = {p.name: p.read_bytes() for p in (index, pack)}

    swept = _gc(store, "--yes", "--grace-minutes", "0")
    assert f"left alone: {index} is a pack index that does not check out (cut short or padded" in swept.stdout
    assert "run `pipeline.py verify`" in swept.stdout
    for link in links:
        assert f"left alone: {link} is a symlink, not part of the store: remove it by hand" in swept.stdout
        assert link.is_symlink()
    assert all(path.read_text() == "not the store's" for path in precious)
    assert {p.name: p.read_bytes() for p in (index, pack)} == before
    assert "gc: 0 item(s) removed" in swept.stdout, swept.stdout


def _human(size: int) -> str:
    from lineage.display import human_size

    return human_size(size)
