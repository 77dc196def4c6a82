"""Hostile queries, by family: each refused over HTTP with a 4xx, audited, and the server healthy.

Run as the Norfolk planner under JOINT-PLANNING (a caller who may query), so that each refusal
comes from the SQL layer, the policy or the engine, not from a missing permission.
"""

from __future__ import annotations

import pytest

HOSTILE: dict[str, list[str]] = {
    "statements": [
        "SELECT 1; SELECT 2",
        "SELECT count(*) FROM patients; DROP TABLE patients",
        "DROP TABLE patients",
        "DELETE FROM opt_outs",
        "INSERT INTO patients (person_id) VALUES (1)",
        "UPDATE patients SET sex = 'M'",
        "CREATE TABLE x AS SELECT 1",
        "CREATE TEMP TABLE x AS SELECT count(*) FROM patients",
        "CREATE MACRO m(a) AS a",
        "ATTACH '/tmp/x.duckdb' AS x",
        "COPY patients TO '/tmp/out.csv'",
        "EXPORT DATABASE '/tmp/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "SET search_path = 'main'",
        "SET VARIABLE x = 1",
        "PRAGMA database_list",
        "PRAGMA table_info('patients')",
        "CALL pragma_version()",
        "DESCRIBE patients",
        "SHOW TABLES",
        "EXPLAIN SELECT count(*) FROM patients",
        "BEGIN TRANSACTION",
        "CHECKPOINT",
        "VACUUM",
    ],
    "file and system access": [
        "SELECT count(*) FROM read_csv('/etc/passwd')",
        "SELECT count(*) FROM read_csv_auto('/etc/passwd')",
        "SELECT count(*) FROM read_parquet('/tmp/x.parquet')",
        "SELECT count(*) FROM read_json('/etc/hosts')",
        "SELECT count(*) FROM read_text('/etc/hostname')",
        "SELECT count(*) FROM '/etc/passwd'",
        "SELECT count(*) FROM 'patients.parquet'",
        "SELECT count(*) FROM glob('/*')",
        "SELECT count(*) FROM duckdb_settings()",
        "SELECT count(*) FROM duckdb_tables()",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT count(*) FROM main.patients",
        "SELECT count(*) FROM memory.main.patients",
        "SELECT count(*) FROM pg_catalog.pg_class",
        "SELECT current_setting('memory_limit'), count(*) FROM patients",
        "SELECT count(*) FROM query('SELECT * FROM patients')",
        "SELECT count(*) FROM query_table('patients')",
        "SELECT getenv('HOME'), count(*) FROM patients",
        "SELECT version(), count(*) FROM patients",
        "SELECT count(*) FROM patients p WHERE p.sex = getvariable('x')",
    ],
    "row-level output": [
        "SELECT year_of_birth FROM patients",
        "SELECT p.sex, p.year_of_birth FROM patients p",
        "SELECT DISTINCT lsoa_code FROM patients",
        "SELECT sex FROM patients GROUP BY sex",
        "SELECT year_of_birth, count(*) OVER () FROM patients",
        "SELECT sex, row_number() OVER (ORDER BY year_of_birth) FROM patients",
        "SELECT sex, count(*), year_of_birth FROM patients GROUP BY sex",
        "SELECT sex, sum(count(*)) OVER () FROM patients GROUP BY sex",
        "SELECT * FROM patients",
        "SELECT p.* FROM patients p",
        "SELECT count(*), * FROM patients",
        "SELECT * EXCLUDE (nhs_number) FROM patients",
        "SELECT COLUMNS('.*') FROM patients",
        "SELECT count(*) FROM patients UNION ALL SELECT year_of_birth FROM patients",
        "SELECT (SELECT year_of_birth FROM patients LIMIT 1) AS y, count(*) FROM patients",
        "SELECT count(*) + (SELECT count(*) FROM patients WHERE year_of_birth = 1920) "
        "FROM patients",
        "SELECT count(*) FILTER (WHERE sex = 'F') + (SELECT count(*) FROM deaths) FROM patients",
    ],
    "leaky aggregates": [
        "SELECT list(person_id) FROM patients",
        "SELECT sex, list(year_of_birth) FROM patients GROUP BY sex",
        "SELECT array_agg(lsoa_code) FROM patients",
        "SELECT string_agg(lsoa_code, ',') FROM patients",
        "SELECT group_concat(lsoa_code) FROM patients",
        "SELECT first(year_of_birth) FROM patients",
        "SELECT last(year_of_birth) FROM patients",
        "SELECT any_value(lsoa_code) FROM patients",
        "SELECT arg_min(lsoa_code, year_of_birth) FROM patients",
        "SELECT arg_max(lsoa_code, year_of_birth) FROM patients",
        "SELECT histogram(year_of_birth) FROM patients",
        "SELECT mode(lsoa_code) FROM patients",
        "SELECT min(year_of_birth) FROM patients",
        "SELECT max(h.length_of_stay) FROM hospital_admissions h",
        "SELECT quantile_cont(year_of_birth, 0.5) FROM patients",
        "SELECT median(year_of_birth) FROM patients",
        "SELECT approx_quantile(year_of_birth, 0.5) FROM patients",
        "SELECT sex, max(year_of_birth) FROM patients GROUP BY sex",
        "SELECT bit_or(person_id) FROM patients",
        "SELECT sum(person_id) FROM patients",
    ],
    "identifiers and the person key": [
        "SELECT nhs_number, count(*) FROM patients GROUP BY nhs_number",
        "SELECT count(*) FROM patients WHERE nhs_number = '4000000018'",
        "SELECT count(*) FROM patients WHERE postcode LIKE 'NR1%'",
        "SELECT count(*) FROM patients ORDER BY date_of_birth",
        "SELECT year(date_of_birth), count(*) FROM patients GROUP BY 1",
        "SELECT count(*) FROM hospital_admissions WHERE spell_id = 1",
        "WITH x AS (SELECT nhs_number FROM patients) SELECT count(*) FROM x",
        "SELECT count(*) FROM patients p JOIN patients q ON p.nhs_number = q.nhs_number",
        "SELECT person_id, count(*) FROM gp_events GROUP BY person_id",
        "SELECT count(*) FROM patients WHERE person_id = 42",
        "SELECT count(*) FROM patients WHERE person_id IN (1, 2, 3)",
        "SELECT count(*) FROM patients WHERE person_id < 100",
        "SELECT person_id % 10, count(*) FROM patients GROUP BY 1",
        "SELECT count(DISTINCT person_id % 2) FROM patients",
        "WITH t AS (SELECT person_id FROM patients) SELECT t.person_id, count(*) FROM t "
        "GROUP BY t.person_id",
        "SELECT count(*) FROM opt_outs",
        "SELECT count(*) FROM patients WHERE person_id IN (SELECT person_id FROM opt_outs)",
        "SELECT count(*) FROM study_consents",
        "SELECT h.measure, count(*) FROM (SELECT length_of_stay AS measure, person_id "
        "FROM hospital_admissions) h GROUP BY h.measure HAVING count(*) < 0",
        "SELECT length_of_stay, count(*) FROM hospital_admissions GROUP BY length_of_stay",
        "WITH c AS (SELECT person_id, weekly_cost FROM social_care) SELECT c.weekly_cost, "
        "count(*) FROM c GROUP BY c.weekly_cost",
        "SELECT count(*) FROM patients p JOIN gp_events e ON p.person_id = e.person_id + 1",
        "SELECT count(*) FROM patients p WHERE EXISTS (SELECT 1 FROM gp_events e "
        "WHERE e.person_id = p.person_id AND e.person_id > 5)",
    ],
    "row-filter bypass": [
        "SELECT count(*) FROM patients INTERSECT SELECT count(*) FROM gp_events",
        "SELECT count(*) FROM patients EXCEPT SELECT count(*) FROM gp_events",
        "SELECT count(*) FROM patients UNION BY NAME SELECT count(*) FROM gp_events",
        "SELECT count(*) FROM patients UNION ALL SELECT count(*) FROM opt_outs",
        "SELECT count(*) FROM patients UNION ALL SELECT count(*) FROM read_csv('/etc/passwd')",
        "SELECT sex, count(*) FROM patients GROUP BY sex UNION ALL SELECT sex, year_of_birth "
        "FROM patients",
        "SELECT sex, count(*) FROM patients GROUP BY sex UNION ALL SELECT count(*), sex "
        "FROM patients GROUP BY sex",
        "SELECT count(*) FROM (SELECT person_id FROM patients UNION ALL SELECT person_id "
        "FROM opt_outs) t",
        "WITH x AS (SELECT person_id FROM gp_events UNION SELECT 42) SELECT count(*) FROM x",
        "SELECT count(*) FROM patients UNION ALL SELECT person_id FROM patients",
        "WITH patients AS (SELECT 1 AS person_id) SELECT count(*) FROM patients",
        "SELECT count(*) FROM (SELECT count(*) AS n FROM patients GROUP BY sex) t",
        "SELECT count(*) FROM lateral (SELECT 1) t",
        "SELECT count(*) FROM patients p, unnest([1,2,3]) u",
        "SELECT count(*) FROM patients p ASOF JOIN gp_events e ON p.person_id = e.person_id "
        "AND p.registration_date >= e.event_date",
        "SELECT count(*) FROM patients p POSITIONAL JOIN gp_events e",
        "SELECT count(*) FROM patients TABLESAMPLE 10%",
        "SELECT count(*) FROM patients USING SAMPLE 10",
        "SELECT count(*) FROM patients p NATURAL JOIN gp_events e",
        "SELECT count(*) FROM patients p LEFT ASOF JOIN gp_events e "
        "ON p.person_id = e.person_id AND p.registration_date >= e.event_date",
    ],
    "defeating rounding and suppression": [
        "SELECT sex, COUNT(*) * 1 AS n FROM patients GROUP BY sex",
        "SELECT sex, COUNT(*) + 0 AS n FROM patients GROUP BY sex",
        "SELECT sex, 100.0 * COUNT(DISTINCT person_id) / 7 FROM patients GROUP BY sex",
        "SELECT sex, AVG(CASE WHEN year_of_birth < 1950 THEN 1.0 ELSE 0 END) FROM patients "
        "GROUP BY sex",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) = 17771",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) BETWEEN 100 AND 200",
        "SELECT lsoa_code, COUNT(*) AS n FROM patients GROUP BY lsoa_code ORDER BY n",
        "SELECT lsoa_code, COUNT(*) FROM patients GROUP BY lsoa_code ORDER BY COUNT(*) DESC",
        "SELECT lsoa_code, COUNT(*) FROM patients GROUP BY lsoa_code ORDER BY 2",
        "SELECT sex, COUNT(*) - COUNT(*) FILTER (WHERE year_of_birth > 1940) FROM patients "
        "GROUP BY sex",
        "SELECT sex, AVG(CASE WHEN year_of_birth < 1950 THEN 1.0 ELSE 0 END) FROM patients "
        "GROUP BY sex",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex LIMIT -1",
        "SELECT CAST(sex AS BLOB), COUNT(*) FROM patients GROUP BY 1",
        "SELECT CAST(sex AS VARCHAR[]), COUNT(*) FROM patients GROUP BY 1",
        "SELECT CAST('00000000-0000-0000-0000-000000000000' AS UUID) AS k, COUNT(*) "
        "FROM patients GROUP BY 1",
        "SELECT CAST('10:00' AS TIME) AS k, COUNT(*) FROM patients GROUP BY 1",
    ],
    "windows": [
        "SELECT sex, count(*) OVER (PARTITION BY sex) FROM patients",
        "SELECT count(*) FROM (SELECT person_id, lag(year_of_birth) OVER (ORDER BY person_id) "
        "AS y FROM patients) t WHERE t.y = 1950",
        "SELECT t.prev, count(*) FROM (SELECT person_id, lag(lsoa_code) OVER (PARTITION BY sex "
        "ORDER BY year_of_birth) AS prev FROM patients) t GROUP BY t.prev",
        "SELECT t.r, count(*) FROM (SELECT person_id, rank() OVER (ORDER BY year_of_birth) AS r "
        "FROM patients) t GROUP BY t.r",
        "SELECT count(*) FROM (SELECT person_id, first_value(lsoa_code) OVER (PARTITION BY "
        "person_id) AS f FROM patients) t",
        "SELECT count(*) FROM (SELECT person_id, max(year_of_birth) OVER () AS m FROM patients) t",
        "SELECT count(*) FROM (SELECT person_id, ntile(10) OVER (PARTITION BY person_id) AS n "
        "FROM patients) t",
        "SELECT sex, count(*) FROM patients GROUP BY sex QUALIFY count(*) > 5",
    ],
    "linking other people's rows": [
        "SELECT t.lsoa_code, t.ethnicity, t.practice_code, t.registration_date, COUNT(*) AS n "
        "FROM patients p CROSS JOIN (SELECT q.person_id, q.lsoa_code, q.ethnicity, "
        "q.practice_code, q.registration_date FROM patients q WHERE q.year_of_birth = 1925 "
        "AND q.sex = 'M') t GROUP BY t.lsoa_code, t.ethnicity, t.practice_code, "
        "t.registration_date",
        "SELECT q.year_of_birth, q.sex, COUNT(*) FROM patients p CROSS JOIN patients q "
        "WHERE q.year_of_birth = 1925 GROUP BY 1, 2",
        "SELECT t.m + 0 AS m, COUNT(*) AS n FROM (SELECT p.person_id, MAX(CASE WHEN "
        "q.year_of_birth = 1925 AND q.sex = 'M' THEN q.registration_date END) AS m FROM patients "
        "p CROSS JOIN patients q GROUP BY p.person_id) t GROUP BY t.m + 0",
        "SELECT p.lsoa_code, COUNT(*) FROM patients p WHERE EXISTS (SELECT 1 FROM patients q "
        "WHERE q.lsoa_code = p.lsoa_code AND q.year_of_birth = 1925 AND q.sex = 'M') GROUP BY 1",
        "SELECT p.lsoa_code, COUNT(*) FROM patients p WHERE p.lsoa_code IN (SELECT q.lsoa_code "
        "FROM patients q WHERE q.year_of_birth = 1925 AND q.sex = 'M') GROUP BY 1",
        "SELECT p.sex, COUNT(*) FROM patients p WHERE EXISTS (SELECT 1 FROM patients q WHERE "
        "q.year_of_birth = 1925 AND q.sex = 'M' AND q.ethnicity = 'Black') GROUP BY 1",
        "SELECT p.sex, COUNT(*) FROM patients p JOIN (SELECT lsoa_code, COUNT(*) AS n FROM "
        "patients GROUP BY lsoa_code) a ON a.lsoa_code = p.lsoa_code GROUP BY 1",
        "SELECT p.sex, COUNT(*) FROM patients p JOIN gp_events e ON e.person_id + 0 = "
        "p.person_id GROUP BY 1",
        "SELECT p.sex, COUNT(*) FROM patients p JOIN hospital_admissions h ON h.admission_date "
        "= p.registration_date GROUP BY 1",
        "SELECT t.v, COUNT(*) FROM patients p JOIN (SELECT DISTINCT imd_decile - 1 AS v FROM "
        "lsoa_lookup) t ON p.person_id = t.v GROUP BY t.v",
        "SELECT COUNT(*) FROM patients p WHERE p.person_id IN (SELECT imd_decile * 1000 "
        "FROM lsoa_lookup)",
        "SELECT p.sex, COUNT(*) FROM patients p WHERE p.year_of_birth = (SELECT "
        "q.year_of_birth FROM patients q WHERE q.lsoa_code = 'E01100179' LIMIT 1) GROUP BY 1",
        "WITH c AS (SELECT SUM(e.value) AS s, COUNT(*) AS k FROM gp_events e JOIN patients q "
        "ON q.person_id = e.person_id WHERE q.lsoa_code = 'E01100000' AND q.year_of_birth = "
        "1939), t AS (SELECT p.person_id, (SELECT c.s FROM c) AS v, (SELECT c.k FROM c) AS k "
        "FROM patients p) SELECT t.v, t.k, COUNT(*) FROM t GROUP BY t.v, t.k",
        "WITH c AS (SELECT COUNT(*) AS n FROM patients WHERE lsoa_code = 'E01100000') "
        "SELECT COUNT(*) FILTER (WHERE (SELECT c.n FROM c) = 1) FROM patients p",
        "SELECT COUNT(*) FROM patients p WHERE (SELECT x.n FROM (SELECT COUNT(*) AS n FROM "
        "patients q WHERE q.lsoa_code = 'E01100000') x) = 1",
        "SELECT SUM(h.length_of_stay) AS s, COUNT(DISTINCT p.person_id) AS n FROM patients p "
        "JOIN patients q ON p.person_id = q.person_id OR (q.year_of_birth = 1982) "
        "JOIN hospital_admissions h ON h.person_id = q.person_id",
        "SELECT COUNT(*) AS n FROM patients p, patients q WHERE p.person_id = q.person_id OR "
        "q.year_of_birth < 1926",
        "SELECT COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM patients q WHERE "
        "(q.person_id = p.person_id AND 1 = 0) OR (q.year_of_birth = 1982))",
        "SELECT COUNT(*) AS n FROM patients p WHERE NOT (p.person_id <> p.person_id) AND EXISTS "
        "(SELECT 1 FROM deaths d WHERE NOT (d.person_id = p.person_id))",
        "SELECT l.lsoa_code, SUM(a.length_of_stay) AS s FROM hospital_admissions a JOIN "
        "lsoa_lookup l ON l.lsoa_code IN ('E01100000', 'E01100001') AND (l.lsoa_code = "
        "'E01100000' OR NOT (a.primary_diagnosis = 'I63')) GROUP BY l.lsoa_code",
        "SELECT t.k, SUM(a.length_of_stay) AS s FROM hospital_admissions a JOIN (SELECT 1 AS k "
        "UNION ALL SELECT 2) t ON t.k = 1 OR a.length_of_stay < 60 GROUP BY t.k",
        "SELECT l.imd_decile, COUNT(*) FROM patients p CROSS JOIN lsoa_lookup l GROUP BY 1",
        "WITH f AS (SELECT person_id, length_of_stay FROM hospital_admissions), g AS (SELECT "
        "person_id, length_of_stay FROM f WHERE length_of_stay < 54) SELECT SUM(f.length_of_stay)"
        " AS s1, SUM(g.length_of_stay) AS s2 FROM patients p LEFT JOIN f ON f.person_id = "
        "p.person_id LEFT JOIN g ON g.person_id = p.person_id",
        "SELECT SUM(h.length_of_stay) AS s, AVG(h.length_of_stay) AS a FROM hospital_admissions h",
        "WITH x AS (SELECT a.person_id, a.length_of_stay AS v1, b.length_of_stay AS v2 FROM "
        "hospital_admissions a LEFT JOIN hospital_admissions b ON a.person_id = b.person_id AND "
        "a.admission_date = b.admission_date AND b.person_id IN (SELECT person_id FROM patients "
        "WHERE NOT (year_of_birth = 1976))) SELECT SUM(x.v1) AS s1, SUM(x.v2) AS s2 FROM x",
        "WITH x AS (SELECT a.person_id, a.length_of_stay AS v1, a.length_of_stay AS v1b FROM "
        "hospital_admissions a) SELECT SUM(x.v1) AS s, AVG(x.v1b) AS m FROM x",
        "SELECT t.tot, SUM(t.length_of_stay) AS s FROM (SELECT person_id, length_of_stay, "
        "SUM(length_of_stay) OVER (PARTITION BY person_id) AS tot FROM hospital_admissions) t "
        "WHERE t.tot < 12 GROUP BY t.tot",
        "SELECT CASE WHEN h.length_of_stay = 5 THEN 'five' ELSE 'other' END AS band, "
        "SUM(h.length_of_stay) AS s FROM hospital_admissions h GROUP BY 1",
        "SELECT p.sex, COUNT(*) AS n, SUM(a.length_of_stay) AS s FROM hospital_admissions a "
        "JOIN patients p ON p.person_id = a.person_id WHERE a.length_of_stay = 1 GROUP BY p.sex",
        "WITH x AS (SELECT person_id, length_of_stay FROM hospital_admissions WHERE "
        "length_of_stay BETWEEN 3 AND 3) SELECT SUM(x.length_of_stay) AS s FROM x",
        "SELECT p.sex, SUM(a.length_of_stay) AS s FROM patients p JOIN hospital_admissions a "
        "ON p.person_id = a.person_id AND a.length_of_stay = 2 GROUP BY p.sex",
        "SELECT SUM(h.length_of_stay) AS s FROM hospital_admissions h JOIN patients p ON "
        "p.person_id = h.person_id WHERE CASE h.length_of_stay WHEN 20 THEN TRUE ELSE FALSE END "
        "OR (p.year_of_birth = 1928 AND p.sex = 'F')",
        "SELECT SUM(h.length_of_stay) AS s FROM hospital_admissions h WHERE "
        "NULLIF(h.length_of_stay, 1) IS NULL",
        "SELECT SUM(h.length_of_stay) AS tot FROM hospital_admissions h WHERE h.person_id IN "
        "(SELECT q.person_id FROM patients q WHERE q.year_of_birth = 1926) OR EXISTS (SELECT 1 "
        "FROM patients p WHERE p.person_id = h.person_id AND h.length_of_stay = 20)",
        "SELECT SUM(s.weekly_cost) AS c FROM social_care s WHERE EXISTS (SELECT 1 FROM patients p "
        "WHERE p.person_id = s.person_id AND s.weekly_cost > 1000)",
        "SELECT SUM(h.length_of_stay) AS s FROM hospital_admissions h WHERE "
        "NOT CAST(h.length_of_stay - 1 AS BOOLEAN)",
        "WITH x AS (SELECT person_id, length_of_stay, length_of_stay * 0 + 1 AS one FROM "
        "hospital_admissions) SELECT SUM(x.length_of_stay) AS s FROM x WHERE x.one = 1",
        "SELECT length_of_stay, COUNT(*) FROM hospital_admissions GROUP BY ALL",
        "SELECT SUM(CASE WHEN p.lsoa_code = 'E01100000' THEN e.value ELSE 0.001 END) AS s, "
        "COUNT(*) AS n FROM gp_events e JOIN patients p ON p.person_id = e.person_id "
        "GROUP BY p.lsoa_code = 'E01100001'",
    ],
    "resource exhaustion": [
        "SELECT count(*) FROM patients WHERE " + " AND ".join(["(1 = 1"] * 80) + ")" * 80,
        "SELECT count(*) FROM range(1000000000000)",
        "SELECT count(*) FROM generate_series(1, 1000000000000)",
        "SELECT count(*) FROM patients WHERE sex = '" + "x" * 30_000 + "'",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 1000000000) "
        "SELECT count(*) FROM t JOIN patients p ON p.year_of_birth = t.n",
        "SELECT repeat('x', 1000000000), count(*) FROM patients",
        "SELECT count(*) FROM patients WHERE lpad(sex, 1000000000, 'x') = 'x'",
        "SELECT count(*) FROM patients p, unnest(range(1000000000)) u",
        "SELECT count(*) FROM patients WHERE sex IN (SELECT unnest(range(1000000000))::VARCHAR)",
        "SELECT count(*) FROM (SELECT 1 AS x) t",
        "SELECT count(*) FROM patients WHERE sex IN (" + ", ".join(["'F'"] * 5000) + ")",
    ],
    "malformed input": [
        "",
        "   ",
        "?[/",  # the fuzz found the parser raising its own AttributeError on this: a 500 once
        "SELEC count(*) FROM patients",
        "SELECT count(* FROM patients",
        "SELECT 'unterminated FROM patients",
        "SELECT count(*) FROM",
        "SELECT count(*) FROM patients WHERE",
        "\x00\x01\x02",
        "SELECT count(*) FROM patients /*",
        "SELECT count(*) FROM nowhere",
        "SELECT count(nothing) FROM patients",
        "SELECT count(*) FROM patients p JOIN gp_events p ON 1 = 1",
        "SELECT count(*) FROM patients WHERE sex = 1 +",
        "{\"sql\": 1}",
    ],
}

CASES = [(family, sql) for family, items in HOSTILE.items() for sql in items]


def test_there_are_enough_hostile_queries():
    assert len(CASES) >= 180


@pytest.mark.parametrize(("family", "sql"), CASES,
                         ids=[f"{f}:{i}" for i, (f, _) in enumerate(CASES)])
def test_hostile_query_is_refused_and_audited(server, family, sql):
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert 400 <= resp.status_code < 500, f"{family}: {sql[:80]!r} -> {resp.status_code} {resp.text[:300]}"
    body = resp.json()
    assert set(body) == {"error"}, "a refusal carries no data"
    assert body["error"]["message"]
    entry = server.entry_for(resp)
    assert entry["decision"] in {"refused", "denied", "failed"}
    assert "rows_released" not in entry


def test_server_is_healthy_after_the_attacks(server):
    assert server.client.get("/healthz").status_code == 200
    resp = server.query("p.jones", "SELECT sex, COUNT(DISTINCT person_id) FROM patients GROUP BY sex",
                        "JOINT-PLANNING", "planning")
    assert resp.status_code == 200
