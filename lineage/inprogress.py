"""Runs in progress, and the one sweep that must not overlap them.

A run stages objects long before its run record makes them live: ingest hard-links files that
are years old, and dedup reuses objects that were already there, so no timestamp can tell gc
that an object is wanted. Instead the two exclude each other through `runs.lock`:

- a run holds it SHARED from before it stages (or decides an object is already present) until
  its run record is committed or it has failed. While it does, `inprogress/<run-id>.json`
  (stage, pid, host, started) says who it is, and the run holds that file's lock too;
- gc holds it EXCLUSIVE for its whole sweep: working out what is live, and deleting the rest.

flock is released by the kernel when a process dies, so a run killed with SIGKILL stops
blocking gc at once; its record, no longer locked by anyone, is stale and gc removes it.
flock needs a local filesystem (or one that supports it, as NFSv4 does).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lineage.errors import UserError
from lineage.store import Store

RUNS_LOCK = "runs.lock"
RECORDS = "inprogress"


@dataclass
class RunInProgress:
    """One in-progress record: a run that holds (or, when stale, held) its place in the store."""

    path: Path
    run: str
    stage: str
    pid: int | None
    host: str
    started: str
    alive: bool

    def describe(self) -> str:
        where = f" on {self.host}" if self.host and self.host != platform.node() else ""
        return f"{self.stage} (pid {self.pid}{where}, started {self.started})"


def records_dir(store: Store) -> Path:
    return store.root / RECORDS


@contextlib.contextmanager
def run_in_progress(store: Store, run_id: str, stage: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the store for one run: gc cannot sweep until the run has committed or failed."""
    lock_fd = _open_lock(store)
    try:
        if not _try_flock(lock_fd, fcntl.LOCK_SH):
            log(f"{stage}: waiting for `pipeline.py gc` to finish its sweep of the store")
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
        folder = records_dir(store)
        _refuse_symlink(folder)
        folder.mkdir(exist_ok=True)
        path = folder / f"{run_id}.json"
        record_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(record_fd, fcntl.LOCK_EX)  # gc tells a live run from a dead one by this lock
            os.write(record_fd, json.dumps({"run": run_id, "stage": stage, "pid": os.getpid(),
                                            "host": platform.node(), "started": _now()}).encode())
            store.forget_listings()  # objects seen before the hold may have been swept since
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(record_fd)
    finally:
        os.close(lock_fd)


@contextlib.contextmanager
def sweep_hold(store: Store, wait: bool, required: bool,
               log: Callable[[str], None] = print) -> Iterator[list[RunInProgress]]:
    """Hold the store exclusively for a gc sweep; yields the runs still in progress (none once held).

    With `required` (a sweep that deletes) and runs in progress, fail at once naming them, or,
    with `wait`, wait for them. A sweep that only lists goes ahead without the hold and says so."""
    lock_fd = _open_lock(store)
    try:
        if _try_flock(lock_fd, fcntl.LOCK_EX):
            yield []
            return
        running = [r for r in in_progress_records(store) if r.alive]
        if not wait and not required:
            yield running
            return
        if not wait:
            listed = "; ".join(r.describe() for r in running) or "one that is just starting"
            raise UserError(f"{len(running) or 1} run(s) in progress: {listed}: gc would delete what they are "
                            "staging; wait for them to finish, or pass --wait to sweep as soon as they have")
        log(f"gc: waiting for {len(running) or 1} run(s) in progress to finish: "
            + ("; ".join(r.describe() for r in running) or "one that is just starting"))
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield []
    finally:
        os.close(lock_fd)


def in_progress_records(store: Store) -> list[RunInProgress]:
    """Every record in inprogress/, each marked alive while its run still holds its lock."""
    folder = records_dir(store)
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(".json") or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # its run just finished
            continue
        try:
            alive = not _try_flock(fd, fcntl.LOCK_SH)
            data = _parse(os.read(fd, 1 << 16))
        finally:
            os.close(fd)
        found.append(RunInProgress(path, str(data.get("run", path.stem)), str(data.get("stage", "a stage")),
                                   data.get("pid") if isinstance(data.get("pid"), int) else None,
                                   str(data.get("host", "")), str(data.get("started", "at an unknown time")), alive))
    return found


def _parse(data: bytes) -> dict:
    """A record cut short by a kill (or damaged) still names its file; its fields are best effort."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _open_lock(store: Store) -> int:
    path = store.root / RUNS_LOCK
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # flock needs no write access
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink, not part of the store: remove it by hand") from None
        raise UserError(f"cannot open {path}: {error.strerror}: the store must be writable "
                        "(check its permissions and free space)") from None


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise UserError(f"{path} is a symlink, not part of the store: remove it by hand")


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
