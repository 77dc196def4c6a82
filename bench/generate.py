"""Generation time for the synthetic data at several sizes (median of repeats).

    .venv/bin/python bench/generate.py [--sizes 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from datasets.generator import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"{'people':>12} {'median s':>9} {'min s':>7} {'rows written':>14}")
    for n in args.sizes:
        times, rows = [], 0
        for i in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="sde-bench-"))
            t0 = time.perf_counter()
            reports = generate(out, n, seed=42)
            times.append(time.perf_counter() - t0)
            rows = sum(r.rows for r in reports)
            shutil.rmtree(out)
            print(f"  ... {n:,} people, run {i + 1}/{args.repeats}: {times[-1]:.2f} s", flush=True)
        print(f"{n:>12,} {statistics.median(times):>9.2f} {min(times):>7.2f} {rows:>14,}")


if __name__ == "__main__":
    main()
