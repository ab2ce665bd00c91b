"""`verify`'s re-hash of every object, spread over worker processes.

Hashing a small object is mostly per-file Python work (open, read, hexdigest) under the GIL, so
threads do not use the cores; processes do. Each worker is a fresh, small interpreter (`python -I -S`
importing this module, lineage.store, lineage.records and lineage.packs: no numpy, pyarrow or
TensorFlow), fed one job at a time on its stdin and answering one JSON line per job: how many objects
it checked, the damaged ones and the strays (few), and, for a folder, the names it saw, packed by the
parent into 32 bytes each (lineage/digestset.py). The parent keeps only that.

A job is a two-digit object folder, or a run of a pack's objects in pack order (`pack_jobs`): the
parent, which has numpy, sorts a pack's index by offset once and hands each worker the positions of
up to PACK_JOB_OBJECTS consecutive objects; the worker reads the index itself (checking that it still
hashes to its name, so the positions mean what the parent meant), reads the pack in large chunks and
hashes each object from memory. A million 300-byte packed images are a few dozen jobs of a few
large reads each, not a million opens. The parent takes the present packed digests from the indexes.

Workers end with the parent: a Ctrl-C reaches the whole process group, but workers ignore it and
the parent, unwinding, ends them; a parent killed outright closes their stdin, and they stop
after the folder at hand. A worker that dies mid-way loses nothing: its folder goes back in the
queue, and what no worker finished is hashed in this process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from array import array
from pathlib import Path
from typing import Any

from lineage.packs import INDEX_MAGIC
from lineage.records import is_digest
from lineage.store import read_no_follow, sha256_file

PROJECT = Path(__file__).resolve().parent.parent
WORKER_CODE = f"import sys; sys.path.insert(0, {str(PROJECT)!r}); from lineage.rehash import serve; serve()"
PACK_JOB_OBJECTS = 32768  # objects per pack job: a million packed images make ~30 jobs to spread over the cores
PACK_JOB_BYTES = 32 << 20  # and at most about this many bytes of pack, so large objects spread too
READ_CHUNK = 8 << 20  # a worker reads a pack this much at a time
_HEADER = len(INDEX_MAGIC) + 8  # magic, then the count


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


def pack_jobs(pack) -> list[tuple[str, str, str, int, str]]:
    """A checked lineage.packs.Pack as jobs ("pack", index path, name, first, positions): runs of consecutive
    objects in pack order, their index positions as base64 little-endian u32 (a pack holds < 2**32)."""
    import numpy as np

    _, offsets, sizes = pack.columns()
    order = np.argsort(offsets, kind="stable")
    starts = offsets[order]
    jobs, start = [], 0
    while start < len(order):
        stop = min(start + PACK_JOB_OBJECTS, len(order))
        stop = max(start + 1, min(stop, int(np.searchsorted(starts, starts[start] + PACK_JOB_BYTES, "left"))))
        positions = order[start:stop].astype("<u4").tobytes()
        jobs.append(("pack", str(pack.index_path), pack.name, start, base64.b64encode(positions).decode("ascii")))
        start = stop
    return jobs


_index_cache: dict[str, Any] = {}  # a worker's last index: a pack's jobs usually follow one another


def _checked_index(index_path: str, name: str) -> tuple[bytes, array, array]:
    """The index bytes with its offsets and sizes, read without following a link and checked to hash to
    `name` (the index the parent checked). ValueError if it no longer does; OSError if unreadable."""
    if _index_cache.get("key") == (index_path, name):
        return _index_cache["value"]
    _index_cache.clear()
    index = read_no_follow(index_path)
    if len(index) < _HEADER + 32 or hashlib.sha256(index[:-32]).hexdigest() != name or index[-32:].hex() != name:
        raise ValueError("its index changed while verify ran")
    count = struct.unpack_from("<Q", index, len(INDEX_MAGIC))[0]
    offsets, sizes = array("Q"), array("Q")
    offsets.frombytes(index[_HEADER + 32 * count:_HEADER + 40 * count])
    sizes.frombytes(index[_HEADER + 40 * count:_HEADER + 48 * count])
    if sys.byteorder == "big":
        offsets.byteswap()
        sizes.byteswap()
    _index_cache.update(key=(index_path, name), value=(index, offsets, sizes))
    return index, offsets, sizes


def check_pack(index_path: str, name: str, first: int, positions: str) -> dict[str, Any]:
    """Re-hash the objects at these index positions (base64 u32, in pack order) of one pack. Returns the
    objects checked (`count`), `damaged` [digest, pack path, what is wrong], and `problem`: why the pack
    could not be read at all (None if it could), with `missing` set when its files are gone."""
    order = array("I")
    order.frombytes(base64.b64decode(positions))
    if sys.byteorder == "big":
        order.byteswap()
    pack_path = f"{index_path[:-len('.idx')]}.pack"
    result = {"count": 0, "damaged": [], "strays": [], "names": "", "pack": index_path, "first": first,
              "problem": None, "missing": False}
    try:
        index, offsets, sizes = _checked_index(index_path, name)
        fd = os.open(pack_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        result.update(problem="vanished while verify ran", missing=True)
        return result
    except ValueError as why:
        result.update(problem=str(why), missing=True)
        return result
    except OSError as error:
        result["problem"] = f"is unreadable ({error.strerror})"
        return result
    damaged = result["damaged"]
    try:
        block, block_start = b"", 0
        for position in order:
            offset, size = offsets[position], sizes[position]
            digest = index[_HEADER + 32 * position:_HEADER + 32 * position + 32]
            if size > READ_CHUNK:  # one large object: hashed as it is read, never whole in memory
                actual, length = _hash_range(fd, offset, size)
            else:
                if offset < block_start or offset + size > block_start + len(block):
                    block_start = offset
                    block = memoryview(os.pread(fd, max(READ_CHUNK, size), offset))
                data = block[offset - block_start:offset - block_start + size]
                actual, length = hashlib.sha256(data).digest(), len(data)
            if length < size:
                damaged.append([digest.hex(), pack_path, "cut short: the pack ends inside it"])
            elif actual != digest:
                damaged.append([digest.hex(), pack_path, f"its bytes hash to {actual.hex()[:12]}"])
        result["count"] = len(order)
    except OSError as error:
        result["problem"] = f"is unreadable ({error.strerror})"
    finally:
        os.close(fd)
    return result


def _hash_range(fd: int, offset: int, size: int) -> tuple[bytes, int]:
    digest, done = hashlib.sha256(), 0
    while done < size:
        chunk = os.pread(fd, min(READ_CHUNK, size - done), offset + done)
        if not chunk:
            break
        digest.update(chunk)
        done += len(chunk)
    return digest.digest(), done


def run_job(job: list) -> dict[str, Any]:
    """One job: [prefix, folder path] or ["pack", index path, name, first, positions] (told apart by length:
    a folder in objects/sha256/ may have any name, "pack" too)."""
    return check_folder(*job) if len(job) == 2 else check_pack(*job[1:])


def serve() -> None:
    """A worker: one JSON job per stdin line in, one JSON result per line out, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends its workers; no traceback from each of them
    try:
        for line in sys.stdin.buffer:
            sys.stdout.buffer.write(json.dumps(run_job(json.loads(line))).encode("ascii") + b"\n")
            sys.stdout.buffer.flush()
    except BrokenPipeError:  # the parent is gone: nobody wants the answer
        pass
    os._exit(0)  # no flush at exit into a closed pipe


