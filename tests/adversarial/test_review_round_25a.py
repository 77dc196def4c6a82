"""The breaks of review round 25a, kept as tests (docs/security.md lists every round).

**DISTINCT ON a person key that an outer join pads picks rows across people.**
``check_distinct_on`` (``gateway/sql/analysis.py``) allows ``DISTINCT ON`` in a subquery
when one of its keys is a person key, "one row per person". It asks ``is_person_key`` only,
not ``may_be_null`` (as ``check_windows`` has since rounds 15 and 16): the key of a source
an outer join pads is NULL on every unmatched row, and NULL is one group. ``DISTINCT ON
(z.person_id, a.snomed_code, b.snomed_code, c.snomed_code)`` over ``LEFT JOIN gp_events z
ON z.person_id = a.person_id AND z.event_date < DATE '1900-01-01'`` (never matching) keeps
one row per code triple *across everyone*, the row chosen by an ORDER BY the caller writes,
and the kept row carries its own person's ``person_id``. Which person a row is attributed
to then depends on other people's rows.

Under ``dp`` this breaks the sensitivity the noise is calibrated for. Each kept row counts
for its person, clamped to R rows per (cell, person); an ORDER BY that puts one chosen
person first (``CASE WHEN p.year_of_birth = .. AND p.lsoa_code = .. THEN 0 ELSE 1 END``)
makes her win every code triple she has (about 1,000 for a person with 10 codes), of which
only R count. Without her, each of those triples goes to somebody else, counted in full:
one person moves the exact bounded count by about 390 where the plan says one cell per
person and the noise assumes at most R = 5. (The same selection across people is what round
11 refused DISTINCT ON across people for.)

Under ``threshold`` and ``cell_key`` the same selection is an attribute disclosure in one
query. Order one resident (alone in her year of birth and small area) first only if she has
SNOMED code X (a correlated ``EXISTS`` on her own rows, which the rules allow): she then
wins every code triple she is in, and the hundreds of people who won them otherwise drop out
of the kept rows. ``COUNT(DISTINCT pid)`` over the kept rows, beside a baseline branch that
orders no one first (UNION ALL), is released as e.g. 490 against 705 when she has X and 705
against 705 when she has not: both cells rest on hundreds of people, so nothing is
suppressed, and the gap (hundreds, against a rounding base of 5) answers "does this person
have code X" exactly. Seen under the Norfolk planner, OUTBREAK-2026 and the cell-key cohort.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    DP_RESEARCHER,
    PLANNER,
    explain_as,
    norfolk_residents,
    not_opted_out,
    query_as,
    refused,
)


def _bounded_total(raw, executed: str, nkeys: int, table: str | None = None,
                   person: int | None = None) -> int:
    """The exact bounded statistic (first aggregate part, summed over cells), optionally with
    one person's rows of ``table`` removed from every scan of it."""
    sql = executed
    if table is not None:
        sql = executed.replace(f'FROM "{table}" WHERE',
                               f'FROM "{table}" WHERE "person_id" <> {person} AND')
        assert sql != executed
    return sum(r[nkeys] or 0 for r in raw.execute(sql).fetchall())


def _first_of_everyone(yob: int, lsoa: str) -> str:
    """One row per triple of SNOMED codes, across everyone (the NULL group of a padded person
    key), the chosen person's row first."""
    return f"""
WITH d AS (
  SELECT DISTINCT ON (z.person_id, a.snomed_code, b.snomed_code, c.snomed_code)
         a.person_id AS pid
  FROM gp_events a JOIN gp_events b ON b.person_id = a.person_id
  JOIN gp_events c ON c.person_id = a.person_id
  JOIN patients p ON p.person_id = a.person_id
  LEFT JOIN gp_events z ON z.person_id = a.person_id AND z.event_date < DATE '1900-01-01'
  ORDER BY CASE WHEN p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}' THEN 0 ELSE 1 END,
           a.event_date, b.event_date, c.event_date
)
SELECT COUNT(*) AS n FROM d
"""


