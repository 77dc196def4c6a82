"""Review round 41a: the analysis's emulation of DuckDB's name binder and of aggregate
ownership (``gateway/sql/rules/binding.py``, ``gateway/sql/scans.py``, ``_resolve`` in
``gateway/sql/analysis.py``), after round 40's fixes.

**No way through was found** in the time given (about 35 minutes, demo data of 20,000 people,
the Norfolk planner under JOINT-PLANNING and the consent researcher under PRJ-0077). No query
was accepted whose answer, against raw DuckDB, released one person's value, a count below the
threshold, the person key or an identifier, or escaped a row filter or the opt-out; and no
request got a 500. Two divergences between the analysis and the engine were found and are
recorded below with what keeps each harmless today (passing tests, so that a change that
opens them is seen).

Why the family is narrower than it was: the engine runs the *qualified* tree (every
unqualified name, a lateral column alias, a SELECT alias in WHERE / GROUP BY, USING columns,
a derived table's or CTE's column list, is rewritten by sqlglot into a qualified column or
the aliased expression before anything runs). So the engine's own binding of *unqualified*
names matters only for the ORDER BY / DISTINCT ON output names ``check_names_bound`` keeps;
everything else the engine binds is a qualified ``t.c``, which ``check_bound_in_order``
emulates (FROM items left to right, the nearest ``t`` that has ``c``).

Divergences seen, harmless today:

A. **A local struct column shadows an enclosing query's table alias.** Raw DuckDB binds
   ``t.c`` inside a subquery to the field ``c`` of a *column* ``t`` of the subquery's own
   FROM before an enclosing query's table ``t``: ``SELECT a.id, (SELECT a.x FROM (SELECT
   {'x': 999} AS a) s) FROM a`` gives 999, not ``a.x``. sqlglot (``_convert_columns_to_dots``
   leaves a name alone whose table is the parent scope's source in a correlated subquery), and
   with it ``check_bound_in_order``/``_engine_binding``, binds it to the enclosing table. With
   ``(SELECT {'person_id': 28} AS p) s`` inside ``EXISTS (... WHERE q.person_id =
   p.person_id ...)`` the analysis would see a correlation with the outer person where the
   engine compares the key with 28, a person named by pseudonym (a bit of her record per
   column). It is shut only because nothing in the allow-list makes a named struct:
   ``{...}``, ``struct_pack``, ``row`` are refused as functions, and CAST to a STRUCT type
   is outside ``CAST_TYPES``. Should the allow-list ever take a struct (or a function that
   returns one, such as a JSON or list function), ``_engine_binding`` must also refuse a
   qualified name whose table is a column name of any select between it and its source.

B. **An aggregate whose FILTER alone names the enclosing query belongs to that query.** Raw
   DuckDB, like PostgreSQL, gives an aggregate to the outer level if its arguments *and its
   FILTER* name only outer columns: ``SELECT a.g, (SELECT COUNT(*) FILTER (WHERE a.x > 150)
   FROM e) FROM a GROUP BY a.g`` fails with "more than one row returned by a subquery" (the
   COUNT is the outer query's), and ``SELECT a.id, (SELECT COUNT(*) FILTER (WHERE a.x > 150)
   FROM e) FROM a`` fails because ``a.id`` is not grouped. ``check_aggregate_owners`` reads
   ``agg.find_all(exp.Column)`` on the AggFunc, which in sqlglot does not include the
   ``exp.Filter`` around it: ``COUNT(*)`` or ``SUM(1)`` with an outer FILTER has no columns of
   its own and passes. Where it could matter the gateway already refuses the place (a
   subquery in an outer output column, the outer ORDER BY, outer HAVING) or the engine refuses
   the shape (an aggregate in WHERE, GROUP BY or inside another aggregate: a 400 binder
   error). Inside a derived table that groups by person (``GROUP BY h.person_id`` or ``GROUP
   BY ALL``) the outer-owned COUNT is a per-person count, which the query may ask for directly
   (``COUNT(*) FILTER (...)`` there, or even ``SUM(h.length_of_stay)`` as a per-person key),
   and the answers are the same. Suggested fix anyway: in ``check_aggregate_owners`` take the
   columns of ``agg.parent`` when it is an ``exp.Filter`` (arguments and FILTER together), so
   that the rule states what the engine does.

   Done: ``check_aggregate_owners`` now reads the arguments and the FILTER together, and
   refuses such an aggregate wherever it stands (``tests/unit/gateway/test_aggregate_owners.py``
   and the test below).

What held (the tests below, or no test):

- Struct construction in any form (``{'person_id': 28}``, ``struct_pack(...)``, ``row(...)``,
  CAST to a STRUCT): refused by the allow-list, so divergence A cannot be reached.
- Outer-owned FILTER aggregates (divergence B) in an outer output column, inside an outer
  aggregate's FILTER, in a subquery's WHERE: refused (4xx, never a 500); in a per-person derived
  table the same answer as the direct per-person count.
- DuckDB's ``#1`` positional columns (sqlglot parses them as ``PositionalColumn``),
  ``COLUMNS(*)``, NATURAL, POSITIONAL and ASOF joins: refused.
- Lateral column aliases (``x AS a, a * 10 AS b``), a SELECT alias in WHERE, and a derived
  table's or CTE's column list (``AS d(yob, pid)``): sqlglot expands or pushes them into the
  tree the engine runs, so both read the same columns (raw DuckDB would prefer a table column
  over a lateral alias, ``SELECT a.x*0+1 AS y, y FROM a`` reads ``a.y``, and a SELECT alias over
  an outer correlated column in WHERE; the qualified tree leaves the engine no such choice).
  A UNION in a derived table with a column list is not pushed down: ``d.a`` by a branch's own
  name is refused by the resolver.
- Quoted identifiers in other cases (``"P"`` beside ``p``), identifiers with dots or quotes in
  them, and an empty alias ``""``: normalised alike for both, or a 4xx (the empty output name
  is a parser error in the engine, mapped to 400).
- Units written as names (``DATEDIFF(year_of_birth, ...)``, ``DATE_TRUNC(person_id, ...)``):
  sqlglot makes them ``Var`` nodes and writes them as string literals; no column is bound.
- ORDER BY an aggregate by position, alias, quoted alias in another case, a parenthesised
  position, or across a UNION by the first branch's name: refused.
"""

