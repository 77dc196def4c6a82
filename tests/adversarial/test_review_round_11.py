"""The breaks of review round 11, kept as tests (docs/security.md lists every round)."""

from __future__ import annotations

import json

import pytest
from attack import PLANNER, norfolk_residents


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
    def rows(resp):
        return sorted(server.released(resp, "p.jones")["rows"], key=str)

    assert rows(a) == rows(b)


def test_an_integer_inside_a_margin_expression_is_a_number(server, raw):
    """Round 20's note: ``CUBE (p.year_of_birth % 2)`` read the 2 as the second output
    column (an aggregate), a confusing 400. Only a whole item of a margin (or of a tuple in
    it) is a position, as the engine reads it; the answer matches raw DuckDB's, rounded."""
    sql = ("SELECT p.year_of_birth % 2 AS odd, COUNT(*) AS people FROM patients p "
           "GROUP BY CUBE (p.year_of_birth % 2), ROLLUP (1)")
    resp = server.query(PLANNER[0], sql, *PLANNER[1:])
    assert resp.status_code == 200, resp.text
    got = {r[0]: r[1] for r in server.released(resp, "p.jones")["rows"]}
    truth = dict(raw.execute(
        f"SELECT year_of_birth % 2, COUNT(*) FROM ({norfolk_residents()}) "
        "GROUP BY ROLLUP (year_of_birth % 2)").fetchall())
    assert set(got) == set(truth)
    assert all(got[k] is None or abs(got[k] - truth[k]) <= 2 for k in truth), (got, truth)


# -- round 12 -------------------------------------------------------------------------------

def test_a_sum_joined_to_several_rows_per_person_is_refused(server):
    """Two tags per person from a window, one person left out of the second: two cells that
    share everyone but her, whose difference was her length of stay."""
    sql = """SELECT t.tag, SUM(h.length_of_stay) AS los FROM hospital_admissions h JOIN (
        SELECT ev.person_id, CASE WHEN ev.rn = 1 THEN 'all'
               WHEN ev.rn = 2 AND NOT (p.year_of_birth = 1933 AND p.sex = 'F') THEN 'rest' END
               AS tag
        FROM (SELECT g.person_id, ROW_NUMBER() OVER (PARTITION BY g.person_id
              ORDER BY g.event_date) AS rn FROM gp_events g) ev
        JOIN patients p ON p.person_id = ev.person_id WHERE ev.rn <= 2
      ) t ON t.person_id = h.person_id WHERE t.tag IS NOT NULL GROUP BY t.tag"""
    resp = server.query(PLANNER[0], sql, *PLANNER[1:])
    assert resp.status_code == 400
    assert "several rows per person" in resp.json()["error"]["message"]


def test_a_sum_joined_to_one_row_per_person_still_works(server):
    sql = ("SELECT x.older, SUM(h.length_of_stay) AS los FROM hospital_admissions h JOIN ("
           "SELECT p.person_id, p.year_of_birth < 1950 AS older FROM patients p) x "
           "ON x.person_id = h.person_id GROUP BY x.older")
    assert server.query(PLANNER[0], sql, *PLANNER[1:]).status_code == 200


def test_an_average_is_not_released_as_an_exact_fraction(server):
    from fractions import Fraction

    sql = ("SELECT h.admission_method, AVG(h.length_of_stay) AS avg_los, COUNT(*) AS n "
           "FROM hospital_admissions h GROUP BY h.admission_method")
    body = server.released(server.query(PLANNER[0], sql, *PLANNER[1:]), "p.jones")
    for _, avg, _n in body["rows"]:
        if avg is not None:
            assert len(f"{avg:.15g}".replace(".", "").lstrip("0")) <= 3
            assert Fraction(avg).limit_denominator(2000).denominator <= 1000
