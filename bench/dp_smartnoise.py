"""The dp regime's grouped distinct-person count: the gateway against SmartNoise SQL and raw
DuckDB, on the same data and query, in the same run.

    .venv/bin/python bench/dp_smartnoise.py [--persons 1000000] [--rounds 7]

  raw         SELECT snomed_code, COUNT(DISTINCT person_id) FROM gp_events GROUP BY 1 in DuckDB
  gateway     the same SQL through POST /v1/queries as a named s251 researcher (PRJ-0042, dp,
              epsilon 1): auth, analysis, policy, the bounded rewrite with the opt-out, DuckDB,
              OpenDP noise and threshold, budget ledger spend (fsync), audit (fsync)
  smartnoise  the same SQL through SmartNoise SQL's pandas reader, on the same rows with the
              same opted-out people removed and the same contribution bound (max_ids = 5),
              in bench/.work/snsql-venv (it pins an older OpenDP and pandas); data loading is
              not timed

Each gateway round sends a different SQL text (a LIMIT above the number of codes) so that no
answer is served from the ledger's store of repeated queries, under a copy of the shipped
policies whose budget is raised for the run. Relative error: the median over codes of
|released - exact| / exact, exact counted on the same opted-in rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from datasets import load_catalogue
from gateway.settings import Settings
from policies.loader import shipped_policies_dir

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".work" / "snsql-venv"
SQL = ("SELECT e.snomed_code, COUNT(DISTINCT e.person_id) AS people FROM gp_events e "
       "GROUP BY e.snomed_code")


def smartnoise_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"making {VENV} with smartnoise-sql (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "smartnoise-sql==1.0.10",
                        "pyarrow"], check=True)
    return py


def relative_error(released: dict, exact: dict) -> float:
    return statistics.median(abs(released[k] - exact[k]) / exact[k] for k in released)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT.parent / "tests"))
    sys.path.insert(0, str(ROOT))
    from conftest import LiveServer
    from end_to_end import data_for

    data = data_for(args.persons)
    state = Path(tempfile.mkdtemp(prefix="sde-bench-dp-"))
    policies = state / "policies"
    shutil.copytree(shipped_policies_dir(), policies)
    s251 = policies / "diabetes-research-s251.toml"
    s251.write_text(s251.read_text().replace("epsilon_budget = 4.0", "epsilon_budget = 1000.0"))
    live = LiveServer(Settings(data_dir=data, state_dir=state / "state", policies_dir=policies,
                               today=date(2026, 11, 23)))
    token = live.token("r.smith")
    con = duckdb.connect(str(state / "raw.duckdb"))
    for name in load_catalogue().tables:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{data}/{name}.parquet')")
    con.execute("SET threads = 2")
    exact = dict(con.execute(
        "SELECT snomed_code, count(DISTINCT person_id) FROM gp_events WHERE person_id NOT IN "
        "(SELECT person_id FROM opt_outs) GROUP BY 1").fetchall())

    print(f"SmartNoise SQL: {args.rounds} rounds ...", flush=True)
    out = subprocess.run([str(smartnoise_python()), str(ROOT / "smartnoise_helper.py"),
                          str(data), str(args.rounds), "5", "1.0"],
                         check=True, capture_output=True, text=True)
    sn = json.loads(out.stdout)

    timings: dict[str, list[float]] = {"raw": [], "gateway": []}
    errors, codes = [], []
    for i in range(args.rounds):
        print(f"  round {i + 1}/{args.rounds}", flush=True)
        t0 = time.perf_counter()
        con.execute(SQL).fetchall()
        timings["raw"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = live.query(None, f"{SQL} LIMIT {1000 + i}", "PRJ-0042", "research", token=token,
                          epsilon=1.0)
        timings["gateway"].append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["disclosure"]["epsilon_spent"] <= 1.0
        released = {r[0]: r[1] for r in body["rows"]}
        errors.append(relative_error(released, exact))
        codes.append(len(released))
    live.stop()
    sn_errors = [relative_error({k: v for k, v in a.items() if k in exact}, exact)
                 for a in sn["answers"]]
    med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    med["smartnoise"] = statistics.median(sn["timings"]) * 1000
    print(f"\n{args.persons:,} people, {sn['rows']:,} opted-in events, "
          f"{len(exact)} codes; epsilon 1 per query; medians of {args.rounds} rounds\n")
    print(f"{'':12} {'median ms':>10} {'vs raw':>8} {'rel. error':>11} {'codes out':>10}")
    print(f"{'raw DuckDB':12} {med['raw']:10.1f} {1.0:8.2f} {'exact':>11} {len(exact):>10}")
    print(f"{'gateway':12} {med['gateway']:10.1f} {med['gateway'] / med['raw']:8.2f} "
          f"{statistics.median(errors):11.5f} {statistics.median(codes):>10}")
    print(f"{'SmartNoise':12} {med['smartnoise']:10.1f} {med['smartnoise'] / med['raw']:8.2f} "
          f"{statistics.median(sn_errors):11.5f} "
          f"{statistics.median(len(a) for a in sn['answers']):>10}")
    print(f"\nSmartNoise / gateway: {med['smartnoise'] / med['gateway']:.1f}x slower")


if __name__ == "__main__":
    main()
