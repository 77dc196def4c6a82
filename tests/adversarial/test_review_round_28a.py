"""The breaks of review round 28a, kept as tests (docs/security.md lists every round).

**A later RIGHT or FULL join makes the sides it preserves look padded.** Round 27's fix to
``check_person_links`` (``gateway/sql/analysis.py``) lets an outer join's ON equalities only
*attach* a component made of padded sources (``padded_sources``) to the people already
joined. But ``padded_sources`` answers "may this alias be NULL on some row", for the whole
FROM clause, not "is this the side this join pads": a FULL JOIN marks every source before it
as padded, and a RIGHT JOIN anywhere after them does the same. The sources of a cross join
then all count as padded, and the ON of any outer join links them:

    FROM patients q CROSS JOIN hospital_admissions h
    FULL JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
    WHERE q.person_id IS NOT NULL ...

pairs every patient with every admission (a FULL JOIN keeps the unmatched pairs of its left
side), exactly round 27's attack: the two released sums by sex are N_F and N_M times one
chosen resident's total length of stay (seen 453596 = 3718 x 122 and 419314 = 3437 x 122
for a Norfolk resident alone in her year of birth and small area, raw total 122), and her
registration date is released as the key of a row resting on every resident (7155). The same
with ``LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id RIGHT
JOIN patients e ON e.person_id = q.person_id``: the RIGHT JOIN pads q and h, so the LEFT
JOIN's ON merges them.

**A lookup keyed only in an outer join's ON is a cross join.** ``_check_lookups`` accepts a
reference table beside people's rows if some top-level equality ties its key to a
person-level column, and it looks for that equality in the WHERE and in *every* join's ON,
outer joins' too. ``CROSS JOIN lsoa_lookup l LEFT JOIN deaths d ON l.lsoa_code = p.lsoa_code
AND ...`` passes, though the LEFT JOIN's ON filters nothing: every admission is repeated for
every area. ``check_measure_rows_once`` takes a reference table for one row per person
(``one_per_person`` asks what the table is, not how it is joined), so a summed length of
stay is repeated in one cell per area, tagged apart. Leave one resident out of one area's
copy (``l.lsoa_code = 'A' OR h.person_id NOT IN (<her>)``): both cells rest on every
resident with admissions (1415), pass dominance, and threshold releases sums exact. The
difference is her exact total (seen 11143 - 11021 = 122, raw 122).

**A CTE that shadows an outer CTE of its name is counted as reading itself once.**
``check_expanded_size`` (review round 26) expands every CTE reference and refuses past 64
scans, but it keys CTE bodies by name alone, and a reference to a name already being expanded
counts 1 (it takes it for recursion). In DuckDB a nested ``WITH a AS (... FROM a x JOIN a y
...)`` reads the *outer* ``a``: twelve such levels, each reading the one outside twice, are
2^12 = 4096 scans, counted as about 50. DuckDB materialises a CTE read twice, unless asked
``AS NOT MATERIALIZED`` (a plain CTE to the allow-list); then it inlines all 4096 (each a
filtered scan once the rewrite has run) and plans for minutes, past any time limit: ten levels
held a request over three minutes, eleven take 20 s in plain DuckDB over 1000 rows, twelve
could not be interrupted there at 30 s.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    PLANNER,
    alone_with_stays,
    answered_in_time,
    assert_not_her_date_as_key,
    assert_not_multiples_of_her_stay,
    person_filter,
    query_as,
    released_rows,
    timed_query,
)


def test_a_full_join_after_a_cross_join_pads_both_sides_and_links_them(server, raw):
    """FULL JOIN marks q and h padded, so its ON merges them: every patient x her stays."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        CROSS JOIN hospital_admissions h
        FULL JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
        WHERE q.person_id IS NOT NULL AND h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex ORDER BY q.sex"""
    assert_not_multiples_of_her_stay(raw, released_rows(query_as(server, PLANNER, sql)), truth, yob, lsoa)


def test_a_full_join_after_a_cross_join_releases_one_persons_date(server, raw):
    """Her registration date and ethnicity as the keys of a row resting on every resident."""
    yob, lsoa, _, registered = alone_with_stays(raw)
    sql = f"""
        SELECT q.registration_date AS registered, q.ethnicity AS eth,
               COUNT(DISTINCT p.person_id) AS people
        FROM patients p
        CROSS JOIN patients q
        FULL JOIN deaths d ON d.person_id = p.person_id AND d.person_id = q.person_id
        WHERE p.person_id IS NOT NULL AND q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
        GROUP BY q.registration_date, q.ethnicity"""
    assert_not_her_date_as_key(released_rows(query_as(server, PLANNER, sql)), registered, yob, lsoa)


def test_a_later_right_join_pads_the_cross_joined_sides_so_a_left_join_links_them(server, raw):
    """RIGHT JOIN e pads q, h and d; then the LEFT JOIN's ON (d~h, d~q) merges q and h,
    though it filters none of their pairs, and e's ON keeps every one of them."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        CROSS JOIN hospital_admissions h
        LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id
        RIGHT JOIN patients e ON e.person_id = q.person_id
        WHERE h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex ORDER BY q.sex"""
    assert_not_multiples_of_her_stay(raw, released_rows(query_as(server, PLANNER, sql)), truth, yob, lsoa)


def test_a_lookup_keyed_in_an_outer_joins_on_repeats_each_admission_per_area(server, raw):
    """Every admission summed once per area; one area's copy leaves her out: the difference
    of the two exact sums is her total length of stay."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    other = raw.execute(f"SELECT MIN(lsoa_code) FROM lsoa_lookup WHERE lsoa_code <> '{lsoa}'"
                        ).fetchone()[0]
    sql = f"""
        SELECT l.lsoa_code AS area, SUM(h.length_of_stay) AS los
        FROM hospital_admissions h
        JOIN patients p ON p.person_id = h.person_id
        CROSS JOIN lsoa_lookup l
        LEFT JOIN deaths d ON l.lsoa_code = p.lsoa_code AND d.person_id = p.person_id
        WHERE l.lsoa_code IN ('{lsoa}', '{other}')
          AND (l.lsoa_code = '{lsoa}' OR h.person_id NOT IN {person_filter(yob, lsoa)})
        GROUP BY l.lsoa_code ORDER BY l.lsoa_code"""
    rows = released_rows(query_as(server, PLANNER, sql))
    sums = {area: los for area, los in rows or []}
    if sums.get(lsoa) is None or sums.get(other) is None:
        return
    assert abs((sums[lsoa] - sums[other]) - truth) > 0.5, (
        f"{sums[lsoa]} - {sums[other]} is {truth}, the exact total length of stay of the one "
        f"resident born in {yob} living in {lsoa}: every admission was summed in both cells")


def test_nested_ctes_shadowing_the_outer_one_read_it_twice_each_uncounted(server):
    """Each level's ``a`` reads the ``a`` outside it twice: 2^12 scans, NOT MATERIALIZED, so
    the engine inlines them all and plans past the time limit."""
    inner = "SELECT a.person_id, a.sex FROM a"
    for k in range(12):
        inner = ("WITH a AS NOT MATERIALIZED (SELECT x.person_id, x.sex FROM a x JOIN a y "
                 f"ON x.person_id = y.person_id) SELECT s{k}.person_id, s{k}.sex "
                 f"FROM ({inner}) s{k}")
    sql = ("WITH a AS (SELECT person_id, sex FROM patients) SELECT t.sex AS sex, "
           f"COUNT(DISTINCT t.person_id) AS n FROM ({inner}) t GROUP BY t.sex")
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, "twelve nested CTEs, each reading the one outside twice")
