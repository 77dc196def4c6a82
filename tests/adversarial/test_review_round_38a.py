"""Review round 38a: where sqlglot (the analysis) and DuckDB (the engine) bind one name
differently, after round 37's fixes (``check_order_names``; every scan narrowed to the
resolved columns by ``filter_scans``). One way through, with two uses, and one wrong
answer; the tests named below fail on the code as reviewed (a fix may refuse the query with a
4xx, or answer it as the analysis read it).

**A name in a subquery's HAVING that its own FROM does not hold is never resolved.** sqlglot's
``Scope.columns`` leaves out every unqualified column under HAVING (its ``find_ancestor`` stops
at ``exp.Having`` and keeps the column only if it already has a table). The qualifier's alias
expansion then gives a table only to names one of the subquery's *own* sources has, and
``validate_qualify_columns`` checks ``scope.columns`` only. So in ``EXISTS (SELECT 1 HAVING
length_of_stay = 10)`` (or ``SELECT 1 FROM lsoa_lookup l HAVING ...``) the name stays
unqualified in the analysed tree, ``_resolve`` never sees it (no rule, no policy, no audit
entry), and DuckDB binds it, as a correlated reference, to the enclosing query's column of
that name. Round 37's narrowing holds for what it was built for: the outer scan holds only the
columns the analysis resolved elsewhere, so a direct identifier or a column the policy does not
grant is a binder error (tests below, passing). But any column the query resolves anywhere,
the person key always, is there to be read where the rules do not look:

- **A summed measure pinned** (``check_measure_filters``): ``SUM(h.length_of_stay)`` over
  ``<her year of birth and small area> OR EXISTS (SELECT 1 HAVING length_of_stay % 11 = 0)``
  adds her admissions to others' whose stays are multiples of 11, so the released sum is her
  exact total stay modulo 11; with 13 (and 7) beside it, her total exactly by the Chinese
  remainder theorem, each sum resting on dozens of people and undominated. On the demo data
  (20,000 people, seed 42; Norfolk planner, ``JOINT-PLANNING``): the resident born 1932 in
  E01100185 has two admissions, 122 days in all; the F cells released 650 (= 11 x 48 + 122)
  and 395 (= 13 x 21 + 122), exactly the raw DuckDB sums, and the M cells 418 = 11 x 38 and
  208 = 13 x 16 show the pinning. The same query with ``h.length_of_stay % 11 = 0`` in WHERE
  is refused ("may use that measure only as the sum's argument").
  (``test_a_summed_measure_is_not_pinned_through_having``)
- **The person key meets a literal** (``check_person_key_use``, round 37's rule):
  ``COUNT(DISTINCT p.person_id) FILTER (WHERE EXISTS (SELECT 1 HAVING person_id IN (3, 5, 9,
  12, 14, 15, 18, 20)))`` names eight residents by pseudonym (released 10, the seven without
  the eighth suppressed); with round 37b's construction (seven pseudonyms, and the target if
  bit j of her registration date is set) two queries read a resident's registration date
  exactly. (``test_people_are_not_named_by_pseudonym_through_having``)

**A wrong answer under dp** (round 37's ``_sort_key`` in ``gateway/disclosure/dp.py``): in a
column that holds a date anywhere, every text matching the far-date pattern is read back as a
date, the text fields of a tuple key beside the date too, and instants sort before texts. So
``SELECT (CASE WHEN p.sex = 'F' THEN '-' ELSE '2020-01-01' END, DATE '2020-01-01') AS k,
COUNT(DISTINCT p.person_id) AS n ... GROUP BY 1 ORDER BY 1 LIMIT 1`` under ``PRJ-0042``
released the M cell, where the engine sorts ('-', ...) first; '10000-01-01' and '9999-01-01'
come out in year order, not the engine's text order.
(``test_dp_orders_a_text_field_beside_a_date_as_the_engine_does``,
``test_dp_limit_releases_the_cell_the_engine_sorts_first``)

The root cause of the first is the analysis accepting a tree with a column it never resolved
(``analyse`` / ``_resolve`` in ``gateway/sql/analysis.py``, trusting ``Scope.columns``);
``test_every_name_in_having_is_resolved_or_refused`` states it at the analysis, with a name
no table has at all (which the engine then refuses as a binder error: a 400, not a leak).

Both fixed. The analysis now refuses any column the resolver left without its table, but an
output column named in ORDER BY or DISTINCT ON (``check_names_bound`` in
``gateway/sql/rules/binding.py``, which replaces round 37's narrower ``check_order_names``),
so the places not yet found are covered as well. dp's sort reads text back as a date only at
the places of a key (fields of a tuple, at any depth) that hold a date on some row.

What held (passing tests below, or no test):

- Narrowing: ``HAVING MONTH(date_of_birth) <= 6`` under ``OUTBREAK-2026`` (no row filter) and
  ``HAVING registration_date < ...`` under ``PRJ-0042`` (not granted) are binder errors: the
  narrowed scans do not hold them.
- Every other clause of a correlated subquery (WHERE, SELECT, GROUP BY, ORDER BY, FILTER, JOIN
  ON, window, DISTINCT ON, nested EXISTS) qualifies an outer name to its table, and the rules
  see it; a bare ORDER BY / DISTINCT ON name binds to the output in both readings.
- WHERE, GROUP BY and lateral SELECT aliases that shadow a table column: sqlglot expands or
  qualifies them before the rules run, and the SQL run is the qualified one, so the engine
  runs what was analysed. ``GROUP BY ALL`` in the outer query and in derived tables: the
  rewrite regroups explicitly, and the rules treat a derived table's ALL as unknown keys.
- Round 37's person key under IN: UNION branches projecting a literal, ``IN (SELECT 12345)``,
  derived tables of literals, tuples, ``= ANY``: all refused.
"""

