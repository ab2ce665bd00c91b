"""verify re-hashes in worker processes and keeps digest sets packed: same findings, real processes, no strays."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT
from lineage.digestset import DigestSet, pack_strings
from lineage.rehash import Rehash, check_folder, worker_command
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


def _store_with_damage(tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """Objects spread over many folders (garbage: no version names them), then one of each kind of damage."""
    store = Store.open(tmp_path / "store", create=True)
    digests = [store.write_object(b"object %d" % i) for i in range(600)]
    edited, linked = digests[10], digests[20]
    Path(store.object_path(edited)).write_bytes(b"edited")
    Path(store.object_path(linked)).unlink()
    Path(store.object_path(linked)).symlink_to(tmp_path)
    stray = store.objects_dir / digests[30][:2] / "not-a-digest"
    stray.write_bytes(b"stray")
    return store, {"edited": edited, "linked": linked, "stray": str(stray)}


def _findings(report) -> tuple:
    return (sorted(report.problems), sorted((d.kind, str(d.path)) for d in report.damaged), report.checked_objects,
            report.garbage_objects)


def test_workers_find_what_one_process_finds(tmp_path):
    store, damage = _store_with_damage(tmp_path)
    alone, shared = verify(store, workers=1), verify(store, workers=3)
    assert _findings(alone) == _findings(shared)
    assert shared.checked_objects == 600 and shared.garbage_objects == 600
    problems = "\n".join(shared.problems)
    assert f"object {damage['edited'][:12]} is corrupt (its bytes hash to" in problems
    assert f"object {damage['linked'][:12]} is corrupt (a symlink" in problems
    assert f"{damage['stray']} is not an object" in problems
    assert len(shared.problems) == 3


def test_a_worker_killed_mid_way_loses_no_folder(tmp_path):
    store, _ = _store_with_damage(tmp_path)
    folders = sorted((p.name, str(p)) for p in store.objects_dir.iterdir())
    expected = [check_folder(prefix, path) for prefix, path in folders]
    with Rehash(folders, 2) as rehash:
        for process in rehash._processes:  # real SIGKILLs: what no worker finished is hashed in this process
            os.kill(process.pid, signal.SIGKILL)
        results = rehash.results()
    assert [r["prefix"] for r in results] == [prefix for prefix, _ in folders]
    assert [(r["count"], r["damaged"], r["strays"]) for r in results] == \
        [(e["count"], e["damaged"], e["strays"]) for e in expected]
    assert sum(len(r["names"]) for r in results) == sum(e["count"] for e in expected)


def test_a_worker_imports_no_heavy_module(tmp_path):
    folder = tmp_path / "ab"
    folder.mkdir()
    result = subprocess.run(worker_command("-X", "importtime"), input=f'["ab", "{folder}"]\n', capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith('{"count": 0'), result.stderr
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
