"""`make setup` picks TensorFlow's build: the CUDA one with GPU=1 or where `nvidia-smi -L` lists a GPU, else the CPU
one; the venv's stamp names the build, so switching rebuilds the venv. Nothing is installed: `make -n` shows what
would run, and the real recipes run in a copy of the Makefile with a stand-in `python3 -m venv` whose pip only
records its arguments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on PATH")

FAKE_PYTHON = """#!/bin/sh
# A stand-in for `python3 -m venv DIR`: DIR/bin/pip appends its arguments to $PIP_LOG.
[ "$1" = -m ] && [ "$2" = venv ] || exit 3
mkdir -p "$3/bin"
printf '#!/bin/sh\\necho "$*" >> "$PIP_LOG"\\n' > "$3/bin/pip"
chmod +x "$3/bin/pip"
"""


def requirement_lines(name: str) -> list[str]:
    return [line.strip() for line in (PROJECT / name).read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def fake_nvidia_smi(folder: Path, exit_code: int) -> Path:
    """A folder holding an `nvidia-smi` that exits with `exit_code` (0: it lists a GPU; 9: no driver)."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n[ $exit_code = 0 ] && echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\nexit {exit_code}\n")
    tool.chmod(0o755)
    return folder


def make(*args: str, cwd: Path = PROJECT, path_first: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"] if path_first is None else f"{path_first}{os.pathsep}{os.environ['PATH']}"
    clean = {key: value for key, value in os.environ.items() if key not in ("GPU", "MAKEFLAGS", "MAKELEVEL")}
    if "-n" in args:  # show the recipes as if nothing were installed, whatever state this checkout's venv is in
        args = ("-B", *args)
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          env={**clean, "PATH": path, **env}, timeout=120)


def test_gpu_requirements_are_the_cpu_ones_with_the_cuda_build():
    cpu, gpu = requirement_lines("requirements.txt"), requirement_lines("requirements-gpu.txt")
    (version,) = [line.split("==")[1] for line in cpu if line.startswith("tensorflow-cpu==")]
    assert gpu == [f"tensorflow[and-cuda]=={version}" if line.startswith("tensorflow-cpu==") else line for line in cpu]
    assert gpu[0] == f"tensorflow[and-cuda]=={version}"


@pytest.mark.parametrize("target", ["setup", "test", "demo", "bench"])
def test_gpu_1_installs_the_gpu_requirements(tmp_path, target):
    # No GPU found, so only GPU=1 can be what picks the CUDA build.
    shown = make("-n", target, "GPU=1", path_first=fake_nvidia_smi(tmp_path / "bin", 9))
    assert shown.returncode == 0, shown.stderr
    assert "-r requirements-gpu.txt -r .venv/requirements-dev-tools.txt" in shown.stdout
    assert "touch .venv/.installed-gpu" in shown.stdout
    assert "-r requirements.txt " not in shown.stdout


@pytest.mark.parametrize("exit_code, build", [(0, "gpu"), (9, "cpu")])
def test_plain_setup_asks_nvidia_smi(tmp_path, exit_code, build):
    shown = make("-n", "setup", path_first=fake_nvidia_smi(tmp_path / "bin", exit_code))
    assert shown.returncode == 0, shown.stderr
    runtime = {"gpu": "requirements-gpu.txt", "cpu": "requirements.txt"}[build]
    assert f"-r {runtime} -r .venv/requirements-dev-tools.txt" in shown.stdout
    assert f"touch .venv/.installed-{build}" in shown.stdout
    # GPU=0 overrides a GPU that is there.
    forced = make("-n", "setup", "GPU=0", path_first=fake_nvidia_smi(tmp_path / "bin", 0))
    assert "-r requirements.txt -r .venv/requirements-dev-tools.txt" in forced.stdout


def test_a_bad_gpu_value_is_one_line():
    shown = make("-n", "setup", "GPU=yes")
    assert shown.returncode != 0
    assert re.fullmatch(r"Makefile:\d+: \*\*\* GPU=yes: use GPU=1 .*GPU=0 .*\.  Stop\.\n", shown.stderr), shown.stderr


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """The Makefile and requirement files in a folder of their own, with a stand-in python3 on PATH."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-gpu.txt", "requirements-dev.txt"):
        shutil.copy(PROJECT / name, root / name)
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 9)
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    return root


def setup_in(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`make setup ARGS` in the copy: the result and the pip commands it ran."""
    log = root.parent / "pip.log"
    log.unlink(missing_ok=True)
    result = make("setup", *args, cwd=root, path_first=root.parent / "bin", PIP_LOG=str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, log.read_text().splitlines() if log.exists() else []


def test_switching_builds_rebuilds_the_venv(project_copy):
    venv = project_copy / ".venv"
    _, pip = setup_in(project_copy, "GPU=0")
    assert pip == ["install -q --upgrade pip",
                   "install -q -r requirements.txt -r .venv/requirements-dev-tools.txt"]
    assert sorted(p.name for p in venv.glob(".installed*")) == [".installed-cpu"]
    tools = (venv / "requirements-dev-tools.txt").read_text()
    assert "pytest==" in tools and "-r requirements.txt" not in tools  # no tensorflow-cpu beside the CUDA build

    assert setup_in(project_copy, "GPU=0")[1] == []  # up to date: nothing runs
    (venv / "something-installed").write_text("")
    switched, pip = setup_in(project_copy, "GPU=1")
    assert "switching to the gpu build of TensorFlow" in switched.stdout
    assert not (venv / "something-installed").exists()  # a new venv, not the CPU one patched
    assert pip[-1] == "install -q -r requirements-gpu.txt -r .venv/requirements-dev-tools.txt"
    assert sorted(p.name for p in venv.glob(".installed*")) == [".installed-gpu"]
    assert setup_in(project_copy, "GPU=1")[1] == []

    (project_copy / "requirements-gpu.txt").write_text((project_copy / "requirements-gpu.txt").read_text() + "\n")
    os.utime(project_copy / "requirements-gpu.txt", (2e9, 2e9))  # newer than the stamp: reinstall
    assert setup_in(project_copy, "GPU=1")[1][-1] == \
        "install -q -r requirements-gpu.txt -r .venv/requirements-dev-tools.txt"


def test_a_venv_stamped_before_builds_were_named_is_kept_as_the_cpu_build(project_copy):
    venv = project_copy / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").write_text("")
    _, pip = setup_in(project_copy, "GPU=0")
    assert pip == []
    assert sorted(p.name for p in venv.glob(".installed*")) == [".installed-cpu"]

    # Older than a requirement file: installed again, as the old stamp would have been.
    (venv / ".installed-cpu").rename(venv / ".installed")
    os.utime(venv / ".installed", (1e9, 1e9))
    _, pip = setup_in(project_copy, "GPU=0")
    assert pip[-1] == "install -q -r requirements.txt -r .venv/requirements-dev-tools.txt"
    assert sorted(p.name for p in venv.glob(".installed*")) == [".installed-cpu"]
