"""What disclosure control adds to the realistic queries, end to end.

Counted as control: everything the executed SQL does beyond the caller's own query with the
row filters applied (hidden people and GROUPING columns, the per-person partials of a
single-pass plan), the separate contributions and row-bound queries where there are ones,
and the control stage itself (thresholds, dominance, secondary suppression).

    .venv/bin/python bench/disclosure_overhead.py [--persons 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from gateway import pipeline as pipeline_module
from gateway.settings import Settings
from gateway.sql.scans import filter_scans
from policies import Caller, Facts, decide

ROOT = Path(__file__).resolve().parent


def filtered_only(pipeline, sql: str) -> str:
    """The baseline: the caller's query with the row filters applied, and nothing else."""
    analysis = pipeline._analyse(sql)
    caller = Caller("p.jones", "E10000020", "local_authority", ("planner",), ("JOINT-PLANNING",))
    facts = Facts(caller, "JOINT-PLANNING", "planning", analysis.tables, analysis.columns,
                  date(2026, 11, 23))
    obligations = decide(facts, pipeline.policies, pipeline.catalogue).obligations
    tree = analysis.tree.copy()
    filter_scans(tree, obligations, pipeline.catalogue, analysis.columns)
    return tree.sql(dialect="duckdb")


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def engine_time(engine, sql: str, repeats: int) -> float:
    """Median time of one SQL text straight on the gateway's own engine."""
    return timed(lambda: engine.execute(sql, timeout_s=60, row_cap=10**6), repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from conftest import LiveServer
    from end_to_end import data_for
    from spec.realistic_queries import REALISTIC

    live = LiveServer(Settings(data_dir=data_for(args.persons),
                               state_dir=Path(tempfile.mkdtemp(prefix="sde-bench-")),
                               today=date(2026, 11, 23)))
    pipeline = live.app.state.pipeline
    control_time: list[float] = []
    original_control = pipeline_module.release

    def timed_control(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original_control(*a, **kw)
        finally:
            control_time.append(time.perf_counter() - t0)

    pipeline_module.release = timed_control
    token = live.token("p.jones")
    shares, rows = [], []
    for i, (name, _, sql) in enumerate(REALISTIC, start=1):
        resp = live.query(None, sql, "JOINT-PLANNING", "planning", token=token)
        entry = live.entry_for(resp)
        executed, contrib = entry["executed_sql"], entry.get("contributions_sql")
        bound = entry.get("row_bound_sql")
        control_time.clear()
        e2e = timed(lambda sql=sql: live.query(None, sql, "JOINT-PLANNING", "planning",
                                                token=token), args.repeats)
        stage = statistics.median(control_time)
        with_h = engine_time(pipeline.engine, executed, args.repeats)
        plain = engine_time(pipeline.engine, filtered_only(pipeline, sql), args.repeats)
        dom = engine_time(pipeline.engine, contrib, args.repeats) if contrib else 0.0
        rb = engine_time(pipeline.engine, bound, args.repeats) if bound else 0.0
        control = stage + max(0.0, with_h - plain) + dom + rb
        shares.append(control / e2e)
        rows.append((name, e2e, control))
        print(f"  [{i:2}/{len(REALISTIC)}] {name[:52]:52} {e2e * 1e3:7.1f} ms, control "
              f"{control / e2e:5.1%}", flush=True)
    live.stop()
    total_e2e = sum(r[1] for r in rows)
    total_control = sum(r[2] for r in rows)
    print(f"\n{len(REALISTIC)} realistic queries at {args.persons:,} people: disclosure control "
          f"is {statistics.median(shares):.1%} of end-to-end time (median per query), "
          f"{total_control / total_e2e:.1%} of the total; worst query "
          f"{max(shares):.1%} ({max(rows, key=lambda r: r[2] / r[1])[0]})")


if __name__ == "__main__":
    main()