from __future__ import annotations

import pytest
from attack import PLANNER, RESEARCHER, query_as, refused

from gateway.errors import SqlRejected
from gateway.sql.analysis import analyse


def _analyse(sql, catalogue):
    return analyse(sql, catalogue, max_chars=20_000, max_depth=64)


def _rows(resp) -> list[list]:
    body = resp.json()
    assert body["status"] == "released", body
    return sorted(body["rows"], key=lambda r: tuple(str(v) for v in r))


# A. A local struct column would shadow the enclosing query's alias: no struct can be made

_NAMED = (
    "SELECT COUNT(DISTINCT p.person_id) AS n, COUNT(DISTINCT p.person_id) FILTER (WHERE "
    "EXISTS (SELECT 1 FROM (SELECT {struct} AS p) s, patients q WHERE q.person_id = "
    "p.person_id AND q.sex = 'F')) AS f FROM patients p"
)


@pytest.mark.parametrize(
    "struct",
    [
        "{'person_id': 28}",
        "struct_pack(person_id := 28)",
        "row(28)",
        "CAST('{''person_id'': 28}' AS STRUCT(person_id BIGINT))",
        "TRY_CAST('{''person_id'': 28}' AS STRUCT(person_id BIGINT))",
    ],
    ids=["literal", "struct_pack", "row", "cast", "try_cast"],
)
def test_no_struct_can_shadow_an_enclosing_alias(struct, catalogue, server):
    """Were a struct column ``p`` with a field ``person_id`` allowed in a subquery's FROM,
    ``p.person_id`` there would be 28 to the engine and the outer person to the analysis."""
    sql = _NAMED.format(struct=struct)
    with pytest.raises(SqlRejected):
        _analyse(sql, catalogue)
    assert refused(query_as(server, PLANNER, sql))


# B. An aggregate whose FILTER alone names the enclosing query


