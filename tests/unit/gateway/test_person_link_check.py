"""The person links the analysis proves are checked again by the engine, on every row.

``check_person_links`` (gateway/sql/analysis.py) refuses person-level sources that are not
all joined on person_id. Review rounds 25 to 29 each found a join it took for a link that in
fact paired one person's rows with everyone's: the sums by sex were N times one woman's exact
length of stay, each cell resting on thousands of people. The rewrite now also asks the
engine to stop the query on any row whose people's keys differ
(``assert_person_links`` in gateway/sql/scans.py), so that a mistake in the proof refuses
the query instead of releasing the pairs.

To test that second line alone, the first is switched off here: a proof that is wrong is a
failure these tests cannot cause for real, so ``check_person_links`` is replaced by one that
accepts everything. The attacks are the shapes of rounds 27 to 29 and their plain forms.
"""

from __future__ import annotations

import pytest
from attack import alone_with_stays, executed, person_filter, planned

from gateway.errors import SqlRejected
from gateway.sql import analysis as analysis_module


def attacks(raw) -> dict[str, str]:
    """Joins that pair one resident's rows with everyone's, each once taken for a link."""
    yob, lsoa, _, _ = alone_with_stays(raw)
    her = person_filter(yob, lsoa)
    return {
        "a comma join": f"""
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
            FROM patients q, hospital_admissions h
            WHERE h.person_id IN {her} GROUP BY q.sex""",
        "a LEFT JOIN ON TRUE attached by a later ON (round 29)": f"""
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
            FROM patients q
            LEFT JOIN hospital_admissions h ON TRUE
            LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
            WHERE h.person_id IN {her} GROUP BY q.sex""",
        "a cross join linked in an outer join's ON (round 27)": f"""
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
            FROM patients q CROSS JOIN hospital_admissions h
            LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
            WHERE h.person_id IN {her} GROUP BY q.sex""",
        "her attributes as keys on everyone's rows": f"""
            SELECT q.registration_date AS registered, COUNT(DISTINCT p.person_id) AS people
            FROM patients p LEFT JOIN patients q ON TRUE
            WHERE q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
            GROUP BY q.registration_date""",
        "a link under OR": f"""
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
            FROM patients q JOIN hospital_admissions h
              ON q.person_id = h.person_id OR h.person_id IN {her}
            GROUP BY q.sex""",
        "the pairs inside a derived table": f"""
            SELECT t.sex AS sex, SUM(t.los) AS los
            FROM (SELECT q.person_id, q.sex, h.length_of_stay AS los
                  FROM patients q, hospital_admissions h
                  WHERE h.person_id IN {her}) t
            GROUP BY t.sex""",
        "a join on an attribute": """
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
            FROM patients q JOIN hospital_admissions h ON h.admission_date = q.registration_date
            GROUP BY q.sex""",
    }


@pytest.mark.parametrize("name", [
    "a comma join", "a LEFT JOIN ON TRUE attached by a later ON (round 29)",
    "a cross join linked in an outer join's ON (round 27)",
    "her attributes as keys on everyone's rows", "a link under OR",
    "the pairs inside a derived table", "a join on an attribute",
])
def test_with_the_proof_switched_off_the_engine_still_refuses_the_pairs(
        name, raw, catalogue, engine, monkeypatch):
    sql = attacks(raw)[name]
    with pytest.raises(SqlRejected, match="not all joined on person_id"):
        planned(sql, catalogue)  # the first line holds ...
    monkeypatch.setattr(analysis_module, "check_person_links", lambda scope, cat: None)
    plan = planned(sql, catalogue)  # ... and, without it, the query is planned
    for query in executed(plan):
        with pytest.raises(SqlRejected) as refused:
            engine.execute(query, timeout_s=30, row_cap=10_000)
        assert refused.value.code == "person_link_broken"
        assert "two different people" in refused.value.message


@pytest.mark.parametrize("sql", [
    "SELECT p.sex, SUM(h.length_of_stay) AS los FROM patients p "
    "JOIN hospital_admissions h ON h.person_id = p.person_id GROUP BY p.sex",
    "SELECT p.sex, COUNT(h.person_id) AS stays FROM patients p "
    "LEFT JOIN hospital_admissions h ON h.person_id = p.person_id GROUP BY p.sex",
    "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN deaths d USING (person_id) GROUP BY p.sex",
    "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN (SELECT person_id, COUNT(*) AS stays "
    "FROM hospital_admissions GROUP BY person_id) t ON t.person_id = p.person_id "
    "WHERE t.stays > 2 GROUP BY p.sex",
    "SELECT p.sex, COUNT(*) AS n FROM patients p, deaths d, hospital_admissions h "
    "WHERE d.person_id = p.person_id AND h.person_id = d.person_id GROUP BY p.sex",
])
def test_linked_people_pass_the_check(sql, catalogue, engine):
    """Every row of a real link holds one person (or NULL where an outer join pads): the
    check is there, and the query runs."""
    plan = planned(sql, catalogue)
    assert "error(" in plan.sql.lower()
    for query in executed(plan):
        assert engine.execute(query, timeout_s=30, row_cap=10_000).rows


def test_a_select_of_one_persons_source_carries_no_check(catalogue):
    plan = planned("SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY p.sex", catalogue)
    assert "error(" not in plan.sql.lower()


def test_over_http_the_engines_refusal_is_a_400_in_the_error_shape_and_audited(
        server, raw, monkeypatch):
    """The same second line, through the real app: a 400 person_link_broken with a hint, an
    audit entry that records it, no rows, and the server answers the next query."""
    sql = attacks(raw)["a comma join"]
    monkeypatch.setattr(analysis_module, "check_person_links", lambda scope, cat: None)
    resp = server.query("p.jones", sql + " -- link check over HTTP", "JOINT-PLANNING",
                        "planning")
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "person_link_broken" and error["hint"]
    assert "rows" not in resp.json()
    entry = server.entry_for(resp)
    assert entry["error_code"] == "person_link_broken" and entry["decision"] == "refused"
    monkeypatch.undo()
    ok = server.query("p.jones", "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY p.sex",
                      "JOINT-PLANNING", "planning")
    assert ok.status_code == 200
