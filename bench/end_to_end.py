"""The README query end to end through the gateway (HTTP, auth, analysis, policy, rewrite,
DuckDB, disclosure control, audit fsync) against the same SQL run directly in DuckDB.

Three timings per round, interleaved so that machine noise hits all three alike:
  raw      the user's SQL in DuckDB on the same data (no filters: what an unrestricted user runs)
  raw+rw   the gateway's rewritten SQL in DuckDB directly (residence and opt-out filters,
           hidden people counts): the cost of the policy itself, without the service around it
  gateway  POST /v1/queries over HTTP on loopback

    .venv/bin/python bench/end_to_end.py [--persons 1000000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from datasets import load_catalogue
from datasets.generator import generate
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent


def data_for(persons: int) -> Path:
    out = ROOT / ".work" / f"data-{persons}"
    if not (out / "patients.parquet").exists():
        print(f"generating {persons:,} people into {out} ...", flush=True)
        generate(out, persons, seed=42)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()

    import sys

    sys.path.insert(0, str(ROOT.parent / "tests"))
    sys.path.insert(0, str(ROOT.parent / "tests" / "integration"))
    from conftest import LiveServer  # the same real server the integration tests use
    from test_first_query import README_QUERY  # the query the README and the tests use

    data = data_for(args.persons)
    state = Path(tempfile.mkdtemp(prefix="sde-bench-state-"))
    live = LiveServer(Settings(data_dir=data, state_dir=state, today=date(2026, 11, 23)))
    token = live.token("p.jones")

    # Raw DuckDB on its own copy of the same tables, in a DuckDB file like the gateway's.
    raw_db = state / "raw.duckdb"
    con = duckdb.connect(str(raw_db))
    for name in load_catalogue().tables:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{data}/{name}.parquet')")
    con.execute("SET threads = 2")

    first = live.query(None, README_QUERY, "JOINT-PLANNING", "planning", token=token)
    assert first.status_code == 200, first.text
    rewritten = live.entry_for(first)["executed_sql"]

    timings: dict[str, list[float]] = {"raw": [], "raw+rw": [], "gateway": []}
    for i in range(args.rounds):
        t0 = time.perf_counter()
        con.execute(README_QUERY).fetchall()
        timings["raw"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        con.execute(rewritten).fetchall()
        timings["raw+rw"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = live.query(None, README_QUERY, "JOINT-PLANNING", "planning", token=token)
        timings["gateway"].append(time.perf_counter() - t0)
        assert resp.status_code == 200
        if (i + 1) % 10 == 0:
            print(f"  ... round {i + 1}/{args.rounds}", flush=True)
    live.stop()

    med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in timings.items()}
    print(f"\nREADME query, {args.persons:,} people, {args.rounds} interleaved rounds (ms)")
    print(f"{'':10} {'median':>8} {'p90':>8} {'vs raw':>8}")
    for k in timings:
        print(f"{k:10} {med[k]:8.1f} {p90[k]:8.1f} {med[k] / med['raw']:7.2f}x")
    print(f"gateway vs raw+rw (the service around the query): "
          f"{med['gateway'] / med['raw+rw']:.2f}x, +{med['gateway'] - med['raw+rw']:.1f} ms")
    print(json.dumps({"persons": args.persons, "median_ms": med}))


if __name__ == "__main__":
    main()
