"""The breaks of review round 15, kept as tests (docs/security.md lists every round).

All go through a subquery that is a UNION. sqlglot's Scope gives each branch of a UNION a
scope of type UNION, not SUBQUERY, so ``scope.is_subquery`` is false for the branches of
``IN (SELECT ... UNION ALL SELECT ...)``, ``EXISTS (... UNION ALL ...)`` or a scalar
``(SELECT ... UNION ALL SELECT ...)``, and the rule that a subquery over people must be tied
to the outer person by person_id (``check_person_links``) never runs on them. An
uncorrelated subquery over one chosen person then filters everyone's rows by her values: the
cells rest on dozens of people and the group key is her value (round 10's "uncorrelated
scalar subqueries over people", and round 14's SEMI join, again). The second branch
(``WHERE 1 = 0``) adds nothing: it only makes the subquery a UNION.

The second break is a window "within a person" that is not: PARTITION BY a person key taken
from a LEFT JOINed source. Every row the join did not match has NULL there, and all of them,
of every person, fall in one partition, so a window aggregate copies one person's value onto
everyone's rows (``check_windows`` asks only that the partition column be a person key).

A fix may refuse the query, suppress the cells, or count the people behind them properly:
each passes.
"""

from __future__ import annotations

from attack import (
    DP_RESEARCHER,
    NORFOLK,
    PLANNER,
    assert_bounded_without,
    explain_as,
    norfolk_residents,
    not_opted_out,
    refused,
)

NOTHING = "UNION ALL SELECT r.year_of_birth FROM patients r WHERE 1 = 0"


def _birth_years(raw, at_least: int) -> set[int]:
    """Years of birth that hold at least ``at_least`` of the people: groups never withheld."""
    return {y for (y,) in raw.execute(
        f"SELECT year_of_birth FROM ({norfolk_residents()}) GROUP BY 1 "
        f"HAVING COUNT(*) >= {at_least}").fetchall()}


def _unique_people(raw) -> list[tuple]:
    """Norfolk residents alone in their (year of birth, sex, ethnicity) group: (condition on
    alias q, registration date, small area, people in that area)."""
    rows = raw.execute(
        f"WITH r AS ({norfolk_residents()}), u AS (SELECT year_of_birth, sex, ethnicity FROM r "
        "GROUP BY ALL HAVING COUNT(*) = 1), a AS (SELECT lsoa_code, COUNT(*) AS n FROM r "
        "GROUP BY 1) SELECT r.year_of_birth, r.sex, r.ethnicity, r.registration_date, "
        "r.lsoa_code, a.n FROM r JOIN u USING (year_of_birth, sex, ethnicity) "
        "JOIN a USING (lsoa_code) ORDER BY r.year_of_birth, r.sex, r.ethnicity").fetchall()
    return [(f"q.year_of_birth = {yob} AND q.sex = '{sex}' AND q.ethnicity = '{eth}'",
             registered, lsoa, n) for yob, sex, eth, registered, lsoa, n in rows]


def test_a_union_subquery_does_not_release_another_persons_registration_date(server, raw):
    """p.year_of_birth - shift IN (SELECT <part>(q.registration_date) FROM patients q WHERE <q
    is one chosen person> UNION ALL <nothing>) keeps everyone born in one year: the cell rests
    on dozens of people and its key, less the shift, is her registration year, month, day."""
    offset = raw.execute("SELECT MIN(year_of_birth) FROM patients").fetchone()[0]
    years = _birth_years(raw, 20)
    target, registered = next(
        (t, d) for t, d, _, _ in _unique_people(raw)
        if d.year in years and d.month + offset in years and d.day + offset in years)
    found = []
    for part, shift in (("YEAR", 0), ("MONTH", offset), ("DAY", offset)):
        sql = (f"SELECT p.year_of_birth AS k, COUNT(*) AS n FROM patients p WHERE "
               f"p.year_of_birth - {shift} IN (SELECT {part}(q.registration_date) FROM "
               f"patients q WHERE {target} {NOTHING}) GROUP BY k")
        resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
        if refused(resp):
            return  # refusing is as good as suppressing
        rows = server.released(resp, "p.jones")["rows"]
        found.append([k - shift for k, n in rows if n is not None])
    assert found != [[registered.year], [registered.month], [registered.day]], (
        f"one person's registration date {registered} is released")


