"""The analysis on its own: what it accepts, the facts it extracts, and refusals a person can act on."""

from __future__ import annotations

import pytest

from gateway.errors import SqlParseError, SqlRejected
from gateway.sql.analysis import analyse


def run(sql, catalogue):
    return analyse(sql, catalogue, max_chars=20_000, max_depth=64)


ACCEPTED = [
    "SELECT sex, COUNT(DISTINCT person_id) AS people FROM patients GROUP BY sex",
    "SELECT COUNT(*) FROM patients",
    "SELECT l.imd_decile, COUNT(DISTINCT p.person_id) FROM patients p "
    "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code GROUP BY l.imd_decile ORDER BY 1",
    "WITH first_dx AS (SELECT person_id, MIN(event_date) AS first_date FROM gp_events "
    "WHERE snomed_code = '44054006' GROUP BY person_id) "
    "SELECT year(f.first_date) AS y, COUNT(*) FROM first_dx f GROUP BY y",
    "SELECT date_trunc('month', h.admission_date) AS month, COUNT(*) AS spells, "
    "AVG(h.length_of_stay) AS los FROM hospital_admissions h "
    "WHERE h.admission_method = 'emergency' GROUP BY 1",
    "SELECT s.support_reason, SUM(s.weekly_cost) AS cost FROM social_care s GROUP BY ALL",
    "SELECT COUNT(DISTINCT p.person_id) FILTER (WHERE p.sex = 'F') AS women FROM patients p",
    "SELECT p.sex, COUNT(DISTINCT CASE WHEN d.person_id IS NOT NULL THEN p.person_id END) "
    "FROM patients p LEFT JOIN deaths d ON d.person_id = p.person_id GROUP BY p.sex",
    "SELECT COUNT(*) FROM patients p WHERE p.person_id IN (SELECT person_id FROM deaths)",
    "SELECT COUNT(*) FROM patients p WHERE EXISTS (SELECT 1 FROM deaths d "
    "WHERE d.person_id = p.person_id)",
    "SELECT CASE WHEN h.length_of_stay > 7 THEN 'long' ELSE 'short' END AS stay, COUNT(*) "
    "FROM hospital_admissions h GROUP BY 1",
    "SELECT t.n, COUNT(*) AS people FROM (SELECT person_id, COUNT(*) AS n "
    "FROM hospital_admissions GROUP BY person_id) t GROUP BY t.n",
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_realistic_queries_are_accepted(sql, catalogue):
    analysis = run(sql, catalogue)
    assert analysis.tables
    assert any(o.kind == "aggregate" for o in analysis.outputs)


def test_columns_are_listed_per_clause_with_their_source_table(catalogue):
    a = run("SELECT p.sex AS s, COUNT(*) FROM patients p JOIN gp_events e "
            "ON e.person_id = p.person_id WHERE e.snomed_code = '44054006' "
            "AND p.person_id IN (SELECT person_id FROM gp_events GROUP BY person_id "
            "HAVING MIN(event_date) > DATE '2020-01-01') GROUP BY p.sex ORDER BY s", catalogue)
    uses = {(u.table, u.column, u.clause) for u in a.columns}
    assert ("patients", "sex", "select") in uses
    assert ("patients", "sex", "group") in uses
    assert ("gp_events", "snomed_code", "where") in uses
    assert ("gp_events", "person_id", "join") in uses
    assert ("gp_events", "event_date", "having") in uses
    assert a.tables == {"patients", "gp_events"}


def test_aliases_do_not_hide_the_source_column(catalogue):
    a = run("WITH x AS (SELECT person_id, ethnicity AS e FROM patients) "
            "SELECT x.e, COUNT(*) FROM x GROUP BY x.e", catalogue)
    assert ("patients", "ethnicity") in {(u.table, u.column) for u in a.columns}


def test_output_columns_have_readable_names(catalogue):
    a = run("SELECT sex, COUNT(*), COUNT(DISTINCT person_id) AS people FROM patients "
            "GROUP BY sex", catalogue)
    assert [o.name for o in a.outputs] == ["sex", "count(*)", "people"]
    assert [o.kind for o in a.outputs] == ["group_key", "aggregate", "aggregate"]
    assert [o.is_count for o in a.outputs] == [False, True, True]


@pytest.mark.parametrize(
    ("expr", "shape"),
    [
        ("COUNT(*)", "count"),
        ("COUNT(DISTINCT p.person_id) FILTER (WHERE p.sex = 'F')", "count"),
        ("SUM(CASE WHEN p.year_of_birth < 1950 THEN 1 ELSE 0 END)", "count"),
        ("SUM(h.length_of_stay)", "measure"),
        ("AVG(h.length_of_stay)", "measure"),
        ("AVG(p.year_of_birth)", "composite"),
        ("AVG(CASE WHEN p.year_of_birth < 1950 THEN 1.0 ELSE 0 END)", "composite"),
        ("SUM(CASE WHEN p.year_of_birth < 1950 THEN 5.0 ELSE 0.000001 END)", "composite"),
        ("SUM(CASE WHEN p.sex = 'F' THEN 1000000 + h.length_of_stay ELSE 1000000 END)",
         "composite"),
        ("SUM(h.length_of_stay) FILTER (WHERE p.sex = 'F')", "composite"),
        ("SUM(2)", "composite"),
        ("SUM(1)", "count"),
        ("COUNT(*) * 1", "composite"),
        ("100.0 * COUNT(h.person_id) / COUNT(*)", "composite"),
    ],
)
def test_output_shapes(expr, shape, catalogue):
    a = run(f"SELECT p.sex, {expr} AS x FROM patients p JOIN hospital_admissions h "
            "ON h.person_id = p.person_id GROUP BY p.sex", catalogue)
    assert a.outputs[1].shape == shape


def test_parse_error_gives_line_and_column(catalogue):
    with pytest.raises(SqlParseError) as info:
        run("SELECT count(*)\nFROM patients\nWHERE WHERE", catalogue)
    assert "line 3" in info.value.message
    assert info.value.reasons[0]["line"] == 3


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELECT nhs_number, COUNT(*) FROM patients GROUP BY 1", "direct identifier"),
        ("SELECT COUNT(*) FROM patients WHERE postcode = 'NR1 1AA'", "found in where"),
        ("SELECT person_id, COUNT(*) FROM patients GROUP BY 1", "person key"),
        ("SELECT list(sex) FROM patients", "list/array_agg"),
        ("SELECT * FROM patients", "SELECT *"),
        ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "table function"),
        ("SELECT COUNT(*) FROM nowhere", "unknown table"),
        ("SELECT COUNT(*) FROM opt_outs", "engine only"),
        ("SELECT min(year_of_birth) FROM patients", "per-person subquery"),
        ("SELECT sex FROM patients", "neither an aggregate nor a group key"),
        ("SELECT 1; SELECT 2", "2 statements"),
        ("DELETE FROM patients", "only a SELECT"),
        ("SELECT sex, COUNT(*) OVER () FROM patients", "window"),
        ("SELECT COUNT(*) FROM main.patients", "qualified table name"),
    ],
)
def test_refusals_name_the_construct(sql, says, catalogue):
    with pytest.raises((SqlRejected, SqlParseError)) as info:
        run(sql, catalogue)
    assert says in info.value.message


