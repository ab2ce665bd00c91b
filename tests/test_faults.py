"""Faults from the machine, injected for real: a read-only and a full filesystem (small tmpfs
mounts), a folder where the lock file goes, Ctrl-C and SIGKILL at random points of a real ingest.
Each ends in one line that says what happened to the store, and the store stays intact (`verify`
exits 0, no half version). Mounting needs root in a sandbox that allows it; elsewhere those tests
skip and say why."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROJECT, make_class_folders, run_cli, write_image


SMALL_SPLIT = ("--set", "split.per_class={train: 1, val: 1, test: 1}")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def versions(store: Path, name: str = "raw-data") -> list[dict]:
    listed = run_cli("ls", name, "--json", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def assert_intact(store: Path) -> None:
    checked = run_cli("verify", "--store", str(store))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 problem(s)" in checked.stdout


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A small tmpfs at `folder`, unmounted afterwards whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): "
                    "run as root in a sandbox that allows mounts to test a read-only or full disk")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)


# -- read-only and full disks --------------------------------------------------------------

def test_a_read_only_store_is_one_line_and_reads_still_work(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 3, "Fungi": 3})
    with tmpfs(tmp_path / "disk", "8m") as disk:
        store = disk / "store"
        assert run_cli("ingest", str(root), "--store", str(store)).returncode == 0
        remount(disk, "ro")
        line = one_error_line(run_cli("split", *SMALL_SPLIT, "--store", str(store)))
        assert f"the store {store} is read-only" in line and "Read-only file system" in line, line
        assert "nothing was committed" in line and "remount it read-write" in line, line
        assert [v["ref"] for v in versions(store)] == ["raw-data:v1"]  # reading needs no write
        assert_intact(store)
        remount(disk, "rw")
        assert run_cli("split", *SMALL_SPLIT, "--store", str(store)).returncode == 0


def _noise_images(root: Path, count: int) -> Path:
    """Incompressible images of ~60 KB each, so a few dozen fill a small disk."""
    for i in range(count):
        write_image(root / ("Aves", "Fungi")[i % 2] / f"n{i:03d}.png", seed=1000 + i, size=(150, 140))
    return root


def test_a_full_disk_is_one_line_that_says_the_store_is_intact(tmp_path):
    small = make_class_folders(tmp_path / "small", {"Aves": 2, "Fungi": 2})
    large = _noise_images(tmp_path / "large", 60)  # ~3.7 MB
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = disk / "store"
        assert run_cli("ingest", str(small), "--store", str(store)).returncode == 0
        before = versions(store)
        line = one_error_line(run_cli("ingest", str(large), "--store", str(store)))
        assert line.startswith("error: disk full while writing"), line
        left = len(os.listdir(store / "tmp"))
        assert f"nothing was committed; the store is intact (committed versions unchanged, {left} staging " \
               "file(s) left in tmp/ for `pipeline.py gc`); free some space and run again" in line, line
        assert versions(store) == before
        assert_intact(store)
        remount(disk, "size=16m")
        again = run_cli("ingest", str(large), "--store", str(store))
        assert again.returncode == 0, again.stderr
        assert [v["ref"] for v in versions(store)] == ["raw-data:v1", "raw-data:v2"]
        assert_intact(store)


def test_a_folder_where_the_lock_file_goes_is_one_line_naming_it(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 3, "Fungi": 3})
    store = tmp_path / "store"
    assert run_cli("ingest", str(root), "--store", str(store)).returncode == 0
    (store / "lock").unlink(missing_ok=True)
    (store / "lock").mkdir()
    line = one_error_line(run_cli("split", *SMALL_SPLIT, "--store", str(store)))
    assert f"{store / 'lock'} is a folder where a file is expected: move it aside" in line, line
    (store / "lock").rmdir()
    assert_intact(store)
    assert run_cli("split", *SMALL_SPLIT, "--store", str(store)).returncode == 0


def test_report_out_naming_a_folder_or_a_path_through_a_file_is_one_line(tmp_path):
    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2})
    store = tmp_path / "store"
    assert run_cli("ingest", str(root), "--store", str(store)).returncode == 0
    line = one_error_line(run_cli("report", "predictions:latest", "--out", str(tmp_path), "--store", str(store)))
    assert f"--out {tmp_path} is a folder: name the HTML file to write" in line, line
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    line = one_error_line(run_cli("report", "predictions:latest", "--out", str(blocker / "r.html"),
                                  "--store", str(store)))
    assert f"{blocker} is a file, not a folder" in line, line


def test_environment_errors_other_than_disk_faults_keep_their_traceback():
    """A bug that happens to be an OSError (EBADF) is not dressed up as a disk problem."""
    import errno

    from lineage.environment import describe_os_error

    assert describe_os_error(OSError(errno.EBADF, "Bad file descriptor"), []) is None
    assert describe_os_error(OSError(errno.EINVAL, "Invalid argument", "/x"), []) is None
    assert "disk full" in describe_os_error(OSError(errno.ENOSPC, "No space left on device"), [])


# -- Ctrl-C and SIGKILL during a real ingest ------------------------------------------------

@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """Enough files that an ingest takes a while on this machine: 4,000 distinct tiny PNGs."""
    root = tmp_path_factory.mktemp("many") / "photos"
    for i in range(4000):
        write_image(root / ("Aves", "Fungi", "Plantae", "Insecta")[i % 4] / f"{i:05d}.png", seed=i, size=(8, 8))
    return root


def _start_ingest(root: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "ingest", str(root), "--store",
                             str(store), "--set", "ingest.workers=1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _ingest_seconds(root: Path, scratch: Path) -> float:
    started = time.perf_counter()
    process = _start_ingest(root, scratch)
    process.communicate(timeout=300)
    assert process.returncode == 0
    shutil.rmtree(scratch)
    return time.perf_counter() - started


def test_ctrl_c_while_python_starts_is_never_a_traceback(tmp_path):
    """Ctrl-C at any moment of start-up, including while the stages are being imported: the process either dies
    of the signal before Python can handle it, says the one line and exits 130, or finishes; never a traceback."""
    from lineage.store import Store

    store = Store.open(tmp_path / "store", create=True).root
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    outcomes = set()
    for step in range(24):
        process = subprocess.Popen([sys.executable, str(PROJECT / "pipeline.py"), "ls", "--store", str(store)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(step * 0.015)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, (step, stderr)
        assert process.returncode in (0, 130, -signal.SIGINT), (step, process.returncode, stderr)
        if process.returncode == 130:
            assert stderr.strip() == "interrupted: nothing was committed; the store is as it was", stderr
        outcomes.add(process.returncode)
    assert 130 in outcomes, outcomes  # some signal landed while Python ran the command's code


def test_ctrl_c_says_truthfully_whether_the_version_was_committed(many_images, tmp_path):
    duration = _ingest_seconds(many_images, tmp_path / "scratch")
    rng = random.Random(7)
    outcomes = set()
    for attempt in range(6):
        store = tmp_path / f"store{attempt}"
        process = _start_ingest(many_images, store)
        time.sleep(rng.uniform(0.05, 1.1) * duration)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
        assert "Traceback" not in stderr, stderr
        if process.returncode == 0:  # it finished before the signal came
            outcomes.add("finished")
            continue
        assert process.returncode == 130, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, stderr
        if not store.joinpath("objects").is_dir():  # stopped before the store was even created
            assert lines[0] == "interrupted: nothing was committed; the store is as it was"
            outcomes.add("before")
            continue
        made = versions(store)
        if lines[0] == "interrupted: nothing was committed; the store is as it was":
            assert made == [], made
            outcomes.add("nothing")
        else:
            assert lines[0] == "interrupted: raw-data:v1 is committed; nothing after it was", lines[0]
            assert [v["ref"] for v in made] == ["raw-data:v1"]
            outcomes.add("committed")
        assert_intact(store)
    assert outcomes & {"nothing", "committed"}, f"no interrupt landed during the run: {outcomes}"


def test_sigkill_at_random_points_never_leaves_a_half_version(many_images, tmp_path):
    duration = _ingest_seconds(many_images, tmp_path / "scratch")
    rng = random.Random(11)
    store = tmp_path / "store"
    for _ in range(5):
        process = _start_ingest(many_images, store)
        time.sleep(rng.uniform(0.05, 1.1) * duration)
        process.kill()
        process.communicate(timeout=60)
        if store.joinpath("objects").is_dir():
            assert len(versions(store)) <= 1
            assert_intact(store)
    finished = run_cli("ingest", str(many_images), "--store", str(store))
    assert finished.returncode == 0, finished.stderr
    assert len(versions(store)) == 1
    assert_intact(store)


# -- quiet TensorFlow ----------------------------------------------------------------------

TF_NOISE = ("oneDNN custom operations", "All log messages before absl::InitializeLog", "cpu_feature_guard",
            "This TensorFlow binary is optimized")


@pytest.mark.slow
def test_train_and_infer_print_no_tensorflow_start_up_lines_unless_verbose(tmp_path):
    data = tmp_path / "data"
    assert run_cli("demo-data", "--source", "synthetic", "--out", str(data), "--per-class", "12").returncode == 0
    config = tmp_path / "smoke.yaml"
    config.write_text((PROJECT / "configs" / "smoke.yaml").read_text()
                      .replace("build/smoke-store", str(tmp_path / "store")).replace("build/smoke-data", str(data)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    env["PYTHONPATH"] = str(PROJECT)

    def cli(*args):
        return subprocess.run([sys.executable, str(PROJECT / "pipeline.py"), *args, "--config", str(config)],
                              capture_output=True, text=True, env=env, timeout=900)

    quiet = cli("run")
    assert quiet.returncode == 0, quiet.stderr
    assert "train: wrote model:v1" in quiet.stdout and "infer: wrote predictions:v2" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if any(noise in line for noise in TF_NOISE)], quiet.stderr
    verbose = cli("infer", "--force", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert any(noise in verbose.stderr for noise in TF_NOISE), verbose.stderr


def test_an_interrupt_after_the_run_record_reports_the_version_committed_and_the_graph_heals(tmp_path,
                                                                                          monkeypatch):
    """The window between the run record and lineage.json is too short to hit with a real signal, so
    the interrupt is raised where the graph is written; what is checked is real: the record on disk,
    the runner's account of it, the CLI's line, and the graph rebuilt from runs/ on the next open."""
    from lineage import interrupts, runner
    from lineage.graph import Graph
    from lineage.store import Store
    from stages import ingest

    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2})
    store = Store.open(tmp_path / "store", create=True)

    original_save = Graph.save

    def interrupted(self, store):  # only the save that follows a run record, not the first open
        if any(store.runs_dir.glob("*.json")):
            raise KeyboardInterrupt
        original_save(self, store)

    with monkeypatch.context() as patch:
        patch.setattr(Graph, "save", interrupted)
        patch.setattr(interrupts, "LEDGER", [])  # this process's account, as if it were the CLI's own
        with pytest.raises(KeyboardInterrupt):
            runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None, progress=False)
        line = interrupts.describe_interrupt()
    digest = json.loads(next((store.root / "runs").glob("*.json")).read_bytes())["outputs"][0]["digest"]
    assert line == (f"interrupted: raw-data@{digest[:12]} is committed; nothing after it was (lineage.json catches "
                    "up on the next command)")
    assert [v["digest"] for v in versions(store.root)] == [digest]
    assert_intact(store.root)


def test_a_real_ctrl_c_while_the_run_record_is_written_lands_after_the_commit_is_accounted(tmp_path, monkeypatch):
    """SIGINT sent to this process just as the run record reaches the disk: the interrupt is held until
    lineage.json and the process's ledger agree, so the line names raw-data:v1 and nothing lags."""
    from lineage import interrupts, runner
    from lineage.store import Store
    from stages import ingest

    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2})
    store = Store.open(tmp_path / "store", create=True)
    original_write_run = Store.write_run

    def write_then_ctrl_c(self, record):
        original_write_run(self, record)
        os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(Store, "write_run", write_then_ctrl_c)
        patch.setattr(interrupts, "LEDGER", [])
        with pytest.raises(KeyboardInterrupt):
            runner.execute(store, ingest, ingest.Params(source=str(root)), log=lambda m: None, progress=False)
        line = interrupts.describe_interrupt()
    assert line == "interrupted: raw-data:v1 is committed; nothing after it was"
    graph = json.loads((store.root / "lineage.json").read_bytes())
    assert [v["v"] for v in graph["versions"]["raw-data"]] == [1]
    assert_intact(store.root)


