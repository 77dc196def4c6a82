"""The breaks of review round 35b, kept as tests (docs/security.md lists every round).

This round attacked the threshold regime's sums and averages of measures, the row filters,
and policy decisions by column. Every test below fails on the code as reviewed; a fix may
refuse the query (a 4xx) or answer it correctly.

**1. A table alias used as a column is the whole row, and no rule sees it.** In DuckDB a bare
name that matches a table alias in scope, written where a column may stand (``CAST(p AS
VARCHAR)``, ``p IS NULL``, ...), is that source's entire row as a STRUCT. sqlglot's
qualifier leaves such a name as an unqualified ``Column`` with no table (``"p"``), and
``_resolve`` in ``gateway/sql/analysis.py`` only looks columns up through
``scope.sources.get(col.table)``: the empty table matches no source, so the name is never
resolved to any catalogue column, gives no ``ColumnUse`` (so ``policies/decision.py`` never
judges it), and is never checked for its class. ``lineage`` does not follow it either
(``owning_scope(scope, "")`` is None), so the rules on a summed measure do not see it. The engine then
casts the struct to text, ``{'spell_id': ..., 'person_id': ..., 'nhs_number': ..., ...}``,
and ``LIKE`` reads any field of it. Three uses:

- *Direct identifiers.* Under OUTBREAK-2026 (no residence rule, no opt-out) ``filter_scans``
  leaves ``patients`` unwrapped, so ``p`` is the raw row with ``nhs_number``,
  ``date_of_birth`` and ``postcode``, which "may not appear anywhere in a query". ``SELECT
  CAST(p AS VARCHAR) LIKE '%''date_of_birth'': ____-01-%' AS january, COUNT(DISTINCT
  p.person_id) ...`` is released, and its cells equal, on ``raw``, the number of people born
  in January by their full date of birth. Any pattern of the NHS number or postcode goes the
  same way.
- *A column the policy does not grant.* PRJ-0042 (dp) is granted five columns of
  ``patients``, not ``registration_date`` (``p.registration_date`` anywhere is a 403).
  ``COUNT(*) FILTER (WHERE CAST(p AS VARCHAR) LIKE '%''registration_date'': 202%')`` is
  answered (epsilon spent), and the exact bounded SQL it runs, on ``raw``, counts people by
  their registration date.
- *One person's exact total length of stay from one query (threshold, released exact).* The
  summed measure may appear nowhere but in its SUM (``check_measure_filters``), and no key
  may be computed from it (``check_measure_cells``): both follow lineage, which skips the
  struct. ``SELECT CASE WHEN <her year of birth and small area> OR CAST(h AS VARCHAR) LIKE
  '%''length_of_stay'': L,%' THEN 'x' ELSE 'y' END AS k, SUM(h.length_of_stay) AS s FROM
  hospital_admissions h JOIN patients p ON ... GROUP BY 1`` puts her admissions beside M
  other admissions whose stay is pinned to L. The cell rests on dozens of people, passes
  NK and p% (each of the others contributes L or a few times L), and is released exact: s =
  L * M + T, and with L > T her total T is s mod L. Checked against ``raw``: her exact total
  stay, for a Norfolk resident alone in her year of birth and small area.

What held (no test):

- Measures in a UNION are refused (``_contributions``); ROLLUP/CUBE margin rows of a sum have
  unknown contributions and are suppressed; SUM and AVG of one column, two table references,
  a FILTER on a measure, a measure as or inside a group key, a second source with several
  rows per person (also inside CTEs), ``derived_from`` with both dates: all refused by name.
- The row filters: residence, opt-out and consent wrap every scan of a person-level table,
  in CTEs, subqueries and the row-bound and contributions queries.
- Policy by column through CTE and derived-table aliases, USING, GROUP BY ALL, ORDER BY an
  alias and FILTER: refused by name (the source column is resolved), except through the whole
  row above.
"""

from __future__ import annotations

from attack import (
    DP_RESEARCHER,
    PLANNER,
    explain_as,
    norfolk_residents,
    not_opted_out,
    query_as,
    released_rows,
)

OUTBREAK = ("p.jones", "OUTBREAK-2026", "communicable_disease_control")


