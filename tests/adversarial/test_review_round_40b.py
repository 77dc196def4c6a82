"""Review round 40b: a fresh attack on what computes within one person and then reaches a
released cell (windows and MIN/MAX per person, DISTINCT ON, per-person HAVING, CASE keys from
one person's values, indicator sums, distinct counts of people), on every demo user.

**1. An aggregate inside a subquery in the outer ORDER BY is computed by the engine over the
outer query's cells: the released rows are sorted by an exact, hidden value of one person**
(``gateway/sql/rules/released.py``: ``check_outer`` and ``_names_aggregate``, which find the
aggregates of an ORDER BY term with ``aggregates_of``; ``gateway/sql/tree.py``:
``aggregates_of`` keeps only aggregates whose nearest SELECT is the outer query).

DuckDB, like PostgreSQL, binds an aggregate whose arguments are all outer references to the
*outer* query: in ``ORDER BY (SELECT SUM(p.x))`` the SUM is the outer query's, one per cell,
over the cell's rows, and the subquery only returns it. The analysis sees the SUM inside the
subquery (its nearest SELECT), so it is no aggregate of the outer query, the ORDER BY passes
as "not on an aggregate", and the subquery itself reads no table, so no person-link rule
applies (and SUM, unlike MIN/MAX, needs no per-person GROUP BY). The rewrite keeps the ORDER
BY as written, so the released rows come sorted by an exact aggregate of each cell, before
suppression and rounding: the ranking of suppressed cells that rounds 17, 22 and 34 closed
for ``ORDER BY ALL``, ``ORDER BY c % 5`` and ``ORDER BY (2)``, and more, since the value is
chosen by the caller. With ``SUM(CASE WHEN <her> THEN <a value of hers> ELSE 0 END)`` the
cell she is in (resting on hundreds of people) carries her exact value; placed among the
other cells by a CASE on the group key, her cell's position in the released table is that
value. The Norfolk planner's query (JOINT-PLANNING, threshold)::

    SELECT p.year_of_birth AS yob, COUNT(*) AS n FROM patients p
    GROUP BY p.year_of_birth
    ORDER BY CASE WHEN p.year_of_birth = <her year>
                  THEN 0.5 + (SELECT SUM(CASE WHEN p.sex = '<her sex>'
                                              AND p.lsoa_code = '<her LSOA>'
                                         THEN MONTH(p.registration_date) ELSE 0 END))
                  WHEN p.year_of_birth > <her year> THEN p.year_of_birth - <y0> - 1
                  ELSE p.year_of_birth - <y0> END

released all 102 year-of-birth rows (cells of 20 to 115 people after rounding; her year's
cell 50), with her year's row placed just after the row of rank <her month>: three such
queries (year, month, day) gave one resident's exact registration date against raw DuckDB
(demo data, 20,000 people: person 3, a woman born 1953 in E01100108, 2024-01-22, read as
2024-01-22; test data: person 2, 2022-01-15, read exactly). In the plainest form, ``ORDER BY
(SELECT COUNT(p.year_of_birth))`` sorts 421 released areas by their exact counts. The same ORDER BY is accepted for the
ICB analyst, the Suffolk planner, the outbreak project and the cell_key cohort study
(PRJ-0077), where a binary search with two released rows (F and M, each ordered by her value
against a threshold) reads a cohort member's registration date, one comparison a query. dp
refuses any ORDER BY that is not a key. A fix: refuse in the outer query's ORDER BY any
aggregate the engine would bind to the outer query (an aggregate in a subquery whose
arguments reach only the outer query's columns), or refuse subqueries in the outer ORDER BY
altogether (it may name group keys only, as dp's does).

Fixed twice over: the outer ORDER BY (and a UNION's) takes no subquery
(``_refuse_a_subquery_in_order`` in ``gateway/sql/rules/released.py``), and an aggregate whose
columns are all an enclosing query's is refused wherever it stands (``check_aggregate_owners``
in ``gateway/sql/rules/binding.py``; ``tests/unit/gateway/test_aggregate_owners.py`` switches
the first off).

What held (kept below as passing regression tests):

- Windows partitioned by person (ROW_NUMBER, RANK, LAG, LEAD, framed SUM) in derived tables
  and CTEs: the keys built from them rest on the people whose own rows give them, and a key
  of fewer than 8 people is withheld whole (a key of the 57th event, the LAG gap of a chosen
  resident).
- Per-person MIN/MAX (grouped by person_id), DISTINCT ON (person_id) and per-person HAVING:
  the values are per person; a MIN or MAX anywhere else is refused, including in a FROM-less
  subquery of the outer ORDER BY (only SUM, COUNT and AVG passed there: finding 1).
- An aggregate with only outer references elsewhere: the engine refuses it in FILTER, WHERE,
  GROUP BY, JOIN ON, a LATERAL subquery and LIMIT (binder errors, 400s); a derived table
  grouped by person binds it per person.
- GROUPING SETS or ROLLUP without the person key in a derived table (which would make the
  person key NULL on rows the analysis takes for one person's): the person key may stand
  only bare in GROUP BY, so every set holds it.
- ``COUNT(DISTINCT CASE WHEN ... THEN person_id END)`` with a padded source's key, indicator
  sums of ``1.0``/``TRUE``/``-0``: counted as people or refused.
"""

