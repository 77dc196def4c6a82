"""The breaks of review round 36b, kept as tests (docs/security.md lists every round).

This round looked for the class round 35 found: places where what the analysis sees differs
from what DuckDB runs (name resolution, aliases in WHERE / GROUP BY / HAVING / ORDER BY, case
and quoting, struct access, star expressions, lambdas, JSON operators, the function
allow-list, type coercions, and the SQL the rewrites regenerate). Every test below fails on
the code as reviewed; a fix may refuse the query (a 4xx) or answer it correctly.

**1. A count of cases written with a decimal 1 is a 500** (threshold and ``cell_key``). ``SELECT
p.sex, SUM(CASE WHEN g.value > 50 THEN 1.0 ELSE 0 END) AS n FROM patients p JOIN gp_events g
ON g.person_id = p.person_id GROUP BY 1`` is an ordinary count of cases: ``is_indicator`` in
``gateway/sql/analysis.py`` reads ``1.0`` as a 0/1 indicator (``_number``), so the column is a
"count". In DuckDB ``1.0`` is a DECIMAL literal, so the SUM, and the per-person maximum that
the single pass (``single_pass``, ``__rows<i>``) or the row-bound query (``row_bound``)
returns for it, arrive in Python as ``decimal.Decimal``. ``Pipeline._row_bound`` in
``gateway/pipeline.py`` then multiplies that maximum by the float ``spread``
(``most * spread``): ``TypeError: unsupported operand type(s) for *: 'decimal.Decimal' and
'float'``, a 500 "internal error in stage execute". The same query with ``THEN 1`` is
released (evidence in the test), and the raw count it should have answered is computed on
``raw``. Any count of cases with a decimal literal fails so (``THEN 1.0``, ``ELSE 0.0``), in a
plain GROUP BY (single pass), with CUBE / ROLLUP (the row-bound query) and under GROUP BY ALL.

What held (no test):

- Name resolution: the SQL that runs is regenerated from the qualified tree, where every
  column is written ``"alias"."column"``; aliases used in WHERE and GROUP BY are expanded by the
  resolver into their expressions (a source column wins over an alias, as in DuckDB), so no
  ambiguity reaches the engine. Case and quoting (``"SEX"``, ``"PATIENTS"``, ``"Sex"``) are
  normalised; ORDER BY an alias that is also a source column, of an aggregate, is refused.
- A table's name used as a value, in the select's own scope, in a correlated subquery (the
  outer alias), or a CTE's name: refused as ``TableColumn`` (round 35's fix holds there).
- Column lists on derived tables and CTEs, full, partial and swapped: folded into the
  projections as DuckDB reads them, or refused for a repeated name.
- ``p.sex.x`` (Dot), ``COLUMNS(*)``, list comprehensions, lambdas (``list_transform``),
  ``->`` (json_extract), ``current_setting``, ``getvariable``, ``current_user``, ``^@``,
  ``SIMILAR TO``, ``GLOB``, ``IS NOT DISTINCT FROM``, ``#1`` (PositionalColumn), casts to
  STRUCT: refused by the node or function allow-list. ``COUNT(* EXCLUDE (...))`` passes the
  analysis, but DuckDB refuses a star inside a function (a 400), and under ``cell_key`` the
  single pass rebuilds a plain ``COUNT(*)`` (the modifier is dropped, nothing is read).
- String literals: sqlglot reads backslashes as escapes and writes them back doubled, so the
  regenerated literal is the one DuckDB reads from the caller's text (``'a\\\\'' OR 1=1 --'`` and
  ``e'...'`` tried): no way out of a literal.
- No keyword parses as a ``Var`` standing where DuckDB would bind a column.
"""

from __future__ import annotations

from attack import PLANNER, RESEARCHER, norfolk_residents, query_as, released_rows

#: a count of events with a value over 50, by sex, as a SUM of a 0/1 CASE
CASES = ("SELECT p.sex, SUM(CASE WHEN g.value > 50 THEN {one} ELSE 0 END) AS n "
         "FROM patients p JOIN gp_events g ON g.person_id = p.person_id GROUP BY 1 ORDER BY 1")


def _truth(raw) -> dict[str, int]:
    return dict(raw.execute(f"""
        SELECT p.sex, COUNT(*) FILTER (WHERE g.value > 50)
        FROM ({norfolk_residents()}) p JOIN gp_events g ON g.person_id = p.person_id
        GROUP BY 1""").fetchall())


def test_a_count_of_cases_with_a_decimal_one_is_not_a_500_under_threshold(server, raw):
    # the evidence: written with an integer 1, the same count is released
    whole = released_rows(query_as(server, PLANNER, CASES.format(one="1")))
    assert whole is not None and {k for k, _ in whole} == {"F", "M"}
    truth = _truth(raw)
    resp = query_as(server, PLANNER, CASES.format(one="1.0"))
    assert resp.status_code < 500, (
        f"SUM(CASE WHEN ... THEN 1.0 ELSE 0 END), a count of cases ({truth} on raw data), "
        f"is a {resp.status_code}: {resp.text[:300]} (Pipeline._row_bound multiplies the "
        "engine's Decimal by a float)")


def test_a_count_of_cases_with_a_decimal_one_is_not_a_500_with_margins(server):
    sql = ("SELECT p.sex, SUM(CASE WHEN g.value > 50 THEN 1.0 ELSE 0 END) AS n FROM patients p "
           "JOIN gp_events g ON g.person_id = p.person_id GROUP BY CUBE (1)")
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code < 500, (
        f"a decimal count of cases under CUBE (the row-bound query) is a {resp.status_code}: "
        f"{resp.text[:300]}")


def test_a_count_of_cases_with_a_decimal_one_is_not_a_500_under_cell_key(server):
    resp = query_as(server, RESEARCHER, CASES.format(one="1.0"))
    assert resp.status_code < 500, (
        f"under cell_key, SUM(CASE WHEN ... THEN 1.0 ELSE 0 END) is a {resp.status_code}: "
        f"{resp.text[:300]}")


def test_a_star_that_names_columns_is_refused(server):
    """Also seen: ``COUNT(* EXCLUDE (nhs_number))`` passed the analysis with a direct
    identifier's name in it (the engine then refused it). A * that names or matches columns
    is refused before anything runs."""
    resp = server.query("p.jones", "SELECT p.sex, COUNT(* EXCLUDE (nhs_number)) AS n "
                        "FROM patients p GROUP BY 1", "JOINT-PLANNING", "planning")
    assert resp.status_code == 400
    assert "EXCLUDE" in resp.json()["error"]["message"]