from __future__ import annotations

import pytest
from attack import (
    assert_not_named_by_pseudonym,
    assert_total_stay_not_pinned,
    query_as,
    refused,
)
from sqlglot import exp

from gateway.errors import SqlRejected
from gateway.sql.analysis import analyse

OUTBREAK = ("p.jones", "OUTBREAK-2026", "communicable_disease_control")  # no row filter
DP_RESEARCHER = ("r.smith", "PRJ-0042", "research")


def _analyse(sql, catalogue):
    return analyse(sql, catalogue, max_chars=20_000, max_depth=64)


@pytest.mark.parametrize("sql", [
    # a measure compared, where the same comparison in WHERE is refused
    "SELECT p.sex, SUM(h.length_of_stay) AS s FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE EXISTS (SELECT 1 HAVING length_of_stay = 10) GROUP BY 1",
    "SELECT p.sex, SUM(h.length_of_stay) AS s FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE EXISTS (SELECT 1 FROM lsoa_lookup l "
    "GROUP BY l.imd_decile HAVING length_of_stay = 10) GROUP BY 1",
    "SELECT p.sex, SUM(h.length_of_stay) AS s FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE EXISTS (SELECT 1 HAVING COUNT(length_of_stay) = 1) "
    "GROUP BY 1",
    # the person key compared with literals
    "SELECT COUNT(DISTINCT p.person_id) FILTER (WHERE EXISTS (SELECT 1 HAVING person_id IN "
    "(1, 2, 3))) AS n FROM patients p",
    # a name no table of the query has: never resolved either
    "SELECT x.k, COUNT(*) AS n FROM (SELECT p.person_id, p.sex AS k FROM patients p "
    "GROUP BY p.person_id, p.sex HAVING no_such_column = 1) x GROUP BY 1",
], ids=["measure", "measure-lookup", "measure-in-aggregate", "person-key", "unknown"])
def test_every_name_in_having_is_resolved_or_refused(sql, catalogue):
    try:
        analysis = _analyse(sql, catalogue)
    except SqlRejected:
        return
    outputs = {n.lower() for s in analysis.tree.find_all(exp.Select) for n in s.named_selects}
    unresolved = [c.sql() for c in analysis.tree.find_all(exp.Column)
                  if not c.table and c.name.lower() not in outputs]
    assert not unresolved, (
        f"the analysed tree keeps {unresolved} unqualified in HAVING: no rule, policy or audit "
        "entry saw it, and DuckDB binds it to the enclosing query's column of that name")


def test_a_summed_measure_is_not_pinned_through_having(server, raw):
    def pinned_sum(yob: int, lsoa: str, m: int) -> str:
        return ("SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h "
                "JOIN patients p ON p.person_id = h.person_id "
                f"WHERE (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}') "
                f"OR EXISTS (SELECT 1 HAVING length_of_stay % {m} = 0) GROUP BY 1 ORDER BY 1")

    assert_total_stay_not_pinned(server, raw, pinned_sum,
                                 "through a HAVING name the analysis never resolved")


PID_IN = "EXISTS (SELECT 1 HAVING person_id IN ({}))"


def test_people_are_not_named_by_pseudonym_through_having(server, raw):
    """Round 37b's attack with the person key read through an unresolved HAVING name."""
    assert_not_named_by_pseudonym(
        server, raw, PID_IN.format,
        "the person key compared with literals through a HAVING name the analysis never "
        "resolved")


# What held: the narrowing of round 37 keeps what no rule resolved out of the engine's reach.

