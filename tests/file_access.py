"""Which files under a folder were opened or read, seen by the Linux kernel (inotify).

A test that claims "reads nothing" must see every read, however it is made: os.open, open(),
Path.read_bytes, mmap, a C extension or a child process. Patching Python functions sees only
the ones patched, so this asks the kernel instead: inotify reports IN_OPEN and IN_ACCESS for
every file in a watched folder, whoever opens it. Folders themselves are opened by a scan
(os.scandir), which is allowed, so events flagged IN_ISDIR or naming the folder itself are ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest

IN_ACCESS, IN_OPEN, IN_ISDIR = 0x001, 0x020, 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name


class FileAccess:
    """Collects the files (relative paths) opened or read under the watched folders."""

    def __init__(self, fd: int, folders: dict[int, Path], root: Path):
        self._fd, self._folders, self._root = fd, folders, root
        self.touched: set[str] = set()

    def collect(self) -> set[str]:
        """Drain the kernel's queue; events are queued during the syscall, so none is still in flight."""
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return self.touched
            offset = 0
            while offset < len(data):
                wd, mask, _, length = EVENT_HEADER.unpack_from(data, offset)
                name = data[offset + EVENT_HEADER.size: offset + EVENT_HEADER.size + length].rstrip(b"\0")
                offset += EVENT_HEADER.size + length
                if name and not mask & IN_ISDIR:
                    folder = self._folders[wd] / os.fsdecode(name)
                    self.touched.add(folder.relative_to(self._root).as_posix())


@contextlib.contextmanager
def watch_file_reads(root: Path) -> Iterator[FileAccess]:
    """Watch every folder under `root` (inotify is not recursive) for files being opened or read."""
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK)
    if fd < 0:
        pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
    try:
        folders = {}
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), IN_OPEN | IN_ACCESS)
            if wd < 0:
                pytest.skip(f"inotify cannot watch {folder}: {os.strerror(ctypes.get_errno())}")
            folders[wd] = folder
        yield FileAccess(fd, folders, root)
    finally:
        os.close(fd)