@pytest.mark.parametrize(
    "sql",
    [
        # an outer output column
        "SELECT p.sex, COUNT(*) AS n, (SELECT COUNT(*) FILTER (WHERE p.year_of_birth = 1932)) AS k "
        "FROM patients p GROUP BY 1",
        "SELECT p.sex, COUNT(*) + (SELECT SUM(1) FILTER (WHERE p.year_of_birth = 1932)) AS n "
        "FROM patients p GROUP BY 1",
        # inside an outer aggregate's FILTER (a nested aggregate to the engine)
        "SELECT p.sex, COUNT(*) FILTER (WHERE (SELECT COUNT(*) FILTER (WHERE p.year_of_birth = "
        "1932)) > 0) AS n FROM patients p GROUP BY 1",
        # in a subquery's WHERE (an aggregate in WHERE to the engine)
        "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM "
        "hospital_admissions h WHERE h.person_id = p.person_id AND h.length_of_stay > (SELECT "
        "COUNT(*) FILTER (WHERE p.year_of_birth > 1950) FROM lsoa_lookup l)) GROUP BY 1",
        # the subquery of an EXISTS made an aggregate query by its SELECT list
        "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT (SELECT COUNT(*) "
        "FILTER (WHERE h.length_of_stay > 3)) AS c FROM hospital_admissions h WHERE h.person_id = "
        "p.person_id) GROUP BY 1",
    ],
    ids=["output", "output-sum", "in-filter", "in-where", "exists-select"],
)
def test_an_outer_owned_filter_aggregate_is_refused_where_it_could_matter(sql, server):
    assert refused(query_as(server, PLANNER, sql))


@pytest.mark.parametrize("group", ["h.person_id", "ALL"])
def test_an_outer_owned_filter_aggregate_in_a_per_person_table_is_that_persons_count(group, server):
    """Inside a per-person derived table the engine's COUNT is the person's (the analysis
    takes it for a one-row subquery's): the same released table as the direct form."""
    direct = (
        "SELECT d.k, COUNT(DISTINCT d.person_id) AS n FROM (SELECT h.person_id, COUNT(*) "
        "FILTER (WHERE h.length_of_stay > 3) AS k FROM hospital_admissions h GROUP BY "
        "h.person_id) d GROUP BY 1"
    )
    hidden = (
        "SELECT d.k, COUNT(DISTINCT d.person_id) AS n FROM (SELECT h.person_id, (SELECT "
        "COUNT(*) FILTER (WHERE h.length_of_stay > 3)) AS k FROM hospital_admissions h "
        f"GROUP BY {group}) d GROUP BY 1"
    )
    for who in (PLANNER, RESEARCHER):
        a, b = query_as(server, who, direct), query_as(server, who, hidden)
        if refused(b):
            continue
        assert not refused(a)
        assert _rows(a) == _rows(b)


def test_an_aggregate_owned_by_its_filter_is_not_taken_for_the_subquerys(catalogue):
    """The rule's reading: a FILTER naming only the enclosing query makes the aggregate the
    enclosing query's (raw DuckDB: "more than one row returned by a subquery"), so
    ``check_aggregate_owners`` refuses it, though the answer was harmless (above)."""
    sql = (
        "SELECT d.k, COUNT(DISTINCT d.person_id) AS n FROM (SELECT h.person_id, (SELECT "
        "COUNT(*) FILTER (WHERE h.length_of_stay > 3)) AS k FROM hospital_admissions h "
        "GROUP BY h.person_id) d GROUP BY 1"
    )
    with pytest.raises(SqlRejected, match="aggregates only an enclosing query's columns"):
        _analyse(sql, catalogue)


# What held: probes kept as regression tests


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT #1, COUNT(*) AS n FROM patients p GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY #1",
        "SELECT p.sex, COUNT(COLUMNS(*)) AS n FROM patients p GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n FROM patients p NATURAL JOIN lsoa_lookup l GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n FROM patients p POSITIONAL JOIN hospital_admissions h "
        "GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n FROM patients p ASOF JOIN hospital_admissions h ON "
        "h.person_id = p.person_id GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY 2",
        'SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY "N"',
        "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY (2)",
        "SELECT p.sex AS k, COUNT(*) AS n FROM patients p GROUP BY 1 UNION ALL SELECT 'all', "
        "COUNT(*) FROM patients q ORDER BY n",
        "SELECT d.a, COUNT(*) AS n FROM (SELECT p.year_of_birth AS a FROM patients p UNION ALL "
        "SELECT p.year_of_birth FROM patients p) AS d(yob) GROUP BY 1",
        'SELECT p.sex AS "", COUNT(*) AS n FROM patients p GROUP BY 1',
    ],
    ids=[
        "positional-select",
        "positional-group",
        "columns-star",
        "natural",
        "positional-join",
        "asof",
        "order-position",
        "order-quoted-alias",
        "order-paren-position",
        "union-order",
        "union-column-list",
        "empty-alias",
    ],
)
def test_refused(sql, server):
    assert refused(query_as(server, PLANNER, sql))