def test_a_direct_identifier_in_having_is_not_read(server):
    resp = query_as(server, OUTBREAK,
                    "SELECT p.sex, COUNT(DISTINCT p.person_id) AS n FROM patients p WHERE "
                    "EXISTS (SELECT 1 HAVING MONTH(date_of_birth) <= 6) GROUP BY 1")
    assert refused(resp), resp.text


def test_a_column_not_granted_in_having_is_not_read_under_dp(fresh_server):
    resp = query_as(fresh_server, DP_RESEARCHER,
                    "SELECT p.sex, COUNT(DISTINCT p.person_id) AS n FROM patients p WHERE "
                    "EXISTS (SELECT 1 HAVING registration_date < DATE '2015-01-01') GROUP BY 1")
    assert refused(resp), resp.text


@pytest.mark.parametrize("sub", [
    "SELECT 1 WHERE length_of_stay = 10",
    "SELECT 1 FROM lsoa_lookup l WHERE length_of_stay = 10",
    "SELECT length_of_stay = 10 AS x",
    "SELECT 1 AS one GROUP BY length_of_stay",
    "SELECT 1 AS one ORDER BY length_of_stay + 0",
    "SELECT COUNT(*) FILTER (WHERE length_of_stay = 10) AS c",
    "SELECT 1 FROM lsoa_lookup l JOIN lsoa_lookup m ON length_of_stay = 10",
])
def test_an_outer_measure_named_elsewhere_in_a_subquery_is_seen(sub, catalogue):
    with pytest.raises(SqlRejected):
        _analyse("SELECT p.sex, SUM(h.length_of_stay) AS s FROM hospital_admissions h "
                 "JOIN patients p ON p.person_id = h.person_id "
                 f"WHERE EXISTS ({sub}) GROUP BY 1", catalogue)


@pytest.mark.parametrize("condition", [
    "p.person_id IN (SELECT 12345)",
    "p.person_id IN (SELECT x.pid FROM (SELECT 12345 AS pid) x)",
    "p.person_id IN (SELECT s.person_id FROM (SELECT q.person_id FROM patients q WHERE FALSE "
    "UNION ALL SELECT 12345) s)",
    "(p.person_id, 1) IN (SELECT q.person_id, 1 FROM patients q)",
])
def test_the_person_key_under_in_meets_no_literal(condition, catalogue):
    with pytest.raises(SqlRejected):
        _analyse(f"SELECT COUNT(DISTINCT p.person_id) AS n FROM patients p WHERE {condition}",
                 catalogue)


# A wrong answer under dp, from round 37's ``_sort_key`` (gateway/disclosure/dp.py): in a
# column that holds a date anywhere (here, one field of a tuple key), every text matching the
# pattern of a far date is read back as a date, the text fields of the same tuple too. The
# engine compares those fields as text: '-' before '2020-01-01', '10000-01-01' before
# '9999-01-01'. The gateway puts instants before texts, and orders the date-like texts by
# year, so ``ORDER BY 1 LIMIT 1`` releases another cell than the one the engine sorts first.

def test_dp_orders_a_text_field_beside_a_date_as_the_engine_does():
    import duckdb

    from gateway.disclosure.dp import _ordered
    con = duckdb.connect()
    engine = con.execute(
        "SELECT k, n FROM (VALUES (('10000-01-01', DATE '2020-01-01'), 1), "
        "(('9999-01-01', DATE '2020-01-01'), 2), (('-', DATE '2020-01-01'), 3)) t(k, n) "
        "ORDER BY k").fetchall()
    ours = _ordered([list(r) for r in reversed(engine)], 0, False, False)
    assert [r[1] for r in ours] == [n for _, n in engine], (
        f"dp sorts tuple keys {[r[0][0] for r in ours]}; the engine {[k[0] for k, _ in engine]}")


def test_dp_limit_releases_the_cell_the_engine_sorts_first(fresh_server):
    sql = ("SELECT (CASE WHEN p.sex = 'F' THEN '-' ELSE '2020-01-01' END, DATE '2020-01-01') "
           "AS k, COUNT(DISTINCT p.person_id) AS n FROM patients p GROUP BY 1 ORDER BY 1 LIMIT 1")
    resp = query_as(fresh_server, DP_RESEARCHER, sql)
    if refused(resp) or resp.json()["status"] != "released":
        return
    rows = resp.json()["rows"]
    assert rows, resp.text
    first = rows[0][0]
    text = first[0] if isinstance(first, list) else next(iter(first.values()))
    assert text == "-", (
        f"ORDER BY 1 LIMIT 1 released the cell {first}; the engine sorts '-' (F) first")
