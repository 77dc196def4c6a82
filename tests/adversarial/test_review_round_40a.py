"""Review round 40a: where the analysis (sqlglot's resolver and scopes) and the engine (DuckDB)
bind one name differently, after round 39's ``check_bound_in_order`` / ``_engine_binding``.
Two ways through, both inside **a CTE of a subquery**; the tests named below fail on the code
as reviewed (a fix may refuse the query with a 4xx, or answer it as the analysis read it).

**Why a CTE of a subquery is blind.** sqlglot hands a subquery's (and a correlatable derived
table's) names of an enclosing query's sources up to the enclosing scope: ``Scope.columns``
there includes ``subquery_scopes`` / ``derived_table_scopes``' ``external_columns``. It never
includes ``cte_scopes``. So a name in the CTE of a subquery that names an enclosing query's
alias (``EXISTS (WITH c AS (SELECT 1 AS one WHERE p.person_id IN (...)) SELECT 1 FROM c)``) is
in no scope's ``columns`` where its alias is a source: sqlglot's qualifier never checks that
the column exists (its ``Unknown column`` check runs on ``scope.columns``), and
``validate_qualify_columns`` lets it pass (the CTE scope "can be correlated"). The gateway's
``_resolve`` (``gateway/sql/analysis.py``) walks the same ``scope.columns``: no ``ColumnUse``
is recorded, and ``check_person_key_use`` never runs on it. Round 39's ``check_bound_in_order``
does see it (it walks ``find_all``), and both readings agree it names the enclosing query's
source, so it passes. Checked on raw DuckDB: a CTE inside a subquery, and inside a lateral
derived table, reads the enclosing query's row (``SELECT t.id, (WITH c AS (SELECT t.x AS v)
SELECT v FROM c) FROM a t`` gives a.x).

1. **The person key meets literals** (``test_the_person_key_meets_no_literal_in_a_subquerys_cte``).
   ``COUNT(DISTINCT p.person_id) FILTER (WHERE EXISTS (WITH k AS (SELECT 1 AS one WHERE
   p.person_id IN (<seven pseudonyms>)) SELECT 1 FROM k) OR (EXISTS (WITH t AS (SELECT 1 AS one
   WHERE p.person_id IN (<target>)) SELECT 1 FROM t) AND (<days since 1990 of
   p.registration_date> // 2^j) % 2 = w)) AS bj_w`` over ``patients p``: 8 people (released,
   10 after rounding) or 7 (suppressed) per column. On the demo data (20,000 people, seed 42,
   Norfolk planner, JOINT-PLANNING) three queries of ten columns read pseudonym 28's
   registration date exactly: 9359 days after 1990-01-01, as raw DuckDB gives it. The same
   with ``p.person_id`` projected out of the CTE and compared there (``WITH c AS (SELECT
   p.person_id AS v) SELECT 1 FROM c WHERE c.v IN (...)``). Written as a plain subquery (no
   CTE) the same test is refused ("the person key may only join tables or be counted").

2. **A summed measure pinned through an alias that lacks the column**
   (``test_a_summed_measure_is_not_pinned_through_an_alias_without_the_column``). DuckDB binds
   a qualified ``h.c`` to the nearest ``h`` that *has a column c*: where the nearest ``h``
   lacks it, it goes on outwards (raw DuckDB: ``SELECT t.id, (SELECT t.x FROM e t LIMIT 1) FROM
   a t``, with ``e`` lacking ``x``, reads ``a.x``: 100, 200). sqlglot binds it to the nearest
   ``h`` and, everywhere but in the blind spot above, refuses it as an unknown column;
   ``_engine_binding`` (``gateway/sql/rules/syntax.py``) emulates the engine by alias only,
   not by the columns each source has. So::

       SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h
       JOIN patients p ON p.person_id = h.person_id
       WHERE (p.year_of_birth = 1932 AND p.lsoa_code = 'E01100185')
          OR EXISTS (SELECT 1 FROM patients h WHERE h.person_id = p.person_id
                     AND EXISTS (WITH c AS (SELECT 1 AS one WHERE h.length_of_stay % 11 = 0)
                                 SELECT 1 FROM c))
       GROUP BY 1 ORDER BY 1

   The analysis (and ``check_bound_in_order``, both readings) gives ``h.length_of_stay`` to
   the middle query's ``patients h``: its lineage is ``patients.length_of_stay``, no measure,
   so the measure rule passes. The middle ``h`` is the narrowed scan of patients, without such
   a column, and the engine reads the outer ``hospital_admissions.length_of_stay``. Her
   admissions beside others' whose stays are multiples of M: the F cells released 836, 650 and
   395 for M = 7, 11, 13 (122 mod 7, 11, 13 = 3, 1, 5), exactly raw DuckDB's ``... WHERE <her>
   OR h.length_of_stay % M = 0``; the M cells 721 = 7 x 103, 418 = 11 x 38, 208 = 13 x 16 show
   the pinning. The Chinese remainder theorem gives her exact total stay, 122 days.

Code at fault: ``_resolve`` in ``gateway/sql/analysis.py`` (and every rule fed from
``scope.columns``: the person key, the policy's and the audit's column uses) misses the outer
names of a subquery's CTE; ``_engine_binding`` in ``gateway/sql/rules/syntax.py`` binds by
alias where the engine binds by alias *and column*; sqlglot's qualifier checks neither.

What held (passing tests below, or no test):

- ``_engine_binding`` against raw DuckDB, on tiny tables: a CTE in a lateral derived table
  (reads the earlier item), a CTE / UNION / derived table in a derived table joined before the
  subquery's own ``t`` (reads the enclosing ``t``), a scalar subquery in a derived table's
  SELECT list, a derived table inside a subquery in a join's ON (reads the ON's own ``t``), a
  comma list followed by JOIN ... ON (DuckDB's ON sees the comma items, as the emulation
  does), a window spec's subquery. All as emulated.
- A UNION branch of a subquery naming the outer person key or a direct identifier: sqlglot
  chains a set operation's branches, refused.
- A subquery's CTE naming an outer direct identifier (``p.nhs_number``): accepted by the
  analysis (no use recorded), but the narrowed scan has no such column and the engine
  stops (a 400): round 37's narrowing holds.
- A CTE of the outer WITH or of a derived table of the outer query naming the main query's
  alias: refused by the resolver ("could not be resolved").
- A subquery's CTE that ties other people to the outer person by a non-key column: refused by
  the person-link rule.
- A CTE named like a table alias of the same select (``WITH h AS (...) SELECT ... FROM
  hospital_admissions h``): both read the table.
- WHERE naming an output alias that is also a table column: qualified to the table's column,
  as DuckDB binds it.
- ``_names_a_label`` and dp constants: a label at a GROUP BY position comes back as the label
  under threshold, cell_key and dp; an out-of-range constant is a 400. (Under ROLLUP, ``GROUP
  BY ROLLUP(p.sex), 2`` naming a label is a 400 binder error: the row-bound query regroups by
  the same position over its own select list, ``row_bound`` in ``gateway/sql/rewrite.py``;
  a refusal of a fair query, no disclosure.)

Fixed in ``check_bound_in_order`` (``gateway/sql/rules/binding.py``): a name inside a CTE must
bind within that CTE, and the source a name binds to must have the column (``_has_column``).
"""

