"""`verify`'s re-hash of every object, spread over worker processes.

Hashing a small object is mostly per-file Python work (open, read, hexdigest) under the GIL, so
threads do not use the cores; processes do. Each worker is a fresh, small interpreter (`python -I -S`
importing this module, lineage.store and lineage.records: no numpy, pyarrow or TensorFlow), fed
one two-digit object folder at a time on its stdin and answering one JSON line per folder: how
many objects it checked, the damaged ones and the strays (few), and the names it saw, packed by
the parent into 32 bytes each (lineage/digestset.py). The parent keeps only that.

Workers end with the parent: a Ctrl-C reaches the whole process group, but workers ignore it and
the parent, unwinding, ends them; a parent killed outright closes their stdin, and they stop
after the folder at hand. A worker that dies mid-way loses nothing: its folder goes back in the
queue, and what no worker finished is hashed in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lineage.records import is_digest
from lineage.store import sha256_file

PROJECT = Path(__file__).resolve().parent.parent
WORKER_CODE = f"import sys; sys.path.insert(0, {str(PROJECT)!r}); from lineage.rehash import serve; serve()"


def worker_command(*options: str) -> list[str]:
    """A worker's command line: isolated (-I: no PYTHONPATH, user site or current folder on the path) and
    without site-packages (-S): it needs the standard library and lineage.store and lineage.records."""
    return [sys.executable, "-I", "-S", *options, "-c", WORKER_CODE]


def check_folder(prefix: str, path: str) -> dict[str, Any]:
    """Re-hash one objects/sha256/<prefix>/ folder, never following a link. Returns the objects checked
    (`count`), `damaged` [digest, path, what is wrong], `strays` (paths whose names are no digest) and
    `names`: the checked entries' names (digest less its prefix) back to back, in name order."""
    strays, damaged, names = [], [], []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        digest = prefix + entry.name
        if not is_digest(digest):
            strays.append(entry.path)
            continue
        names.append(entry.name)
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            damaged.append([digest, entry.path, "a symlink or folder, not a file: the store never makes one"])
            continue
        try:
            actual = sha256_file(entry.path, follow_symlinks=False)
        except OSError as error:
            damaged.append([digest, entry.path, f"unreadable: {error.strerror}"])
            continue
        if actual != digest:
            damaged.append([digest, entry.path, f"its bytes hash to {actual[:12]}"])
    return {"count": len(names), "damaged": damaged, "strays": strays, "names": "".join(names)}


def serve() -> None:
    """A worker: one JSON [prefix, path] per stdin line in, one JSON result per line out, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends its workers; no traceback from each of them
    try:
        for line in sys.stdin.buffer:
            prefix, path = json.loads(line)
            sys.stdout.buffer.write(json.dumps(check_folder(prefix, path)).encode("ascii") + b"\n")
            sys.stdout.buffer.flush()
    except BrokenPipeError:  # the parent is gone: nobody wants the answer
        pass
    os._exit(0)  # no flush at exit into a closed pipe


class Rehash:
    """Re-hash object folders in `workers` processes while the caller does other work:

        with Rehash(folders, workers) as rehash:
            ...                    # the workers hash meanwhile
            results = rehash.results()

    Each result is check_folder's, with `prefix` added and `names` packed to an (n, 32) array."""

    def __init__(self, folders: list[tuple[str, str]], workers: int):
        self._queue = list(reversed(folders))  # popped from the end: folders go out in name order
        self._workers = max(0, min(workers, len(folders))) if workers > 1 else 0
        self._lock = threading.Lock()
        self._results: list[dict[str, Any]] = []
        self._processes: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def __enter__(self) -> "Rehash":
        for _ in range(self._workers):
            try:
                process = subprocess.Popen(worker_command(), stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
            except OSError:  # no more processes to be had: the rest is hashed here
                break
            self._processes.append(process)
            thread = threading.Thread(target=self._drive, args=(process,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop()

    def results(self) -> list[dict[str, Any]]:
        """Every folder's result, once all are done (what no worker finished is hashed here)."""
        for thread in self._threads:
            thread.join()
        while True:
            with self._lock:
                if not self._queue:
                    break
                prefix, path = self._queue.pop()
            self._results.append(_packed(prefix, check_folder(prefix, path)))
        results, self._results = sorted(self._results, key=lambda r: r["prefix"]), []
        return results

    def _drive(self, process: subprocess.Popen) -> None:
        """Feed one worker a folder at a time; a worker that fails hands its folder back."""
        folder = None
        try:
            while True:
                with self._lock:
                    if self._stopped or not self._queue:
                        return
                    folder = self._queue.pop()
                process.stdin.write(json.dumps(list(folder)).encode("ascii") + b"\n")
                process.stdin.flush()
                line = process.stdout.readline()
                if not line:
                    break
                self._results.append(_packed(folder[0], json.loads(line)))
                folder = None
        except (OSError, ValueError):
            pass
        finally:
            if folder is not None:
                with self._lock:
                    self._queue.append(folder)
            _close(process.stdin)

    def _stop(self) -> None:
        """End every worker and wait for it: none outlives this process's verify."""
        with self._lock:
            self._stopped = True
        for process in self._processes:
            _close(process.stdin)
            if process.poll() is None:
                process.kill()  # a worker only reads: nothing of it needs cleaning up, and a stopped one ends too
        for process in self._processes:
            process.wait()
            _close(process.stdout)


def _packed(prefix: str, result: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from lineage.digestset import pack_hex

    names = result["names"].encode("ascii")
    chars = np.empty((len(names) // 62, 64), dtype=np.uint8)
    chars[:, :2] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    chars[:, 2:] = np.frombuffer(names, dtype=np.uint8).reshape(-1, 62)
    result["names"], _ = pack_hex(chars)  # every name here passed is_digest
    result["prefix"] = prefix
    return result


def _close(stream) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass
