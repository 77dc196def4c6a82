"""The IG auditor's tools over HTTP, on a trail made by real requests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SOCIAL_CARE_SQL = ("SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people "
                   "FROM social_care s GROUP BY s.service_type")
PATIENTS_SQL = "SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex"


def auth(server, sub):
    return {"Authorization": f"Bearer {server.token(sub)}"}


@pytest.fixture()
def busy(fresh_server):
    """A fresh server after a mixed morning: releases, a denial, a refusal, a bad token."""
    s = fresh_server
    s.query("s.patel", SOCIAL_CARE_SQL, "JOINT-PLANNING", "planning")
    s.query("p.jones", SOCIAL_CARE_SQL, "JOINT-PLANNING", "planning")
    s.query("p.jones", PATIENTS_SQL, "JOINT-PLANNING", "winter")
    s.query("m.brown", "SELECT * FROM patients", "JOINT-PLANNING", "planning")
    s.query(None, PATIENTS_SQL, "JOINT-PLANNING", "planning", token="forged")
    return s


def test_ig_finds_who_queried_social_care_for_suffolk_residents(busy):
    resp = busy.client.get("/v1/audit/events", headers=auth(busy, "ig.lead"),
                           params={"dataset": "asc_cld", "org": "E10000029", "event": "query"})
    assert resp.status_code == 200, resp.text
    events = resp.json()["events"]
    assert [e["subject"] for e in events] == ["s.patel"]
    assert events[0]["legal_basis"]["type"] == "copi_joint_planning"
    assert events[0]["decision"] == "released"


def test_filters_by_subject_decision_and_time(busy):
    h = auth(busy, "ig.lead")
    denied = busy.client.get("/v1/audit/events", headers=h,
                             params={"decision": "denied", "event": "query"}).json()["events"]
    assert [(e["subject"], e["error_code"]) for e in denied] == [("p.jones", "policy_denied")]
    mine = busy.client.get("/v1/audit/events", headers=h,
                           params={"subject": "p.jones", "event": "query"}).json()["events"]
    assert len(mine) == 2
    first = busy.audit_entries()[0]["time"]
    later = busy.client.get("/v1/audit/events", headers=h,
                            params={"since": "2999-01-01"}).json()["events"]
    assert later == []
    since = busy.client.get("/v1/audit/events", headers=h, params={"since": first}).json()
    assert since["count"] > 0


def test_paging_walks_the_whole_trail_once(busy):
    h = auth(busy, "ig.lead")
    seen, after = [], 0
    while True:
        page = busy.client.get("/v1/audit/events", headers=h,
                               params={"after": after, "limit": 3, "event": "query"}).json()
        seen += [e["seq"] for e in page["events"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    everything = [e["seq"] for e in busy.audit_entries() if e["event"] == "query"]
    assert seen == everything and len(seen) == 5


def test_csv_export(busy):
    resp = busy.client.get("/v1/audit/events", headers=auth(busy, "ig.lead"),
                           params={"event": "query", "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = resp.text.strip().splitlines()
    assert rows[0].startswith("seq,time,event,request_id,subject")
    assert len(rows) == 6


@pytest.mark.parametrize("sub", ["p.jones", "r.smith", "m.brown"])
def test_researchers_and_planners_get_403_on_the_audit_api(busy, sub):
    for path in ("/v1/audit/events", "/v1/audit/verify"):
        resp = busy.client.get(path, headers=auth(busy, sub))
        assert resp.status_code == 403, path
        assert resp.json()["error"]["code"] == "forbidden"


def test_auditors_get_403_on_the_query_endpoint(busy):
    resp = busy.query("ig.lead", PATIENTS_SQL, "JOINT-PLANNING", "planning")
    assert resp.status_code == 403


def test_audit_api_needs_a_token(busy):
    assert busy.client.get("/v1/audit/events").status_code == 401
    assert busy.client.get("/v1/audit/events",
                           headers={"Authorization": "Bearer nope"}).status_code == 401


def test_auditor_reads_are_audited_too(busy):
    busy.client.get("/v1/audit/events", headers=auth(busy, "ig.lead"), params={"project": "X"})
    busy.client.get("/v1/audit/verify", headers=auth(busy, "p.jones"))
    reads = [e for e in busy.audit_entries() if e["event"] in ("audit_search", "audit_verify")]
    assert [(e["subject"], e["decision"]) for e in reads] == [("ig.lead", "permitted"),
                                                              ("p.jones", "denied")]
    assert reads[0]["filters"] == {"project": "X"}


def test_past_queries_are_readable_by_their_submitter_and_ig_only(fresh_server):
    s = fresh_server
    released = s.query("p.jones", PATIENTS_SQL, "JOINT-PLANNING", "planning")
    qid = released.json()["query_id"]
    own = s.client.get(f"/v1/queries/{qid}", headers=auth(s, "p.jones"))
    assert own.status_code == 200
    assert own.json()["status"] == "released"
    assert own.json()["result"]["rows"] == released.json()["rows"]
    assert s.client.get(f"/v1/queries/{qid}", headers=auth(s, "ig.lead")).status_code == 200
    other = s.client.get(f"/v1/queries/{qid}", headers=auth(s, "s.patel"))
    assert other.status_code == 404
    assert s.client.get("/v1/queries/nonesuch", headers=auth(s, "ig.lead")).status_code == 404
    denied = s.query("p.jones", PATIENTS_SQL, "JOINT-PLANNING", "winter")
    kept = s.client.get(f"/v1/queries/{denied.headers['x-request-id']}",
                        headers=auth(s, "ig.lead")).json()
    assert kept["status"] == "denied" and kept["result"]["error"]["code"] == "policy_denied"


# -- the tamper matrix: each kind found and located, over HTTP and offline ----------------


def tamper_edit(rows):
    e = json.loads(rows[3])
    e["subject"] = "someone-else"
    rows[3] = json.dumps(e)
    return rows, 4


def tamper_delete(rows):
    del rows[3]
    return rows, 4


def tamper_insert(rows):
    rows.insert(3, rows[2])
    return rows, 4


def tamper_reorder(rows):
    rows[3], rows[5] = rows[5], rows[3]
    return rows, 4


def tamper_truncate(rows):
    return rows[:-3], None


@pytest.mark.parametrize("tamper", [tamper_edit, tamper_delete, tamper_insert, tamper_reorder,
                                    tamper_truncate])
def test_tamper_matrix(busy, tamper):
    path = busy.settings.audit_path
    intact = busy.client.get("/v1/audit/verify", headers=auth(busy, "ig.lead")).json()
    assert intact["intact"] and intact["entries"] >= 10
    rows, bad_line = tamper(path.read_text().splitlines())
    path.write_text("".join(r + "\n" for r in rows))
    report = busy.client.get("/v1/audit/verify", headers=auth(busy, "ig.lead"))
    if bad_line is not None:
        # the verify request itself is appended after the damage; the damage is still found
        body = report.json()
        assert report.status_code == 200 and body["intact"] is False
        assert body["first_bad"]["line"] == bad_line
    else:
        # a trail that no longer reaches its signed head is not extended: the gateway fails
        # closed, says why, and the truncation is reported by the offline verifier below
        assert report.status_code == 503
        health = busy.client.get("/healthz")
        assert health.status_code == 503 and "truncated" in health.json()["audit"]
        released = busy.query("p.jones", PATIENTS_SQL, "JOINT-PLANNING", "planning")
        assert released.status_code == 503 and "rows" not in released.json()
    offline = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--state-dir",
         str(busy.settings.state_dir)], capture_output=True, text=True, timeout=60)
    assert offline.returncode == 1
    if bad_line is None:
        assert "truncated" in offline.stdout