class Rehash:
    """Re-hash object folders and packs in `workers` processes while the caller does other work:

        with Rehash(folders, workers, packs) as rehash:
            ...                    # the workers hash meanwhile
            results = rehash.results()

    Each folder's result is check_folder's, with `prefix` added and `names` packed to an (n, 32) array; each
    pack job's is check_pack's."""

    def __init__(self, folders: list[tuple[str, str]], workers: int, packs: list = ()):
        jobs = [job for pack in packs for job in pack_jobs(pack)] + [tuple(folder) for folder in folders]
        self._queue = list(reversed(jobs))  # popped from the end: pack jobs (the largest) first, then folders
        self._workers = max(0, min(workers, len(jobs))) if workers > 1 else 0
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
        """Every job's result, once all are done (what no worker finished is hashed here): the folders' in
        name order, then the packs' in index path and pack order."""
        for thread in self._threads:
            thread.join()
        while True:
            with self._lock:
                if not self._queue:
                    break
                job = self._queue.pop()
            self._results.append(_finished(job, run_job(list(job))))
        results, self._results = sorted(self._results, key=lambda r: (r.get("pack", ""), r.get("prefix", ""),
                                                                      r.get("first", 0))), []
        return results

    def _drive(self, process: subprocess.Popen) -> None:
        """Feed one worker a job at a time; a worker that fails hands its job back."""
        job = None
        try:
            while True:
                with self._lock:
                    if self._stopped or not self._queue:
                        return
                    job = self._queue.pop()
                process.stdin.write(json.dumps(list(job)).encode("ascii") + b"\n")
                process.stdin.flush()
                line = process.stdout.readline()
                if not line:
                    break
                self._results.append(_finished(job, json.loads(line)))
                job = None
        except (OSError, ValueError):
            pass
        finally:
            if job is not None:
                with self._lock:
                    self._queue.append(job)
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


def _finished(job: tuple, result: dict[str, Any]) -> dict[str, Any]:
    return _packed(job[0], result) if len(job) == 2 else result


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
