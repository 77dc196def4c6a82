"""Review round 39a: round 37 and 38's fixes (``check_names_bound``, the narrowed scans of
``filter_scans``, the cell-key position per table width, ``_is_source_select``) and the class
they close: where sqlglot (the analysis) and DuckDB (the engine) bind one name differently.
One way through, with two uses and four shapes; the tests named below fail on the code as
reviewed (a fix may refuse the query with a 4xx, or answer it as the analysis read it).

**A name the analysis gives to a source declared later in the same FROM, the engine gives to
the enclosing query.** sqlglot resolves a qualified column ``h.c`` to the innermost scope whose
sources hold an alias ``h`` (``owning_scope`` in ``gateway/sql/tree.py``, and sqlglot's own
``Scope.external_columns``, which hands a derived table's outer names to its parent scope),
whatever the position of ``h`` in that scope's FROM. DuckDB binds FROM items left to right: a
derived table (or CTE, or a JOIN's ON) that names ``h`` *before* its select has joined its own
``h`` cannot see it (only an earlier item is a lateral reference), so it binds ``h`` to the
enclosing query's source of that alias: a correlated reference in a subquery, an implicit
lateral reference in a derived table of the outer query. Checked on plain DuckDB:
``SELECT t.id, (SELECT MAX(d.v) FROM (SELECT t.x AS v) d JOIN b t ON TRUE) FROM a t`` reads
``a.x`` (100, 200), and with ``b t`` first it reads ``b.x`` (6, 6).

So in a subquery (or derived table) ``S`` that joins ``(SELECT z.person_id, z.year_of_birth AS
length_of_stay FROM patients z) h`` *after* a derived table or a join condition naming
``h.length_of_stay``, the analysis reads that name as a copy of a year of birth (its lineage is
``patients.year_of_birth``: no measure, no rule), the audit lists no use of it, and the engine
reads the outer query's ``hospital_admissions.length_of_stay``, which the narrowed scan of
round 37 holds because the outer query sums it. Every rule that follows a name to its source
(measure lineage, the person key's uses, person links, the policy's columns) is misled the same
way. Two uses:

- **A summed measure pinned** (round 38a's attack, through a qualified name):
  ``SUM(h.length_of_stay)`` over ``<her year of birth and small area> OR EXISTS (SELECT 1 FROM
  (SELECT q.person_id FROM patients q WHERE q.person_id = h.person_id AND h.length_of_stay %
  11 = 0) d JOIN (SELECT z.person_id, z.year_of_birth AS length_of_stay FROM patients z) h ON
  h.person_id = d.person_id WHERE h.person_id = p.person_id)`` adds her admissions to others'
  whose stays are multiples of 11: the released sum is her total stay modulo 11, and with 7 and
  13 beside it her exact total (Chinese remainder theorem). On the demo data (20,000 people,
  seed 42; Norfolk planner, ``JOINT-PLANNING``) the resident born 1932 in E01100185 has 122
  days in all; the F cells released 836, 650 and 395 (122 mod 7, 11, 13 = 3, 1, 5), exactly
  the raw DuckDB sums of ``... WHERE <her> OR h.length_of_stay % m = 0``; the M cells 721 = 7 x
  103, 418 = 11 x 38, 208 = 13 x 16 show the pinning (on the test data, seed 7, the resident's
  98 days come out of the residues 0, 10 and 7). The same with the name in an ON before the
  join (``FROM patients q JOIN lsoa_lookup l ON l.lsoa_code = q.lsoa_code AND
  h.length_of_stay % 11 = 0 JOIN (...) h ON ...``), and with ``d`` a CTE of the subquery,
  gives the same 650 and 418. No subquery is needed either: in a derived table of the outer
  query, ``LEFT JOIN (SELECT q.person_id FROM patients q JOIN lsoa_lookup l ON ... AND
  h.length_of_stay % m = 0 JOIN (...) h ON ... GROUP BY q.person_id) d ON d.person_id =
  p.person_id WHERE <her> OR d.person_id IS NOT NULL``, the engine binds ``h`` to the outer
  query's earlier ``h`` (an implicit lateral join) and released the same 836, 650 and 395.
  (``test_a_summed_measure_is_not_pinned_through_a_later_alias``, four shapes)
- **The person key meets literals** (round 37's rule, ``check_person_key_use``): ``EXISTS
  (SELECT 1 FROM patients q JOIN patients r ON r.person_id = q.person_id AND p.person_id IN
  (3, 5, ...) JOIN (SELECT z.person_id AS pid, z.year_of_birth AS person_id FROM patients z) p
  ON p.pid = q.person_id WHERE q.person_id = y.person_id)`` over ``patients p JOIN patients y
  ON y.person_id = p.person_id``: the analysis compares a year of birth with numbers, the
  engine the outer person's pseudonym. Eight pseudonyms released 10, seven were suppressed;
  with round 37b's construction three queries read a resident's registration date exactly.
  (``test_people_are_not_named_by_pseudonym_through_a_later_alias``)

The root cause is in the analysis trusting sqlglot's scopes for *which* source a qualified name
reads: an outer name used inside a subquery is taken for the nearest scope that has the alias,
not for the nearest one that has *already bound* it where the name stands (``_resolve`` in
``gateway/sql/analysis.py``, ``owning_scope`` in ``gateway/sql/tree.py``, ``lineage`` in
``gateway/sql/rules/measures.py``, ``_column_is_person_key`` in
``gateway/sql/rules/person_key.py``). ``test_a_name_before_its_join_is_refused_or_bound_as_the
_engine_binds_it`` states it at the analysis. Round 37's narrowing does not help: the column is
resolved for the outer table elsewhere in the query, so the scan holds it.

Fixed: the analysis works out, for every qualified name, the select the engine binds it to
(FROM items left to right: in a join's ON the items up to that join, inside a derived table the
items before it, inside a CTE none of its select's own), and refuses a name the two readings
give to different selects (``check_bound_in_order`` in ``gateway/sql/rules/binding.py``).

What held (passing tests below, or no test):

- A derived table or a subquery naming an alias joined *earlier* in the same FROM (DuckDB's
  implicit lateral join): both readings bind the earlier source (the demo answered 671/362,
  the sums of ``year_of_birth % 11`` as the analysis read it). At the top level sqlglot refuses
  a derived table naming an earlier item of the outer FROM directly (but not when the derived
  table has a later item of that name: the fourth shape above).
- A CTE of a subquery named like the outer alias and not read in its FROM: the analysis takes
  the name for the CTE, the engine for the outer table, but the person-link rule then finds a
  person source it cannot tie, and refuses. A CTE of the outer WITH naming the outer query's
  alias: refused by the resolver, as by the engine.
- ``USING``: the resolver rewrites it to ``ON`` with both sides qualified, and that is what runs.
- ``ORDER BY`` in a UNION and ``DISTINCT ON`` of an output name: the engine binds a whole-term
  output name to the output, as the analysis does (checked on plain DuckDB for ORDER BY and
  DISTINCT ON of a select); a name inside an
  expression is refused (round 37). An output alias inside a window's ORDER BY is expanded by
  the resolver, or qualified to the table's column where the table has one of that name (as
  DuckDB binds it), and the qualified text is what runs.
- Quoted aliases in another case (``patients "P"`` beside ``patients p``): sqlglot folds the
  case as DuckDB does.
- ``_is_source_select``: a person key projected by a scalar subquery compared with ``=``,
  ``IN`` over a tuple or a literal, and a person key under ``IN`` whose tested side is not a
  person key: all refused.
- cell_key: within one query the counts take at most two widths (people at D, rows at one D s
  for the whole query), each at its own position; counts of rows whose values are known
  multiples of one group's size (k rows a person, for several k) share the query's one width,
  whose band grows with the largest k: column k gives the size with a spread of band / k, and
  by that reckoning five to ten such columns are worth about two answers, within the eight
  free draws the regime allows. A SUM of a cast indicator (whose magnitude
  perturbation, a share of the largest contribution, would round back to the count) is refused
  as a composite.
"""

