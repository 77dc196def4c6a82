"""An aggregate belongs to the select it is written in, to the engine too.

DuckDB, as PostgreSQL, gives an aggregate whose columns are all an enclosing query's to that
query: ``(SELECT SUM(p.x))`` is a SUM over the enclosing query's group. Review round 40 used
it in the outer ORDER BY to sort released rows by an exact value of each cell. The outer
ORDER BY now refuses subqueries; these tests switch that off to show that the analysis
refuses such an aggregate wherever it stands (``check_aggregate_owners``).
"""

from __future__ import annotations

import pytest

from gateway.errors import SqlRejected
from gateway.sql.analysis import analyse
from gateway.sql.rules import released

HIDDEN = "SUM(CASE WHEN p.sex = 'F' THEN MONTH(p.registration_date) ELSE 0 END)"


@pytest.mark.parametrize("sql", [
    f"SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY (SELECT {HIDDEN})",
    f"SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 "
    f"ORDER BY EXISTS (SELECT 1 HAVING {HIDDEN} > 6)",
    f"SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 "
    f"ORDER BY 1 IN (SELECT 1 FROM lsoa_lookup l WHERE l.lsoa_code = 'x' AND {HIDDEN} > 6)",
    # in a derived table grouped by person: the engine's SUM is the person's, not the
    # subquery's (no harm there, but not what the rules read)
    "SELECT COUNT(*) AS n FROM (SELECT p.person_id FROM patients p GROUP BY p.person_id "
    "HAVING (SELECT SUM(p.year_of_birth)) > 1950) x",
    # review round 41: the FILTER counts with the arguments; COUNT(*) and SUM(1) read no
    # column, so a FILTER on the enclosing query's columns alone makes them its aggregates
    "SELECT COUNT(*) AS n FROM (SELECT p.person_id FROM patients p GROUP BY p.person_id "
    "HAVING (SELECT COUNT(*) FILTER (WHERE p.year_of_birth > 1950)) > 0) x",
    "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY (SELECT SUM(1) "
    "FILTER (WHERE p.sex = 'F' AND MONTH(p.registration_date) > 6))",
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM "
    "hospital_admissions h WHERE h.person_id = p.person_id GROUP BY h.person_id "
    "HAVING (SELECT COUNT(*) FILTER (WHERE p.year_of_birth > 1950)) > 0) GROUP BY 1",
])
def test_an_aggregate_of_enclosing_columns_is_refused_wherever_it_stands(
        sql, catalogue, monkeypatch):
    monkeypatch.setattr(released, "_refuse_a_subquery_in_order", lambda ordered: None)
    with pytest.raises(SqlRejected, match="aggregates only an enclosing query's columns"):
        analyse(sql, catalogue, max_chars=20_000, max_depth=64)


@pytest.mark.parametrize("sql", [
    # a subquery's own aggregate, correlated to the outer person: the subquery's
    "SELECT p.sex, COUNT(*) FILTER (WHERE (SELECT COUNT(*) FROM hospital_admissions h "
    "WHERE h.person_id = p.person_id) > 2) AS frequent FROM patients p GROUP BY 1",
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM "
    "hospital_admissions h WHERE h.person_id = p.person_id GROUP BY h.person_id "
    "HAVING SUM(h.length_of_stay) > 10) GROUP BY 1",
    # its own FILTER on its own columns, its arguments none: the subquery's
    "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE (SELECT COUNT(*) FILTER "
    "(WHERE h.length_of_stay > 3) FROM hospital_admissions h WHERE h.person_id = "
    "p.person_id) > 1 GROUP BY 1",
])
def test_a_subquerys_own_aggregate_stands(sql, catalogue):
    analyse(sql, catalogue, max_chars=20_000, max_depth=64)


def test_the_outer_order_by_takes_no_subquery(catalogue):
    with pytest.raises(SqlRejected, match="a subquery in ORDER BY"):
        analyse("SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1 "
                "ORDER BY (SELECT 1)", catalogue, max_chars=20_000, max_depth=64)
