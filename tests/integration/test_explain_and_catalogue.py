"""POST /v1/queries/explain and GET /v1/catalogue over HTTP."""

from __future__ import annotations

SQL = ("SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p "
       "JOIN social_care s ON s.person_id = p.person_id GROUP BY p.sex")


def explain(server, sub, sql, project, purpose):
    return server.client.post("/v1/queries/explain",
                              headers={"Authorization": f"Bearer {server.token(sub)}"},
                              json={"sql": sql, "project": project, "purpose": purpose})


def test_explain_permit_shows_what_would_run_and_runs_nothing(server):
    resp = explain(server, "p.jones", SQL, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["decision"] == "permit" and body["policy"]["id"] == "joint-planning"
    assert body["tables"] == ["patients", "social_care"]
    assert {"table": "patients", "column": "sex", "clauses": ["group", "select"]} in body["columns"]
    assert body["obligations"]["residents_of"]["values"] == ["E10000020"]
    assert "opt_outs" in body["executed_sql"] and "'E10000020'" in body["executed_sql"]
    assert body["output"]["regime"] == "threshold" and "rows" not in body
    entry = server.entry_for(resp)
    assert entry["event"] == "explain" and entry["explain_outcome"] == "permit"
    assert "rows_released" not in entry


def test_explain_deny_is_an_answer_with_reasons(server):
    resp = explain(server, "r.smith", SQL, "PRJ-0042", "research")
    assert resp.status_code == 200
    body = resp.json()
    assert body["decision"] == "deny"
    assert {r["rule"] for r in body["reasons"]} == {"table"}
    assert "tables granted" in body["hint"] and "executed_sql" not in body


def test_explain_refuses_bad_sql_and_bad_tokens_like_a_query(server):
    assert explain(server, "p.jones", "SELECT * FROM patients", "JOINT-PLANNING",
                   "planning").status_code == 400
    resp = server.client.post("/v1/queries/explain", json={
        "sql": SQL, "project": "JOINT-PLANNING", "purpose": "planning"})
    assert resp.status_code == 401


def catalogue(server, sub):
    resp = server.client.get("/v1/catalogue",
                             headers={"Authorization": f"Bearer {server.token(sub)}"})
    assert resp.status_code == 200, resp.text
    return {p["project"]: p for p in resp.json()["projects"]}


def columns_of(project):
    return {(t["name"], c["name"]): c["class"] for d in project["datasets"]
            for t in d["tables"] for c in t["columns"]}


def test_catalogue_shows_only_what_each_project_may_use(server):
    mine = catalogue(server, "r.smith")
    s251, consent = columns_of(mine["PRJ-0042"]), columns_of(mine["PRJ-0077"])
    assert {c for t, c in s251 if t == "patients"} == {
        "person_id", "year_of_birth", "sex", "ethnicity", "lsoa_code", "local_authority_code"}
    assert not any(t == "social_care" for t, _ in s251)
    assert any(t == "social_care" for t, _ in consent)
    assert mine["PRJ-0042"]["output"]["regime"] == "dp"
    assert mine["PRJ-0042"]["output"]["epsilon_budget"] == 4.0
    assert mine["PRJ-0077"]["rows"]["consent_study"] == "FRAILTY-2025"
    for project in mine.values():
        assert not {cls for cls in columns_of(project).values()} & {"direct_identifier",
                                                                     "internal"}


def test_catalogue_explains_projects_the_caller_cannot_use(server):
    assert catalogue(server, "j.doe")["PRJ-0042"]["reasons"][0]["rule"] == "named_user"
    jones = catalogue(server, "p.jones")
    assert jones["COVID19-RESPONSE"]["access"] == "denied"
    assert jones["JOINT-PLANNING-DRAFT"]["reasons"][0]["rule"] == "basis_status"
    assert jones["JOINT-PLANNING"]["access"] == "permitted"
    assert catalogue(server, "ig.lead") == {}


def test_catalogue_needs_a_token(server):
    assert server.client.get("/v1/catalogue").status_code == 401
