"""push and pull of many small objects to a local S3 server (moto's), against plain boto3 loops in the same run.

    python bench/bench_remote.py [--objects 1000] [--kb 40] [--jobs 16]

A store is made by ingesting N noise PNGs of about --kb KB each (so N + 1 objects: the images and the rows
object). Then, each against a fresh bucket on the same server: `pipeline.py push` (a real CLI process, start-up
included), a no-op push (nothing missing), `pipeline.py pull` into an empty store; and the same files uploaded
by a plain one-thread boto3 put_object loop, and by a parallel one (a thread pool sharing one client, the
fastest plain loop we know how to write). Figures go to bench/results/bench_remote.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
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


def cli(*args: str, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline.py"), *args], env=env, capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr.strip()}")
    print(f"  {' '.join(args[:1])}: {seconds:.2f} s  {result.stdout.strip().splitlines()[-1]}", flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--kb", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=16)
    args = parser.parse_args()
    env = {**aws_env(), "PYTHONPATH": str(PROJECT)}
    os.environ.update(aws_env())
    server = S3Server()
    figures: dict = {"objects": args.objects, "kb": args.kb, "jobs": args.jobs, "cpus": os.cpu_count()}
    try:
        client = server.client()
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            make_images(scratch / "photos", args.objects, args.kb)
            store = scratch / "store"
            cli("ingest", str(scratch / "photos"), "--store", str(store), "-q", env=env)
            files = [p for p in (store / "objects").rglob("*") if p.is_file()]
            figures["bytes"] = sum(p.stat().st_size for p in files)
            print(f"{len(files):,} objects, {figures['bytes'] / 1e6:.1f} MB", flush=True)

            client.create_bucket(Bucket="pushed")
            cli("remote", "add", "bench", "s3://pushed/store", "--endpoint-url", server.url, "--default",
                "--store", str(store), env=env)
            figures["push_s"] = cli("push", "-j", str(args.jobs), "--store", str(store), env=env)
            figures["noop_push_s"] = cli("push", "-j", str(args.jobs), "--store", str(store), env=env)
            copy = scratch / "copy"
            cli("remote", "add", "bench", "s3://pushed/store", "--endpoint-url", server.url, "--default",
                "--store", str(copy), env=env)
            figures["pull_s"] = cli("pull", "-j", str(args.jobs), "--store", str(copy), env=env)

            client.create_bucket(Bucket="loop")
            start = time.perf_counter()
            for path in files:
                client.put_object(Bucket="loop", Key=str(path.relative_to(store)), Body=path.read_bytes())
            figures["boto3_loop_s"] = time.perf_counter() - start
            print(f"  one-thread boto3 loop: {figures['boto3_loop_s']:.2f} s", flush=True)

            client.create_bucket(Bucket="parallel")
            import boto3
            from botocore.config import Config

            # One client shared by the threads (thread-safe), its connection pool as large as the thread pool.
            pooled = boto3.session.Session().client("s3", endpoint_url=server.url,
                                                    config=Config(max_pool_connections=args.jobs))
            start = time.perf_counter()
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(lambda p: pooled.put_object(Bucket="parallel", Key=str(p.relative_to(store)),
                                                          Body=p.read_bytes()), files))
            figures["boto3_parallel_s"] = time.perf_counter() - start
            print(f"  parallel boto3 loop ({args.jobs} threads): {figures['boto3_parallel_s']:.2f} s", flush=True)
    finally:
        server.stop()
    figures["push_vs_loop"] = figures["boto3_loop_s"] / figures["push_s"]
    figures["push_vs_parallel"] = figures["push_s"] / figures["boto3_parallel_s"]
    print(f"push is {figures['push_vs_loop']:.1f}x faster than the one-thread loop and takes "
          f"{figures['push_vs_parallel']:.2f}x the parallel loop's time (CLI start-up included)")
    out = BENCH / "results" / "bench_remote.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
