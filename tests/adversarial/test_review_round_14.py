"""The breaks of review round 14, kept as tests (docs/security.md lists every round).

All four go through SEMI and ANTI joins. sqlglot's Scope leaves the right-hand side of a
SEMI/ANTI join out of ``selected_sources`` (its columns are not selected), and every rule
that decides whose rows a select holds reads ``selected_sources``: the person-link check,
the lookup check, the row person, the dp person grain. So ``patients p SEMI JOIN patients q
ON <q is one chosen person> AND <p's attribute> = <a value of q>`` is an attribute join
between two people that no rule sees: everyone's rows are kept or dropped by one person's
values, the cells rest on everyone, and a group key shows the one person's value.

A fix may refuse the query, suppress the cells, or count the people behind them properly:
each passes.
"""

from __future__ import annotations

from attack import (
    DP_RESEARCHER,
    PLANNER,
    assert_bounded_without,
    explain_as,
    norfolk_residents,
    not_opted_out,
    refused,
)


def _birth_years(raw, people_sql: str, at_least: int) -> set[int]:
    """Years of birth that hold at least ``at_least`` of the people: groups never withheld."""
    return {y for (y,) in raw.execute(
        f"SELECT year_of_birth FROM ({people_sql}) GROUP BY 1 HAVING COUNT(*) >= {at_least}"
    ).fetchall()}


def _unique_person_with_stays(raw, offset: int) -> tuple[str, int, list[int]]:
    """A Norfolk resident who is alone in her (year of birth, sex, ethnicity) group and has
    hospital stays, every one of which maps (stay + offset) onto a well-populated birth year:
    her condition on alias q, her person_id (for the oracle only), and her stays."""
    years = _birth_years(raw, norfolk_residents(), 20)
    rows = raw.execute(
        f"WITH r AS ({norfolk_residents()}), u AS (SELECT year_of_birth, sex, ethnicity FROM r "
        "GROUP BY ALL HAVING COUNT(*) = 1) "
        "SELECT r.person_id, r.year_of_birth, r.sex, r.ethnicity, "
        "list(h.length_of_stay ORDER BY h.length_of_stay) FROM r JOIN u USING "
        "(year_of_birth, sex, ethnicity) JOIN hospital_admissions h ON h.person_id = r.person_id "
        "GROUP BY ALL ORDER BY COUNT(*) DESC, r.person_id").fetchall()
    for pid, yob, sex, eth, stays in rows:
        if all(s + offset in years for s in stays) and len(set(stays)) >= 2:
            return (f"q.year_of_birth = {yob} AND q.sex = '{sex}' AND q.ethnicity = '{eth}'",
                    pid, stays)
    raise AssertionError("no unique person with stays in the test data")


