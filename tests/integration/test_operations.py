"""Rate limits, bounded engine work, Prometheus metrics and request logs, over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
import structlog.testing
from conftest import LiveServer, make_settings

COUNT_BY_SEX = "SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex"
PLANNING = ("JOINT-PLANNING", "planning")


@pytest.fixture(scope="module")
def live(data_dir, tmp_path_factory):
    server = LiveServer(make_settings(
        data_dir, tmp_path_factory.mktemp("state"), rate_limit_per_minute=60,
        rate_limit_burst=3, max_concurrent_queries=1, queue_timeout_s=0.2))
    yield server
    server.stop()


def test_a_subject_over_its_rate_gets_429_with_retry_after_and_others_do_not(live):
    statuses = [live.query("s.patel", COUNT_BY_SEX, *PLANNING).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = live.query("s.patel", COUNT_BY_SEX, *PLANNING)
    assert limited.status_code == 429
    body = limited.json()["error"]
    assert body["code"] == "rate_limited" and set(body) == {"code", "message", "reasons", "hint"}
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert live.entry_for(limited)["error_code"] == "rate_limited"
    assert live.query("m.brown", COUNT_BY_SEX, *PLANNING).status_code == 200  # not shared
    # reads count against the same limit: the catalogue refuses s.patel too, and says so
    read = live.client.get("/v1/catalogue",
                           headers={"Authorization": f"Bearer {live.token('s.patel')}"})
    assert read.status_code == 429 and read.json()["error"]["code"] == "rate_limited"
    assert live.entry_for(read)["error_code"] == "rate_limited"


@contextmanager
def only_slot_taken(live: LiveServer):
    """The app's one engine slot held, for real, by another thread for the duration."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with live.app.state.pipeline.slots.slot():
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_no_free_engine_slot_is_a_503_and_nothing_runs(live):
    """The app's own slot is taken (for real, by another thread), so the query must wait;
    past the queue timeout it is refused, audited, and the next query runs."""
    with only_slot_taken(live):
        busy = live.query("p.jones", COUNT_BY_SEX, *PLANNING)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "engine_busy"
    entry = live.entry_for(busy)
    assert entry["decision"] == "failed" and "rows_released" not in entry
    assert live.query("p.jones", COUNT_BY_SEX, *PLANNING).status_code == 200


def test_a_dp_query_that_gets_no_slot_spends_nothing(live):
    """The budget is taken before the query runs; if it never reaches the engine, it is
    given back: nothing was computed from the data."""
    auth = {"Authorization": f"Bearer {live.token('a.khan')}"}
    before = live.client.get("/v1/projects/PRJ-0042/budget", headers=auth).json()
    with only_slot_taken(live):
        busy = live.query("a.khan", "SELECT p.ethnicity, COUNT(DISTINCT p.person_id) AS n "
                          "FROM patients p GROUP BY p.ethnicity", "PRJ-0042", "research")
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "engine_busy"
    assert "epsilon_spent" not in live.entry_for(busy)
    after = live.client.get("/v1/projects/PRJ-0042/budget", headers=auth).json()
    assert after["epsilon_spent"] == before["epsilon_spent"]
    assert after["queries_charged"] == before["queries_charged"]


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and \
                head.split("{")[0] == name:
            return float(value)
    return 0.0


def test_metrics_count_requests_stages_suppression_budget_and_audit_writes(live):
    before = live.client.get("/metrics").text
    assert live.query("r.smith", COUNT_BY_SEX, "PRJ-0042", "research").status_code == 200
    # people over 100 by area and sex: small cells beside releasable ones
    small = ("SELECT p.lsoa_code, COUNT(DISTINCT p.person_id) AS people, COUNT(*) FILTER "
             "(WHERE p.year_of_birth < 1930) AS oldest FROM patients p GROUP BY p.lsoa_code")
    resp = live.query("m.brown", small, *PLANNING)
    assert resp.status_code == 200
    suppressed = len(resp.json()["disclosure"]["suppressed"])
    assert suppressed > 0, "the query is meant to suppress cells"
    resp = live.client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    route = {"route": "/v1/queries", "method": "POST", "status": "200"}
    assert metric(text, "sde_http_requests_total", **route) >= \
        metric(before, "sde_http_requests_total", **route) + 2
    for stage in ("authenticate", "analyse", "decide", "execute", "control", "dp", "audit"):
        assert metric(text, "sde_pipeline_stage_seconds_count", stage=stage) >= 1, stage
    assert metric(text, "sde_epsilon_spent_total", project="PRJ-0042") >= 1.0
    assert metric(text, "sde_cells_suppressed_total", regime="threshold") == \
        metric(before, "sde_cells_suppressed_total", regime="threshold") + suppressed
    assert metric(text, "sde_audit_write_seconds_count") > \
        metric(before, "sde_audit_write_seconds_count")
    assert "SELECT" not in text and "patients" not in text  # counts and timings, no SQL


def test_every_request_is_logged_with_its_id_and_no_sql(live):
    """structlog's own capture: the events as the JSON renderer would receive them."""
    with structlog.testing.capture_logs() as logs:
        resp = live.query("p.jones", COUNT_BY_SEX, *PLANNING)
        missing = live.client.get("/v1/nothing-here")
        wanted = {resp.headers["x-request-id"], missing.headers["x-request-id"]}
        for _ in range(50):  # the line is written as the response finishes
            if wanted <= {e.get("request_id") for e in logs if e["event"] == "request"}:
                break
            time.sleep(0.02)
    requests = {e["request_id"]: e for e in logs if e["event"] == "request"}
    mine = requests[resp.headers["x-request-id"]]
    assert mine["route"] == "/v1/queries" and mine["status"] == 200 and mine["duration_ms"] > 0
    assert requests[missing.headers["x-request-id"]]["status"] == 404
    assert "SELECT" not in json.dumps(logs, default=str)
