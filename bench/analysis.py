"""Analysis + rewrite time for the realistic queries, with and without the analysis cache.

    .venv/bin/python bench/analysis.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from functools import lru_cache
from pathlib import Path

from datasets import load_catalogue
from gateway.sql.analysis import analyse
from gateway.sql.rewrite import rewrite
from policies import Caller, Facts, decide, load_policies

ROOT = Path(__file__).resolve().parent


def pct(values, q):
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from spec.realistic_queries import REALISTIC

    catalogue = load_catalogue()
    policies = load_policies(None, catalogue)
    caller = Caller("p.jones", "E10000020", "local_authority", ("planner",), ("JOINT-PLANNING",))

    def obligations(a):
        facts = Facts(caller, "JOINT-PLANNING", "planning", a.tables, a.columns, date(2026, 11, 23))
        return decide(facts, policies, catalogue).obligations

    def run(sql):
        return analyse(sql, catalogue, max_chars=20_000, max_depth=64)

    cached = lru_cache(maxsize=1024)(run)
    for _, _, sql in REALISTIC:  # warm: "with the cache" means every query seen before
        cached(sql)
    timings: dict[str, list[float]] = {"analyse": [], "rewrite": [], "uncached total": [],
                                        "cached total": []}
    for i in range(args.repeats):
        for _, _, sql in REALISTIC:
            t0 = time.perf_counter()
            a = run(sql)
            t1 = time.perf_counter()
            o = obligations(a)
            t2 = time.perf_counter()
            rewrite(a, o, catalogue, 10_000)
            t3 = time.perf_counter()
            timings["analyse"].append(t1 - t0)
            timings["rewrite"].append(t3 - t2)
            timings["uncached total"].append((t1 - t0) + (t3 - t2))
            t0 = time.perf_counter()
            a = cached(sql)
            rewrite(a, o, catalogue, 10_000)
            timings["cached total"].append(time.perf_counter() - t0)
        print(f"  ... pass {i + 1}/{args.repeats}", flush=True, file=sys.stderr)
    print(f"{len(REALISTIC)} realistic queries x {args.repeats} passes (ms)")
    print(f"{'':16} {'median':>8} {'p99':>8}")
    for k, v in timings.items():
        print(f"{k:16} {statistics.median(v) * 1e3:8.2f} {pct(v, 0.99) * 1e3:8.2f}")


if __name__ == "__main__":
    main()
