"""Packs (lineage/packs.py): many small objects in one file with an index named by its own hash.

What is claimed: an index is named by the hash of its bytes, so the same objects in the same order give the
same pack; a writer shared by many threads rolls over into several packs and indexes each object once; an
index that cannot be trusted (cut short, edited, renamed, its pack a symlink or missing) is refused and its
pack never read; one whose hash is right but whose layout is not (out of order, pointing past its pack: only
a hand makes one) is named by structure_problem, refused by Pack.objects, and never gives wrong bytes; the
store's object calls see packed objects as they are; and a real ingest killed, re-run with --force, or re-run
after gc removed a dead pack leaves a store that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench.bench_scale import tiny_png
from conftest import PROJECT, make_class_folders, run_cli, run_cli_killed_after_rename
from lineage import runner
from lineage.errors import UserError
from lineage.packs import (INDEX_MAGIC, PACK_MAGIC, DamagedPack, PackSet, PackWriter, read_index, structure_problem,
                           write_pack)
from lineage.store import Store
from lineage.repair import _intact_objects
from stages import ingest


def _objects(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` distinct blobs of 1..600 bytes, with their digests."""
    rng = random.Random(seed)
    blobs = [rng.randbytes(rng.randint(1, 600)) + i.to_bytes(4, "little") for i in range(count)]
    return [(hashlib.sha256(b).hexdigest(), b) for b in blobs]


def _index_bytes(digests: list[bytes], offsets: list[int], sizes: list[int]) -> bytes:
    """An index written by hand, in the documented layout, its trailing hash correct."""
    body = INDEX_MAGIC + struct.pack("<Q", len(digests)) + b"".join(digests) \
        + struct.pack(f"<{len(offsets)}Q", *offsets) + struct.pack(f"<{len(sizes)}Q", *sizes)
    return body + hashlib.sha256(body).digest()


