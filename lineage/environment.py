"""What the machine did to a run, in one line: a read-only or full disk, a folder where a file
should be (an interrupt is lineage/interrupts.py). The CLI prints these instead of a traceback.

Only errors that come from the environment are described here; an OSError that says nothing
about the disk (a bad file descriptor, a wrong argument) is a bug and keeps its traceback.
Every message says what happened to the store, truthfully: the commit point is the run record
(objects → manifests → run record → lineage.json), so a run stopped before its record commits
nothing, and one stopped after it is committed, with lineage.json rebuilt on the next open.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lineage.interrupts import committed_so_far

READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WRONG_KIND = {errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
DEVICE = {errno.EIO}


def describe_os_error(error: OSError, stores: list[Path]) -> str | None:
    """One line for an environmental OSError, or None when it is not one (a bug: keep the traceback)."""
    code = error.errno
    if code not in READ_ONLY | FULL | WRONG_KIND | DEVICE:
        return None
    where = _paths(error)
    store = _store_of(where, stores)
    thing = where[0] if where else (f"into the store {store}" if store else "a file")
    reason = error.strerror or os.strerror(code)
    if code in FULL:
        return f"disk full while writing {thing}: {_store_state(store)}; free some space and run again"
    if code in READ_ONLY:
        if store is not None:
            for_whom = "" if code == errno.EROFS else " for this user"
            on = f": {where[0]}" if where else ""
            return (f"the store {store} is read-only{for_whom} ({reason}{on}); "
                    f"{_store_state(store)}; "
                    "remount it read-write, fix its permissions, or pass --store with a writable folder")
        return f"cannot access {thing} ({reason}): fix its permissions, or choose a writable place"
    if code == errno.EISDIR:
        return (f"{thing} is a folder where a file is expected: move it aside (or remove it if it is empty) "
                "and run again")
    if code == errno.ENOTDIR:
        return f"a part of {thing} is a file where a folder is expected: move that file aside and run again"
    if code == errno.ELOOP:
        return f"{thing} is a symlink loop: remove the link and run again"
    if code == errno.ENAMETOOLONG:
        return f"the path {thing[:120]}… is too long for the filesystem: use a shorter folder or name"
    return f"input/output error on {thing}: the disk may be failing; check it, then run `pipeline.py verify`"


def _store_state(store: Path | None) -> str:
    so_far = committed_so_far()  # a run whose record made it, or earlier stages of `pipeline.py run`
    if store is None:
        return so_far or "nothing in the store was changed"
    staging = _count(store / "tmp")
    state = f"the store is intact ({staging} staging file(s) left in tmp/ for `pipeline.py gc`)"
    if so_far:
        return f"{so_far}; nothing after that was; {state}"
    return (f"nothing was committed; the store is intact (committed versions unchanged, {staging} staging "
            f"file(s) left in tmp/ for `pipeline.py gc`)")


def _paths(error: OSError) -> list[str]:
    return [str(p) for p in (error.filename, error.filename2) if p is not None]


def _store_of(paths: list[str], stores: list[Path]) -> Path | None:
    """The store a failing path belongs to; without a path (a write() that hit a full disk names none),
    the one store this command opened."""
    for store in stores:
        root = os.path.abspath(store)
        if any(os.path.abspath(p) == root or os.path.abspath(p).startswith(root + os.sep) for p in paths):
            return Path(store)
    if not paths and len(stores) == 1:
        return Path(stores[0])
    return None


def _count(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except OSError:
        return 0