def test_a_ctrl_c_after_the_command_finished_leaves_its_exit_status_alone(tmp_path):
    """Python's teardown puts SIGINT back to the default, so a Ctrl-C in the last milliseconds used to kill a
    finished command (exit -2, no message). The signal is sent from an exit handler, after main() returned."""
    root = make_class_folders(tmp_path / "photos", {"Aves": 2, "Fungi": 2})
    script = ("import atexit, os, runpy, signal, sys, time\n"
              "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.3)))\n"
              f"sys.argv = [{str(PROJECT / 'pipeline.py')!r}, 'ingest', {str(root)!r}, '--store', "
              f"{str(tmp_path / 'store')!r}]\n"
              f"runpy.run_path(sys.argv[0], run_name='__main__')\n")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert (finished.returncode, finished.stderr) == (0, ""), finished.stderr
    assert "raw-data:v1" in finished.stdout


@pytest.mark.slow
def test_ctrl_c_in_a_later_stage_of_run_names_what_earlier_stages_committed(tmp_path):
    """`run` interrupted while training: the line must not claim nothing was committed, since ingest and
    split did commit; it names them, and the store verifies clean."""
    source = make_class_folders(tmp_path / "photos", {"cats": 6, "dogs": 6})
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "pipeline.py"), "run", "--config", str(PROJECT / "configs" / "smoke.yaml"),
         "--store", str(store), "--set", f"ingest.source={source}", "--set", "stages=[ingest, split, train]",
         "--set", "split.per_class={train: 3, val: 2, test: 1}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    for line in process.stdout:  # split has committed: train is starting (importing TensorFlow takes seconds)
        if line.startswith("split: wrote"):
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: raw-data:v1, split:v1 are committed; nothing after them was" in stderr
    assert [v["ref"] for v in versions(store, "split")] == ["split:v1"]
    assert_intact(store)