def test_distinct_on_a_padded_person_key_moves_other_peoples_dp_rows(server, raw):
    """DP: DISTINCT ON a padded (always NULL) person key keeps one row per code triple across
    everyone; one person ordered first wins all her triples (clamped to R), and without her
    they go to others in full. Checked on the executed SQL, run on the raw data with and
    without her GP events (no budget spent)."""
    pid, yob, lsoa = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.lsoa_code
        FROM ({not_opted_out()}) p JOIN gp_events g USING (person_id)
        GROUP BY ALL ORDER BY COUNT(DISTINCT g.snomed_code) DESC, 1 LIMIT 1""").fetchone()
    explained = explain_as(server, DP_RESEARCHER, _first_of_everyone(yob, lsoa))
    if explained is None:
        return  # refused: safe
    bound = explained["dp"]["cells_per_person"] * explained["output"]["max_rows_per_cell"]
    executed = explained["executed_sql"]
    with_her = _bounded_total(raw, executed, 0)
    without_her = _bounded_total(raw, executed, 0, "gp_events", pid)
    assert abs(with_her - without_her) <= bound, (
        f"one person (person {pid}) moves the bounded count from {without_her} to "
        f"{with_her}; the noise assumes at most {bound} "
        f"(cells_per_person {explained['dp']['cells_per_person']})")


def _kept_rows(priority: str) -> str:
    """One row per triple of SNOMED codes across everyone, rows meeting ``priority`` first,
    the others in an order that spreads the triples over many people."""
    return f"""
  SELECT DISTINCT ON (z.person_id, a.snomed_code, b.snomed_code, c.snomed_code)
         a.person_id AS pid
  FROM gp_events a JOIN gp_events b ON b.person_id = a.person_id
  JOIN gp_events c ON c.person_id = a.person_id
  JOIN patients p ON p.person_id = a.person_id
  LEFT JOIN gp_events z ON z.person_id = a.person_id AND z.event_date < DATE '1900-01-01'
  ORDER BY CASE WHEN {priority} THEN 0 ELSE 1 END,
     (DATEDIFF('day', DATE '2000-01-01', a.event_date) * 7919
      + DATEDIFF('day', DATE '2000-01-01', b.event_date) * 104729
      + DATEDIFF('day', DATE '2000-01-01', c.event_date) * 15485863) % 1000003"""


def _has_code(yob: int, lsoa: str, code: str) -> str:
    """Two released counts of people that differ by hundreds if and only if the one resident
    born in ``yob`` living in ``lsoa`` has a GP event coded ``code``."""
    target = (f"p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}' AND EXISTS (SELECT 1 FROM "
              f"gp_events x WHERE x.person_id = a.person_id AND x.snomed_code = '{code}')")
    return f"""
SELECT 'target first' AS branch, COUNT(DISTINCT t.pid) AS n FROM ({_kept_rows(target)}) t
UNION ALL
SELECT 'baseline' AS branch, COUNT(DISTINCT u.pid) AS n FROM ({_kept_rows('FALSE')}) u
"""


def test_distinct_on_a_padded_person_key_tells_whether_one_resident_has_a_code(server, raw):
    """Threshold (the Norfolk planner): for residents alone in their year of birth and small
    area, one query per (resident, code) releases two counts of hundreds of people whose gap
    says whether she has the code. The attacker guesses "has it" when the gap is over 50."""
    people = norfolk_residents()
    residents = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.lsoa_code, list(DISTINCT g.snomed_code)
        FROM ({people}) p JOIN gp_events g USING (person_id)
        WHERE (p.year_of_birth, p.lsoa_code) IN (
            SELECT (year_of_birth, lsoa_code) FROM ({people}) GROUP BY ALL HAVING COUNT(*) = 1)
        GROUP BY ALL HAVING COUNT(DISTINCT g.snomed_code) >= 5
        ORDER BY COUNT(DISTINCT g.snomed_code) DESC, 1 LIMIT 2""").fetchall()
    codes = [c for (c,) in raw.execute(
        "SELECT snomed_code FROM gp_events GROUP BY 1 ORDER BY COUNT(*) DESC, 1").fetchall()]
    assert len(residents) == 2, "the shape this test needs (checked on raw data)"
    guesses, right = 0, 0
    for _pid, yob, lsoa, theirs in residents:
        held = [c for c in codes if c in theirs][:2]
        lacked = [c for c in codes if c not in theirs][:2]
        assert held and lacked, "the shape this test needs (checked on raw data)"
        for code in held + lacked:
            resp = query_as(server, PLANNER, _has_code(yob, lsoa, code))
            guesses += 1
            if refused(resp) or resp.json()["status"] != "released":
                continue
            released = dict((r[0], r[1]) for r in resp.json()["rows"])
            if released.get("target first") is None or released.get("baseline") is None:
                continue
            guess = released["baseline"] - released["target first"] > 50
            right += guess == (code in theirs)
    assert right < guesses, (
        f"whether a resident, alone in her year of birth and small area, has a SNOMED code "
        f"was answered right in {right} of {guesses} single queries")