from __future__ import annotations

import pytest
from attack import (
    PLANNER,
    RESEARCHER,
    alone_with_stays,
    assert_not_named_by_pseudonym,
    assert_total_stay_not_pinned,
    days_registered,
    norfolk_residents,
    query_as,
    refused,
)
from sqlglot import exp

from gateway.errors import SqlRejected
from gateway.sql.analysis import analyse


def _analyse(sql, catalogue):
    return analyse(sql, catalogue, max_chars=20_000, max_depth=64)


#: the later source: a derived table whose ``length_of_stay`` is a year of birth
LATER_H = "(SELECT z.person_id, z.year_of_birth AS length_of_stay FROM patients z) h"

#: three ways to name ``h.length_of_stay`` before the subquery has joined its own ``h``
PIN_BEFORE_JOIN = {
    "derived-table": (
        "SELECT 1 FROM (SELECT q.person_id FROM patients q WHERE q.person_id = h.person_id "
        "AND h.length_of_stay % {m} = 0) d JOIN " + LATER_H + " ON h.person_id = d.person_id "
        "WHERE h.person_id = p.person_id"),
    "cte": (
        "WITH d AS (SELECT q.person_id FROM patients q WHERE q.person_id = h.person_id "
        "AND h.length_of_stay % {m} = 0) SELECT 1 FROM d JOIN " + LATER_H + " ON h.person_id = "
        "d.person_id WHERE h.person_id = p.person_id"),
    "join-on": (
        "SELECT 1 FROM patients q JOIN lsoa_lookup l ON l.lsoa_code = q.lsoa_code "
        "AND h.length_of_stay % {m} = 0 JOIN " + LATER_H + " ON h.person_id = q.person_id "
        "WHERE q.person_id = p.person_id"),
}


