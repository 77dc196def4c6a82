"""HTTP load: `sde-gateway serve` in a process of its own under wrk, concurrency 16.

    .venv/bin/python bench/load_test.py [--persons 100000] [--seconds 60] [--connections 16]

Needs wrk (`apt-get install wrk`). Small planner queries (four texts in turn) as p.jones under
JOINT-PLANNING, through the whole pipeline (auth, analysis, policy, rewrite, DuckDB, disclosure
control, result store, write-ahead and closing audit entries with fsync). The per-subject rate
limit is switched off for the run (one subject sends all the load). Afterwards the audit trail
is verified offline and its entries counted against the requests wrk completed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from audit import verify_trail
from gateway.auth import issue_token
from gateway.state import ensure_state

ROOT = Path(__file__).resolve().parent
QUERIES = [
    "SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex",
    "SELECT p.ethnicity, COUNT(DISTINCT p.person_id) AS people FROM patients p "
    "GROUP BY p.ethnicity",
    "SELECT d.place_of_death, COUNT(*) AS deaths FROM deaths d GROUP BY d.place_of_death",
    "SELECT h.admission_method, COUNT(*) AS spells FROM hospital_admissions h "
    "WHERE h.admission_date >= DATE '2024-01-01' GROUP BY h.admission_method",
]


def stage_means(text: str) -> dict[str, float]:
    """Mean milliseconds per observation of each stage histogram, from the exposition text."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        for suffix, into in (("_sum", sums), ("_count", counts)):
            name = head.split("{")[0]
            if not name.endswith(suffix):
                continue
            base = name.removesuffix(suffix)
            label = head[len(name):]
            if base in ("sde_pipeline_stage_seconds", "sde_audit_write_seconds",
                        "sde_engine_queue_wait_seconds") or (
                    base == "sde_http_request_seconds" and "/v1/queries\"" in label):
                key = base.removeprefix("sde_").removesuffix("_seconds") + label
                into[key] = into.get(key, 0.0) + float(value)
    return {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    sys.path.insert(0, str(ROOT))
    from end_to_end import data_for

    data = data_for(args.persons)
    work = Path(tempfile.mkdtemp(prefix="sde-load-"))
    state = work / "state"
    keys = ensure_state(state)
    token = issue_token(keys.token_private_pem, issuer="sde-gateway", audience="sde-gateway",
                        sub="p.jones", org="E10000020", org_type="local_authority",
                        roles=["planner"], projects=["JOINT-PLANNING"], ttl_s=3600)
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"sql": q, "project": "JOINT-PLANNING",
                                          "purpose": "planning"}) + "\n" for q in QUERIES))
    port = 18700 + os.getpid() % 1000
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--data", str(data), "--state-dir",
         str(state), "--port", str(port), "--set", "rate_limit_per_minute=0"],
        stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for q in QUERIES:  # warm: each query once, and check it is released
            r = httpx.post(f"{url}/v1/queries", headers={"Authorization": f"Bearer {token}"},
                           json={"sql": q, "project": "JOINT-PLANNING", "purpose": "planning"})
            assert r.status_code == 200, r.text
        before = len((state / "audit" / "trail.jsonl").read_text().splitlines())
        print(f"wrk: {args.connections} connections, {args.seconds} s, {args.persons:,} "
              "people ...", flush=True)
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "30s",
             "-s", str(ROOT / "load.lua"), url],
            env={**os.environ, "SDE_LOAD_TOKEN": token, "SDE_LOAD_BODIES": str(bodies)},
            capture_output=True, text=True, check=True)
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        time.sleep(1)  # the last requests' closing entries
        stages = stage_means(httpx.get(f"{url}/metrics").text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    trail = state / "audit" / "trail.jsonl"
    entries = [json.loads(line) for line in trail.read_text().splitlines()[before:]]
    received = sum(1 for e in entries if e.get("event") == "query_received")
    closed = sum(1 for e in entries if e.get("event") == "query")
    intact = verify_trail(trail, keys.audit_key).ok
    rate = stats["requests"] / stats["seconds"]
    print(f"\n{'requests':>10} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'2xx':>7} {'4xx':>5} {'5xx':>5} {'sock err':>8}")
    print(f"{stats['requests']:>10} {rate:8.1f} {stats['p50_ms']:8.2f} {stats['p90_ms']:8.2f} "
          f"{stats['p99_ms']:8.2f} {stats['max_ms']:8.2f} {stats['ok']:>7} {stats['4xx']:>5} "
          f"{stats['5xx']:>5} {stats['socket_errors']:>8}")
    print("\nmean ms per request, by stage, under this load (the server's own /metrics):")
    for name, ms in stages.items():
        print(f"  {name:<28} {ms:8.2f}")
    print(f"\naudit: {received} query_received and {closed} closing entries for "
          f"{stats['requests']} requests; chain intact: {intact}")


if __name__ == "__main__":
    main()
