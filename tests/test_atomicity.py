"""A run killed at any point leaves the store as it was or complete; concurrent commits are safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT, make_class_folders, run_cli

# Runs pipeline.py in-process after wrapping os.replace (every commit step is a rename) so that the
# process SIGKILLs itself just before, or just after, the Nth rename. N=0 lists the renames' targets.
KILLER = """
import json, os, signal, sys
sys.path.insert(0, {project!r})
target, when = int(sys.argv[1]), sys.argv[2]
count = 0
targets = []
real_replace = os.replace
def replace(src, dst):  # counts renames that succeed (a first try may fail and be retried)
    global count
    if count + 1 == target and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    count += 1
    targets.append(os.fspath(dst))
    if count == target and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
import pipeline
code = pipeline.main(sys.argv[3:])
if target == 0:
    print("RENAMES", json.dumps(targets))
sys.exit(code)
"""


def _killed_run(n: int, when: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER.format(project=str(PROJECT)), str(n), when, *args],
                          capture_output=True, text=True, cwd=PROJECT, timeout=120)


def _assert_clean(store) -> dict:
    check = run_cli("verify", "--store", str(store))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 problem(s)" in check.stdout
    listing = run_cli("ls", "--json", "--store", str(store))
    assert listing.returncode == 0, listing.stderr
    return {row["ref"]: row for row in json.loads(listing.stdout)}


def _packs(store) -> tuple[set, set]:
    folder = store / "objects" / "packs"
    names = os.listdir(folder) if folder.is_dir() else []
    return {n[:-5] for n in names if n.endswith(".pack")}, {n[:-4] for n in names if n.endswith(".idx")}


def test_sigkill_at_every_commit_step_leaves_no_half_version(tmp_path):
    source = make_class_folders(tmp_path / "src", {"Aves": 4, "Fungi": 4})
    counting = _killed_run(0, "before", "ingest", str(source), "--store", str(tmp_path / "count"), "-q")
    targets = json.loads(counting.stdout.split("RENAMES")[1])
    renames = len(targets)
    # The images go into one pack: the pack is renamed into place, then its index, both before the manifest.
    [pack_at] = [n for n, target in enumerate(targets, 1) if target.endswith(".pack")]
    manifest_at = next(n for n, target in enumerate(targets, 1) if "/manifests/" in target)
    assert targets[pack_at] == targets[pack_at - 1][:-len(".pack")] + ".idx" and pack_at + 1 < manifest_at
    assert renames >= 2 + 4  # pack and index, stat cache, manifest, run record, graph
    points = sorted({pack_at, pack_at + 1, renames - 3, renames - 2, renames - 1, renames})
    for n in points:
        for when in ("before", "after"):
            store = tmp_path / f"store-{n}-{when}"
            killed = _killed_run(n, when, "ingest", str(source), "--store", str(store), "-q")
            assert killed.returncode == -9, killed.stderr
            packs, indexes = _packs(store)
            assert indexes <= packs  # never an index without its pack
            if (n, when) == (pack_at, "after"):  # between the two renames: a pack without an index, garbage
                assert len(packs) == 1 and not indexes
            versions = _assert_clean(store)
            assert set(versions) <= {"raw-data:v1"}
            if versions:  # committed before the kill: it must be whole
                assert versions["raw-data:v1"]["count"] == 8
            again = run_cli("ingest", str(source), "--store", str(store))
            assert again.returncode == 0, again.stderr
            assert set(_assert_clean(store)) == {"raw-data:v1"}
            packs, indexes = _packs(store)
            assert indexes and indexes <= packs


def test_concurrent_commits_never_corrupt_the_graph(tmp_path):
    source = make_class_folders(tmp_path / "src", {"Aves": 6, "Fungi": 6})
    store = tmp_path / "store"
    assert run_cli("ingest", str(source), "--store", str(store)).returncode == 0
    env_args = ["--store", str(store), "--set", "split.per_class={train: 3, val: 1}"]
    processes = [subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "split", *env_args,
                                   "--set", f"split.seed={seed}"], cwd=PROJECT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in range(6)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    versions = _assert_clean(store)
    assert {ref for ref in versions if ref.startswith("split")} == {f"split:v{i}" for i in range(1, 7)}
    graph = json.loads((store / "lineage.json").read_text())
    assert graph["runs_seen"] == 7