def test_refusals_say_where(catalogue):
    with pytest.raises(SqlRejected) as info:
        run("SELECT sex, COUNT(*) FROM patients WHERE person_id IN (SELECT person_id FROM "
            "gp_events GROUP BY person_id HAVING max(getenv('HOME')) = 'x') GROUP BY sex",
            catalogue)
    assert "getenv() (in HAVING of a subquery)" in info.value.message
    with pytest.raises(SqlRejected) as info:
        run("SELECT sex, string_agg(lsoa_code, ',') FROM patients GROUP BY sex", catalogue)
    assert "(in the SELECT list of the outer query)" in info.value.message


def test_refusals_carry_a_hint(catalogue):
    with pytest.raises(SqlRejected) as info:
        run("SELECT * FROM patients", catalogue)
    assert info.value.hint


def test_length_and_depth_limits(catalogue):
    with pytest.raises(SqlRejected, match="characters"):
        analyse("SELECT COUNT(*) FROM patients " + " " * 200, catalogue, max_chars=100,
                max_depth=64)
    deep = "SELECT COUNT(*) FROM patients WHERE " + "(" * 40 + "1 = 1" + ")" * 40
    with pytest.raises(SqlRejected, match="nested"):
        analyse(deep, catalogue, max_chars=20_000, max_depth=30)
