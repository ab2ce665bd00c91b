"""push and pull of many small objects to a local S3 server (moto's), against boto3 loops and `dvc push` in the
same run.

    python bench/bench_remote.py [--objects 10000] [--kb 40] [--jobs 16] [--threads 4,8,16,32] [--no-dvc]
    python bench/bench_remote.py --quick        # 200 objects, one parallel loop: what `make bench` runs

A store is made by ingesting N noise PNGs of about --kb KB each (so N + 1 objects: the images and the rows
object). Then, each against an empty server (it is reset between rows, so it never holds more than one copy):
`pipeline.py push` (a real CLI process, start-up included), a no-op push (nothing missing), `pipeline.py pull`
into an empty store; the same files uploaded by a plain one-thread boto3 put_object loop, and by parallel loops
(a thread pool sharing one client whose connection pool is as large as the thread pool) at each --threads
count, then the fastest count again with push's two per-request savings (no `Expect: 100-continue` round trip,
no CRC32 of botocore's own: see lineage/remote.py); and `dvc push` (`-j --jobs`) of the same images from a DVC
repo, then a no-op `dvc push`, with dvc[s3] in its own venv under build/bench-dvc-venv (made here on first use;
the row is skipped with the reason when it cannot be).

The server is one Python process; each row also records the CPU seconds it spent (`server_cpu_s`): when that
is close to the row's wall time, the server, not the client, sets the pace. Figures go to
bench/results/bench_remote.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
DVC_VENV = PROJECT / "build" / "bench-dvc-venv"
DVC_TIMEOUT_S = 3600
sys.path.insert(0, str(PROJECT / "tests"))

from s3server import S3Server, aws_env  # noqa: E402  (the tests' server: moto in its own process)


def make_images(root: Path, count: int, kb: int) -> None:
    """Noise PNGs (noise does not compress, so a side of sqrt(kb * 1024 / 3) gives about kb KB)."""
    side = int((kb * 1024 / 3) ** 0.5)
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{index:06d}.png")


class Meter:
    """Wall time, and the CPU seconds the server and this side (this process and its children) spent, per row."""

    def __init__(self, server: S3Server):
        self.server = server
        self.rows: dict[str, dict] = {}

    def server_cpu(self) -> float:
        with open(f"/proc/{self.server.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def measure(self, label: str, work: Callable[[], str | None]) -> float:
        server_before, client_before, started = self.server_cpu(), _client_cpu(), time.perf_counter()
        note = work()
        seconds = time.perf_counter() - started
        row = {"s": seconds, "server_cpu_s": self.server_cpu() - server_before,
               "client_cpu_s": _client_cpu() - client_before}
        self.rows[label] = row
        print(f"  {label}: {seconds:.2f} s  (server CPU {row['server_cpu_s']:.1f} s, client CPU "
              f"{row['client_cpu_s']:.1f} s){'  ' + note if note else ''}", flush=True)
        return seconds

    def reset(self) -> None:
        """Empty the server (moto's reset), so each row starts from nothing and memory stays at one copy."""
        request = urllib.request.Request(f"{self.server.url}/moto-api/reset", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=60).read()


def _client_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cli(*args: str, env: dict) -> str:
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline.py"), *args], env=env, capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def pooled_client(url: str, threads: int, tuned: bool = False):
    """One client for every thread (boto3 clients are thread-safe), its connection pool as large as the pool.
    `tuned`: no CRC32 of botocore's own (the loop sends the SHA-256 it computes, as push does) and no
    `Expect: 100-continue` round trip per PUT, the two per-request savings push makes."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=threads, **({"request_checksum_calculation": "when_required"} if tuned
                                                     else {}))
    client = boto3.session.Session().client("s3", endpoint_url=url, config=config)
    if tuned:
        client.meta.events.register_last("before-call.s3", _no_expect)
    return client


def _no_expect(params: dict, **_) -> None:  # a handler that returns something replaces the request's answer
    params["headers"].pop("Expect", None)


def upload_loop(client, bucket: str, store: Path, files: list[Path], threads: int, tuned: bool = False) -> None:
    def put(path: Path) -> None:
        data = path.read_bytes()
        checksum = {"ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()} if tuned else {}
        client.put_object(Bucket=bucket, Key=str(path.relative_to(store)), Body=data, **checksum)

    if threads == 1:
        for path in files:
            put(path)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))


# -- dvc, in a venv of its own --------------------------------------------------------------------------------

def dvc_executable(install: bool) -> tuple[Path | None, str]:
    """build/bench-dvc-venv/bin/dvc, made on first use; or None and why not."""
    dvc = DVC_VENV / "bin" / "dvc"
    if not dvc.exists():
        if not install:
            return None, f"no dvc in {DVC_VENV} (the full run makes it: python3 -m venv + pip install 'dvc[s3]')"
        print(f"installing dvc[s3] into {DVC_VENV} (once)", flush=True)
        try:
            subprocess.run(["python3", "-m", "venv", str(DVC_VENV)], check=True, capture_output=True, timeout=300)
            subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc[s3]"], check=True,
                           capture_output=True, timeout=1200)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            lines = detail.decode(errors="replace").strip().splitlines()
            return None, f"dvc[s3] did not install ({type(error).__name__}{': ' + lines[-1] if lines else ''})"
    version = subprocess.run([str(dvc), "--version"], capture_output=True, text=True, env=_dvc_env())
    if version.returncode:
        return None, f"{dvc} does not run: {(version.stderr.strip().splitlines() or ['?'])[-1]}"
    return dvc, version.stdout.strip()


def _dvc_env(**extra: str) -> dict:
    return {**aws_env(), "DVC_NO_ANALYTICS": "1", "DVC_IGNORE_ISATTY": "1", **extra}


def dvc_repo(dvc: Path, scratch: Path, photos: Path, url: str, env: dict) -> Path:
    """A DVC repo (no git) tracking a hard-linked copy of the images, `dvc add`ed (untimed), with the server as
    its default remote."""
    repo = scratch / "dvc-repo"
    repo.mkdir()
    shutil.copytree(photos, repo / "photos", copy_function=os.link)

    def run(*args: str) -> None:
        result = subprocess.run([str(dvc), *args], cwd=repo, env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"dvc {' '.join(args)} failed: {result.stderr.strip()[-400:]}")

    run("init", "--no-scm", "-q")
    run("remote", "add", "-d", "bench", "s3://dvc-bucket/dvc")
    run("remote", "modify", "bench", "endpointurl", url)
    run("add", "-q", "photos")
    return repo


def dvc_push(dvc: Path, repo: Path, jobs: int, env: dict) -> str:
    result = subprocess.run([str(dvc), "push", "-j", str(jobs)], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=DVC_TIMEOUT_S)
    if result.returncode:
        raise RuntimeError(f"dvc push failed: {result.stderr.strip()[-400:]}")
    return (result.stdout.strip().splitlines() or [""])[-1]


# -- the run -----------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=None, help="images to push (default 10,000; 200 with --quick)")
    parser.add_argument("--kb", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=16, help="push, pull and dvc push threads")
    parser.add_argument("--threads", default=None, help="parallel boto3 loops to time (default 4,8,16,32; 16 with "
                                                        "--quick)")
    parser.add_argument("--quick", action="store_true", help="200 objects, one parallel loop, dvc only if installed")
    parser.add_argument("--no-dvc", action="store_true", help="skip the dvc push row")
    args = parser.parse_args()
    count = args.objects or (200 if args.quick else 10_000)
    thread_counts = [int(t) for t in (args.threads or ("16" if args.quick else "4,8,16,32")).split(",")]
    env = {**aws_env(), "PYTHONPATH": str(PROJECT)}
    os.environ.update(aws_env())
    figures: dict = {"objects": count, "kb": args.kb, "jobs": args.jobs, "cpus": os.cpu_count()}
    dvc, dvc_note = (None, "--no-dvc") if args.no_dvc else dvc_executable(install=not args.quick)
    server = S3Server()
    meter = Meter(server)
    try:
        client = server.client()
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            photos = scratch / "photos"
            make_images(photos, count, args.kb)
            store = scratch / "store"
            cli("ingest", str(photos), "--store", str(store), "-q", env=env)
            files = sorted(p for p in (store / "objects").rglob("*") if p.is_file())
            figures["files"] = len(files)
            figures["bytes"] = sum(p.stat().st_size for p in files)
            print(f"{len(files):,} objects, {figures['bytes'] / 1e6:.1f} MB; server {server.url}", flush=True)

            client.create_bucket(Bucket="pushed")
            jobs = ["-j", str(args.jobs)]
            for folder in (store, scratch / "copy"):
                cli("remote", "add", "bench", "s3://pushed/store", "--endpoint-url", server.url, "--default",
                    "--store", str(folder), env=env)
            meter.measure("push", lambda: cli("push", *jobs, "--store", str(store), env=env))
            meter.measure("noop_push", lambda: cli("push", *jobs, "--store", str(store), env=env))
            meter.measure("pull", lambda: cli("pull", *jobs, "--store", str(scratch / "copy"), env=env))
            pulled = sorted(p.relative_to(scratch / "copy") for p in (scratch / "copy" / "objects").rglob("*")
                            if p.is_file())
            if pulled != [p.relative_to(store) for p in files]:
                raise SystemExit(f"pull brought {len(pulled)} objects, not the {len(files)} pushed")

            meter.reset()
            client = server.client()
            client.create_bucket(Bucket="loop")
            meter.measure("boto3_1_thread", lambda: upload_loop(client, "loop", store, files, 1))
            for threads in thread_counts:
                meter.reset()
                pooled = pooled_client(server.url, threads)
                pooled.create_bucket(Bucket="parallel")
                meter.measure(f"boto3_{threads}_threads", lambda: upload_loop(pooled, "parallel", store, files,
                                                                              threads))
            best = min(thread_counts, key=lambda t: meter.rows[f"boto3_{t}_threads"]["s"])
            meter.reset()
            tuned = pooled_client(server.url, best, tuned=True)
            tuned.create_bucket(Bucket="tuned")
            meter.measure(f"boto3_{best}_threads_tuned", lambda: upload_loop(tuned, "tuned", store, files, best,
                                                                            tuned=True))

            if dvc is not None:
                meter.reset()
                server.client().create_bucket(Bucket="dvc-bucket")
                (scratch / "aws-empty").write_text("")  # aiobotocore refuses /dev/null as a config file
                empty = str(scratch / "aws-empty")
                dvc_env = _dvc_env(DVC_SITE_CACHE_DIR=str(scratch / "dvc-site"), AWS_CONFIG_FILE=empty,
                                   AWS_SHARED_CREDENTIALS_FILE=empty)
                try:
                    repo = dvc_repo(dvc, scratch, photos, server.url, dvc_env)
                    meter.measure("dvc_push", lambda: dvc_push(dvc, repo, args.jobs, dvc_env))
                    meter.measure("dvc_noop_push", lambda: dvc_push(dvc, repo, args.jobs, dvc_env))
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    dvc, dvc_note = None, str(error)
            figures["dvc"] = dvc_note
            if dvc is None:
                print(f"  dvc_push: skipped ({dvc_note})", flush=True)
    finally:
        server.stop()
    figures["rows"] = meter.rows
    summarise(figures, meter.rows)
    out = BENCH / "results" / "bench_remote.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"figures: {out}")
    return 0


def summarise(figures: dict, rows: dict[str, dict]) -> None:
    fastest = min((label for label in rows if label.startswith("boto3_") and label != "boto3_1_thread"),
                  key=lambda label: rows[label]["s"])
    push = rows["push"]["s"]
    figures["fastest_parallel"] = fastest
    figures["push_vs_fastest_parallel"] = push / rows[fastest]["s"]
    figures["pull_vs_fastest_parallel"] = rows["pull"]["s"] / rows[fastest]["s"]
    figures["one_thread_vs_push"] = rows["boto3_1_thread"]["s"] / push
    print(f"push takes {figures['push_vs_fastest_parallel']:.2f}x and pull "
          f"{figures['pull_vs_fastest_parallel']:.2f}x the fastest parallel loop's time ({fastest}; CLI start-up "
          f"included); push is {figures['one_thread_vs_push']:.1f}x faster than the one-thread loop; a no-op push "
          f"takes {rows['noop_push']['s']:.2f} s")
    if "dvc_push" in rows:
        figures["dvc_vs_push"] = rows["dvc_push"]["s"] / push
        print(f"dvc push takes {figures['dvc_vs_push']:.1f}x push's time ({figures['dvc']})")


if __name__ == "__main__":
    sys.exit(main())