def test_a_semi_join_does_not_copy_one_persons_stays_onto_everyones_rows(server, raw):
    """patients p SEMI JOIN (one chosen person's admissions) ON p.year_of_birth - 1925 =
    h.length_of_stay keeps the people born in 1925 + each of her stays. Every cell rests on
    dozens of people, and the group keys, less 1925, are her lengths of stay, exactly."""
    offset = raw.execute("SELECT MIN(year_of_birth) FROM patients").fetchone()[0]
    target, _, stays = _unique_person_with_stays(raw, offset)
    sql = (f"SELECT p.year_of_birth AS k, COUNT(*) AS n FROM patients p SEMI JOIN "
           f"(SELECT h.person_id, h.length_of_stay FROM hospital_admissions h JOIN patients q "
           f"ON q.person_id = h.person_id WHERE {target}) x "
           f"ON p.year_of_birth - {offset} = x.length_of_stay GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refusing is as good as suppressing
    body = server.released(resp, "p.jones")
    shown = sorted(k - offset for k, n in body["rows"] if n is not None)
    assert shown != sorted(set(stays)), (
        f"one person's lengths of stay {stays} are released as group keys: {body['rows']}")


def test_a_semi_join_on_another_person_does_not_release_her_registration_date(server, raw):
    """The same through patients itself: one unique person's registration date, as year,
    month and day, each read off the one birth year the semi join keeps."""
    offset = raw.execute("SELECT MIN(year_of_birth) FROM patients").fetchone()[0]
    years = _birth_years(raw, norfolk_residents(), 20)
    yob, sex, eth, registered = raw.execute(
        f"WITH r AS ({norfolk_residents()}) SELECT year_of_birth, sex, ethnicity, "
        "registration_date FROM r WHERE (year_of_birth, sex, ethnicity) IN (SELECT "
        "(year_of_birth, sex, ethnicity) FROM r GROUP BY ALL HAVING COUNT(*) = 1) "
        "ORDER BY year_of_birth, sex, ethnicity").fetchall()[0]
    assert registered.year in years and registered.month + offset in years \
        and registered.day + offset in years
    target = f"q.year_of_birth = {yob} AND q.sex = '{sex}' AND q.ethnicity = '{eth}'"
    found = []
    for part, shift in (("YEAR", 0), ("MONTH", offset), ("DAY", offset)):
        sql = (f"SELECT p.year_of_birth AS k, COUNT(*) AS n FROM patients p SEMI JOIN "
               f"patients q ON {target} AND p.year_of_birth - {shift} = "
               f"{part}(q.registration_date) GROUP BY k")
        resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
        if refused(resp):
            return  # refused
        rows = server.released(resp, "p.jones")["rows"]
        found.append([k - shift for k, n in rows if n is not None])
    assert found != [[registered.year], [registered.month], [registered.day]], (
        f"one person's registration date {registered} is released")


def test_an_anti_join_on_another_person_does_not_show_where_she_lives(server, raw):
    """ANTI JOIN patients q ON <q is one chosen person> AND q.lsoa_code = p.lsoa_code drops
    her neighbours: the one small area missing from a table of every area is hers."""
    yob, sex, eth, lsoa = raw.execute(
        f"WITH r AS ({norfolk_residents()}), a AS (SELECT lsoa_code FROM r GROUP BY 1 "
        "HAVING COUNT(*) >= 10) SELECT year_of_birth, sex, ethnicity, lsoa_code FROM r "
        "WHERE lsoa_code IN (SELECT lsoa_code FROM a) AND (year_of_birth, sex, ethnicity) IN "
        "(SELECT (year_of_birth, sex, ethnicity) FROM r GROUP BY ALL HAVING COUNT(*) = 1) "
        "ORDER BY year_of_birth, sex, ethnicity").fetchall()[0]
    target = f"q.year_of_birth = {yob} AND q.sex = '{sex}' AND q.ethnicity = '{eth}'"
    shown = []
    for join in ("SEMI", "ANTI"):
        sql = (f"SELECT p.lsoa_code AS area, COUNT(*) AS n FROM patients p {join} JOIN "
               f"patients q ON {target} AND q.lsoa_code = p.lsoa_code GROUP BY area")
        resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
        if refused(resp):
            return  # refused
        shown.append({a for a, n in server.released(resp, "p.jones")["rows"]})
    semi, anti = shown
    # her area holds at least ten people: without the join it is a released row
    assert semi != {lsoa} and not (anti and lsoa not in anti), (
        f"one person's small area {lsoa} is released: SEMI keeps {semi}, ANTI drops it")


def test_a_semi_join_on_one_persons_row_is_bounded_under_dp(server, raw):
    """dp: COUNT(*) FROM patients p SEMI JOIN hospital_admissions h ON <a condition only one
    person's admission meets> counts everyone if that person is in the data and no one if
    not. The noise is calibrated for one person moving the count by cells * rows (5); she
    moves it by thousands."""
    stay, person = raw.execute(
        f"SELECT length_of_stay, MIN(person_id) FROM hospital_admissions WHERE person_id IN "
        f"(SELECT person_id FROM ({not_opted_out()})) GROUP BY 1 "
        "HAVING COUNT(DISTINCT person_id) = 1 ORDER BY 1 DESC LIMIT 1").fetchone()
    sql = ("SELECT p.sex AS k, COUNT(*) AS n FROM patients p SEMI JOIN hospital_admissions h "
           f"ON h.length_of_stay = {stay} GROUP BY k")
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    assert_bounded_without(raw, explained, "hospital_admissions", person)


# -- the neighbours, closed by the same fixes ------------------------------------------------

def test_semi_and_anti_joins_are_refused_with_the_forms_to_use(server):
    for kind in ("SEMI", "ANTI"):
        sql = (f"SELECT p.sex, COUNT(*) AS n FROM patients p {kind} JOIN gp_events e "
               "ON e.person_id = p.person_id GROUP BY p.sex")
        resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert f"{kind} JOIN is not allowed" in error["message"] and "EXISTS" in error["hint"]
        assert server.entry_for(resp)["decision"] == "refused"


def test_distinct_on_across_people_is_refused(server):
    """DISTINCT ON (area) ... ORDER BY a date keeps the first person of each area by someone's
    value: a choice across people, like LIMIT in a subquery (round 11)."""
    sql = ("SELECT f.sex, COUNT(*) AS n FROM (SELECT DISTINCT ON (p.lsoa_code) p.person_id, "
           "p.sex FROM patients p ORDER BY p.lsoa_code, p.registration_date) f GROUP BY f.sex")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    assert resp.status_code == 400, resp.text
    assert "DISTINCT ON" in resp.json()["error"]["message"]


def test_distinct_on_within_a_person_picks_her_first_event(server, raw):
    sql = ("SELECT f.snomed_code, COUNT(*) AS people FROM (SELECT DISTINCT ON (e.person_id) "
           "e.person_id, e.snomed_code FROM gp_events e ORDER BY e.event_date, e.snomed_code) f "
           "GROUP BY f.snomed_code")
    body = server.released(server.query(*PLANNER[:1], sql, *PLANNER[1:]), PLANNER[0])
    truth = dict(raw.execute(
        "SELECT snomed_code, COUNT(*) FROM (SELECT DISTINCT ON (person_id) person_id, "
        "snomed_code FROM gp_events WHERE person_id IN (SELECT person_id FROM "
        f"({norfolk_residents()})) ORDER BY event_date, snomed_code) GROUP BY 1"
    ).fetchall())
    shown = {k: n for k, n in body["rows"] if n is not None}
    assert shown and all(n == 5 * round(truth[k] / 5) for k, n in shown.items())