#: the same name in an ON of a derived table of the outer query, before the derived table's
#: own ``h`` is joined: the engine binds it to the outer ``h`` as an implicit lateral join
LATERAL_PIN = (
    "SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h "
    "JOIN patients p ON p.person_id = h.person_id "
    "LEFT JOIN (SELECT q.person_id FROM patients q JOIN lsoa_lookup l ON l.lsoa_code = "
    "q.lsoa_code AND h.length_of_stay % {m} = 0 JOIN " + LATER_H + " ON h.person_id = "
    "q.person_id GROUP BY q.person_id) d ON d.person_id = p.person_id "
    "WHERE (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}') OR d.person_id IS NOT NULL "
    "GROUP BY 1 ORDER BY 1")

SHAPES = [*PIN_BEFORE_JOIN, "outer-lateral-on"]


def _pinned_sum(yob: int, lsoa: str, shape: str, m: int) -> str:
    if shape == "outer-lateral-on":
        return LATERAL_PIN.format(m=m, yob=yob, lsoa=lsoa)
    return ("SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h "
            "JOIN patients p ON p.person_id = h.person_id "
            f"WHERE (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}') "
            f"OR EXISTS ({PIN_BEFORE_JOIN[shape].format(m=m)}) GROUP BY 1 ORDER BY 1")


@pytest.mark.parametrize("shape", SHAPES)
def test_a_summed_measure_is_not_pinned_through_a_later_alias(server, raw, shape):
    """The multiples tested through ``h.length_of_stay`` named before the subquery's own
    ``h`` is joined."""
    assert_total_stay_not_pinned(
        server, raw, lambda yob, lsoa, m: _pinned_sum(yob, lsoa, shape, m),
        f"through a name the analysis gave to a source joined later: {shape}")