def test_a_table_alias_as_a_column_does_not_read_direct_identifiers(server, raw):
    sql = ("SELECT CAST(p AS VARCHAR) LIKE '%''date_of_birth'': ____-01-%' AS january, "
           "COUNT(DISTINCT p.person_id) AS n FROM patients p GROUP BY 1 ORDER BY 1")
    # the evidence: the full date of birth, a direct identifier, is what the key reads
    truth = dict(raw.execute(
        "SELECT MONTH(date_of_birth) = 1, COUNT(*) FROM patients GROUP BY 1").fetchall())
    rows = released_rows(query_as(server, OUTBREAK, sql))
    if rows is not None:
        got = {k: n for k, n in rows}
        assert not (set(got) == {False, True}
                    and all(abs(got[k] - truth[k]) <= 2 for k in got)), (
            f"people by the month of their full date of birth, {got} (raw: {truth}): the "
            "whole row of patients, direct identifiers and all, was read through the alias p")
    # the same through the named column is refused
    named = query_as(server, OUTBREAK, "SELECT MONTH(p.date_of_birth) = 1 AS january, "
                     "COUNT(DISTINCT p.person_id) AS n FROM patients p GROUP BY 1")
    assert named.status_code == 400


def test_a_table_alias_as_a_column_does_not_read_a_column_not_granted(fresh_server, raw):
    sub, project, purpose = DP_RESEARCHER
    named = fresh_server.query(sub, "SELECT p.sex, COUNT(*) FILTER (WHERE p.registration_date "
                               ">= DATE '2020-01-01') AS recent FROM patients p GROUP BY 1",
                               project, purpose)
    assert named.status_code == 403  # not granted to PRJ-0042
    sql = ("SELECT p.sex, COUNT(*) FILTER (WHERE CAST(p AS VARCHAR) LIKE "
           "'%''registration_date'': 202%') AS recent FROM patients p GROUP BY 1")
    explained = explain_as(fresh_server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused: the fix
    # the evidence: the exact bounded SQL the gateway noises counts registration dates
    exact = {r[0]: r[1] for r in raw.execute(explained["executed_sql"]).fetchall()}
    truth = dict(raw.execute(
        f"SELECT sex, COUNT(*) FILTER (WHERE registration_date >= DATE '2020-01-01') "
        f"FROM ({not_opted_out()}) GROUP BY 1").fetchall())
    assert exact != truth, (
        f"the dp query counts people by patients.registration_date, which PRJ-0042 is not "
        f"granted: exact {exact}, raw {truth}")


def _alone_with_a_short_total_stay(raw) -> tuple[int, str, int, int]:
    """A Norfolk resident alone in her year of birth and small area, with a total length of
    stay T from 1 to 9; and a stay L > T that many other residents' admissions have."""
    found = raw.execute(f"""
        WITH r AS ({norfolk_residents()}),
        alone AS (SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM r
                  GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, a.pid, SUM(h.length_of_stay) AS t
        FROM alone a JOIN hospital_admissions h ON h.person_id = a.pid
        GROUP BY ALL HAVING t BETWEEN 1 AND 9 ORDER BY t DESC, 1, 2 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    yob, lsoa, pid, total = found
    (stay,) = raw.execute(f"""
        SELECT h.length_of_stay FROM hospital_admissions h
        WHERE h.person_id IN (SELECT person_id FROM ({norfolk_residents()}))
          AND h.person_id <> {pid} AND h.length_of_stay > {total}
        GROUP BY 1 HAVING COUNT(DISTINCT h.person_id) >= 12
        ORDER BY COUNT(*) DESC LIMIT 1""").fetchone()
    return yob, lsoa, int(total), int(stay)


def test_a_table_alias_as_a_column_does_not_pin_the_summed_measure(server, raw):
    yob, lsoa, total, stay = _alone_with_a_short_total_stay(raw)
    sql = (f"SELECT CASE WHEN (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}') OR "
           f"CAST(h AS VARCHAR) LIKE '%''length_of_stay'': {stay},%' THEN 'x' ELSE 'y' END "
           "AS k, SUM(h.length_of_stay) AS s FROM hospital_admissions h "
           "JOIN patients p ON p.person_id = h.person_id GROUP BY 1 ORDER BY 1")
    # the evidence on raw data: the cell x is her admissions and everyone else's of stay L
    (others,) = raw.execute(f"""
        SELECT COUNT(*) FROM hospital_admissions h JOIN ({norfolk_residents()}) p
          ON p.person_id = h.person_id
        WHERE h.length_of_stay = {stay}
          AND NOT (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}')""").fetchone()
    rows = released_rows(query_as(server, PLANNER, sql))
    cell = next((s for k, s in rows or [] if k == "x"), None)
    if cell is None:
        return  # refused or suppressed
    assert float(cell) != stay * others + total, (
        f"the released sum {cell} is {stay} x {others} + {total}: {cell} mod {stay} = "
        f"{int(cell) % stay}, the exact total length of stay of the one resident born in "
        f"{yob} living in {lsoa}")
