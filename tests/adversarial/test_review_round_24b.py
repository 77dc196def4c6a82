"""The breaks of review round 24b, kept as tests (docs/security.md lists every round).

**DP: a person table joined on a person key that a derived table pads with NULLs on some of
a person's rows passes as "one cell per person".** ``_person_grain`` skips the bound on the
cells one person is in (``max_cells_per_person``, L) when every group key is a column of a
one-row-per-person table, read directly and not padded by an outer join. An outer join
counts as "not padding" when its ON is a bare equality of person keys
(``padded_sources(..., by_person=True)``): it is meant to match all of a person's rows or
none. But the other side of that equality may itself be NULL on some of the person's rows
and not on others: a derived table ``d`` that LEFT JOINs ``patients a ON a.person_id =
g.person_id AND <a condition on the event row>`` and projects ``a.person_id AS k1`` carries
the person's key on some events and NULL on the others (``may_be_null`` says so, but only
the rowpid and window checks ask). ``LEFT JOIN patients p1 ON p1.person_id = d.k1`` then
gives ``p1.year_of_birth`` the person's year on some of her rows and NULL on the rest: two
cells. Five such columns, each conditioned on a different bit of an event's date, put one
person in 32 cells, each clamped to R = 5 rows, while the plan says cells_per_person = 1 and
no ranking runs. One person moves the exact bounded count by 157 where the noise assumes 5
(and the noisy threshold of people, calibrated for l0 = 1, sees her in 32 cells).

**A parenthesised join hides its table from ``padded_sources``: every outer-join rule is
bypassed.** ``LEFT JOIN (patients p) ON ...`` parses as a Join whose ``this`` is a Subquery
wrapping the Table; ``padded_sources`` records ``join.this.alias_or_name``, which for the
wrapper is the table's *name* (``patients``), not its alias ``p`` (the FROM side likewise).
So ``p`` is never "padded", and every rule that asks whether an outer join fills a source
with NULLs gets "no":

- *DP, cells per person* (``_person_grain``): ``LEFT JOIN (patients p1) ON p1.person_id =
  g.person_id AND DAY(g.event_date) % 2 = 0`` (the fix of an earlier round for exactly this
  join, without the parentheses, gives cells_per_person = L): five such keys put one person
  in 32 cells with cells_per_person = 1; one person moves the bounded count by 157, bound 5.
- *Windows across people* (``check_windows`` via ``may_be_null``, rounds 15 and 16): a
  window ``PARTITION BY h.person_id`` over ``LEFT JOIN (hospital_admissions h) ON
  h.person_id = g.person_id AND h.admission_date < DATE '1900-01-01'`` has one NULL
  partition holding everyone's GP events. ``ROW_NUMBER() OVER (... ORDER BY CASE WHEN
  <target's year of birth and small area> THEN 0 ELSE 1 END, g.event_date)`` marks the
  target's first event, and a second such window, ``MAX(CASE WHEN rn = 1 THEN code END)``,
  copies its SNOMED code onto every row: the released table is one cell of thousands of
  people whose key is one person's code (threshold, cell key and dp alike; seen released
  under OUTBREAK-2026 and PRJ-0042).

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

#: five conditions on bits of an event's date (and of a second event of the same person),
#: each NULLing one person-key column of ``d`` on some of the person's rows
_PADDED_KEYS = """
SELECT p1.year_of_birth AS y1, p2.year_of_birth AS y2, p3.year_of_birth AS y3,
       p4.year_of_birth AS y4, p5.year_of_birth AS y5, COUNT(*) AS n