def _hand_made_pack(folder: Path, objects: list[tuple[str, bytes]], order=None, stretch: int = 0) -> Path:
    """A pack of these objects in this order and an index listing them in `order` (default: ascending digests),
    the size of the pack's last object grown by `stretch`; returns the index's path, named by its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    data, where = bytearray(PACK_MAGIC), {}
    for digest, blob in objects:
        where[digest] = (len(data), len(blob))
        data += blob
    listed = order if order is not None else sorted(where)
    sizes = [where[d][1] for d in listed]
    sizes[listed.index(objects[-1][0])] += stretch  # the object at the pack's end
    index = _index_bytes([bytes.fromhex(d) for d in listed], [where[d][0] for d in listed], sizes)
    name = index[-32:].hex()
    (folder / f"{name}.pack").write_bytes(bytes(data))
    (folder / f"{name}.idx").write_bytes(index)
    return folder / f"{name}.idx"


def _flip(pack_path: Path, at: int) -> None:
    with open(pack_path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0xFF]))


# -- the format -----------------------------------------------------------------------------------

def test_an_index_is_named_by_its_hash_and_the_same_objects_give_the_same_pack(tmp_path):
    objects = _objects(50)
    twice = objects[:30] + [objects[7]] + objects[30:] + [objects[7]]  # one digest added three times in all
    made = {}
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        [pack] = write_pack(tmp_path / run / "packs", tmp_path / run, iter(twice))
        index = pack.index_path.read_bytes()
        assert pack.name == hashlib.sha256(index[:-32]).hexdigest() == index[-32:].hex()
        assert pack.count == 50 and read_index(pack.index_path).count == 50  # indexed once
        made[run] = pack.name, pack.pack_path.read_bytes(), index
    assert made["a"] == made["b"]  # same objects, same order: same name, same bytes
    assert sorted(os.listdir(tmp_path / "a" / "packs")) == [f"{made['a'][0]}.idx", f"{made['a'][0]}.pack"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "packs"]  # nothing left in the staging folder

    packs = PackSet(tmp_path / "a" / "packs")
    assert packs.damaged == [] and len(packs.packs) == 1
    for digest, blob in objects:
        assert packs.read(digest) == blob
        assert len(list(packs.locate(digest))) == 1
    assert sorted((raw.hex(), blob) for raw, blob in packs.packs[0].objects(chunk_bytes=1000)) == sorted(objects)
    assert packs.read(hashlib.sha256(b"not here").hexdigest()) is None
    other = [(d, b) for d, b in reversed(objects)]
    (tmp_path / "c").mkdir()
    [reordered] = write_pack(tmp_path / "c" / "packs", tmp_path / "c", iter(other))
    assert reordered.digest_block() == packs.packs[0].digest_block()  # the index is by digest, whatever the order


def test_a_writer_shared_by_threads_rolls_over_and_indexes_each_object_once(tmp_path):
    objects = _objects(800, seed=3)
    folder, staging = tmp_path / "packs", tmp_path / "tmp"
    staging.mkdir()
    committed = []
    writer = PackWriter(folder, staging, on_commit=committed.append, limit_bytes=8 << 10)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: writer.add(*item), objects))
    packs = writer.close()
    assert packs == committed and len(packs) >= 10
    assert os.listdir(staging) == []
    on_disk = PackSet(folder)
    assert on_disk.damaged == [] and sorted(p.name for p in on_disk.packs) == sorted(p.name for p in packs)
    listed = [pack.digest(i) for pack in on_disk.packs for i in range(pack.count)]
    assert sorted(listed) == sorted(bytes.fromhex(d) for d, _ in objects)  # every object, each in one pack
    for pack in on_disk.packs:
        assert pack.pack_path.stat().st_size < (8 << 10) + 700  # closed once past the limit
    for digest, blob in objects:
        assert on_disk.read(digest) == blob


def test_a_discarded_writer_leaves_nothing(tmp_path):
    staging = tmp_path / "tmp"
    staging.mkdir()
    writer = PackWriter(tmp_path / "packs", staging)
    for digest, blob in _objects(5):
        writer.add(digest, blob)
    writer.discard()
    assert writer.close() == [] and os.listdir(staging) == [] and not (tmp_path / "packs").exists()


# -- indexes that cannot be trusted ----------------------------------------------------------------

def _good_pack(folder: Path):
    objects = _objects(6, seed=9)
    [pack] = write_pack(folder, folder.parent, iter(objects))
    return pack, objects


def _refused(path: Path, match: str) -> None:
    with pytest.raises(DamagedPack, match=match):
        read_index(path)
    packs = PackSet(path.parent)
    assert packs.packs == [] and [p for p, _ in packs.damaged] == [path]


def test_a_truncated_or_edited_index_is_refused(tmp_path):
    pack, objects = _good_pack(tmp_path / "packs")
    index = pack.index_path.read_bytes()
    pack.index_path.write_bytes(index[:-1])
    _refused(pack.index_path, "cut short")
    pack.index_path.write_bytes(index[:20])
    _refused(pack.index_path, "header|cut short")
    edited = bytearray(index)
    edited[len(INDEX_MAGIC) + 8 + 5] ^= 1  # inside the first digest
    pack.index_path.write_bytes(bytes(edited))
    _refused(pack.index_path, "no longer hash to its name")
    pack.index_path.write_bytes(index)
    assert read_index(pack.index_path).count == len(objects)  # the same file whole is trusted


def test_an_index_under_another_name_is_refused(tmp_path):
    pack, _ = _good_pack(tmp_path / "packs")
    other = "ab" * 32
    pack.pack_path.rename(pack.folder / f"{other}.pack")
    pack.index_path.rename(pack.folder / f"{other}.idx")
    _refused(pack.folder / f"{other}.idx", "no longer hash to its name")


def test_an_index_out_of_order_or_past_its_pack_is_named_and_never_gives_wrong_bytes(tmp_path):
    """An index whose hash is right but whose layout is not (only a hand can make one) is read, since a reader
    re-hashes every object it reads: such an index can make an object look missing or corrupt, never wrong.
    Its layout is what structure_problem names, and Pack.objects (verify's and gc's read) refuses it before
    sizing any read by it."""
    objects = _objects(5, seed=4)
    ascending = sorted(d for d, _ in objects)
    good = read_index(_hand_made_pack(tmp_path / "good", objects))
    assert structure_problem(good) is None  # the hand-made layout is the real one
    assert sorted((raw.hex(), blob) for raw, blob in good.objects()) == sorted(objects)

    swapped = ascending[:1] + [ascending[2], ascending[1]] + ascending[3:]
    cases = {"unsorted": ({"order": swapped}, "not in ascending order"),
             "repeated": ({"order": ascending[:2] + ascending[1:]}, "not in ascending order"),
             "past": ({"stretch": 1}, "leaves the pack file"),
             "huge": ({"stretch": 1 << 62}, "leaves the pack file"),
             "cut": ({}, "leaves the pack file")}
    for case, (how, problem) in cases.items():
        index = _hand_made_pack(tmp_path / case, objects, **how)
        if case == "cut":  # the pack cut short under a whole index
            os.truncate(index.with_suffix(".pack"), index.with_suffix(".pack").stat().st_size - 1)
        pack = read_index(index)
        assert problem in (structure_problem(pack) or ""), case
        with pytest.raises(DamagedPack, match=problem):
            next(pack.objects())
        packs = PackSet(index.parent)
        assert [packs.read(digest) in (None, blob) for digest, blob in objects] == [True] * 5, case
        if case in ("unsorted", "huge", "cut"):  # (a repeat, or a size one past the end, still reads right)
            assert None in [packs.read(digest) for digest, _ in objects], case  # some object is lost
        # What `verify --repair` copies out of such a pack before it moves it aside: only objects that hash.
        salvaged = list(_intact_objects(pack))
        assert set(salvaged) <= set(objects) and len(salvaged) == SALVAGED[case], (case, len(salvaged))


SALVAGED = {"unsorted": 5, "repeated": 6, "past": 5, "huge": 4, "cut": 4}


def _verify_with_hand_made_pack(tmp_path, **how) -> tuple[Path, list[str]]:
    from lineage.verify import verify

    store, _ = _packed_store(tmp_path, 6)
    hand_made = _hand_made_pack(store.packs_dir, [(hashlib.sha256(tiny_png(i)).hexdigest(), tiny_png(i))
                                                  for i in range(100, 104)], **how)
    return hand_made, verify(store, workers=1).problems


def test_verify_names_a_pack_whose_index_points_past_its_end(tmp_path):
    hand_made, problems = _verify_with_hand_made_pack(tmp_path, stretch=3)
    assert [line for line in problems if hand_made.stem in line], problems


def test_verify_names_an_index_whose_digests_are_out_of_order(tmp_path):
    ascending = sorted(hashlib.sha256(tiny_png(i)).hexdigest() for i in range(100, 104))
    hand_made, problems = _verify_with_hand_made_pack(
        tmp_path, order=ascending[:1] + [ascending[2], ascending[1]] + ascending[3:])
    assert [line for line in problems if hand_made.stem in line], problems


def test_a_pack_or_index_that_is_a_symlink_is_refused_and_never_followed(tmp_path):
    pack, objects = _good_pack(tmp_path / "packs")
    elsewhere = tmp_path / "elsewhere.pack"
    shutil.copy(pack.pack_path, elsewhere)
    pack.pack_path.unlink()
    pack.pack_path.symlink_to(elsewhere)
    _refused(pack.index_path, "not a plain file")
    assert PackSet(pack.folder).read(objects[0][0]) is None

    pack.pack_path.unlink()
    shutil.copy(elsewhere, pack.pack_path)
    real_index = tmp_path / "elsewhere.idx"
    pack.index_path.rename(real_index)
    pack.index_path.symlink_to(real_index)
    with pytest.raises(OSError):
        read_index(pack.index_path)
    packs = PackSet(pack.folder)
    assert packs.packs == [] and packs.damaged[0][0] == pack.index_path and "unreadable" in packs.damaged[0][1]

    pack.index_path.unlink()
    os.remove(pack.pack_path)
    assert PackSet(pack.folder).damaged == []  # a missing pack...
    real_index.rename(pack.index_path)
    _refused(pack.index_path, "missing")  # ...is named when its index is there


# -- the store's object calls ---------------------------------------------------------------------

def _packed_store(tmp_path, count: int):
    store = Store.open(tmp_path / "store", create=True)
    objects = [(hashlib.sha256(tiny_png(i)).hexdigest(), tiny_png(i)) for i in range(count)]
    writer = store.pack_writer()
    for digest, blob in objects:
        assert store.pack_object(writer, blob, digest) == digest
    assert len(writer.close()) == 1
    return store, objects


@pytest.mark.parametrize("count", [20, 700])  # below and above where presence is checked by listdir
def test_the_store_sees_packed_objects_as_they_are(tmp_path, count):
    store, objects = _packed_store(tmp_path, count)
    loose = store.write_object(b"a loose object")
    absent = [hashlib.sha256(f"absent {i}".encode()).hexdigest() for i in range(count)]
    for view in (store, Store.open(tmp_path / "store")):  # the writing process, and a fresh one
        for digest, blob in objects[:25]:
            assert view.has_object(digest) and not view.object_path(digest).exists()
            assert view.object_size(digest) == len(blob)
            assert view.read_object(digest) == blob
            with view.open_object(digest) as handle:
                assert handle.read() == blob
        assert view.has_object(loose) and view.read_object(loose) == b"a loose object"
        assert not view.has_object(absent[0])
        with pytest.raises(FileNotFoundError):
            view.object_size(absent[0])
        with pytest.raises(UserError, match="missing from the store"):
            view.read_object(absent[0])
        everything = [d for d, _ in objects] + [loose] + absent
        random.Random(1).shuffle(everything)
        assert sorted(view.missing_objects(everything)) == sorted(absent)
        mask = view.objects_present(np.frombuffer(b"".join(bytes.fromhex(d) for d in everything),
                                                  dtype=np.uint8).reshape(-1, 32))
        assert [d for d, here in zip(everything, mask.tolist()) if not here] == [d for d in everything if d in
                                                                                  set(absent)]
    store.pack_object(store.pack_writer(), objects[0][1], objects[0][0])  # here already: no second copy
    assert len(store.packs.packs) == 1


def test_a_packed_object_with_a_flipped_byte_is_one_line_naming_it(tmp_path):
    store, objects = _packed_store(tmp_path, 10)
    digest, blob = objects[4]
    [(pack, offset, size)] = store.packs.locate(digest)
    _flip(pack.pack_path, offset + size // 2)
    fresh = Store.open(tmp_path / "store")
    for view in (store, fresh):
        with pytest.raises(UserError) as caught:
            view.read_object(digest)
        line = str(caught.value)
        assert "\n" not in line and f"object {digest[:12]} is corrupt in its pack" in line and "verify" in line
        with pytest.raises(UserError, match="corrupt in its pack"):
            view.open_object(digest)
        assert view.has_object(digest) and view.object_size(digest) == len(blob)  # present, not re-hashed
        assert view.read_object(objects[5][0]) == objects[5][1]  # its neighbours are intact


def test_ingest_force_rewrites_a_packed_image_whose_bytes_were_flipped(tmp_path):
    root = make_class_folders(tmp_path / "src", {"Aves": 4, "Fungi": 4})
    store = Store.open(tmp_path / "store", create=True)
    made = runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None)
    image = root / "Fungi" / "img_002.png"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    [(damaged, offset, size)] = store.packs.locate(digest)
    _flip(damaged.pack_path, offset + size - 1)
    store.forget_listings()
    with pytest.raises(UserError, match="corrupt in its pack"):
        store.read_object(digest)
    assert runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None).reused  # size is right
    forced = runner.execute(store, ingest, ingest.Params(source=str(root)), force=True, log=lambda m: None)
    assert forced.outputs[0].digest == made.outputs[0].digest
    store.forget_listings()
    assert store.read_object(digest) == image.read_bytes()
    holders = [pack.name for pack, _, _ in store.packs.locate(digest)]
    assert len(holders) == 2 and damaged.name in holders  # a new pack; the damaged one is never edited
    [new] = [pack for pack in store.packs.packs if pack.name != damaged.name]
    assert [raw.hex() for raw, _ in new.objects()] == [digest]  # only what was damaged is written again


# -- real ingests ---------------------------------------------------------------------------------

# pipeline.py with packs closed past `limit` bytes (the real default is 256 MiB, larger than this folder), so an
# ingest commits many packs and a kill lands among them.
SMALL_PACKS = """
import sys
sys.path.insert(0, {project!r})
from lineage.packs import PackWriter
init = PackWriter.__init__
def small_packs(self, *args, **kwargs):
    init(self, *args, **{{**kwargs, "limit_bytes": {limit}}})
