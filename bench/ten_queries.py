"""Ten realistic planning queries at one million people: the gateway against DuckDB directly.

    .venv/bin/python bench/ten_queries.py [--persons 1000000] [--rounds 7]

Per query, interleaved round by round so machine noise hits all three alike:
  raw      the analyst's SQL in DuckDB on the same data (no filters)
  raw+rw   the gateway's rewritten SQL (residence and opt-out filters, hidden people counts,
           dominance contributions, the per-person row bound) in DuckDB directly: the cost of
           the policy itself
  gateway  POST /v1/queries over HTTP as p.jones (Norfolk, JOINT-PLANNING), the whole pipeline
The queries come from tests/spec/realistic_queries.py (the gallery the tests check cell by cell).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from datasets import load_catalogue
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent
CHOSEN = [
    "population by age band and sex", "population by deprivation decile",
    "diabetes prevalence by age band", "mean HbA1c of diabetics by deprivation",
    "GP events by code", "emergency admissions by age band and month, 2025",
    "mean length of stay by method", "admissions by method with a total row",
    "people in care by service type", "mortality within 30 days of an emergency admission, "
    "by age band",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from conftest import LiveServer
    from end_to_end import data_for
    from spec.realistic_queries import REALISTIC

    queries = {name: sql for name, _, sql in REALISTIC if name in CHOSEN}
    assert len(queries) == len(CHOSEN), set(CHOSEN) - set(queries)
    data = data_for(args.persons)
    state = Path(tempfile.mkdtemp(prefix="sde-bench-ten-"))
    live = LiveServer(Settings(data_dir=data, state_dir=state / "state",
                               today=date(2026, 11, 23), rate_limit_per_minute=0))
    token = live.token("p.jones")
    con = duckdb.connect(str(state / "raw.duckdb"))
    for name in load_catalogue().tables:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{data}/{name}.parquet')")
    con.execute("SET threads = 2")

    rewritten = {}
    for name, sql in queries.items():
        resp = live.query(None, sql, "JOINT-PLANNING", "planning", token=token)
        assert resp.status_code == 200, (name, resp.text)
        entry = live.entry_for(resp)
        rewritten[name] = [entry["executed_sql"]] + [
            entry[k] for k in ("contributions_sql", "row_bound_sql") if entry.get(k)]
    times = {name: {"raw": [], "raw+rw": [], "gateway": []} for name in queries}
    for r in range(args.rounds):
        print(f"  round {r + 1}/{args.rounds}", flush=True)
        for name, sql in queries.items():
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            times[name]["raw"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for q in rewritten[name]:
                con.execute(q).fetchall()
            times[name]["raw+rw"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            resp = live.query(None, sql, "JOINT-PLANNING", "planning", token=token)
            times[name]["gateway"].append(time.perf_counter() - t0)
            assert resp.status_code == 200
    live.stop()
    print(f"\n{args.persons:,} people; medians of {args.rounds} rounds (ms)\n")
    print(f"{'query':<58} {'raw':>8} {'raw+rw':>8} {'gateway':>8} {'gw/raw':>7} {'gw/rw':>6}")
    ratios, service = [], []
    for name, t in times.items():
        m = {k: statistics.median(v) * 1000 for k, v in t.items()}
        ratios.append(m["gateway"] / m["raw"])
        service.append(m["gateway"] / m["raw+rw"])
        print(f"{name[:58]:<58} {m['raw']:8.1f} {m['raw+rw']:8.1f} {m['gateway']:8.1f} "
              f"{ratios[-1]:7.2f} {service[-1]:6.2f}")
    print(f"\nmedian ratio gateway / raw DuckDB: {statistics.median(ratios):.2f}; "
          f"gateway / its own rewritten SQL: {statistics.median(service):.2f}")


if __name__ == "__main__":
    main()
