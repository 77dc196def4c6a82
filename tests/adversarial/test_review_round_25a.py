"""The breaks of review round 25a, kept as tests (docs/security.md lists every round).

**DISTINCT ON a person key that an outer join pads picks rows across people.**
``_check_distinct_on`` (``gateway/sql/analysis.py``) allows ``DISTINCT ON`` in a subquery
when one of its keys is a person key, "one row per person". It asks ``is_person_key`` only,
not ``may_be_null`` (as ``_check_windows`` has since rounds 15 and 16): the key of a source
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

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import DP_RESEARCHER, explain_as, not_opted_out


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