from __future__ import annotations

import pytest
from attack import (
    PLANNER,
    assert_not_named_by_pseudonym,
    assert_total_stay_not_pinned,
    days_registered,
    norfolk_residents,
    query_as,
    refused,
)

from gateway.errors import SqlRejected
from gateway.sql.analysis import analyse


def _analyse(sql, catalogue):
    return analyse(sql, catalogue, max_chars=20_000, max_depth=64)


# 1. The person key meets literals inside a subquery's CTE

def _in_cte(name: str, condition: str) -> str:
    """True of the outer row if ``condition`` holds of it, tested inside a subquery's CTE."""
    return f"EXISTS (WITH {name} AS (SELECT 1 AS one WHERE {condition}) SELECT 1 FROM {name})"


def test_the_person_key_meets_no_literal_in_a_subquerys_cte(server, raw):
    """Round 37b's attack, the person key compared with literals inside a subquery's CTE
    (a CTE name of its own for each use)."""
    def column(j: int, want: int, known: str, target: int) -> str:
        return (f"COUNT(DISTINCT p.person_id) FILTER (WHERE "
                f"{_in_cte(f'k{j}_{want}', f'p.person_id IN ({known})')} OR "
                f"({_in_cte(f't{j}_{want}', f'p.person_id IN ({target})')} "
                f"AND ({days_registered('p')} // {2 ** j}) % 2 = {want})) AS b{j}_{want}")

    assert_not_named_by_pseudonym(
        server, raw, column=column, batches=(range(0, 5), range(5, 10), range(10, 15)),
        how="the outer person key compared with literals inside a subquery's CTE, where no "
        "rule looked")