def _named(condition: str) -> str:
    """True of the outer person if ``condition`` holds of ``p.person_id``: the analysis reads
    ``p.person_id`` in the first ON as the later ``p``'s year of birth, the engine as the
    outer query's person key."""
    return ("EXISTS (SELECT 1 FROM patients q JOIN patients r ON r.person_id = q.person_id "
            f"AND ({condition}) JOIN (SELECT z.person_id AS pid, z.year_of_birth AS "
            "person_id FROM patients z) p ON p.pid = q.person_id "
            "WHERE q.person_id = y.person_id)")


def test_people_are_not_named_by_pseudonym_through_a_later_alias(server, raw):
    """Round 37b's attack, the person key compared with literals through a name the
    analysis gave to a source joined later."""
    def column(j: int, want: int, known: str, target: int) -> str:
        who = (f"p.person_id IN ({known}) OR (p.person_id IN ({target}) "
               f"AND ({days_registered('y')} // {2 ** j}) % 2 = {want})")
        return f"COUNT(DISTINCT y.person_id) FILTER (WHERE {_named(who)}) AS b{j}_{want}"

    assert_not_named_by_pseudonym(
        server, raw, column=column, batches=(range(0, 5), range(5, 10), range(10, 15)),
        from_="FROM patients p JOIN patients y ON y.person_id = p.person_id",
        how="the outer person key compared with literals through a name the analysis gave "
        "to a source joined later")


@pytest.mark.parametrize("shape", SHAPES)
def test_a_name_before_its_join_is_refused_or_bound_as_the_engine_binds_it(shape, catalogue):
    """At the analysis: the outer query sums ``hospital_admissions.length_of_stay``, and the
    subquery names ``h.length_of_stay`` where the engine can only bind the outer ``h``. The
    analysis must refuse it, or record that use of the summed measure (then refused as a
    pin)."""
    sql = _pinned_sum(1932, "E01100185", shape, 11)
    try:
        analysis = _analyse(sql, catalogue)
    except SqlRejected:
        return
    where_uses = {(u.table, u.column) for u in analysis.columns if u.clause != "select"}
    assert ("hospital_admissions", "length_of_stay") in where_uses, (
        "the analysis accepted a subquery naming h.length_of_stay before its own h is joined, "
        "and recorded no use of the outer hospital_admissions.length_of_stay, which is what "
        "the engine reads there")


# What held: probes kept as regression tests.

@pytest.mark.parametrize("sub", [
    # the lateral name: an earlier item of the subquery's FROM, in both readings
    "SELECT 1 FROM " + LATER_H + " JOIN (SELECT q.person_id FROM patients q WHERE q.person_id "
    "= h.person_id AND h.length_of_stay % 11 = 0) d ON h.person_id = d.person_id "
    "WHERE h.person_id = p.person_id",
])
def test_a_lateral_name_reads_the_earlier_source_in_both_readings(server, raw, sub):
    """The earlier ``h`` is the derived table in both readings: the sums are of people's
    stays whose *year of birth* is a multiple of 11, as raw DuckDB gives them."""
    yob, lsoa, _, _ = alone_with_stays(raw)
    resp = query_as(server, PLANNER, (
        "SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h "
        f"JOIN patients p ON p.person_id = h.person_id WHERE (p.year_of_birth = {yob} AND "
        f"p.lsoa_code = '{lsoa}') OR EXISTS ({sub}) GROUP BY 1 ORDER BY 1"))
    if refused(resp):
        return
    got = {r[0]: r[1] for r in resp.json()["rows"]}
    want = dict(raw.execute(
        f"SELECT p.sex, SUM(h.length_of_stay) FROM hospital_admissions h JOIN "
        f"({norfolk_residents()}) p ON p.person_id = h.person_id WHERE (p.year_of_birth = "
        f"{yob} AND p.lsoa_code = '{lsoa}') OR p.year_of_birth % 11 = 0 GROUP BY 1").fetchall())
    assert got == want, (got, want)