def test_a_union_subquery_does_not_show_where_another_person_lives(server, raw):
    """p.lsoa_code IN (SELECT q.lsoa_code FROM patients q WHERE <q is one chosen person>
    UNION ALL <nothing>): the one small area released is hers."""
    target, _, lsoa, _ = next(p for p in _unique_people(raw) if p[3] >= 10)
    sql = (f"SELECT p.lsoa_code AS area, COUNT(*) AS n FROM patients p WHERE p.lsoa_code IN "
           f"(SELECT q.lsoa_code FROM patients q WHERE {target} "
           "UNION ALL SELECT r.lsoa_code FROM patients r WHERE 1 = 0) GROUP BY area")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = {a for a, n in server.released(resp, "p.jones")["rows"] if n is not None}
    assert shown != {lsoa}, f"one person's small area {lsoa} is released"


def test_a_scalar_union_subquery_does_not_release_another_persons_value(server, raw):
    """The same as a scalar subquery: p.year_of_birth = (SELECT YEAR(q.registration_date) ...
    UNION ALL <nothing>)."""
    years = _birth_years(raw, 20)
    target, registered = next((t, d) for t, d, _, _ in _unique_people(raw) if d.year in years)
    sql = (f"SELECT p.year_of_birth AS k, COUNT(*) AS n FROM patients p WHERE p.year_of_birth = "
           f"(SELECT YEAR(q.registration_date) FROM patients q WHERE {target} {NOTHING}) "
           "GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = [k for k, n in server.released(resp, "p.jones")["rows"] if n is not None]
    assert shown != [registered.year], (
        f"one person's registration year {registered.year} is released")


def test_an_exists_union_on_one_persons_row_is_bounded_under_dp(server, raw):
    """dp: EXISTS (SELECT 1 FROM hospital_admissions h WHERE <only one person's admission>
    UNION ALL <nothing>) keeps everyone if that person is in the data and no one if not.
    The noise is calibrated for one person moving the count by cells * rows; she moves it by
    thousands."""
    stay, person = raw.execute(
        f"SELECT length_of_stay, MIN(person_id) FROM hospital_admissions WHERE person_id IN "
        f"(SELECT person_id FROM ({not_opted_out()})) GROUP BY 1 "
        "HAVING COUNT(DISTINCT person_id) = 1 ORDER BY 1 DESC LIMIT 1").fetchone()
    sql = ("SELECT p.sex AS k, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM "
           f"hospital_admissions h WHERE h.length_of_stay = {stay} UNION ALL SELECT 1 FROM "
           "hospital_admissions h2 WHERE 1 = 0) GROUP BY k")
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    assert_bounded_without(raw, explained, "hospital_admissions", person)


# -- windows over a person key that an outer join leaves NULL ---------------------------------

def test_a_window_partitioned_by_an_outer_joined_person_key_stays_within_a_person(
        server, raw):
    """A window must be partitioned by the person key, but a person key from a LEFT JOINed
    source is NULL on every row the join did not match, and all those rows, of every person,
    are one partition. LEFT JOIN patients q ON q.person_id = p.person_id AND 1 = 0 leaves
    q.person_id NULL everywhere: MAX(CASE WHEN <p is one chosen person> THEN
    p.registration_date END) OVER (PARTITION BY q.person_id) puts her registration date on
    everyone's row, and the one released key, resting on every resident, is her date."""
    target, registered = next((t.replace("q.", "p."), d) for t, d, _, _ in _unique_people(raw))
    sql = (f"SELECT w.v AS k, COUNT(*) AS n FROM (SELECT p.person_id, MAX(CASE WHEN {target} "
           "THEN p.registration_date END) OVER (PARTITION BY q.person_id) AS v FROM patients p "
           "LEFT JOIN patients q ON q.person_id = p.person_id AND 1 = 0) w GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = [k for k, n in server.released(resp, "p.jones")["rows"] if n is not None]
    assert shown != [registered.isoformat()], (
        f"one person's registration date {registered} is released")


def test_a_window_over_people_without_admissions_stays_within_a_person(server, raw):
    """The same with the plainest join: patients p LEFT JOIN hospital_admissions h ON
    h.person_id = p.person_id, PARTITION BY h.person_id. Everyone without an admission is in
    the NULL partition, so a chosen one of them (with no admissions) gives her value to all."""
    target, registered = next(
        (t.replace("q.", "p."), d) for t, d, _, _ in _unique_people(raw)
        if not raw.execute(
            "SELECT COUNT(*) FROM hospital_admissions h JOIN patients p ON p.person_id = "
            f"h.person_id WHERE {t.replace('q.', 'p.')} AND p.local_authority_code = "
            f"'{NORFOLK}'").fetchone()[0])
    sql = (f"SELECT w.v AS k, COUNT(*) AS n FROM (SELECT p.person_id, MAX(CASE WHEN {target} "
           "THEN p.registration_date END) OVER (PARTITION BY h.person_id) AS v FROM patients p "
           "LEFT JOIN hospital_admissions h ON h.person_id = p.person_id) w GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = [k for k, n in server.released(resp, "p.jones")["rows"]
             if n is not None and k is not None]
    assert shown != [registered.isoformat()], (
        f"one person's registration date {registered} is released")


# -- the neighbours, which must keep working -------------------------------------------------

def test_a_window_by_the_outer_person_over_a_left_join_is_still_answered(server, raw):
    """PARTITION BY p.person_id, the person of the preserved side, is within a person whether
    or not the join matched: the usual first-admission window must keep working."""
    sql = ("SELECT w.first AS k, COUNT(*) AS n FROM (SELECT p.person_id, CASE WHEN ROW_NUMBER() "
           "OVER (PARTITION BY p.person_id ORDER BY h.admission_date) = 1 THEN 'first' ELSE "
           "'later' END AS first FROM patients p LEFT JOIN hospital_admissions h ON "
           "h.person_id = p.person_id) w GROUP BY k")
    body = server.released(server.query(*PLANNER[:1], sql, *PLANNER[1:]), PLANNER[0])
    people = raw.execute(f"SELECT COUNT(*) FROM ({norfolk_residents()})").fetchone()[0]
    shown = {k: n for k, n in body["rows"] if n is not None}
    # the column holds 'later' rows too, several per person: its base is the larger one
    base = body["disclosure"].get("column_rounding_bases", {}).get("n", 5)
    assert shown.get("first") == base * round(people / base)


def test_a_union_of_person_keys_in_an_in_subquery_is_still_answered(server, raw):
    """person_id IN (SELECT person_id ... UNION SELECT person_id ...) is membership of the same
    person, the form the hints recommend: a fix must not refuse it if it was accepted."""
    sql = ("SELECT p.sex AS k, COUNT(*) AS n FROM patients p WHERE p.person_id IN (SELECT "
           "h.person_id FROM hospital_admissions h UNION SELECT d.person_id FROM deaths d) "
           "GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # not accepted before either: nothing to keep
    truth = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) p WHERE person_id IN (SELECT "
        "person_id FROM hospital_admissions UNION SELECT person_id FROM deaths) GROUP BY 1"
    ).fetchall())
    shown = {k: n for k, n in server.released(resp, "p.jones")["rows"] if n is not None}
    assert shown and all(n == 5 * round(truth[k] / 5) for k, n in shown.items())
