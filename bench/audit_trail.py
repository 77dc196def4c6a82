"""Audit trail costs: append latency, verification speed, and the audit's share of a query.

    .venv/bin/python bench/audit_trail.py [--appends 2000] [--verify-entries 100000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import AuditTrail, verify_trail

ROOT = Path(__file__).resolve().parent
KEY = b"k" * 32
RECORD = {  # the size and shape of a closing entry for the README query
    "event": "query", "request_id": "0" * 32, "subject": "p.jones", "org": "E10000020",
    "org_type": "local_authority", "roles": ["planner"], "project": "JOINT-PLANNING",
    "purpose": "planning", "sql": "SELECT ..." + "x" * 600, "sql_sha256": "0" * 64,
    "executed_sql": "SELECT ..." + "x" * 1500, "tables": ["gp_events", "patients"],
    "datasets": ["gp"], "decision": "released", "rows_released": 5, "cells_suppressed": [],
}


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def appends(n: int, signed: bool) -> list[float]:
    d = Path(tempfile.mkdtemp(prefix="sde-bench-audit-"))
    trail = AuditTrail(d / "trail.jsonl", KEY, Ed25519PrivateKey.generate() if signed else None)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        trail.append(RECORD)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--verify-entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--persons", type=int, default=100_000)
    args = ap.parse_args()

    print(f"append latency, {args.appends} appends of a {len(str(RECORD))}-byte record (ms)")
    print(f"{'':36} {'median':>8} {'p99':>8}")
    for signed in (False, True):
        lat = appends(args.appends, signed)
        name = "chain + MAC + fsync" + (" + signed head" if signed else "")
        print(f"{name:36} {statistics.median(lat) * 1e3:8.3f} {pct(lat, 0.99) * 1e3:8.3f}",
              flush=True)

    d = Path(tempfile.mkdtemp(prefix="sde-bench-verify-"))
    trail = AuditTrail(d / "trail.jsonl", KEY)
    print(f"\nwriting {args.verify_entries:,} entries to verify ...", flush=True)
    for _ in range(args.verify_entries):
        trail.append(RECORD)
    size = trail.path.stat().st_size
    t0 = time.perf_counter()
    result = verify_trail(trail.path, KEY)
    took = time.perf_counter() - t0
    assert result.ok
    print(f"verify: {args.verify_entries:,} entries ({size / 1e6:.0f} MB) in {took:.2f} s, "
          f"{args.verify_entries / took:,.0f} entries/s")

    # the audit's share of end-to-end time, measured inside a live server
    sys.path.insert(0, str(ROOT.parent / "tests"))
    sys.path.insert(0, str(ROOT.parent / "tests" / "integration"))
    from conftest import LiveServer
    from end_to_end import data_for
    from test_first_query import README_QUERY

    from gateway.settings import Settings

    live = LiveServer(Settings(data_dir=data_for(args.persons),
                               state_dir=Path(tempfile.mkdtemp(prefix="sde-bench-state-")),
                               today=date(2026, 11, 23)))
    pipeline = live.app.state.pipeline
    spent: list[float] = []
    original = pipeline.audit

    def timed_audit(record):
        t0 = time.perf_counter()
        try:
            return original(record)
        finally:
            spent.append(time.perf_counter() - t0)

    pipeline.audit = timed_audit
    token = live.token("p.jones")
    live.query(None, README_QUERY, "JOINT-PLANNING", "planning", token=token)
    spent.clear()
    totals = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        live.query(None, README_QUERY, "JOINT-PLANNING", "planning", token=token)
        totals.append(time.perf_counter() - t0)
    live.stop()
    per_query = [a + b for a, b in zip(spent[::2], spent[1::2], strict=True)]
    share = statistics.median(per_query) / statistics.median(totals)
    print(f"\nREADME query at {args.persons:,} people, {args.rounds} rounds: end to end "
          f"{statistics.median(totals) * 1e3:.1f} ms median, of which the two audit entries "
          f"{statistics.median(per_query) * 1e3:.2f} ms ({share:.1%})")


if __name__ == "__main__":
    main()