@pytest.mark.parametrize("sub", [
    "WITH c AS (SELECT 1 AS one WHERE p.person_id IN (3, 5, 7)) SELECT 1 FROM c",
    "WITH c AS (SELECT p.person_id AS v) SELECT 1 FROM c WHERE c.v IN (3, 5, 7)",
    "WITH c AS (SELECT 1 AS one WHERE p.person_id = 3) SELECT 1 FROM c",
    # the CTE on a UNION in the subquery
    "WITH c AS (SELECT 1 AS one WHERE p.person_id IN (3, 5, 7)) SELECT 1 FROM c "
    "UNION ALL SELECT 1 FROM c",
], ids=["in-list", "projected", "equals", "union-with"])
def test_a_subquerys_cte_names_the_person_key_as_any_subquery_does(sub, catalogue):
    """At the analysis: the same test written without the CTE is refused; with it, it must be
    refused too."""
    plain = ("SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 WHERE "
             "p.person_id IN (3, 5, 7)) GROUP BY p.sex")
    with pytest.raises(SqlRejected):
        _analyse(plain, catalogue)
    with pytest.raises(SqlRejected):
        _analyse(f"SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS ({sub}) "
                 "GROUP BY p.sex", catalogue)


# 2. A summed measure pinned through an alias without the column

def _pinned_sum(yob: int, lsoa: str, m: int) -> str:
    return ("SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h "
            "JOIN patients p ON p.person_id = h.person_id "
            f"WHERE (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}') "
            "OR EXISTS (SELECT 1 FROM patients h WHERE h.person_id = p.person_id AND "
            f"{_in_cte(f'c{m}', f'h.length_of_stay % {m} = 0')}) GROUP BY 1 ORDER BY 1")


def test_a_summed_measure_is_not_pinned_through_an_alias_without_the_column(server, raw):
    """The multiples tested through ``h.length_of_stay`` where the nearest ``h`` (patients)
    has no such column and the engine reads the outer query's."""
    assert_total_stay_not_pinned(server, raw, _pinned_sum,
                                 "through a name given to a source without that column")


def test_a_name_binds_where_its_source_has_the_column(catalogue):
    """At the analysis: the middle query's ``h`` has no ``length_of_stay``; the engine binds
    ``h.length_of_stay`` to the outer ``hospital_admissions h``. The analysis must refuse it,
    or record that use of the summed measure (then refused as a pin)."""
    try:
        analysis = _analyse(_pinned_sum(1932, "E01100185", 11), catalogue)
    except SqlRejected:
        return
    where_uses = {(u.table, u.column) for u in analysis.columns if u.clause != "select"}
    assert ("hospital_admissions", "length_of_stay") in where_uses, (
        "the analysis accepted h.length_of_stay where the nearest h (patients) has no such "
        "column, and recorded no use of the outer hospital_admissions.length_of_stay, which is "
        "what the engine reads there")


# What held: probes kept as regression tests.

