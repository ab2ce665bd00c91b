"""Provenance: what a run record says about where and with what a run happened.

Run ids and timestamps, the host, the Python and package versions, and the git commit of the
code (with whether the working tree had uncommitted changes). Gathered only for runs that do
work: a cache hit imports none of it.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECORDED_PACKAGES = ("numpy", "pandas", "pillow", "scikit-learn", "tensorflow-cpu", "tensorflow", "keras",
                     "pyarrow", "matplotlib")


def new_run_id() -> str:
    """Sortable by start time, unique across processes and machines."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def environment() -> dict:
    """The run record's provenance fields."""
    return {"host": platform.node(), "python": platform.python_version(), "packages": package_versions(),
            "git": git_commit(), "argv": sys.argv}


def package_versions() -> dict:
    import importlib.metadata  # 30 ms to import: only real runs need it, not cache hits

    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> dict | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None