from __future__ import annotations

import datetime as dt

import pytest
from attack import (
    PLANNER,
    RESEARCHER,
    cohort,
    norfolk_residents,
    query_as,
    refused,
)

# -- 1. an aggregate in a subquery of the outer ORDER BY --------------------------------------


def _target(raw, people: str) -> tuple[int, int, str, str, dt.date]:
    """A person of the caller's people that (year of birth, sex, LSOA) single out, in a
    year-of-birth cell of many people: the attacker knows these three facts about her."""
    row = raw.execute(f"""
        WITH n AS ({people})
        SELECT person_id, year_of_birth, sex, lsoa_code, registration_date FROM n
        WHERE (year_of_birth, sex, lsoa_code) IN (
                SELECT (year_of_birth, sex, lsoa_code) FROM n GROUP BY ALL HAVING COUNT(*) = 1)
          AND year_of_birth IN (SELECT year_of_birth FROM n GROUP BY ALL HAVING COUNT(*) >= 40)
          AND YEAR(registration_date) >= 1950
        ORDER BY person_id LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    return row


def _her(sex: str, lsoa: str) -> str:
    return f"p.sex = '{sex}' AND p.lsoa_code = '{lsoa}'"


def _placed(server, who, yob: int, y0: int, her: str, value: str) -> float | None:
    """One query: the year-of-birth table, her year's row placed at ``value + 0.5`` among
    the others, which sort by their rank from ``y0``. Returns the value read back from the
    released order (the rank of the row before hers), or None if refused."""
    sql = f"""SELECT p.year_of_birth AS yob, COUNT(*) AS n FROM patients p
        GROUP BY p.year_of_birth
        ORDER BY CASE WHEN p.year_of_birth = {yob}
                      THEN 0.5 + (SELECT SUM(CASE WHEN {her} THEN {value} ELSE 0 END))
                      WHEN p.year_of_birth > {yob} THEN p.year_of_birth - {y0} - 1
                      ELSE p.year_of_birth - {y0} END"""
    resp = query_as(server, who, sql)
    if refused(resp):
        return None
    years = [r[0] for r in resp.json()["rows"]]
    if yob not in years:
        return None
    i = years.index(yob)
    if i == 0:
        return 0
    before = years[i - 1]
    return before - y0 - (1 if before > yob else 0)


def test_order_by_an_outer_aggregate_in_a_subquery_does_not_release_a_registration_date(
        server, raw):
    """Finding 1 (threshold, the Norfolk planner): three queries, each a year-of-birth table
    whose row order places her year's row by a SUM the engine computes over each cell; the
    order must not give her registration date."""
    pid, yob, sex, lsoa, truth = _target(raw, norfolk_residents())
    y0 = raw.execute(f"SELECT MIN(year_of_birth) - 1 FROM ({norfolk_residents()})").fetchone()[0]
    her = _her(sex, lsoa)
    year = _placed(server, PLANNER, yob, y0, her, "YEAR(p.registration_date) - 1950")
    month = _placed(server, PLANNER, yob, y0, her, "MONTH(p.registration_date)")
    day = _placed(server, PLANNER, yob, y0, her, "DAY(p.registration_date)")
    if None in (year, month, day):
        return  # refused: safe
    read = (int(1950 + year), int(month), int(day))
    assert read != (truth.year, truth.month, truth.day), (
        f"the released order gave person {pid}'s registration date exactly: {read} "
        f"(raw DuckDB: {truth}), from cells of many people")


def test_order_by_an_outer_aggregate_ranks_the_exact_counts(server, raw):
    """Finding 1, its plainest form: ORDER BY (SELECT COUNT(p.year_of_birth)) sorts the cells
    by their exact counts, suppressed and rounded alike (as ORDER BY ALL did in round 17)."""
    sql = ("SELECT p.lsoa_code AS lsoa, COUNT(*) AS n FROM patients p GROUP BY p.lsoa_code "
           "ORDER BY (SELECT COUNT(p.year_of_birth)), p.lsoa_code")
    resp = query_as(server, PLANNER, sql)
    if refused(resp):
        return
    shown = [r[0] for r in resp.json()["rows"]]
    exact = dict(raw.execute(
        f"SELECT lsoa_code, COUNT(*) FROM ({norfolk_residents()}) GROUP BY 1").fetchall())
    ranked = sorted(shown, key=lambda k: (exact[k], k))
    assert shown != ranked, (
        f"the {len(shown)} released areas come in the order of their exact counts, which "
        "rounding and suppression hide")


#: the women of a cell, counted by an aggregate the engine binds to the outer query, in the
#: forms a fix must cover: with and without FROM, under EXISTS, inside a derived table of the
#: subquery, in a subquery's WHERE
WOMEN = "SUM(CASE WHEN p.sex = 'F' THEN 1 ELSE 0 END)"
HIDDEN_FORMS = {
    "scalar SUM": f"(SELECT {WOMEN})",
    "scalar COUNT": "(SELECT COUNT(p.sex))",
    "scalar with a FROM": f"(SELECT {WOMEN} FROM lsoa_lookup l WHERE l.lsoa_code = "
                          "'E01100017')",  # one area of the lookup: one row
    "a derived table in the subquery": f"(SELECT x.s FROM (SELECT {WOMEN} AS s) x)",
    "EXISTS with HAVING": f"CASE WHEN EXISTS (SELECT 1 HAVING {WOMEN} > {{t}}) THEN {{t}} + 1 "
                          "ELSE {t} - 1 END",
    "in a subquery's WHERE": f"CASE WHEN 1 IN (SELECT 1 FROM lsoa_lookup l WHERE "
                             f"{WOMEN} > {{t}} AND l.imd_decile = 1) THEN {{t}} + 1 "
                             "ELSE {t} - 1 END",
}


@pytest.mark.parametrize("form", sorted(HIDDEN_FORMS))
def test_order_by_an_outer_aggregate_in_any_form_compares_an_exact_count(server, raw, form):
    """Finding 1, each form: the F row is ordered by the exact number of women (hidden
    behind rounding), the M row by a threshold t; two thresholds either side of the exact
    count must not flip the released order."""
    women = raw.execute(f"SELECT COUNT(*) FROM ({norfolk_residents()}) WHERE sex = 'F'"
                        ).fetchone()[0]
    orders = []
    for t in (women - 0.5, women + 0.5):
        hidden = HIDDEN_FORMS[form]
        hidden = hidden.format(t=t) if "{t}" in hidden else hidden
        sql = ("SELECT p.sex AS sex, COUNT(*) AS n FROM patients p GROUP BY p.sex "
               f"ORDER BY CASE WHEN p.sex = 'F' THEN {hidden} ELSE {t} END")
        resp = query_as(server, PLANNER, sql)
        if refused(resp):
            return  # refused: safe
        orders.append([r[0] for r in resp.json()["rows"]])
    assert orders[0] == orders[1], (
        f"{form}: the order of the released rows ({orders[0]} at t = {women - 0.5}, "
        f"{orders[1]} at t = {women + 0.5}) says the exact count of women is {women}")


def _comparison(server, who, her: str, value: str, threshold: int) -> bool | None:
    """One query of two released rows (F and M): F first iff her value < threshold."""
    sql = f"""SELECT p.sex AS sex, COUNT(*) AS n FROM patients p GROUP BY p.sex
        ORDER BY CASE WHEN p.sex = 'F'
                      THEN (SELECT SUM(CASE WHEN {her} THEN {value} ELSE 0 END))
                      ELSE {threshold} - 0.5 END"""
    resp = query_as(server, who, sql)
    if refused(resp):
        return None
    rows = [r[0] for r in resp.json()["rows"]]
    if rows not in (["F", "M"], ["M", "F"]):
        return None
    return rows[0] == "F"


def test_cell_key_order_by_an_outer_aggregate_does_not_release_a_cohort_members_date(
        server, raw):
    """Finding 1 under cell_key (the consented cohort, PRJ-0077): two released rows, F and M,
    F ordered by a SUM holding one woman's value; a binary search reads her registration
    date, one comparison a query."""
    row = raw.execute(f"""
        WITH n AS ({cohort()})
        SELECT person_id, year_of_birth, lsoa_code, registration_date FROM n
        WHERE sex = 'F' AND (year_of_birth, lsoa_code) IN (
            SELECT (year_of_birth, lsoa_code) FROM n GROUP BY ALL HAVING COUNT(*) = 1)
        ORDER BY person_id LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    pid, yob, lsoa, truth = row
    her = f"p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}'"
    value = "DATE_DIFF('day', DATE '1900-01-01', p.registration_date)"
    low, high = 0, 60_000  # her value is in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        below = _comparison(server, RESEARCHER, her, value, mid)
        if below is None:
            return  # refused: safe
        low, high = (low, mid) if below else (mid, high)
    read = dt.date(1900, 1, 1) + dt.timedelta(days=low)
    assert read != truth, (
        f"16 queries of two cells of many cohort members each gave person {pid}'s "
        f"registration date exactly: {read} (raw DuckDB: {truth})")


# -- what held --------------------------------------------------------------------------------

HELD_REFUSED = {
    "MAX in a FROM-less subquery of the outer ORDER BY":
        "SELECT p.sex AS sex, COUNT(*) AS n FROM patients p GROUP BY p.sex "
        "ORDER BY (SELECT MAX(p.registration_date))",
    "an outer aggregate in FILTER":
        "SELECT p.sex AS sex, COUNT(*) FILTER (WHERE p.year_of_birth > (SELECT 1 HAVING "
        "SUM(p.year_of_birth) > 0)) AS n FROM patients p GROUP BY p.sex",
    "an outer aggregate in a LATERAL-like derived table":
        "SELECT p.sex AS sex, COUNT(*) AS n FROM patients p, (SELECT SUM(p.year_of_birth) "
        "AS s) d GROUP BY p.sex",
    "GROUPING SETS dropping the person key in a derived table":
        "SELECT d.k AS k, COUNT(DISTINCT d.pid) AS people FROM (SELECT q.person_id AS pid, "
        "q.sex AS k, COUNT(*) AS n FROM patients q GROUP BY GROUPING SETS ((q.person_id, "
        "q.sex), (q.sex))) d GROUP BY d.k",
    "ROLLUP of the person key in a derived table":
        "SELECT d.n AS n, COUNT(DISTINCT d.pid) AS people FROM (SELECT e.person_id AS pid, "
        "COUNT(*) AS n FROM gp_events e GROUP BY ROLLUP (e.person_id)) d GROUP BY d.n",
    "a window across people in a FROM-less subquery of the outer ORDER BY":
        "SELECT p.sex AS sex, COUNT(*) AS n FROM patients p GROUP BY p.sex "
        "ORDER BY (SELECT SUM(1) OVER ())",
}


@pytest.mark.parametrize("name", sorted(HELD_REFUSED))
def test_held_refused(server, name):
    resp = query_as(server, PLANNER, HELD_REFUSED[name])
    assert refused(resp), f"{name}: {resp.text[:300]}"


def test_a_key_from_one_persons_window_gap_is_withheld(server, raw):
    """A LAG gap (days between her two GP events) as a key: the keyed row rests on her alone
    unless others share the exact gap; the rows released rest on at least 8 people each."""
    sql = """
        WITH g AS (SELECT e.person_id AS pid,
                          DATE_DIFF('day', LAG(e.event_date) OVER (PARTITION BY e.person_id
                                    ORDER BY e.event_date, e.snomed_code), e.event_date) AS gap
                   FROM gp_events e)
        SELECT g.gap AS gap, COUNT(DISTINCT g.pid) AS people FROM g
        GROUP BY g.gap ORDER BY g.gap"""
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code == 200, resp.text
    people = f"SELECT person_id FROM ({norfolk_residents()})"
    truth = dict(raw.execute(f"""
        WITH g AS (SELECT e.person_id AS pid,
                          DATE_DIFF('day', LAG(e.event_date) OVER (PARTITION BY e.person_id
                                    ORDER BY e.event_date, e.snomed_code), e.event_date) AS gap
                   FROM gp_events e WHERE e.person_id IN ({people}))
        SELECT g.gap, COUNT(DISTINCT g.pid) FROM g GROUP BY g.gap""").fetchall())
    for gap, _ in resp.json()["rows"]:
        assert truth[gap] >= 8, f"gap {gap} released resting on {truth[gap]} people"
