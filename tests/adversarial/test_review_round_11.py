"""The breaks of review round 11, kept as tests (docs/security.md lists every round)."""

from __future__ import annotations

import json

import pytest

PLANNER = ("p.jones", "JOINT-PLANNING", "planning")


def test_a_lone_surrogate_is_a_400_on_both_endpoints(server):
    """Valid JSON (the escape \\ud800) that decodes to text no encoder accepts."""
    sql = "SELECT p.sex || '\ud800' AS k, COUNT(*) AS n FROM patients p GROUP BY k"
    body = json.dumps({"sql": sql, "project": "JOINT-PLANNING", "purpose": "planning"})
    headers = {"Authorization": f"Bearer {server.token('p.jones')}",
               "Content-Type": "application/json"}
    for path in ("/v1/queries", "/v1/queries/explain"):
        resp = server.client.post(path, headers=headers, content=body.encode("ascii"))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "sql_not_text"


def test_limit_inside_a_subquery_is_refused(server):
    """'The first N people by some value' picks across persons; N and N+1 isolate one."""
    sql = ("SELECT SUM(h.length_of_stay) AS los FROM hospital_admissions h WHERE h.person_id "
           "IN (SELECT a.person_id FROM hospital_admissions a ORDER BY a.admission_date "
           "LIMIT 20)")
    resp = server.query(PLANNER[0], sql, *PLANNER[1:])
    assert resp.status_code == 400 and "outer query only" in resp.json()["error"]["message"]


@pytest.mark.parametrize("comment", ["-- by method", "/* by method */"])
def test_a_trailing_comment_does_not_change_the_query(server, comment):
    sql = ("SELECT h.admission_method, COUNT(*) AS spells FROM hospital_admissions h "
           f"GROUP BY h.admission_method {comment}")
    resp = server.query(PLANNER[0], sql, *PLANNER[1:])
    assert resp.status_code == 200, resp.text


def test_keys_that_collide_as_python_values_are_judged_dominated(server):
    """DATE '-infinity' and DATE '0001-01-01' are two groups to the engine and one date to
    Python: neither group's contributions can be matched, so neither sum is released."""
    for first, second in [("CAST('-infinity' AS DATE)", "DATE '0001-01-01'"),
                          ("DATE '0001-01-01'", "CAST('-infinity' AS DATE)")]:
        sql = (f"SELECT CASE WHEN h.admission_method = 'emergency' THEN {first} ELSE {second} "
               "END AS k, SUM(h.length_of_stay) AS s, COUNT(DISTINCT h.primary_diagnosis) AS nd "
               "FROM hospital_admissions h GROUP BY k")
        resp = server.query(PLANNER[0], sql, *PLANNER[1:])
        if resp.status_code != 200:  # refusing is as good as suppressing
            continue
        body = server.released(resp, "p.jones")
        assert all(row[1] is None for row in body["rows"]), body


@pytest.mark.parametrize("sql", [
    "SELECT p.sex, SUM(h.length_of_stay) AS los FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE h.discharge_date - h.admission_date = 3 GROUP BY p.sex",
    "SELECT DATEDIFF('day', h.admission_date, h.discharge_date) AS d, SUM(h.length_of_stay) AS "
    "los FROM hospital_admissions h GROUP BY d",
])
def test_a_derived_measure_cannot_be_pinned_through_its_sources(server, sql):
    resp = server.query(PLANNER[0], sql, *PLANNER[1:])
    assert resp.status_code == 400 and "computed from" in resp.json()["error"]["message"]


def test_one_source_of_a_derived_measure_is_still_a_fine_filter(server):
    sql = ("SELECT h.admission_method, SUM(h.length_of_stay) AS los FROM hospital_admissions h "
           "WHERE h.admission_date >= DATE '2024-01-01' GROUP BY h.admission_method")
    assert server.query(PLANNER[0], sql, *PLANNER[1:]).status_code == 200


def test_positions_inside_rollup_mean_output_columns(server):
    """Not a break but a refusal of a fair query: ROLLUP (1) as GROUP BY 1 would be."""
    named = ("SELECT h.admission_method, COUNT(*) AS spells FROM hospital_admissions h "
             "GROUP BY ROLLUP (h.admission_method)")
    by_position = ("SELECT h.admission_method, COUNT(*) AS spells FROM hospital_admissions h "
                   "GROUP BY ROLLUP (1)")
    a = server.query(PLANNER[0], named, *PLANNER[1:])
    b = server.query(PLANNER[0], by_position, *PLANNER[1:])
    assert a.status_code == b.status_code == 200, b.text
    assert server.released(a, "p.jones")["rows"] == server.released(b, "p.jones")["rows"]
