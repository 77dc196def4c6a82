"""The breaks of review round 25b, kept as tests (docs/security.md lists every round).

**A summed measure's own source may repeat its rows.** ``check_measure_rows_once`` in
``gateway/sql/analysis.py`` requires every *other* source of the outer query to hold at most
one row per person, so that a summed measure's rows count once (review round 12). The source
the measure is read from is skipped, and it may be a derived table (a CTE) that joins the
measure's table to anything linked on person_id. ``bare_origin`` and ``measure_origin`` follow
the measure through the CTE's projection, so the outer ``SUM`` is a plain sum of a measure.
Inside the CTE, a join to ``ROW_NUMBER() OVER (PARTITION BY person_id ...)`` of gp_events
kept to rn 1 and 2 gives each admission two rows, tagged 1 and 2; a condition drops the
tag-2 rows of one chosen person (a (year of birth, practice) group of one). Grouped by the
tag, the two cells hold the same thousands of people but one; neither is small or dominated,
and under the threshold regime sums are released exactly: the difference of the two released
sums is that person's total length of stay, exactly (raw 51, released 9202 - 9151 = 51).

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    PLANNER,
    assert_tag_sums_not_her_stay,
    norfolk_residents,
    query_as,
    released_rows,
)


def _one_person_with_stays(raw) -> tuple[int, str, float]:
    """A (year of birth, practice) group of exactly one Norfolk planner's person, with two or
    more GP events and at least one admission: their total length of stay."""
    found = raw.execute(f"""
        SELECT p.year_of_birth, p.practice_code, SUM(h.length_of_stay) AS los
        FROM ({norfolk_residents()}) p JOIN hospital_admissions h ON h.person_id = p.person_id
        WHERE p.person_id IN (SELECT person_id FROM gp_events GROUP BY person_id
                              HAVING COUNT(*) >= 2)
          AND (p.year_of_birth, p.practice_code) IN (
              SELECT (year_of_birth, practice_code) FROM ({norfolk_residents()}) r
              GROUP BY ALL HAVING COUNT(*) = 1)
        GROUP BY ALL HAVING SUM(h.length_of_stay) > 0 ORDER BY 1, 2""").fetchone()
    assert found, "the shape this test needs (checked on raw data)"
    return found[0], found[1], float(found[2])


def test_a_cte_under_the_measure_repeats_its_rows_tagged_apart(server, raw):
    """Two cells of one result, everyone's admissions in both but one person's in one only:
    the difference of two exact sums is that person's total length of stay."""
    yob, practice, truth = _one_person_with_stays(raw)
    sql = f"""
        WITH t AS (
          SELECT person_id, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY event_date) AS rn
          FROM gp_events),
        h AS (
          SELECT a.person_id, a.length_of_stay, t.rn AS tag
          FROM hospital_admissions a
          JOIN t ON t.person_id = a.person_id
          JOIN patients p ON p.person_id = a.person_id
          WHERE t.rn = 1 OR (t.rn = 2 AND NOT (p.year_of_birth = {yob}
                                               AND p.practice_code = '{practice}')))
        SELECT tag, SUM(length_of_stay) AS s FROM h
        WHERE person_id IN (SELECT person_id FROM gp_events GROUP BY person_id
                            HAVING COUNT(*) >= 2)
        GROUP BY tag"""
    assert_tag_sums_not_her_stay(released_rows(query_as(server, PLANNER, sql)), truth)


def test_a_literal_key_in_the_single_pass_is_not_read_as_a_position(server):
    """Near-miss of round 25: the single pass grouped its (cell, person) rows by every key,
    and a literal 3 in GROUP BY is the third column: a 400 from the engine for a fair query."""
    for sql in ("SELECT 3 AS k, COUNT(*) AS n FROM gp_events g GROUP BY ALL",
                "SELECT 7 AS k, g.snomed_code, COUNT(*) AS n FROM gp_events g GROUP BY ALL"):
        resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
        assert resp.status_code == 200, resp.text
