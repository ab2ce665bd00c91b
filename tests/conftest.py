"""Shared fixtures: tiny generated image folders and a CLI runner in a fresh process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent


def write_image(path: Path, seed: int, size=(24, 20), fmt: str | None = None, colour: int | None = None) -> Path:
    """A small random image; `colour` (0, 1, 2) makes one RGB channel dominate, for learnable classes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (size[1], size[0], 3), dtype=np.uint8)
    if colour is not None:
        pixels[..., colour] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_class_folders(root: Path, classes: dict[str, int], seed: int = 0, ext: str = "png") -> Path:
    """root/<class>/<i>.<ext> with `count` distinct images per class."""
    for c, (label, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / label / f"img_{i:03d}.{ext}", seed=seed * 100_000 + c * 1000 + i, colour=c % 3)
    return root


@pytest.fixture
def image_root(tmp_path) -> Path:
    return make_class_folders(tmp_path / "photos", {"Amphibia": 10, "Aves": 10, "Fungi": 10})


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run pipeline.py in a fresh interpreter, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT), **(env or {})}
    return subprocess.run([sys.executable, str(PROJECT / "pipeline.py"), *args], cwd=cwd or PROJECT,
                          capture_output=True, text=True, env=full_env, timeout=600)


# pipeline.py run in-process, SIGKILLed by itself right after os.replace moves a file to a path matching argv[1].
_KILL_AFTER_RENAME = """
import os, re, signal, sys
sys.path.insert(0, {project!r})
pattern = re.compile(sys.argv[1])
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if pattern.search(os.fspath(dst)):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
import pipeline
sys.exit(pipeline.main(sys.argv[2:]))
"""


def run_cli_killed_after_rename(pattern: str, *args: str) -> subprocess.CompletedProcess:
    """run_cli, killed with SIGKILL (a power cut, an OOM kill) the moment a rename lands on a path `pattern`
    (a regular expression) matches; fails the test if the command got past it alive."""
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_RENAME.format(project=str(PROJECT)), pattern, *args],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    return killed


def run_cli_traced(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """run_cli, plus `.imported`: every module the command (or any Python it starts) imported.

    PYTHONPROFILEIMPORTTIME=1 (python -X importtime) makes the interpreter write one "import time:"
    line per module to stderr as it imports it, however it is imported; those lines are taken out
    of `.stderr`, so the rest of it reads as usual. A lazy import that does happen is listed too."""
    result = run_cli(*args, cwd=cwd, env={**(env or {}), "PYTHONPROFILEIMPORTTIME": "1"})
    kept, result.imported = [], set()
    for line in result.stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            result.imported.add(line.rsplit("|", 1)[-1].strip())
        else:
            kept.append(line)
    result.stderr = "".join(kept)
    return result


def tensorflow_imports(result: subprocess.CompletedProcess) -> list[str]:
    """The TensorFlow and Keras modules a run_cli_traced command imported (none, for one that neither trains
    nor predicts)."""
    return sorted(m for m in result.imported if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> dict:
    """configs/smoke.yaml run once end to end (ingest … evaluate) on tiny synthetic photos, for the whole session.
    A test module that adds versions works on its own copy (`copy_smoke`), so modules stay independent."""
    root = tmp_path_factory.mktemp("smoke-pipeline")
    data, store = root / "data", root / "store"
    made = run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "12")
    assert made.returncode == 0, made.stderr
    result = run_cli("run", "--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
                     "--set", f"ingest.source={data}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "store": store, "stdout": result.stdout}


def copy_smoke(smoke_pipeline: dict, root: Path) -> dict:
    """A private copy of the smoke store (the photos are shared, read only): root, data, store, CLI args, stdout."""
    store = root / "store"
    shutil.copytree(smoke_pipeline["store"], store, symlinks=True)
    args = ["--config", str(PROJECT / "configs" / "smoke.yaml"), "--store", str(store),
            "--set", f"ingest.source={smoke_pipeline['data']}"]
    return {"root": root, "data": smoke_pipeline["data"], "store": store, "args": args,
            "stdout": smoke_pipeline["stdout"]}


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
    # the Ctrl-C tests' children would never see theirs. A handler (unlike SIG_IGN) resets to the default
    # at exec, so every child starts with Python's own KeyboardInterrupt, however the suite was launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stored_rows(store, manifest: dict):
    """A manifest's rows (as stored: a dict read from manifests/) in the old inline shape, for checks on
    small versions: a raw-data version's list of row dicts, a split's {split: {class: [digest, …]}}.
    `store` is the store's folder or a Store."""
    import pyarrow.parquet as pq

    if "rows" not in manifest:
        return manifest.get("entries", [])
    root = store if isinstance(store, Path) else Path(store.root)
    digest = manifest["rows"]["object"]
    table = pq.read_table(root / "objects" / "sha256" / digest[:2] / digest[2:])
    if manifest["rows"]["format"] == "images-v1":
        return table.to_pylist()
    splits: dict = {}
    for row in table.to_pylist():
        splits.setdefault(row["split"], {}).setdefault(row["label"], []).append(row["digest"])
    return splits