FROM (SELECT g.person_id AS gid, a.person_id AS k1, b.person_id AS k2, c.person_id AS k3,
             e.person_id AS k4, f.person_id AS k5
      FROM gp_events g JOIN gp_events h ON h.person_id = g.person_id
      LEFT JOIN patients a ON a.person_id = g.person_id AND DAY(g.event_date) % 2 = 0
      LEFT JOIN patients b ON b.person_id = g.person_id AND DAY(h.event_date) % 2 = 0
      LEFT JOIN patients c ON c.person_id = g.person_id AND MONTH(g.event_date) % 2 = 0
      LEFT JOIN patients e ON e.person_id = g.person_id AND MONTH(h.event_date) % 2 = 0
      LEFT JOIN patients f ON f.person_id = g.person_id AND YEAR(g.event_date) % 2 = 0) d
LEFT JOIN patients p1 ON p1.person_id = d.k1
LEFT JOIN patients p2 ON p2.person_id = d.k2
LEFT JOIN patients p3 ON p3.person_id = d.k3
LEFT JOIN patients p4 ON p4.person_id = d.k4
LEFT JOIN patients p5 ON p5.person_id = d.k5
GROUP BY 1, 2, 3, 4, 5
"""


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


def test_a_person_key_padded_inside_a_derived_table_puts_one_person_in_many_dp_cells(
        server, raw):
    """DP: the group keys are columns of ``patients``, joined on ``d.k<i>``, a person key that
    ``d`` pads with NULLs on some of each person's rows; the plan trusts one cell per person
    (no L bound), while one person with many GP events is in 32 cells. Checked on the
    executed SQL, run on the raw data with and without her GP events (no budget spent)."""
    (pid,) = raw.execute(f"""
        SELECT p.person_id FROM ({not_opted_out()}) p JOIN gp_events g USING (person_id)
        GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT 1""").fetchone()
    explained = explain_as(server, DP_RESEARCHER, _PADDED_KEYS)
    if explained is None:
        return  # refused: safe
    bound = explained["dp"]["cells_per_person"] * explained["output"]["max_rows_per_cell"]
    executed = explained["executed_sql"]
    with_her = _bounded_total(raw, executed, 5)
    without_her = _bounded_total(raw, executed, 5, "gp_events", pid)
    assert abs(with_her - without_her) <= bound, (
        f"one person (person {pid}) moves the bounded count from {without_her} to "
        f"{with_her}; the noise assumes at most {bound} "
        f"(cells_per_person {explained['dp']['cells_per_person']})")


_PARENTHESISED = """
SELECT p1.year_of_birth AS y1, p2.year_of_birth AS y2, p3.year_of_birth AS y3,
       p4.year_of_birth AS y4, p5.year_of_birth AS y5, COUNT(*) AS n
FROM gp_events g JOIN gp_events h ON h.person_id = g.person_id
LEFT JOIN (patients p1) ON p1.person_id = g.person_id AND DAY(g.event_date) % 2 = 0
LEFT JOIN (patients p2) ON p2.person_id = g.person_id AND DAY(h.event_date) % 2 = 0
LEFT JOIN (patients p3) ON p3.person_id = g.person_id AND MONTH(g.event_date) % 2 = 0
LEFT JOIN (patients p4) ON p4.person_id = g.person_id AND MONTH(h.event_date) % 2 = 0
LEFT JOIN (patients p5) ON p5.person_id = g.person_id AND YEAR(g.event_date) % 2 = 0
GROUP BY 1, 2, 3, 4, 5
"""


def test_a_parenthesised_conditional_left_join_puts_one_person_in_many_dp_cells(server, raw):
    """DP: ``LEFT JOIN (patients p1) ON p1.person_id = g.person_id AND <event condition>``;
    without the parentheses the plan bounds cells per person by L (the earlier fix), with
    them it trusts one cell per person. Checked on the executed SQL (no budget spent)."""
    (pid,) = raw.execute(f"""
        SELECT p.person_id FROM ({not_opted_out()}) p JOIN gp_events g USING (person_id)
        GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT 1""").fetchone()
    explained = explain_as(server, DP_RESEARCHER, _PARENTHESISED)
    if explained is None:
        return  # refused: safe
    bound = explained["dp"]["cells_per_person"] * explained["output"]["max_rows_per_cell"]
    executed = explained["executed_sql"]
    with_her = _bounded_total(raw, executed, 5)
    without_her = _bounded_total(raw, executed, 5, "gp_events", pid)
    assert abs(with_her - without_her) <= bound, (
        f"one person (person {pid}) moves the bounded count from {without_her} to "
        f"{with_her}; the noise assumes at most {bound} "
        f"(cells_per_person {explained['dp']['cells_per_person']})")


def _copy_first_code(yob: int, lsoa: str) -> str:
    """One cell of everyone, keyed by the SNOMED code of the first GP event of the one person
    born in ``yob`` living in ``lsoa``: two windows over the NULL partition of a
    parenthesised LEFT JOIN that never matches."""
    return f"""
