"""The generator: deterministic, linked, and plausible enough that analyses mean something."""

from __future__ import annotations

import duckdb
import pytest

from datasets.generator import generate


def digest(con, directory, table):
    return con.execute(
        f"SELECT count(*), sum(hash(COLUMNS(*))) FROM read_parquet('{directory}/{table}.parquet')"
    ).fetchall()


def test_same_seed_same_data_other_seed_other_data(tmp_path, catalogue):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 3000, seed=1)
    generate(b, 3000, seed=1)
    generate(c, 3000, seed=2)
    con = duckdb.connect()
    for table in catalogue.tables:
        assert digest(con, a, table) == digest(con, b, table), table
    assert digest(con, a, "patients") != digest(con, c, "patients")


@pytest.fixture(scope="module")
def q(raw):
    return lambda sql: raw.execute(sql).fetchall()


def test_files_match_the_catalogue(data_dir, catalogue, raw):
    for name, table in catalogue.tables.items():
        cols = [r[0] for r in raw.execute(f"DESCRIBE {name}").fetchall()]
        assert cols == [c.name for c in table.columns], name


def test_referential_integrity(q):
    for table in ("gp_events", "hospital_admissions", "social_care", "deaths", "opt_outs",
                  "study_consents"):
        assert q(f"SELECT count(*) FROM {table} WHERE person_id NOT IN "
                 "(SELECT person_id FROM patients)") == [(0,)], table


def test_nhs_numbers_are_unique_with_valid_check_digits(q):
    assert q("SELECT count(DISTINCT nhs_number) = count(*) FROM patients") == [(True,)]
    bad = q("""SELECT count(*) FROM (
                 SELECT nhs_number AS n,
                        list_sum([CAST(n[i] AS INTEGER) * (11 - i) FOR i IN range(1, 10)]) AS s
                 FROM patients)
               WHERE length(n) <> 10 OR (11 - s % 11) = 10
                  OR (11 - s % 11) % 11 <> CAST(n[10] AS INTEGER)""")
    assert bad == [(0,)]


def test_diabetes_rises_with_age_and_deprivation(q):
    rows = q("""SELECT (2026 - p.year_of_birth) >= 60 AS older, l.imd_decile <= 3 AS deprived,
                       avg(CASE WHEN p.person_id IN (SELECT person_id FROM gp_events
                           WHERE snomed_code = '44054006') THEN 1.0 ELSE 0 END)
                FROM patients p JOIN lsoa_lookup l USING (lsoa_code)
                WHERE 2026 - p.year_of_birth >= 18 GROUP BY ALL""")
    rate = {(o, d): r for o, d, r in rows}
    assert rate[(True, False)] > 1.5 * rate[(False, False)]
    assert rate[(False, True)] > rate[(False, False)]
    assert rate[(True, True)] > rate[(True, False)]


def test_social_care_mostly_for_over_65s_and_deaths_mostly_old(q):
    (older_share,), = q("""SELECT avg(CASE WHEN 2026 - p.year_of_birth >= 65 THEN 1.0 ELSE 0 END)
                         FROM social_care s JOIN patients p USING (person_id)""")
    assert older_share > 0.7
    (old_deaths,), = q("""SELECT avg(CASE WHEN 2026 - p.year_of_birth >= 70 THEN 1.0 ELSE 0 END)
                        FROM deaths d JOIN patients p USING (person_id)""")
    assert old_deaths > 0.6


def test_emergency_admissions_rise_with_age(q):
    rows = dict(q("""SELECT 2026 - p.year_of_birth >= 75, count(*) / count(DISTINCT p.person_id)
                     FROM patients p LEFT JOIN hospital_admissions h
                     ON h.person_id = p.person_id AND h.admission_method = 'emergency'
                     GROUP BY 1"""))
    assert rows[True] > rows[False]


def test_opt_outs_about_five_percent_and_consent_overlaps_them(q):
    (share,), = q("SELECT (SELECT count(*) FROM opt_outs) / (SELECT count(*) FROM patients)")
    assert 0.04 < share < 0.06
    (cohort, withdrawn, opted), = q("""
        SELECT count(*), count(withdrawn_on),
               count(*) FILTER (WHERE person_id IN (SELECT person_id FROM opt_outs))
        FROM study_consents WHERE study_id = 'FRAILTY-2025'""")
    assert 400 < cohort < 1000  # a few thousand per hundred thousand people; 20k here
    assert withdrawn > 0 and opted > 0


def test_out_of_area_placements_and_small_areas_exist(q):
    (ooa,), = q("""SELECT count(*) FROM social_care s JOIN patients p USING (person_id)
                  WHERE s.local_authority_code <> p.local_authority_code""")
    assert ooa > 0
    (small,), = q("SELECT count(*) FROM (SELECT lsoa_code FROM patients GROUP BY 1 "
                  "HAVING count(*) < 8)")
    assert small > 0
