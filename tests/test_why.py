"""`why STAGE` names each kind of change since the stage's last run: its code, an input version, nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT, make_class_folders, run_cli

PER_CLASS = "split.per_class={train: 3, val: 2, test: 1}"


def _project_copy(destination: Path) -> Path:
    """pipeline.py and its packages, copied: a stage's CODE is hashed from the project the CLI runs from,
    so editing the copy is a real code change that leaves the working tree alone."""
    destination.mkdir()
    shutil.copy2(PROJECT / "pipeline.py", destination)
    for package in sorted(p.parent for p in PROJECT.glob("*/__init__.py") if p.parent.name != "tests"):
        shutil.copytree(package, destination / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([sys.executable, str(project / "pipeline.py"), *args], cwd=project, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture
def split_store(tmp_path):
    source = make_class_folders(tmp_path / "src", {"Aves": 6, "Fungi": 6})
    args = ["--store", str(tmp_path / "store"), "--set", PER_CLASS]
    assert run_cli("ingest", str(source), *args).returncode == 0
    assert run_cli("split", *args).returncode == 0
    return tmp_path, source, args


def _split_runs(store: Path) -> list[str]:
    return sorted(p.stem for p in (store / "runs").glob("*.json")
                  if json.loads(p.read_bytes())["stage"] == "split")


def test_why_after_a_code_change_names_the_file_and_the_rerun_keeps_the_version(split_store):
    tmp_path, _, args = split_store
    project = _project_copy(tmp_path / "project")
    unchanged = _cli(project, "why", "split", *args)
    assert unchanged.returncode == 0 and unchanged.stdout.startswith("split: up to date (split:v1, run ")

    with open(project / "stages" / "split.py", "a") as source:
        source.write("\n# a comment changes the file's hash, so the code digest\n")
    why = _cli(project, "why", "split", *args)
    assert why.returncode == 0, why.stderr
    lines = why.stdout.splitlines()
    assert lines[0] == "split would run:" and len(lines) == 2
    assert lines[1].startswith("  code changed: ") and "stages/split.py" in lines[1]

    runs_before = _split_runs(tmp_path / "store")
    rerun = _cli(project, "split", "-q", *args)
    # The same content is the same version: a new run, but still split:v1.
    assert rerun.returncode == 0 and rerun.stdout.strip() == "split: wrote split:v1"
    new_runs = sorted(set(_split_runs(tmp_path / "store")) - set(runs_before))
    assert len(new_runs) == 1
    assert _cli(project, "why", "split", *args).stdout.strip() == f"split: up to date (split:v1, run {new_runs[0]})"
    # The original code's run is still there to reuse: from the working tree, split is up to date with it.
    assert run_cli("why", "split", *args).stdout.strip() == f"split: up to date (split:v1, run {runs_before[0]})"


def test_why_after_an_input_change_names_both_versions(split_store):
    tmp_path, source, args = split_store
    assert run_cli("why", "split", *args).stdout.startswith("split: up to date (split:v1")
    make_class_folders(source, {"Aves": 7}, seed=4)  # rewrites Aves with other pixels, adds one image
    why_ingest = run_cli("why", "ingest", *args, "--set", f"ingest.source={source}")
    assert why_ingest.stdout.splitlines()[1:] == [
        "  source folder changed: files added, removed or modified since the last ingest"]
    assert run_cli("ingest", str(source), "-q", *args).stdout.strip() == "ingest: wrote raw-data:v2"
    why = run_cli("why", "split", *args)
    assert why.returncode == 0, why.stderr
    assert why.stdout.splitlines() == ["split would run:", "  input raw-data: raw-data:v1 → raw-data:v2"]
    assert run_cli("split", "-q", *args).stdout.strip() == "split: wrote split:v2"
    assert run_cli("why", "split", *args).stdout.startswith("split: up to date (split:v2")
