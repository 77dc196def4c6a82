"""What the engine's person-link check costs: the gateway's own SQL with and without it.

    .venv/bin/python bench/link_check.py [--persons 1000000] [--rounds 5]

Every select that reads two or more people's sources carries, in its WHERE,
``CASE WHEN LEAST(keys) <> GREATEST(keys) THEN error(...) ELSE TRUE END``
(``assert_person_links`` in gateway/sql/scans.py). Each realistic query of
tests/spec/realistic_queries.py that the Norfolk planner may run is sent once over HTTP; the
queries the audit entry shows it executed (released query, contributions, row bound) are then
run in DuckDB directly, as executed and with the check replaced by TRUE, interleaved round by
round. Only queries that hold a check are timed. Medians in ms, and the ratio.
"""

from __future__ import annotations

import argparse
import re
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
CHECK = re.compile(r"CASE WHEN LEAST\([^()]*\) <> GREATEST\([^()]*\) THEN ERROR\('[^']*'\) "
                   r"ELSE TRUE END")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from conftest import LiveServer
    from end_to_end import data_for
    from spec.realistic_queries import REALISTIC

    data = data_for(args.persons)
    state = Path(tempfile.mkdtemp(prefix="sde-bench-link-"))
    live = LiveServer(Settings(data_dir=data, state_dir=state / "state",
                               today=date(2026, 11, 23), rate_limit_per_minute=0))
    token = live.token("p.jones")
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    print(f"planning {len(REALISTIC)} realistic queries ...", flush=True)
    for name, _, sql in REALISTIC:
        resp = live.query(None, sql, "JOINT-PLANNING", "planning", token=token)
        if resp.status_code != 200:
            continue  # not the planner's (another caller's datasets)
        entry = live.entry_for(resp)
        executed = [entry["executed_sql"]] + [
            entry[k] for k in ("contributions_sql", "row_bound_sql") if entry.get(k)]
        if any(CHECK.search(q) for q in executed):
            pairs[name] = (executed, [CHECK.sub("TRUE", q) for q in executed])
    live.stop()
    con = duckdb.connect(str(state / "raw.duckdb"))
    for table in load_catalogue().tables:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{data}/{table}.parquet')")
    con.execute("SET threads = 2")
    print(f"{len(pairs)} of them read two or more people's sources\n", flush=True)
    times = {name: {"with": [], "without": []} for name in pairs}
    for r in range(args.rounds):
        print(f"  round {r + 1}/{args.rounds}", flush=True)
        for name, (checked, unchecked) in pairs.items():
            for label, queries in (("with", checked), ("without", unchecked)):
                t0 = time.perf_counter()
                for q in queries:
                    con.execute(q).fetchall()
                times[name][label].append(time.perf_counter() - t0)
    print(f"\n{args.persons:,} people; medians of {args.rounds} rounds (ms)\n")
    print(f"{'query':<62} {'without':>8} {'with':>8} {'ratio':>6}")
    ratios = []
    for name, t in times.items():
        without, with_ = (statistics.median(t[k]) * 1000 for k in ("without", "with"))
        ratios.append(with_ / without)
        print(f"{name[:62]:<62} {without:8.1f} {with_:8.1f} {ratios[-1]:6.2f}")
    if ratios:
        print(f"\nmedian ratio with / without the check: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