@pytest.mark.parametrize("sql", [
    # a lateral name in the outer query: refused by the resolver
    "SELECT COUNT(*) AS n FROM patients p, (SELECT g.person_id FROM gp_events g "
    "WHERE g.person_id = p.person_id) x WHERE x.person_id = p.person_id",
    # an outer WITH naming the main query's alias
    "WITH d AS (SELECT q.person_id FROM patients q WHERE q.person_id = h.person_id AND "
    "h.length_of_stay % 11 = 0) SELECT p.sex, SUM(h.length_of_stay) AS total FROM "
    "hospital_admissions h JOIN patients p ON p.person_id = h.person_id WHERE EXISTS "
    "(SELECT 1 FROM d WHERE d.person_id = p.person_id) GROUP BY 1",
    # a subquery's CTE named like the outer alias, not read in its FROM
    "SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE EXISTS (WITH h AS (SELECT z.person_id, "
    "z.year_of_birth AS length_of_stay FROM patients z) SELECT 1 FROM patients q WHERE "
    "q.person_id = p.person_id AND h.person_id = q.person_id AND h.length_of_stay % 11 = 0) "
    "GROUP BY 1",
    # another case of one alias: folded as the engine folds it
    "SELECT COUNT(*) AS n FROM patients \"P\" WHERE EXISTS (SELECT 1 FROM patients p "
    "WHERE p.person_id = \"P\".person_id AND p.sex = 'F')",
    # the person key of a scalar subquery compared with =
    "SELECT COUNT(DISTINCT p.person_id) AS n FROM patients p WHERE (SELECT q.person_id FROM "
    "patients q WHERE q.person_id = p.person_id) = 12345",
    # under IN as the tested side, a key that is not a person key
    "SELECT COUNT(DISTINCT p.person_id) AS n FROM patients p WHERE p.year_of_birth IN "
    "(SELECT q.person_id FROM patients q)",
], ids=["lateral-outer", "outer-with", "subquery-cte", "quoted-case", "scalar-eq",
        "in-not-key"])
def test_names_bound_elsewhere_stay_refused(sql, catalogue):
    with pytest.raises(SqlRejected):
        _analyse(sql, catalogue)


def test_using_runs_as_the_qualified_on_it_is_read_as(catalogue):
    analysis = _analyse("SELECT l.imd_decile, COUNT(*) AS n FROM patients p JOIN lsoa_lookup l "
                        "USING (lsoa_code) GROUP BY 1", catalogue)
    join = next(analysis.tree.find_all(exp.Join))
    assert join.args.get("using") is None or not join.args["using"], join.sql()
    assert join.args.get("on") is not None


def test_a_window_order_name_runs_as_the_resolver_qualified_it(catalogue):
    """An output alias inside a window's ORDER BY is expanded to its expression, or, where the
    table has a column of that name, qualified to the table's column: the text that runs names
    it explicitly, so the engine cannot choose differently."""
    for alias, want in (("k", '"g"."event_date"'), ("value", '"g"."value"')):
        analysis = _analyse(
            f"SELECT x.{alias}, COUNT(*) AS n FROM (SELECT g.person_id, g.snomed_code AS "
            f"{alias}, g.event_date AS d, ROW_NUMBER() OVER (PARTITION BY g.person_id ORDER BY "
            f"{'d' if alias == 'k' else alias}) AS rn FROM gp_events g) x GROUP BY 1",
            catalogue)
        window = next(analysis.tree.find_all(exp.Window))
        order = window.args["order"].expressions[0].this
        assert isinstance(order, exp.Column) and order.table, window.sql()
        assert order.sql(dialect="duckdb") == want, window.sql()


def test_cell_key_refuses_a_sum_of_a_cast_indicator(server):
    """Its magnitude perturbation, a share of at most half the largest contribution (1), would
    round back to the exact count: refused as a composite, as under the threshold regime."""
    resp = query_as(server, RESEARCHER,
                    "SELECT p.sex, SUM(CAST(p.year_of_birth < 1950 AS INTEGER)) AS n "
                    "FROM patients p GROUP BY 1")
    assert refused(resp), resp.text
