"""verify re-hashes in worker processes and keeps digest sets packed: same findings, real processes, no strays.
Loose objects go a folder at a time, packed ones a run of a pack at a time (lineage/rehash.py pack_jobs)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT
from lineage import rehash as rehash_module
from lineage.digestset import DigestSet, pack_strings
from lineage.packs import write_pack
from lineage.rehash import Rehash, check_folder, pack_jobs, run_job, worker_command
from lineage.store import Store
from lineage.verify import verify


def _digest(index: int) -> str:
    return hashlib.sha256(b"%d" % index).hexdigest()


def test_a_digest_set_answers_as_a_python_set_would_even_when_members_share_their_sort_key():
    members = [_digest(i) for i in range(2000)]
    # Hostile names: digests that share their first 8 bytes (the sort key) with a member and with each other.
    twins = [members[7][:16] + _digest(-i)[16:] for i in range(1, 6)]
    queries = members[::3] + [_digest(i) for i in range(2000, 2600)] + twins + [members[7][:16] + "0" * 48]
    kept = DigestSet([pack_strings(members[:1000]), pack_strings(members[1000:] + twins[:3])])
    expected = set(members) | set(twins[:3])
    assert kept.contains(pack_strings(queries)).tolist() == [q in expected for q in queries]
    assert twins[2] in kept and twins[4] not in kept and "not a digest" not in kept
    assert len(DigestSet()) == 0 and not DigestSet().contains(pack_strings(members[:5])).any()
    # Digests already ascending (a pack's index: verify's view of each pack) are the same set, held as they are.
    index = pack_strings(sorted(expected))
    viewed = DigestSet.ascending(index)
    assert viewed.contains(pack_strings(queries)).tolist() == [q in expected for q in queries]
    assert np.shares_memory(viewed.members, index) and twins[2] in viewed and twins[4] not in viewed


def _packed_object(index: int) -> tuple[str, bytes]:
    data = b"packed %d " % index + bytes(index % 200)  # sizes vary, so offsets do not follow a pattern
    return hashlib.sha256(data).hexdigest(), data


def _store_with_damage(tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """Objects spread over many folders and two packs (garbage: no version names them), then one of each kind
    of damage."""
    store = Store.open(tmp_path / "store", create=True)
    digests = [store.write_object(b"object %d" % i) for i in range(600)]
    edited, linked = digests[10], digests[20]
    Path(store.object_path(edited)).write_bytes(b"edited")
    Path(store.object_path(linked)).unlink()
    Path(store.object_path(linked)).symlink_to(tmp_path)
    stray = store.objects_dir / digests[30][:2] / "not-a-digest"
    stray.write_bytes(b"stray")
    store.tmp_dir.mkdir(exist_ok=True)
    packs = [write_pack(store.packs_dir, store.tmp_dir, (_packed_object(i) for i in range(start, start + 150)))[0]
             for start in (0, 150)]
    flipped = packs[1].digest(77).hex()  # a byte flipped inside one packed object, in the second pack
    offset, size = packs[1].location(77)
    with open(packs[1].pack_path, "r+b") as handle:
        handle.seek(offset + size - 1)
        last = handle.read(1)
        handle.seek(offset + size - 1)
        handle.write(bytes([last[0] ^ 1]))
    return store, {"edited": edited, "linked": linked, "stray": str(stray), "flipped": flipped,
                   "pack": str(packs[1].pack_path)}


def _findings(report) -> tuple:
    return (sorted(report.problems), sorted((d.kind, str(d.path)) for d in report.damaged), report.checked_objects,
            report.garbage_objects)


def test_workers_find_what_one_process_finds(tmp_path, monkeypatch):
    store, damage = _store_with_damage(tmp_path)
    monkeypatch.setattr(rehash_module, "PACK_JOB_OBJECTS", 16)  # each pack in several jobs, over the workers
    alone, shared = verify(store, workers=1), verify(store, workers=3)
    assert _findings(alone) == _findings(shared)
    assert shared.checked_objects == 900 and shared.garbage_objects == 900
    problems = "\n".join(shared.problems)
    assert f"object {damage['edited'][:12]} is corrupt (its bytes hash to" in problems
    assert f"object {damage['linked'][:12]} is corrupt (a symlink" in problems
    assert f"{damage['stray']} is not an object" in problems
    assert f"object {damage['flipped'][:12]} in pack {damage['pack']} is corrupt (its bytes hash to" in problems
    assert len(shared.problems) == 4
    assert [d.kind for d in shared.damaged].count("packs") == 1


def test_a_pack_is_hashed_in_jobs_that_cover_each_object_once(tmp_path, monkeypatch):
    store, damage = _store_with_damage(tmp_path)
    monkeypatch.setattr(rehash_module, "PACK_JOB_OBJECTS", 16)
    pack = next(p for p in store.packs.packs if str(p.pack_path) == damage["pack"])
    jobs = pack_jobs(pack)
    assert len(jobs) == 10  # 150 objects, 16 a job
    results = [run_job(list(job)) for job in jobs]
    assert sum(r["count"] for r in results) == 150
    assert [d[0] for r in results for d in r["damaged"]] == [damage["flipped"]]
    # a large object is hashed as it is read (READ_CHUNK at a time): same findings
    monkeypatch.setattr(rehash_module, "READ_CHUNK", 64)
    rehash_module._index_cache.clear()
    assert [run_job(list(job))["damaged"] for job in jobs] == [r["damaged"] for r in results]


def test_a_pack_cut_short_or_replaced_after_its_index_was_checked_is_reported_not_raised(tmp_path):
    """The index is checked when verify starts; a worker reads the pack later. A pack cut short meanwhile
    names the objects it lost; an index rewritten meanwhile (gc) is said once, with no object blamed."""
    store, damage = _store_with_damage(tmp_path)
    pack = next(p for p in store.packs.packs if str(p.pack_path) == damage["pack"])
    [job] = pack_jobs(pack)
    rehash_module._index_cache.clear()
    last_offset = max(pack.location(i)[0] for i in range(pack.count))
    os.truncate(pack.pack_path, last_offset + 1)
    cut = run_job(list(job))
    assert cut["problem"] is None and cut["count"] == 150
    assert [why for _, _, why in cut["damaged"]].count("cut short: the pack ends inside it") == 1
    index = bytearray(pack.index_path.read_bytes())
    index[20] ^= 1  # a digest's byte: the index keeps its name and length, but no longer hashes to it
    pack.index_path.write_bytes(bytes(index))
    rehash_module._index_cache.clear()
    changed = run_job(list(job))
    assert changed["problem"] == "its index changed while verify ran" and changed["missing"]
    assert changed["damaged"] == [] and changed["count"] == 0


def test_an_object_both_loose_and_packed_is_one_object(tmp_path):
    """Two copies of one object (a loose one and a packed one, or one in each of two packs) are both re-hashed,
    and the object counts once: as garbage here, where no version names it."""
    store = Store.open(tmp_path / "store", create=True)
    digest = store.write_object(b"thrice")
    for other in range(2):
        objects = [(digest, b"thrice"), _packed_object(7), _packed_object(other)]
        write_pack(store.packs_dir, store.tmp_dir, iter(objects))
    report = verify(store, workers=1)
    assert report.problems == [] and report.checked_objects == 7
    assert report.garbage_objects == 4  # "thrice", the object in both packs, and one other object in each pack


def test_a_worker_killed_mid_way_loses_no_folder_and_no_pack_job(tmp_path):
    store, _ = _store_with_damage(tmp_path)
    folders = sorted((p.name, str(p)) for p in store.objects_dir.iterdir())
    expected = [check_folder(prefix, path) for prefix, path in folders]
    packs = store.packs.packs
    expected_packs = [run_job(list(job)) for pack in sorted(packs, key=lambda p: str(p.index_path))
                      for job in pack_jobs(pack)]
    with Rehash(folders, 2, packs) as rehash:
        for process in rehash._processes:  # real SIGKILLs: what no worker finished is hashed in this process
            os.kill(process.pid, signal.SIGKILL)
        results = rehash.results()
    loose, packed = results[:len(folders)], results[len(folders):]
    assert [r["prefix"] for r in loose] == [prefix for prefix, _ in folders]
    assert [(r["count"], r["damaged"], r["strays"]) for r in loose] == \
        [(e["count"], e["damaged"], e["strays"]) for e in expected]
    assert sum(len(r["names"]) for r in loose) == sum(e["count"] for e in expected)
    assert packed == expected_packs and sum(r["count"] for r in packed) == 300


def test_a_worker_imports_no_heavy_module(tmp_path):
    folder = tmp_path / "ab"
    folder.mkdir()
    [pack] = write_pack(tmp_path / "packs", tmp_path, (_packed_object(i) for i in range(40)))
    [job] = pack_jobs(pack)  # a pack job too: the worker reads the index without numpy
    lines = f'["ab", "{folder}"]\n' + json.dumps(list(job)) + "\n"
    result = subprocess.run(worker_command("-X", "importtime"), input=lines, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith('{"count": 0'), result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert answers[1]["count"] == 40 and answers[1]["damaged"] == [] and answers[1]["problem"] is None
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "lineage.store" in imported
    assert not {"numpy", "pyarrow", "pandas", "tensorflow"} & {name.split(".")[0] for name in imported}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_during_the_rehash_ends_in_one_line_and_leaves_no_worker(tmp_path, target):
    """A real SIGINT while workers hash a large (sparse) object: to the whole process group, as a terminal sends
    it, or to verify alone. verify says one line, exits 130, and every worker is gone."""
    store = Store.open(tmp_path / "store", create=True)
    for i in range(40):
        store.write_object(b"object %d" % i)
    big = store.objects_dir / "00" / ("0" * 62)  # 40 GB of zeros on no disk: minutes of hashing
    big.parent.mkdir(exist_ok=True)
    with open(big, "wb") as handle:
        handle.truncate(40 << 30)
    process = subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "verify", "--store", str(store.root)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(PROJECT)})
    deadline = time.monotonic() + 60
    while len(workers := _children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(workers) >= 2, "verify started no workers"
    time.sleep(1)  # past start-up: one worker is deep in the big object
    if target == "group":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["interrupted: nothing was committed; the store is as it was"], err
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived verify"


def test_verify_and_gc_keep_a_million_digests_in_tens_of_megabytes():
    """The packed set is what bounds memory at a million objects: 40 bytes a digest."""
    packed = np.frombuffer(os.urandom(32 * 1_000_000), dtype=np.uint8).reshape(-1, 32)
    kept = DigestSet([packed])
    assert kept.members.nbytes + kept._keys.nbytes == 40_000_000
    assert kept.contains(packed[::1000]).all() and not kept.contains(packed[::1000] ^ 1).any()
