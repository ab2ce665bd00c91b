"""Run every benchmark in bench/, one process each, and print where their figures went.

    python bench/run_all.py [--quick]

Each benchmark measures its baseline in the same run and writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("bench_ingest.py", "bench_table.py", "bench_evaluate.py", "bench_report.py", "bench_charts.py",
         "bench_scale.py", "bench_remote.py", "bench_train.py", "bench_precision.py")
# bench_scale.py runs 10,000 and 100,000 files by default; 1,000,000 only on request (--sizes 1000000).
QUICK_ARGS = {"bench_ingest.py": ["--quick"], "bench_table.py": ["--rows", "20000"], "bench_train.py": ["--quick"],
              "bench_scale.py": ["--sizes", "10000"], "bench_charts.py": ["--rows", "2000"],
              "bench_remote.py": ["--quick"], "bench_precision.py": ["--quick"]}


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark in bench/, one process each.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens of minutes)")
    quick = parser.parse_args().quick
    failed = []
    for name in ORDER:
        path = BENCH / name
        if not path.exists():
            continue
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(path), *(QUICK_ARGS.get(name, []) if quick else [])], cwd=BENCH.parent).returncode
        print(f"({name}: {time.perf_counter() - start:.0f} s, exit {code})", flush=True)
        if code:
            failed.append(name)
    print(f"\nfigures: {BENCH / 'results'}/*.json" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