WITH d AS (
  SELECT g.person_id AS pid, g.snomed_code AS code,
         ROW_NUMBER() OVER (PARTITION BY h.person_id ORDER BY CASE WHEN p.year_of_birth = {yob}
             AND p.lsoa_code = '{lsoa}' THEN 0 ELSE 1 END, g.event_date, g.snomed_code) AS rn
  FROM gp_events g JOIN patients p ON p.person_id = g.person_id
  LEFT JOIN (hospital_admissions h) ON h.person_id = g.person_id
       AND h.admission_date < DATE '1900-01-01'
),
e AS (
  SELECT d.pid AS pid,
         MAX(CASE WHEN d.rn = 1 THEN d.code END) OVER (PARTITION BY h2.person_id) AS tcode
  FROM d LEFT JOIN (hospital_admissions h2) ON h2.person_id = d.pid
       AND h2.admission_date < DATE '1900-01-01'
)
SELECT e.tcode AS tcode, COUNT(DISTINCT e.pid) AS n FROM e GROUP BY 1
"""


def _lone_residents(raw, people: str, n: int) -> list[tuple[int, int, str, str]]:
    """Residents alone in their (year of birth, small area), each with the code of their
    first GP event, the codes all different (so that a released key names its person)."""
    rows = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.lsoa_code,
               (SELECT g.snomed_code FROM gp_events g WHERE g.person_id = p.person_id
                ORDER BY g.event_date, g.snomed_code LIMIT 1) AS first_code
        FROM ({people}) p
        WHERE (p.year_of_birth, p.lsoa_code) IN (
            SELECT (year_of_birth, lsoa_code) FROM ({people}) GROUP BY ALL HAVING COUNT(*) = 1)
          AND EXISTS (SELECT 1 FROM gp_events g WHERE g.person_id = p.person_id)
        ORDER BY p.person_id""").fetchall()
    out, seen = [], set()
    for pid, yob, lsoa, code in rows:
        if code not in seen:
            seen.add(code)
            out.append((pid, yob, lsoa, code))
        if len(out) == n:
            break
    assert len(out) == n, "the shape this test needs (checked on raw data)"
    return out


def test_a_window_over_a_parenthesised_padded_key_copies_one_persons_code_to_everyone(
        server, raw):
    """Threshold (the Norfolk planner): the window rule refuses PARTITION BY a key an outer
    join pads, but not when the join is parenthesised. Two windows over the one NULL
    partition copy a chosen resident's first GP event code onto every row; the released
    table is that code, as a cell of thousands."""
    named = 0
    targets = _lone_residents(raw, norfolk_residents(), 3)
    for _pid, yob, lsoa, code in targets:
        resp = query_as(server, PLANNER, _copy_first_code(yob, lsoa))
        if refused(resp) or resp.json()["status"] != "released":
            continue
        keys = [r[0] for r in resp.json()["rows"] if r[1] is not None]
        named += keys == [code]
    assert named < len(targets), (
        f"the first GP event code of each of {named} residents, alone in their year of birth "
        "and small area, was released as the key of a cell of thousands")
