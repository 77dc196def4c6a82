"""What the dp regime's bound on cells per person costs: the gateway's executed SQL for the grouped
distinct-person count, and variants of it, run in DuckDB directly on the same tables.

    .venv/bin/python bench/dp_bound_variants.py [--persons 1000000] [--rounds 5]

  raw             SELECT snomed_code, COUNT(DISTINCT person_id) FROM gp_events GROUP BY 1
  raw+opt-out     the same over the opted-in rows
  pairs           grouped by (code, person) then counted: the regrouping, with no bound
  gateway         the bounded SQL the gateway executes (from the audit entry of a real query)
  materialised    split in two: the pairs of people within the bound, and the ranked rest
  subtract        every (code, person) pair, minus the pairs cut by the bound
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

ROOT = Path(__file__).resolve().parent
SQL = ("SELECT e.snomed_code, COUNT(DISTINCT e.person_id) AS people FROM gp_events e "
       "GROUP BY e.snomed_code")
OPTED_IN = ("(SELECT person_id, snomed_code FROM gp_events WHERE person_id NOT IN "
            "(SELECT person_id FROM opt_outs WHERE person_id IS NOT NULL))")


def executed_sql(data: Path) -> str:
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from conftest import LiveServer

    from gateway.settings import Settings

    state = Path(tempfile.mkdtemp(prefix="sde-bench-bound-"))
    live = LiveServer(Settings(data_dir=data, state_dir=state / "state",
                               today=date(2026, 11, 23), rate_limit_per_minute=0))
    try:
        resp = live.query(None, SQL, "PRJ-0042", "research", token=live.token("r.smith"),
                          epsilon=1.0)
        assert resp.status_code == 200, resp.text
        return live.entry_for(resp)["executed_sql"]
    finally:
        live.stop()


def variants(gateway: str, cells: int) -> dict[str, str]:
    parts = (f"SELECT snomed_code AS __k0, person_id AS __pid, 1 AS __a FROM {OPTED_IN} "
             "GROUP BY 1, 2")
    many = f"SELECT __pid FROM __parts GROUP BY __pid HAVING COUNT(*) > {cells}"
    rank = "ROW_NUMBER() OVER (PARTITION BY __pid ORDER BY HASH(__k0, __pid))"
    return {
        "raw": "SELECT snomed_code, COUNT(DISTINCT person_id) FROM gp_events GROUP BY 1",
        "raw+opt-out": f"SELECT snomed_code, COUNT(DISTINCT person_id) FROM {OPTED_IN} GROUP BY 1",
        "pairs": f"SELECT __k0, COUNT(*) FROM ({parts}) GROUP BY 1",
        "gateway": gateway,
        "materialised": (
            f"WITH __parts AS MATERIALIZED ({parts}), __many AS ({many}) "
            "SELECT __k0, SUM(__a), COUNT(*) FROM (SELECT * FROM __parts ANTI JOIN __many "
            "USING (__pid) UNION ALL SELECT p.* FROM __parts p SEMI JOIN __many USING (__pid) "
            f"QUALIFY {rank} <= {cells}) GROUP BY 1"),
        "subtract": (
            f"WITH __parts AS MATERIALIZED ({parts}), __many AS ({many}), "
            "__cut AS (SELECT p.* FROM __parts p SEMI JOIN __many USING (__pid) "
            f"QUALIFY {rank} > {cells}) "
            "SELECT __k0, SUM(__a), SUM(__w) FROM (SELECT *, 1 AS __w FROM __parts UNION ALL "
            "SELECT __k0, __pid, -__a, -1 FROM __cut) GROUP BY 1"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cells", type=int, default=5, help="max_cells_per_person of the policy")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from end_to_end import data_for

    data = data_for(args.persons)
    print("the gateway's executed SQL, from a real query ...", flush=True)
    queries = variants(executed_sql(data), args.cells)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    for name in ("gp_events", "opt_outs"):
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{data}/{name}.parquet')")
    times: dict[str, list[float]] = {name: [] for name in queries}
    for r in range(args.rounds):  # interleaved, round by round
        print(f"  round {r + 1}/{args.rounds}", flush=True)
        for name, sql in queries.items():
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            times[name].append(time.perf_counter() - t0)
    raw = statistics.median(times["raw"])
    print(f"\n{args.persons:,} people; medians of {args.rounds} rounds\n")
    print(f"{'SQL':14} {'ms':>8} {'vs raw':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:14} {med * 1000:8.1f} {med / raw:8.2f}")


if __name__ == "__main__":
    main()