@pytest.mark.parametrize(
    ("written", "plain"),
    [
        # a lateral column alias
        (
            "SELECT p.year_of_birth // 10 AS dec, dec * 10 AS decade, COUNT(*) AS n FROM patients p "
            "GROUP BY 1, 2",
            "SELECT p.year_of_birth // 10 AS dec, (p.year_of_birth // 10) * 10 AS decade, "
            "COUNT(*) AS n FROM patients p GROUP BY 1, 2",
        ),
        # a SELECT alias in WHERE
        (
            "SELECT p.sex AS s, COUNT(*) AS n FROM patients p WHERE s = 'F' GROUP BY s",
            "SELECT p.sex AS s, COUNT(*) AS n FROM patients p WHERE p.sex = 'F' GROUP BY p.sex",
        ),
        # a subquery's SELECT alias in its WHERE, named like an outer column
        (
            "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT h.length_of_stay AS "
            "year_of_birth FROM hospital_admissions h WHERE h.person_id = p.person_id AND "
            "year_of_birth > 3) GROUP BY 1",
            "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM "
            "hospital_admissions h WHERE h.person_id = p.person_id AND h.length_of_stay > 3) "
            "GROUP BY 1",
        ),
        # a derived table's column list, and a CTE's
        (
            "SELECT d.yob, COUNT(*) AS n FROM (SELECT p.year_of_birth, p.person_id FROM patients p) "
            "AS d(yob, pid) GROUP BY 1",
            "SELECT p.year_of_birth AS yob, COUNT(*) AS n FROM patients p GROUP BY 1",
        ),
        (
            "WITH k(yob, pid) AS (SELECT p.year_of_birth, p.person_id FROM patients p) SELECT k.yob, "
            "COUNT(*) AS n FROM k GROUP BY 1",
            "SELECT p.year_of_birth AS yob, COUNT(*) AS n FROM patients p GROUP BY 1",
        ),
        # quoted aliases in other cases and with odd characters
        (
            'SELECT "P".sex, COUNT(*) AS n FROM patients "p" GROUP BY 1',
            "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1",
        ),
        (
            'SELECT "p.x".sex, COUNT(*) AS n FROM patients "p.x" GROUP BY 1',
            "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1",
        ),
        (
            'SELECT "a""b".sex, COUNT(*) AS n FROM patients "a""b" GROUP BY 1',
            "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1",
        ),
    ],
    ids=[
        "lateral-alias",
        "where-alias",
        "subquery-where-alias",
        "derived-column-list",
        "cte-column-list",
        "quoted-case",
        "quoted-dot",
        "quoted-quote",
    ],
)
def test_names_read_as_written(written, plain, server):
    """Each spelling reads what the plain query reads: the same released table."""
    a, b = query_as(server, PLANNER, written), query_as(server, PLANNER, plain)
    if refused(a):
        return
    assert not refused(b)
    assert _rows(a) == _rows(b)


@pytest.mark.parametrize("unit", ["year_of_birth", "person_id", "nhs_number"])
def test_a_unit_written_as_a_name_binds_no_column(unit, catalogue):
    """``DATEDIFF(<name>, ...)`` and ``DATE_TRUNC(<name>, ...)``: the name is a unit (a
    ``Var``), written to the engine as a string, never a column of the table."""
    for sql in (
        f"SELECT DATEDIFF({unit}, p.registration_date, CURRENT_DATE) AS d, COUNT(*) "
        "AS n FROM patients p GROUP BY 1",
        f"SELECT DATE_TRUNC({unit}, p.registration_date) AS d, COUNT(*) AS n "
        "FROM patients p GROUP BY 1",
    ):
        try:
            analysis = _analyse(sql, catalogue)
        except SqlRejected:
            continue
        assert {u.column for u in analysis.columns} == {"registration_date"}
        assert f"'{unit.upper()}'" in analysis.tree.sql(dialect="duckdb")
