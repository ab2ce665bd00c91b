"""gc never deletes what is live or what a run in progress is staging, and never reaches outside the store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROJECT, make_class_folders, run_cli, stored_rows, write_image
from lineage.store import Store

YEARS_AGO = time.time() - 5 * 365 * 86400

# Loops `pipeline.py gc --yes --grace-minutes 0` in one process until a stop file appears; prints
# how many sweeps completed, how many were refused (runs in progress) and how many items went.
GC_LOOP = """
import contextlib, io, os, sys
sys.path.insert(0, {project!r})
import pipeline
store, stop = sys.argv[1], sys.argv[2]
swept = refused = removed = 0
while not os.path.exists(stop):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = pipeline.main(["gc", "--yes", "--grace-minutes", "0", "--store", store])
    if code == 0:
        swept += 1
        removed += sum(line.startswith("removed ") for line in out.getvalue().splitlines())
    elif "in progress" in err.getvalue():
        refused += 1
    else:
        print("UNEXPECTED", code, out.getvalue(), err.getvalue())
        sys.exit(1)
print("SWEPT", swept, "REFUSED", refused, "REMOVED", removed)
"""

# Runs pipeline.py in-process and, at its Nth rename (objects are renamed into place as they are
# staged), stops itself with SIGSTOP: a run frozen mid-stage, holding its place in the store.
STOPPER = """
import os, signal, sys
sys.path.insert(0, {project!r})
target = int(sys.argv[1])
count = 0
real_replace = os.replace
def replace(src, dst):
    global count
    real_replace(src, dst)
    count += 1
    if count == target:
        os.kill(os.getpid(), signal.SIGSTOP)
