"""Atomic file replacement: write a temporary file, then rename it over the target.

A reader, or a process killed at any moment, sees the old file or the whole new one, never
half of one. Every temp-then-rename writer in the project goes through here: the store (run
records, manifests, lineage.json, caches), the decoded-pixel and feature caches in models/,
and the demo images.

`durable` fsyncs the file before the rename and its folder after it, so the new file survives
a power loss too; caches and demo files that are cheap to make again skip both. The temporary
file sits in `temp_dir` (the store's tmp/, which gc sweeps) or next to the target (same file
system, so the rename is atomic), and is removed on any error, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import BinaryIO, Callable, Iterator

Writer = Callable[[BinaryIO], None]
PathLike = str | os.PathLike


def write_atomic(path: PathLike, data_or_writer: bytes | Writer, *, durable: bool = True,
                 temp_dir: PathLike | None = None) -> None:
    """Replace `path` with `data`, or with what `writer(handle)` writes into an open binary file.

    A writer streams (np.save into the handle, say), so a large array is never held twice in memory.
    """
    staging = _temp_name(path, temp_dir)
    try:
        with open(staging, "wb") as handle:
            if callable(data_or_writer):
                data_or_writer(handle)
            else:
                handle.write(data_or_writer)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        _rename_into_place(staging, path, durable)
    except BaseException:
        _discard(staging)
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike, *, durable: bool = True, temp_dir: PathLike | None = None) -> Iterator[str]:
    """A temporary path to build the file at, for writers that need a name rather than a handle
    (np.lib.format.open_memmap). On a clean exit it is fsynced (if durable) and renamed over `path`;
    on an error it is removed. Close every handle and memory map on it before the block ends."""
    staging = _temp_name(path, temp_dir)
    try:
        yield staging
        if durable:
            fsync_path(staging)
        _rename_into_place(staging, path, durable)
    except BaseException:
        _discard(staging)
        raise


def _temp_name(path: PathLike, temp_dir: PathLike | None) -> str:
    if temp_dir is not None:
        return os.path.join(temp_dir, uuid.uuid4().hex)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return f"{os.fspath(path)}.{uuid.uuid4().hex}.tmp"


def _rename_into_place(staging: str, path: PathLike, durable: bool) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    os.replace(staging, path)
    if durable:
        fsync_path(folder)  # the rename itself survives a power loss only once its folder is synced


def fsync_path(path: str) -> None:
    """fsync a file or a folder by name (Linux allows it on a read-only descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(staging: str) -> None:
    with contextlib.suppress(OSError):  # already renamed, or the disk refuses: the first error is the one to tell
        os.remove(staging)


def read_no_follow(path: str | os.PathLike) -> bytes:
    """A file's bytes, refusing a symlink (ELOOP): the store never makes one, so one is foreign."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)
