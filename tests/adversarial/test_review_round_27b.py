"""The breaks of review round 27b, kept as tests (docs/security.md lists every round).

**An outer join's ON clause links people it does not join.** ``check_person_links``
(``gateway/sql/analysis.py``) requires every person-level source of a select to be joined on
person_id, by union-find over the person-key equalities that are top-level conjuncts of the
WHERE *and of every JOIN's ON*. But the ON of a LEFT (RIGHT, FULL) join does not restrict the
rows of the side it preserves: in

    FROM patients q CROSS JOIN hospital_admissions h
    LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id

the equalities link q~d and h~d, so q and h pass as "joined on person_id", while every
admission is paired with every patient (d is NULL where they differ). Nor does
``check_measure_rows_once`` see it: beside the summed measure, ``patients`` and ``deaths``
are tables with one row per person (``one_per_person`` asks what the table is, not how it
is joined).

Two uses, each one query:

* **One person's exact total length of stay.** Restrict the admissions to one resident (alone
  in her year of birth and small area, by ``h.person_id IN (SELECT ...)``) and group by the
  cross-joined patients' sex: the cell ``F`` is ``SUM`` over (every woman x her admissions) =
  ``N_F x her total``, resting on thousands of people, each "contributing" her total, so no
  dominance rule fires, and sums are released exactly under ``threshold``. The gcd of the two
  released sums is her total (seen 453596 and 419314 for a Norfolk resident, gcd 122, her raw
  total 122 = 453596 / 3718 = 419314 / 3437).
* **One person's attributes as group keys.** Filter the cross-joined ``q`` to her and group by
  her registration date and ethnicity: the one row rests on every resident (7155) and is
  released with her exact registration date. The link may also sit directly between the two
  preserved sides: ``LEFT JOIN deaths d ON p.person_id = q.person_id AND d.person_id = ...``.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    PLANNER,
    assert_not_her_date_as_key,
    norfolk_residents,
    query_as,
    released_rows,
)


def _her(raw) -> tuple[int, str, int, float, str]:
    """A Norfolk resident alone in her year of birth and small area, with admissions: her year
    of birth, small area, person id, exact total length of stay and registration date."""
    found = raw.execute(f"""
        WITH alone AS (
            SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM ({norfolk_residents()})
            GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, a.pid, SUM(h.length_of_stay),
               CAST(ANY_VALUE(p.registration_date) AS VARCHAR)
        FROM alone a JOIN hospital_admissions h ON h.person_id = a.pid
        JOIN patients p ON p.person_id = a.pid
        GROUP BY ALL HAVING SUM(h.length_of_stay) > 0
        ORDER BY 4 DESC, 1, 2 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    return found[0], found[1], found[2], float(found[3]), found[4]


def test_a_left_join_on_links_a_cross_join_and_a_sum_repeats_one_persons_stays(server, raw):
    """Every woman and every man paired with her admissions: each cell is the number of
    people times her total, released exactly; the gcd of the two is her total."""
    yob, lsoa, _, truth, _ = _her(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        CROSS JOIN hospital_admissions h
        LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
        WHERE h.person_id IN (SELECT x.person_id FROM patients x
                              WHERE x.year_of_birth = {yob} AND x.lsoa_code = '{lsoa}')
        GROUP BY q.sex ORDER BY q.sex"""
    rows = released_rows(query_as(server, PLANNER, sql))
    if rows is None:
        return
    people = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) GROUP BY sex").fetchall())
    for sex, los in rows:
        assert los is None or abs(los - people[sex] * truth) > 0.5, (
            f"the cell {sex} is {los} = {people[sex]} people x {truth}, the exact total length "
            f"of stay of the one resident born in {yob} living in {lsoa}")


def test_a_left_join_on_links_a_cross_join_and_releases_one_persons_date(server, raw):
    """Her registration date as the key of a row resting on every resident."""
    yob, lsoa, _, _, registered = _her(raw)
    sql = f"""
        SELECT q.registration_date AS registered, COUNT(DISTINCT p.person_id) AS people
        FROM patients p
        CROSS JOIN patients q
        LEFT JOIN deaths d ON d.person_id = p.person_id AND d.person_id = q.person_id
        WHERE q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
        GROUP BY q.registration_date"""
    rows = released_rows(query_as(server, PLANNER, sql))
    assert_not_her_date_as_key(rows, registered, yob, lsoa)


def test_an_outer_join_on_linking_the_two_preserved_sides_is_no_join(server, raw):
    """The same with the equality between the two cross-joined sides, inside a LEFT JOIN's
    ON, where it filters nothing."""
    yob, lsoa, _, _, registered = _her(raw)
    sql = f"""
        SELECT q.registration_date AS registered, COUNT(*) AS n
        FROM patients p
        JOIN patients q ON TRUE
        LEFT JOIN deaths d ON p.person_id = q.person_id AND d.person_id = p.person_id
        WHERE q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
        GROUP BY q.registration_date"""
    rows = released_rows(query_as(server, PLANNER, sql))
    assert_not_her_date_as_key(rows, registered, yob, lsoa)