os.replace = replace
import pipeline
sys.exit(pipeline.main(sys.argv[2:]))
"""


def _old_photos(root: Path, classes: dict[str, int], seed: int) -> Path:
    """Class folders whose files were last modified years ago, as a photo collection would be."""
    make_class_folders(root, classes, seed=seed)
    for path in root.rglob("*.png"):
        os.utime(path, (YEARS_AGO, YEARS_AGO))
    return root


def _leave_as_garbage(store: Path, folder: Path) -> None:
    """Put a folder's content in the store as unreferenced objects with old mtimes, as a killed
    run leaves them: the next ingest of that folder finds them present and stages nothing."""
    for path in folder.rglob("*.png"):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        target = store / "objects" / "sha256" / digest[:2] / digest[2:]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with open(target, "wb") as handle:  # through the handle: the looping gc may remove it at once
                handle.write(data)
                os.utime(handle.fileno(), (YEARS_AGO, YEARS_AGO))


def _committed_versions_complete(store: Path) -> int:
    """Every version a finished run made has its manifest and all its objects, loose or packed; returns how many."""
    checked, objects = 0, Store.open(store)
    for record_path in (store / "runs").glob("*.json"):
        record = json.loads(record_path.read_bytes())
        if record["status"] != "finished":
            continue
        for output in record["outputs"]:
            manifest = json.loads((store / "manifests" / output["name"] / f"{output['digest']}.json").read_bytes())
            digests = [e["digest"] for e in stored_rows(store, manifest) if isinstance(e, dict)] + \
                      [f["digest"] for f in manifest.get("files", {}).values()] + \
                      ([manifest["rows"]["object"]] if "rows" in manifest else [])
            missing = objects.missing_objects(digests)
            assert not missing, f"{output['name']}@{output['digest'][:12]} lost {len(missing)}/{len(digests)} objects"
            checked += 1
    return checked


def _assert_verify_clean(store: Path) -> None:
    check = run_cli("verify", "--store", str(store))
    assert check.returncode == 0 and "0 problem(s)" in check.stdout, check.stdout + check.stderr


def _pipeline(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT / "pipeline.py"), *args]


def test_gc_looping_beside_hardlinked_and_deduplicated_ingests_loses_nothing(tmp_path):
    store = tmp_path / "store"
    rounds = 16
    folders = [_old_photos(tmp_path / f"photos-{i}", {"Aves": 60, "Fungi": 60}, seed=i + 1) for i in range(rounds)]
    assert run_cli("ingest", str(_old_photos(tmp_path / "first", {"Aves": 2}, seed=99)),
                   "--store", str(store), "-q").returncode == 0
    stop = tmp_path / "stop"
    gc_loop = subprocess.Popen([sys.executable, "-c", GC_LOOP.format(project=str(PROJECT)), str(store), str(stop)],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i, folder in enumerate(folders):
            if i % 2:  # half the rounds find their content already present (dedup), old mtimes and all
                _leave_as_garbage(store, folder)
            ingest = run_cli("ingest", str(folder), "--store", str(store), "--set", "ingest.link=hardlink", "-q")
            assert ingest.returncode == 0, ingest.stderr
    finally:
        stop.touch()
        out, err = gc_loop.communicate(timeout=60)
    assert gc_loop.returncode == 0, out + err
    swept, removed = int(out.split("SWEPT")[1].split()[0]), int(out.split("REMOVED")[1].split()[0])
    assert swept >= rounds // 2 and removed > 0, out  # gc really ran between (and against) the ingests
    _assert_verify_clean(store)
    assert _committed_versions_complete(store) == rounds + 1


def test_a_run_in_progress_stops_gc_until_it_commits(tmp_path):
    store = tmp_path / "store"
    photos = _old_photos(tmp_path / "photos", {"Aves": 8, "Fungi": 8}, seed=5)
    run = subprocess.Popen([sys.executable, "-c", STOPPER.format(project=str(PROJECT)), "6", "ingest", str(photos),
                            "--store", str(store), "--set", "ingest.link=hardlink", "-q"], cwd=PROJECT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_stopped(run.pid)
        refused = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"1 run(s) in progress: ingest (pid {run.pid}" in refused.stderr and "--wait" in refused.stderr
        listed = run_cli("gc", "--grace-minutes", "0", "--store", str(store))
        assert listed.returncode == 0 and "note: 1 run(s) in progress: ingest" in listed.stdout
        waiting = subprocess.Popen(_pipeline("gc", "--yes", "--wait", "--grace-minutes", "0", "--store", str(store)),
                                   cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "gc: waiting for 1 run(s) in progress to finish: ingest" in waiting.stderr.readline()
        time.sleep(0.5)
        assert waiting.poll() is None, "gc --wait swept while a run was staging"
    finally:
        os.kill(run.pid, signal.SIGCONT)
    assert run.wait(timeout=60) == 0, run.stderr.read()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "gc: 0 item(s) removed" in out, out + err
    _assert_verify_clean(store)
    assert _committed_versions_complete(store) == 1
    assert not list((store / "inprogress").iterdir())


def test_a_run_killed_mid_stage_leaves_a_stale_record_that_gc_removes(tmp_path):
    store = tmp_path / "store"
    photos = _old_photos(tmp_path / "photos", {"Aves": 8, "Fungi": 8}, seed=6)
    run = subprocess.Popen([sys.executable, "-c", STOPPER.format(project=str(PROJECT)), "6", "ingest", str(photos),
                            "--store", str(store), "-q"], cwd=PROJECT)
    _wait_until_stopped(run.pid)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=30) == -signal.SIGKILL
    records = list((store / "inprogress").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_bytes())["pid"] == run.pid
    started = time.monotonic()
    swept = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
    assert swept.returncode == 0 and time.monotonic() - started < 20, swept.stderr
    assert f"removed stale in-progress record {records[0]}" in swept.stdout
    assert "removed object" in swept.stdout  # what the killed run had staged is garbage now
    assert not records[0].exists() and not list((store / "objects" / "sha256").rglob("*/*"))
    assert not list((store / "objects" / "packs").iterdir())  # its images, packed, are garbage too
    _assert_verify_clean(store)


def test_gc_never_deletes_outside_the_store_through_a_symlink(tmp_path):
    store = tmp_path / "store"
    assert run_cli("ingest", str(_old_photos(tmp_path / "photos", {"Aves": 3}, seed=7)),
                   "--store", str(store)).returncode == 0
    outside = tmp_path / "outside"
    precious = [outside / "tmp" / "thesis.tex", outside / "objects" / ("ab" * 31), outside / "notes.txt",
                outside / "manifests" / ("cd" * 32 + ".json")]
    for path in precious:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not the store's")
        os.utime(path, (YEARS_AGO, YEARS_AGO))

    (store / "tmp").rmdir()
    (store / "tmp").symlink_to(outside / "tmp")
    for command in (["gc", "--yes", "--grace-minutes", "0"], ["ls"], ["verify"]):
        refused = run_cli(*command, "--store", str(store))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1 and "tmp is a symlink" in refused.stderr and "Traceback" not in \
            refused.stderr
    (store / "tmp").unlink()
    (store / "tmp").mkdir()

    prefixes = {p.name for p in (store / "objects" / "sha256").iterdir()}
    unused = next(f"{n:02x}" for n in range(256) if f"{n:02x}" not in prefixes)
    links = [store / "objects" / "sha256" / unused, store / "tmp" / "scratch", store / "manifests" / "raw-data-old",
             store / "objects" / "sha256" / min(prefixes) / ("0" * 62)]
    for link, target in zip(links, [outside / "objects", precious[0], outside / "manifests", precious[2]]):
        link.symlink_to(target)
    swept = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
    assert swept.returncode == 0, swept.stderr
    for link in links:
        assert f"left alone: {link} is a symlink, not part of the store: remove it by hand" in swept.stdout
        assert link.is_symlink()
    assert all(path.read_text() == "not the store's" for path in precious)
    assert "0 item(s) removed" in swept.stdout


def test_gc_defaults_keep_fresh_garbage_and_grace_zero_removes_it(tmp_path):
    store = tmp_path / "store"
    photos = _old_photos(tmp_path / "photos", {"Aves": 3, "Fungi": 3}, seed=8)
    assert run_cli("ingest", str(photos), "--store", str(store), "--set", "ingest.link=hardlink").returncode == 0
    live = sorted(p for p in (store / "objects" / "sha256").rglob("*") if p.is_file())
    assert len(live) == 7  # six images and the version's rows object

    fresh = b"staged a moment ago by a run that failed"
    fresh_object = _object(store, fresh)
    fresh_object.parent.mkdir(exist_ok=True)
    fresh_object.write_bytes(fresh)
    old_photo = write_image(tmp_path / "old.png", seed=123)
    os.utime(old_photo, (YEARS_AGO, YEARS_AGO))
    linked_object = _object(store, old_photo.read_bytes())  # a hard link keeps the photo's old mtime
    linked_object.parent.mkdir(exist_ok=True)
    os.link(old_photo, linked_object)
    staging = store / "tmp" / "0123abcd"
    staging.write_bytes(b"half-written")
    garbage = [fresh_object, linked_object, staging]

    kept = run_cli("gc", "--yes", "--store", str(store))
    assert kept.returncode == 0 and "gc: 0 item(s) removed" in kept.stdout, kept.stdout + kept.stderr
    assert all(p.exists() for p in garbage + live)

    swept = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
    assert swept.returncode == 0 and "gc: 3 item(s) removed" in swept.stdout, swept.stdout + swept.stderr
    assert not any(p.exists() for p in garbage) and all(p.exists() for p in live)
    assert old_photo.exists()
    _assert_verify_clean(store)


@pytest.mark.parametrize("minutes", ["-1", "nan"])
def test_gc_refuses_a_grace_that_is_not_a_duration(tmp_path, minutes):
    store = tmp_path / "store"
    assert run_cli("ingest", str(_old_photos(tmp_path / "photos", {"Aves": 2}, seed=9)),
                   "--store", str(store)).returncode == 0
    refused = run_cli("gc", "--yes", f"--grace-minutes={minutes}", "--store", str(store))
    assert refused.returncode == 1 and refused.stderr.startswith("error: --grace-minutes is"), refused.stderr


def _object(store: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return store / "objects" / "sha256" / digest[:2] / digest[2:]


def _wait_until_stopped(pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never stopped itself")


def test_gc_removes_nothing_when_a_live_manifest_cannot_be_read(tmp_path):
    store = tmp_path / "store"
    assert run_cli("ingest", str(_old_photos(tmp_path / "photos", {"Aves": 3}, seed=10)),
                   "--store", str(store)).returncode == 0
    objects = sorted(p for p in (store / "objects" / "sha256").rglob("*") if p.is_file())
    manifest = next((store / "manifests" / "raw-data").iterdir())
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated: which objects it names is unknown
    refused = run_cli("gc", "--yes", "--grace-minutes", "0", "--store", str(store))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stdout + refused.stderr
    assert "gc cannot tell which objects raw-data@" in refused.stderr and "nothing was removed" in refused.stderr
    assert all(p.exists() for p in objects)
