"""Ingest, re-ingest, no-op `run` and split, against baselines measured in the same run.

    python bench/bench_ingest.py [--files 10000] [--small-files 100000] [--quick]

Baselines: reading every file, a one-process hashlib.sha256 loop over the same files, and a
stat-only walk. The data (500×375 JPEGs of about 44 KB, like iNaturalist's) is generated once
under build/bench-data/ and reused. Figures go to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLASSES = ("Amphibia", "Animalia", "Arachnida", "Aves", "Fungi", "Insecta", "Mammalia", "Mollusca", "Plantae",
           "Reptilia")


def make_photos(root: Path, count: int, size=(500, 375)) -> Path:
    """Smooth gradients with noise compress like photos (~44 KB as JPEG), unlike pure noise."""
    from PIL import Image

    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        phase = rng.random(3) * 6
        base = np.stack([np.sin(xx / (40 + 7 * c) + phase[c]) * np.cos(yy / 55 + phase[c]) for c in range(3)], -1)
        pixels = (base * 90 + 128 + rng.normal(0, 18, base.shape)).clip(0, 255).astype(np.uint8)
        path = root / label / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=85)
    marker.touch()
    return root


def make_tiny_files(root: Path, count: int) -> Path:
    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    from PIL import Image
    import io
    for i in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(buffer, "PNG")
        path = root / CLASSES[i % len(CLASSES)] / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    marker.touch()
    return root


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def timed(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def cli(*args: str) -> tuple[float, float]:
    """Run pipeline.py; returns (wall seconds, peak RSS in MB of that one process)."""
    start = time.perf_counter()
    process = subprocess.Popen([PYTHON, str(PROJECT / "pipeline.py"), *args], cwd=PROJECT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline.py {' '.join(args)} failed: {process.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss / 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_baselines(photos: Path) -> dict:
    """In a child process of its own: reading 700 MB leaves this process large, and a large parent
    would slow every later fork and pass its peak RSS on to each child's figure."""
    paths = files_of(photos)
    for p in paths:  # warm the page cache, as the targets assume
        p.read_bytes()
    return {"read_all": timed(lambda: [p.read_bytes() for p in paths]),
            "sha_loop": timed(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]),
            "stat_walk": timed(lambda: [os.stat(p) for p in photos.rglob("*")]),
            "data_mb": sum(p.stat().st_size for p in paths) / 1e6}


def main() -> None:
    if sys.argv[1:2] == ["--baselines"]:
        print(json.dumps(measure_baselines(Path(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="1,000 photos and 10,000 small files")
    args = parser.parse_args()
    if args.quick:
        args.files, args.small_files = 1_000, 10_000
    work = PROJECT / "build" / "bench-data"
    photos = make_photos(work / f"photos-{args.files}", args.files)
    baselines = json.loads(subprocess.run([PYTHON, __file__, "--baselines", str(photos)], capture_output=True,
                                          text=True, check=True).stdout)
    read_all, sha_loop, stat_walk, data_mb = (baselines[k] for k in ("read_all", "sha_loop", "stat_walk",
                                                                     "data_mb"))
    paths = files_of(photos)

    store = work / "store"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    cold_linked, _ = cli("ingest", str(photos), "--store", str(store), "-q", "--set", "ingest.link=hardlink")
    subprocess.run(["rm", "-rf", str(store)], check=True)
    cold, _ = cli("ingest", str(photos), "--store", str(store), "-q")
    objects_before = folder_bytes(store / "objects")
    warm = min(cli("ingest", str(photos), "--store", str(store), "-q")[0] for _ in range(3))
    objects_after = folder_bytes(store / "objects")

    config = work / "bench.yaml"
    config.write_text(f"store: {store}\nstages: [ingest, split]\ningest:\n  source: {photos}\n"
                      "split:\n  per_class: {train: 0.8, val: 0.1, test: 0.1}\n")
    split_time, _ = cli("split", "--config", str(config), "-q", "--force")
    split_record = max((store / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    split_stage_s = json.loads(split_record.read_text())["duration_s"]
    split_manifest = max((store / "manifests" / "split").glob("*.json"), key=lambda p: p.stat().st_mtime)
    noop_run = min(cli("run", "--config", str(config), "-q")[0] for _ in range(3))
    python_start = timed(lambda: subprocess.run([PYTHON, "-c", "pass"]), repeat=5)

    tiny = make_tiny_files(work / f"tiny-{args.small_files}", args.small_files)
    tiny_store = work / "tiny-store"
    subprocess.run(["rm", "-rf", str(tiny_store)], check=True)
    tiny_time, peak_mb = cli("ingest", str(tiny), "--store", str(tiny_store), "-q")

    figures = {
        "files": len(paths), "data_mb": round(data_mb, 1),
        "baseline_read_all_s": round(read_all, 3), "baseline_sha256_loop_s": round(sha_loop, 3),
        "baseline_stat_walk_s": round(stat_walk, 3), "python_start_s": round(python_start, 3),
        "cold_ingest_s": round(cold, 3), "cold_ingest_vs_sha256_loop": round(cold / sha_loop, 2),
        "cold_ingest_hardlink_s": round(cold_linked, 3),
        "cold_ingest_hardlink_vs_sha256_loop": round(cold_linked / sha_loop, 2),
        "reingest_unchanged_s": round(warm, 3), "noop_run_s": round(noop_run, 3),
        "reingest_added_object_bytes": objects_after - objects_before,
        "split_cli_s": round(split_time, 3), "split_stage_s": split_stage_s,
        "split_manifest_bytes": split_manifest.stat().st_size,
        "small_files": args.small_files, "small_files_ingest_s": round(tiny_time, 2),
        "small_files_peak_rss_mb": round(peak_mb, 1),
    }
    targets = {
        "cold_ingest_vs_sha256_loop": ("<=", 3.5), "reingest_unchanged_s": ("<=", 0.3), "noop_run_s": ("<=", 0.3),
        "split_stage_s": ("<", 0.5), "split_manifest_bytes": ("<", 1_000_000),
        "reingest_added_object_bytes": ("<=", 0), "small_files_peak_rss_mb": ("<", 500),
    }
    report(figures, targets, "ingest")


def report(figures: dict, targets: dict, name: str) -> None:
    results = PROJECT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    verdicts = {}
    for key, value in figures.items():
        mark = ""
        if key in targets:
            op, limit = targets[key]
            ok = value <= limit if op == "<=" else value < limit
            verdicts[key] = {"target": f"{op} {limit}", "met": bool(ok)}
            mark = f"   target {op} {limit}: {'met' if ok else 'MISSED'}"
        print(f"{key:<32}{value!s:>14}{mark}")
    (results / f"{name}.json").write_text(json.dumps({"figures": figures, "targets": verdicts}, indent=1))


if __name__ == "__main__":
    main()
