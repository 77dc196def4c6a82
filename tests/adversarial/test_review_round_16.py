"""The breaks of review round 16, kept as tests (docs/security.md lists every round).

``outer.person_id [NOT] IN (SELECT x.person_id FROM ...)`` is exempt from the rule that a
subquery over people must be tied to the outer person (``_is_person_membership``): it is
membership of the same person, whatever the subquery reads. That holds for IN, but NOT IN
has SQL's three-valued logic: if the subquery yields a single NULL, ``person_id NOT IN (...)``
is NULL, never true, for every row that is not in the set. A person key projected from the
padded side of a LEFT JOIN is NULL on every unmatched row, so

    p.person_id NOT IN (SELECT h.person_id FROM patients x
                        LEFT JOIN hospital_admissions h
                               ON h.person_id = x.person_id AND <a condition on h>
                        WHERE <x is one chosen person>)

keeps everyone but her when her admissions meet the condition, and no one when they do not:
one bit of one person's record, amplified to a cell resting on every resident. One FILTER
column per condition reads several bits in one query (her length of stay, her diagnosis).
Under ``dp`` the same subquery, which is empty without her, lets her move a count from
everyone to zero.

The second break is round 15's window again, one derived table further out. A window must be
partitioned by a person key from a source no outer join pads (``check_windows`` asks
``padded_sources`` of the window's own select), but a derived table can do the padding and
pass the NULL key on: ``d`` selects ``q.person_id AS pid`` from ``patients p LEFT JOIN
patients q ON q.person_id = p.person_id AND 1 = 0``, so ``d.pid`` is NULL on every row, is a
"person key" by its origin, and ``d`` is read in the window's select without any outer join.
``OVER (PARTITION BY d.pid)`` is one partition of everyone.

A fix may refuse the query, suppress the cells, or count the people behind them properly
(NOT IN over person keys read as NOT EXISTS, ignoring NULLs): each passes.
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


def _unique_admitted(raw, people: str) -> tuple[str, int, int, str]:
    """A person alone in their (year of birth, sex, ethnicity) group among ``people`` who has
    hospital admissions: (condition on alias x, person_id, longest stay, a diagnosis)."""
    yob, sex, eth, pid, stay, diagnosis = raw.execute(
        f"WITH r AS ({people}), u AS (SELECT year_of_birth, sex, ethnicity FROM r "
        "GROUP BY ALL HAVING COUNT(*) = 1) SELECT r.year_of_birth, r.sex, r.ethnicity, "
        "r.person_id, MAX(h.length_of_stay), MIN(h.primary_diagnosis) FROM r "
        "JOIN u USING (year_of_birth, sex, ethnicity) JOIN hospital_admissions h "
        "ON h.person_id = r.person_id GROUP BY ALL HAVING MAX(h.length_of_stay) >= 3 "
        "ORDER BY r.person_id LIMIT 1").fetchone()
    return (f"x.year_of_birth = {yob} AND x.sex = '{sex}' AND x.ethnicity = '{eth}'",
            pid, stay, diagnosis)


def _not_in(target: str, on: str) -> str:
    return ("p.person_id NOT IN (SELECT h.person_id FROM patients x LEFT JOIN "
            f"hospital_admissions h ON h.person_id = x.person_id AND {on} WHERE {target})")


def test_not_in_a_padded_person_key_does_not_read_another_persons_record(server, raw):
    """Each column is every resident (less one) if the chosen person's admissions meet its
    condition, and 0 if not: her longest stay and a diagnosis, read bit by bit in one query."""
    target, _, stay, diagnosis = _unique_admitted(raw, norfolk_residents())
    conditions = {
        "stay_is_hers": f"h.length_of_stay = {stay}",
        "stay_is_longer": f"h.length_of_stay > {stay}",
        "stay_at_least_half": f"h.length_of_stay >= {stay // 2}",
        "diagnosis_is_hers": f"h.primary_diagnosis = '{diagnosis}'",
        "diagnosis_is_not": "h.primary_diagnosis = 'ZZZ'",
    }
    columns = ", ".join(f"COUNT(*) FILTER (WHERE {_not_in(target, on)}) AS {name}"
                        for name, on in conditions.items())
    sql = f"SELECT {columns} FROM patients p"
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refusing is as good as suppressing
    (row,) = server.released(resp, "p.jones")["rows"]
    shown = dict(zip(conditions, row, strict=True))
    hers = [shown[c] for c in ("stay_is_hers", "stay_at_least_half", "diagnosis_is_hers")]
    not_hers = [shown[c] for c in ("stay_is_longer", "diagnosis_is_not")]
    assert not (all(n is not None and n > 0 for n in hers) and all(n == 0 for n in not_hers)), (
        f"one person's longest stay ({stay} days) and diagnosis ({diagnosis}) are read from "
        f"cells resting on every resident: {shown}")


def test_not_in_a_padded_person_key_is_bounded_under_dp(server, raw):
    """dp: the subquery holds a NULL if the chosen person is in the data and is empty if she is
    not, so she moves the count from everyone to zero. The noise is calibrated for one person
    moving it by cells * rows."""
    target, person, _, _ = _unique_admitted(raw, not_opted_out())
    sql = (f"SELECT p.sex AS k, COUNT(*) AS n FROM patients p WHERE {_not_in(target, '1 = 0')} "
           "GROUP BY k")
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    assert_bounded_without(raw, explained, "patients", person)


# -- the neighbours, which must keep working -------------------------------------------------

def test_not_in_a_set_of_person_keys_is_still_answered(server, raw):
    """p.person_id NOT IN (SELECT h.person_id FROM hospital_admissions h): people never
    admitted, the form the hints recommend. A fix must keep answering it correctly."""
    sql = ("SELECT p.sex AS k, COUNT(*) AS n FROM patients p WHERE p.person_id NOT IN "
           "(SELECT h.person_id FROM hospital_admissions h) GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    body = server.released(resp, "p.jones")
    truth = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) p WHERE person_id NOT IN (SELECT "
        "h.person_id FROM hospital_admissions h JOIN patients q ON q.person_id = h.person_id "
        f"WHERE q.local_authority_code = '{NORFOLK}') GROUP BY 1").fetchall())
    shown = {k: n for k, n in body["rows"] if n is not None}
    assert shown and all(n == 5 * round(truth[k] / 5) for k, n in shown.items())


# -- a window partitioned by a person key a derived table padded ------------------------------

def _unique_people(raw) -> list[tuple[str, object]]:
    """Norfolk residents alone in their (year of birth, sex, ethnicity) group: (condition on
    alias d, registration date)."""
    rows = raw.execute(
        f"WITH r AS ({norfolk_residents()}), u AS (SELECT year_of_birth, sex, ethnicity FROM r "
        "GROUP BY ALL HAVING COUNT(*) = 1) SELECT r.year_of_birth, r.sex, r.ethnicity, "
        "r.registration_date FROM r JOIN u USING (year_of_birth, sex, ethnicity) "
        "ORDER BY r.year_of_birth, r.sex, r.ethnicity").fetchall()
    return [(f"d.year_of_birth = {yob} AND d.sex = '{sex}' AND d.ethnicity = '{eth}'", day)
            for yob, sex, eth, day in rows]


def test_a_window_partitioned_by_a_person_key_padded_in_a_derived_table_stays_within_a_person(
        server, raw):
    """d carries q.person_id from a LEFT JOIN that never matches: NULL on every row. The
    window's own select joins nothing, so the padding is not seen, and MAX(CASE WHEN <d is
    one chosen person> THEN d.registration_date END) OVER (PARTITION BY d.pid) puts her
    registration date on everyone's row: the one released key, resting on every resident,
    is her date."""
    target, registered = _unique_people(raw)[0]
    sql = (f"SELECT w.v AS k, COUNT(*) AS n FROM (SELECT d.person_id, MAX(CASE WHEN {target} "
           "THEN d.registration_date END) OVER (PARTITION BY d.pid) AS v FROM (SELECT "
           "p.person_id, p.year_of_birth, p.sex, p.ethnicity, p.registration_date, q.person_id "
           "AS pid FROM patients p LEFT JOIN patients q ON q.person_id = p.person_id AND 1 = 0) "
           "d) w GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = [k for k, n in server.released(resp, "p.jones")["rows"] if n is not None]
    assert shown != [registered.isoformat()], (
        f"one person's registration date {registered} is released")


def test_a_window_over_a_cte_that_padded_the_person_key_stays_within_a_person(server, raw):
    """The same through a CTE, and with the plainest join: people LEFT JOIN their admissions,
    the CTE passing h.person_id on. Everyone without an admission shares the NULL partition."""
    target, registered = next(
        (t, day) for t, day in _unique_people(raw)
        if not raw.execute(
            "SELECT COUNT(*) FROM hospital_admissions h JOIN patients d ON d.person_id = "
            f"h.person_id WHERE {t} AND d.local_authority_code = '{NORFOLK}'").fetchone()[0])
    sql = ("WITH d AS (SELECT p.person_id, p.year_of_birth, p.sex, p.ethnicity, "
           "p.registration_date, h.person_id AS pid FROM patients p LEFT JOIN "
           "hospital_admissions h ON h.person_id = p.person_id) "
           f"SELECT w.v AS k, COUNT(*) AS n FROM (SELECT d.person_id, MAX(CASE WHEN {target} "
           "THEN d.registration_date END) OVER (PARTITION BY d.pid) AS v FROM d) w GROUP BY k")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    shown = [k for k, n in server.released(resp, "p.jones")["rows"]
             if n is not None and k is not None]
    assert shown != [registered.isoformat()], (
        f"one person's registration date {registered} is released")


# -- the neighbours, closed or kept by the same fix --------------------------------------------

def test_a_padded_set_is_refused_with_the_fix_and_accepted_once_nulls_are_dropped(server, raw):
    padded = ("SELECT h.person_id FROM patients x LEFT JOIN hospital_admissions h "
              "ON h.person_id = x.person_id AND h.length_of_stay >= 8")
    sql = ("SELECT p.sex AS k, COUNT(*) AS n FROM patients p WHERE p.person_id NOT IN "
           f"({padded}{{where}}) GROUP BY k")
    resp = server.query(*PLANNER[:1], sql.format(where=""), *PLANNER[1:])
    assert resp.status_code == 400, resp.text
    assert "IS NOT NULL" in resp.json()["error"]["hint"]
    resp = server.query(*PLANNER[:1], sql.format(where=" WHERE h.person_id IS NOT NULL"),
                        *PLANNER[1:])
    body = server.released(resp, "p.jones")
    truth = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) p WHERE person_id NOT IN (SELECT "
        "h.person_id FROM hospital_admissions h JOIN patients q ON q.person_id = h.person_id "
        f"WHERE q.local_authority_code = '{NORFOLK}' AND h.length_of_stay >= 8) GROUP BY 1"
    ).fetchall())
    shown = {k: n for k, n in body["rows"] if n is not None}
    assert shown and all(n == 5 * round(truth[k] / 5) for k, n in shown.items())


def test_a_window_over_a_derived_table_of_people_still_partitions_by_them(server, raw):
    """The person key passed on by a derived table with no outer join is never NULL."""
    sql = ("SELECT w.first AS k, COUNT(*) AS n FROM (SELECT d.person_id, CASE WHEN "
           "ROW_NUMBER() OVER (PARTITION BY d.person_id ORDER BY d.admission_date) = 1 THEN "
           "'first' ELSE 'later' END AS first FROM (SELECT h.person_id, h.admission_date FROM "
           "hospital_admissions h) d) w GROUP BY k")
    body = server.released(server.query(*PLANNER[:1], sql, *PLANNER[1:]), "p.jones")
    assert {k for k, _ in body["rows"]} == {"first", "later"}
