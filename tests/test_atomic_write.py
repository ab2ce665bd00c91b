"""lineage/atomic.py, the one temp-then-rename writer: the target is the old file or the whole new one,
whatever happens to the writing process, and an error or Ctrl-C leaves no temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import PROJECT
from lineage.atomic import atomic_path, write_atomic
from models.data import save_array_atomic

# Starts replacing `target` with 4 MiB through a writer that stops halfway and waits to be signalled.
HALF_WRITTEN = """
import sys, time
sys.path.insert(0, {project!r})
from lineage.atomic import write_atomic
def writer(handle):
    handle.write(b"n" * (2 << 20))
    handle.flush()
    print("halfway", flush=True)
    time.sleep(60)
    handle.write(b"n" * (2 << 20))
temp_dir = sys.argv[2] or None
try:
    write_atomic(sys.argv[1], writer, temp_dir=temp_dir)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _signalled_mid_write(target, temp_dir, signum) -> subprocess.CompletedProcess:
    child = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN.format(project=str(PROJECT)), str(target),
                              str(temp_dir or "")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "halfway\n"
    child.send_signal(signum)
    out, _ = child.communicate(timeout=30)
    return subprocess.CompletedProcess(child.args, child.returncode, out)


def test_bytes_and_writer_replace_the_file(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    write_atomic(target, b"first")
    write_atomic(target, lambda handle: handle.write(b"second"), durable=False)
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file.bin"]


@pytest.mark.parametrize("in_temp_dir", [False, True], ids=["beside", "temp-dir"])
def test_an_error_in_the_writer_keeps_the_old_file_and_no_temp(tmp_path, in_temp_dir):
    target, temp_dir = tmp_path / "file.bin", tmp_path / "tmp"
    temp_dir.mkdir()
    target.write_bytes(b"old")

    def failing(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, failing, temp_dir=temp_dir if in_temp_dir else None)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["file.bin", "tmp"] and os.listdir(temp_dir) == []


@pytest.mark.parametrize("in_temp_dir", [False, True], ids=["beside", "temp-dir"])
def test_sigkill_mid_write_leaves_the_old_file(tmp_path, in_temp_dir):
    target, temp_dir = tmp_path / "file.bin", tmp_path / "tmp"
    temp_dir.mkdir()
    target.write_bytes(b"old")
    killed = _signalled_mid_write(target, temp_dir if in_temp_dir else None, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"  # the half-written temp is left for gc (a killed process cannot clean up)


def test_ctrl_c_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    interrupted = _signalled_mid_write(target, None, signal.SIGINT)
    assert (interrupted.returncode, interrupted.stdout) == (130, "interrupted\n")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    target = tmp_path / "array.npy"
    with atomic_path(target) as staging:  # a writer that needs a name, as the decoded-pixel cache does
        pixels = np.lib.format.open_memmap(staging, "w+", np.int64, (3,))
        pixels[:] = np.arange(3)
        pixels.flush()
        del pixels
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(ValueError):
        with atomic_path(target) as staging:
            open(staging, "wb").write(b"partial")
            raise ValueError("decode failed")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert os.listdir(tmp_path) == ["array.npy"]


def test_saving_an_array_streams_it_rather_than_copying_it(tmp_path):
    array = np.ones((64, 1024, 1024), dtype=np.uint8)  # 64 MiB
    tracemalloc.start()
    try:
        save_array_atomic(str(tmp_path / "features.npy"), array)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"saving a 64 MiB array allocated {peak >> 20} MiB"
    loaded = np.load(tmp_path / "features.npy", mmap_mode="r")
    assert loaded.shape == array.shape and loaded[-1, -1, -1] == 1
    assert os.listdir(tmp_path) == ["features.npy"]