@pytest.mark.parametrize("sql", [
    # a UNION branch of a subquery: sqlglot chains set-operation branches
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 AS a WHERE FALSE "
    "UNION ALL SELECT 1 AS a WHERE p.person_id IN (3, 5, 7)) GROUP BY p.sex",
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 AS a WHERE FALSE "
    "UNION ALL SELECT 1 AS a WHERE p.nhs_number LIKE '1%') GROUP BY p.sex",
    # a derived table in a subquery: chained
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 AS a FROM "
    "(SELECT 1 AS b WHERE p.person_id IN (3, 5, 7)) d) GROUP BY p.sex",
    # a CTE of a derived table of the outer query: not correlatable, refused by the resolver
    "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN (WITH c AS (SELECT 1 AS one WHERE "
    "p.person_id IN (3, 5, 7)) SELECT c.one FROM c) d ON TRUE GROUP BY p.sex",
    # other people tied to the outer person by a non-key column, in a subquery's CTE
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (WITH c AS (SELECT 1 AS one "
    "FROM patients z WHERE z.year_of_birth = p.year_of_birth AND z.lsoa_code = p.lsoa_code "
    "AND z.sex <> p.sex) SELECT 1 FROM c) GROUP BY p.sex",
    # the pin in the subquery itself (not in its CTE): an unknown column to the resolver
    "SELECT p.sex, SUM(h.length_of_stay) AS total FROM hospital_admissions h JOIN patients p "
    "ON p.person_id = h.person_id WHERE EXISTS (SELECT 1 FROM patients h WHERE h.person_id = "
    "p.person_id AND h.length_of_stay % 11 = 0) GROUP BY 1",
], ids=["union-key", "union-identifier", "derived-key", "outer-derived-cte", "cte-link",
        "no-cte-pin"])
def test_names_bound_elsewhere_stay_refused(sql, catalogue):
    with pytest.raises(SqlRejected):
        _analyse(sql, catalogue)


def test_a_subquerys_cte_cannot_read_a_direct_identifier(server):
    """The analysis records no use of ``p.nhs_number`` in a subquery's CTE, but the narrowed
    scan of patients has no such column: the engine stops, a 4xx."""
    resp = query_as(server, PLANNER,
                    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (WITH c AS "
                    "(SELECT p.nhs_number AS v) SELECT 1 FROM c WHERE c.v LIKE '1%') "
                    "GROUP BY p.sex")
    assert refused(resp), resp.text


def test_a_cte_named_like_a_table_alias_reads_the_table(server, raw):
    """``WITH h AS (...)`` beside ``hospital_admissions h`` in the same FROM: the analysis and
    the engine both read the table's stays."""
    resp = query_as(server, PLANNER,
                    "WITH h AS (SELECT z.person_id, z.year_of_birth AS length_of_stay FROM "
                    "patients z) SELECT p.sex, SUM(h.length_of_stay) AS total FROM "
                    "hospital_admissions h JOIN patients p ON p.person_id = h.person_id "
                    "GROUP BY 1 ORDER BY 1")
    if refused(resp):
        return
    got = {r[0]: r[1] for r in resp.json()["rows"]}
    want = dict(raw.execute(
        f"SELECT p.sex, SUM(h.length_of_stay) FROM hospital_admissions h JOIN "
        f"({norfolk_residents()}) p ON p.person_id = h.person_id GROUP BY 1").fetchall())
    assert set(got) == set(want)
    for sex, total in got.items():
        assert abs(total - want[sex]) <= max(10, 0.01 * want[sex]), (got, want)


@pytest.mark.parametrize("label", ["'all'", "3", "DATE '2025-01-01'"])
def test_a_label_grouped_by_position_comes_back_as_the_label(server, raw, label):
    resp = query_as(server, PLANNER, f"SELECT {label} AS label, p.sex, COUNT(*) AS n "
                    "FROM patients p GROUP BY 1, 2 ORDER BY 2")
    assert not refused(resp), resp.text
    rows = resp.json()["rows"]
    want = raw.execute(f"SELECT CAST({label} AS VARCHAR)").fetchone()[0]
    assert [str(r[0]) for r in rows] == [want] * len(rows), rows
    assert sorted(r[1] for r in rows) == ["F", "M"]


def test_a_rollup_beside_a_label_grouped_by_position_is_answered(server):
    """Noted in this round, not a leak: ``GROUP BY ROLLUP (p.sex), 2`` with column 2 a label
    was a binder error, since the row-bound query regrouped by the position over its own
    SELECT list; constant keys are left out of its regrouping now."""
    resp = query_as(server, PLANNER, "SELECT p.sex, 'Norfolk' AS area, COUNT(*) AS n "
                    "FROM patients p LEFT JOIN gp_events g ON g.person_id = p.person_id "
                    "GROUP BY ROLLUP (p.sex), 2")
    assert resp.status_code == 200, resp.text
    assert {row[1] for row in resp.json()["rows"]} == {"Norfolk"}