PackWriter.__init__ = small_packs
import pipeline
sys.exit(pipeline.main(sys.argv[1:]))
"""

def _tiny_pngs(root: Path, count: int, start: int = 0) -> Path:
    for i in range(start, start + count):
        folder = root / ("Aves", "Fungi", "Insecta")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(tiny_png(i))
    return root


def _pack_names(store: Path) -> tuple[set, set]:
    folder = store / "objects" / "packs"
    names = os.listdir(folder) if folder.is_dir() else []
    return {n[:-5] for n in names if n.endswith(".pack")}, {n[:-4] for n in names if n.endswith(".idx")}


def _versions(store: Path) -> list[dict]:
    listed = run_cli("ls", "raw-data", "--json", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _verify_clean(store: Path) -> str:
    checked = run_cli("verify", "--store", str(store))
    assert checked.returncode == 0 and "0 problem(s)" in checked.stdout, checked.stdout + checked.stderr
    return checked.stdout


def test_a_real_ingest_killed_while_it_writes_packs_leaves_no_half_version(tmp_path):
    root = _tiny_pngs(tmp_path / "photos", 3000)
    command = [sys.executable, "-c", SMALL_PACKS.format(project=str(PROJECT), limit=16 << 10), "ingest", str(root),
               "--set", "ingest.workers=1", "-q"]
    rng = random.Random(5)
    landed = 0
    for attempt in range(3):
        store = tmp_path / f"store{attempt}"
        process = subprocess.Popen([*command, "--store", str(store)], cwd=PROJECT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started, placed = time.monotonic(), rng.randint(1, 12)  # of the ~22 packs this folder makes
        while process.poll() is None and len(_pack_names(store)[1]) < placed and time.monotonic() - started < 120:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))  # somewhere in the writing of the next pack
        process.kill()
        _, stderr = process.communicate(timeout=60)
        packs, indexes = _pack_names(store)
        assert indexes <= packs, indexes - packs  # never an index without its pack
        if process.returncode == 0:  # it finished first: one whole version
            assert [v["count"] for v in _versions(store)] == [3000]
        else:
            assert process.returncode == -signal.SIGKILL, stderr
            assert _versions(store) == []
            landed += bool(indexes)
        _verify_clean(store)
        again = run_cli("ingest", str(root), "--store", str(store), "-q")
        assert again.returncode == 0, again.stderr
        assert [v["count"] for v in _versions(store)] == [3000]
        _verify_clean(store)
        reopened = Store.open(store)
        for i in (0, 1499, 2999):
            assert reopened.read_object(hashlib.sha256(tiny_png(i)).hexdigest()) == tiny_png(i)
    assert landed, "no kill landed while the ingest was writing packs"


def test_reingest_after_gc_removed_a_dead_pack_reads_those_files_again(tmp_path):
    root = _tiny_pngs(tmp_path / "photos", 30)
    store = tmp_path / "store"
    first = run_cli("ingest", str(root), "--store", str(store), "-q")
    assert first.returncode == 0, first.stderr
    live_packs = _pack_names(store)[1]
    _tiny_pngs(root, 9, start=30)
    # Killed once its stat cache names the new images, before its version: their pack is dead.
    run_cli_killed_after_rename("/cache/stat/", "ingest", str(root), "--store", str(store), "-q")
    [dead] = _pack_names(store)[1] - live_packs
    assert len(_versions(store)) == 1
    swept = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert _pack_names(store) == (live_packs, live_packs), swept.stdout  # the dead pack is gone, the live kept

    again = run_cli("ingest", str(root), "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert "39 files, 9 read, 30 unchanged" in again.stdout, again.stdout
    assert [v["count"] for v in _versions(store)] == [30, 39]
    _verify_clean(store)
    reopened = Store.open(store)
    for i in range(39):
        assert reopened.read_object(hashlib.sha256(tiny_png(i)).hexdigest()) == tiny_png(i)
