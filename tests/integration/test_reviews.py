"""Held outputs and their review over HTTP: nothing leaves until someone else releases it."""

from __future__ import annotations

import pytest

# every area keeps its row (residents), but most of its cells are small
MOSTLY_SMALL = ("SELECT p.lsoa_code, COUNT(*) AS residents, "
                "SUM(CASE WHEN p.year_of_birth < 1956 THEN 1 ELSE 0 END) AS over_70, "
                "SUM(CASE WHEN p.year_of_birth < 1961 THEN 1 ELSE 0 END) AS over_65 "
                "FROM patients p GROUP BY p.lsoa_code ORDER BY p.lsoa_code")


def h(server, sub, **claims):
    return {"Authorization": f"Bearer {server.token(sub, **claims)}"}


@pytest.fixture()
def held(fresh_server):
    resp = fresh_server.query("p.jones", MOSTLY_SMALL, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "held" and body["rows"] == []
    assert "suppressed" in body["disclosure"]["held_because"]
    return fresh_server, body["query_id"]


def test_a_held_output_releases_nothing_until_reviewed(held):
    s, qid = held
    mine = s.client.get(f"/v1/queries/{qid}", headers=h(s, "p.jones")).json()
    assert mine["status"] == "held" and mine["result"]["rows"] == []
    listed = s.client.get("/v1/reviews", headers=h(s, "ig.lead")).json()["held"]
    assert [x["query_id"] for x in listed] == [qid]
    assert listed[0]["result"]["rows"], "the reviewer sees the controlled table"
    assert any(r[2] is None for r in listed[0]["result"]["rows"]), "with its suppressions"
    entry = s.entry_for(s.client.get(f"/v1/queries/{qid}", headers=h(s, "p.jones")))
    assert entry["event"] == "query_read"
    closing = [e for e in s.audit_entries() if e.get("request_id") == qid
               and e["event"] == "query"]
    assert closing[0]["decision"] == "held" and closing[0]["rows_released"] == 0


def test_release_by_another_person_makes_it_readable(held):
    s, qid = held
    resp = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "ig.lead"),
                         json={"decision": "release", "reason": "small areas agreed with DPO"})
    assert resp.status_code == 200 and resp.json()["status"] == "released"
    mine = s.client.get(f"/v1/queries/{qid}", headers=h(s, "p.jones")).json()
    assert mine["status"] == "released" and mine["result"]["rows"]
    assert mine["result"]["review"]["by"] == "ig.lead"
    decision = [e for e in s.audit_entries() if e["event"] == "review_decision"]
    assert decision[-1]["decision"] == "released" and decision[-1]["reason"] == \
        "small areas agreed with DPO" and decision[-1]["submitted_by"] == "p.jones"
    assert s.client.get("/v1/reviews", headers=h(s, "ig.lead")).json()["held"] == []


def test_reject_keeps_it_unreleased(held):
    s, qid = held
    resp = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "ig.lead"),
                         json={"decision": "reject", "reason": "too many small areas"})
    assert resp.json()["status"] == "rejected"
    mine = s.client.get(f"/v1/queries/{qid}", headers=h(s, "p.jones")).json()
    assert mine["status"] == "rejected" and mine["result"]["rows"] == []
    again = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "ig.lead"),
                          json={"decision": "release", "reason": "changed my mind"})
    assert again.status_code == 409


def test_the_requester_can_never_review_their_own_output(held):
    s, qid = held
    planner = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "p.jones"),
                            json={"decision": "release", "reason": "looks fine to me"})
    assert planner.status_code == 403
    both_hats = h(s, "p.jones", roles=["planner", "ig_auditor"])
    own = s.client.post(f"/v1/reviews/{qid}", headers=both_hats,
                        json={"decision": "release", "reason": "looks fine to me"})
    assert own.status_code == 403 and "four-eyes" in own.json()["error"]["message"]
    assert s.client.get(f"/v1/queries/{qid}", headers=h(s, "p.jones")).json()["status"] == "held"
    denied = [e for e in s.audit_entries() if e["event"] == "review_decision"]
    assert denied and denied[-1]["decision"] == "denied"


def test_only_auditors_list_reviews_and_a_reason_is_required(held):
    s, qid = held
    assert s.client.get("/v1/reviews", headers=h(s, "p.jones")).status_code == 403
    no_reason = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "ig.lead"),
                              json={"decision": "release"})
    assert no_reason.status_code == 422
    bad = s.client.post(f"/v1/reviews/{qid}", headers=h(s, "ig.lead"),
                        json={"decision": "approve", "reason": "yes please"})
    assert bad.status_code == 422
