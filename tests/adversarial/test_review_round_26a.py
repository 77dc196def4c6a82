"""The breaks of review round 26a, kept as tests (docs/security.md lists every round).

**A derived table "grouped by person" that is not one row per person.** ``one_per_person``
in ``gateway/sql/analysis.py`` takes a derived table to hold at most one row per person when
its GROUP BY holds a person key and no *column* that is not one. A key that is an expression
(a CASE over the codes) is not a column, so ``GROUP BY g.person_id, CASE WHEN g.snomed_code <
'4' THEN 1 ELSE 2 END`` passes as "one row per person" while it gives each person with codes
on both sides two rows, tagged 1 and 2. Joined beside a summed measure (the round 12 and 25
rule: every other source of the measure's select must hold one row per person), it repeats
every admission under the two tags; a condition drops the tag-2 rows of one chosen person (a
(year of birth, practice) group of one). The two cells hold the same thousand people but one,
neither is small or dominated, and under the threshold regime sums are released exactly: the
difference of the two released sums is that person's total length of stay (demo data, 20,000
people: raw 51, released 7685 - 7634 = 51). Review round 26b found the same.

**The analysis runs for minutes on a short query, outside every time limit.** Two recursive
walks in ``gateway/sql/analysis.py`` follow derived tables without remembering what they have
seen, and a chain of CTEs, each reading the one before twice, makes them exponential:
- ``reads_people`` (from ``check_person_links``, for every query): ``c_i AS (SELECT
  a.lsoa_code FROM c_{i-1} a JOIN c_{i-1} b ON ...)`` over lsoa_lookup, twelve deep (1,071
  characters), takes about 100 s to analyse;
- ``lineage`` (from ``check_measure_filters``, for a query summing a measure): ``c_i AS
  (SELECT c_{i-1}.person_id, GREATEST(c_{i-1}.x, c_{i-1}.x) AS x FROM c_{i-1})``, twenty deep
  (1,550 characters), about 70 s; each level more doubles it.
The time limit (``deadline``) starts when the engine slot is taken, after the analysis, so
nothing stops it: the request holds a server thread until the walk ends, and a few of them
hold every thread. Explain runs the same analysis.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    PLANNER,
    answered_in_time,
    assert_tag_sums_not_her_stay,
    norfolk_residents,
    query_as,
    released_rows,
    timed_query,
)


def _one_person_with_stays(raw) -> tuple[int, str, float]:
    """A (year of birth, practice) group of exactly one Norfolk planner's person, with GP codes
    both below and from '4' and at least one admission: their total length of stay."""
    found = raw.execute(f"""
        SELECT p.year_of_birth, p.practice_code, SUM(h.length_of_stay) AS los
        FROM ({norfolk_residents()}) p JOIN hospital_admissions h ON h.person_id = p.person_id
        WHERE p.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code < '4')
          AND p.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code >= '4')
          AND (p.year_of_birth, p.practice_code) IN (
              SELECT (year_of_birth, practice_code) FROM ({norfolk_residents()}) r
              GROUP BY ALL HAVING COUNT(*) = 1)
        GROUP BY ALL HAVING SUM(h.length_of_stay) > 0 ORDER BY 1, 2""").fetchone()
    assert found, "the shape this test needs (checked on raw data)"
    return found[0], found[1], float(found[2])


def test_a_derived_table_grouped_by_person_and_an_expression_repeats_a_measure(server, raw):
    """GROUP BY person_id, <an expression> is taken for one row per person: beside a summed
    measure it repeats each admission under two tags, and two exact sums differ by one
    person's total length of stay."""
    yob, practice, truth = _one_person_with_stays(raw)
    tag = "CASE WHEN g.snomed_code < '4' THEN 1 ELSE 2 END"
    sql = f"""
        WITH d AS (
          SELECT g.person_id, {tag} AS tag FROM gp_events g GROUP BY g.person_id, {tag})
        SELECT d.tag, SUM(a.length_of_stay) AS s
        FROM hospital_admissions a
        JOIN d ON d.person_id = a.person_id
        JOIN patients p ON p.person_id = a.person_id
        WHERE NOT (d.tag = 2 AND p.year_of_birth = {yob} AND p.practice_code = '{practice}')
          AND a.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code < '4')
          AND a.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code >= '4')
        GROUP BY d.tag"""
    assert_tag_sums_not_her_stay(released_rows(query_as(server, PLANNER, sql)), truth)


def test_ctes_reading_the_one_before_twice_hold_the_analysis_for_minutes(server):
    """reads_people walks every path through the CTEs: 2^12 paths, about 100 s."""
    ctes = ["c0 AS (SELECT l.lsoa_code FROM lsoa_lookup l)"]
    for i in range(1, 13):
        ctes.append(f"c{i} AS (SELECT a.lsoa_code FROM c{i - 1} a JOIN c{i - 1} b "
                    "ON a.lsoa_code = b.lsoa_code)")
    sql = ("WITH " + ", ".join(ctes) + " SELECT COUNT(*) AS n FROM patients p "
           "WHERE p.lsoa_code IN (SELECT c12.lsoa_code FROM c12)")
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, "twelve CTEs, each reading the one before twice")


def test_a_summed_measure_beside_a_deep_cte_chain_holds_the_analysis_for_minutes(server):
    """lineage (the measure-filter check, for every column) walks every path: 2^20 of them."""
    ctes = ["c0 AS (SELECT h.person_id, h.admission_date AS x FROM hospital_admissions h)"]
    for i in range(1, 21):
        ctes.append(f"c{i} AS (SELECT c{i - 1}.person_id, GREATEST(c{i - 1}.x, c{i - 1}.x) AS x "
                    f"FROM c{i - 1})")
    sql = ("WITH " + ", ".join(ctes) + " SELECT SUM(a.length_of_stay) AS s "
           "FROM hospital_admissions a WHERE a.person_id IN "
           "(SELECT c20.person_id FROM c20 WHERE c20.x > DATE '2020-01-01')")
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, "a sum beside twenty CTEs, each reading the one before twice")
