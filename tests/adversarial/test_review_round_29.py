"""The breaks of review round 29, kept as tests (docs/security.md lists every round).

**A later outer join's ON attaches any padded source, not only the one it joins.** Round 27's
fix to ``check_person_links`` (``gateway/sql/analysis.py``) lets the equalities in a LEFT
JOIN's ON only *attach* a component made of padded sources (``only_padded``) to the people
already joined, and round 28 refused RIGHT and FULL joins, which pad the sources before them.
But a source is padded by its *own* LEFT JOIN too, whatever that join's ON says: ``LEFT JOIN
hospital_admissions h ON TRUE`` (or ``ON h.person_id IS NOT NULL``) is a cross join that
makes ``h`` a padded component of its own, and the ON of a *later* LEFT JOIN then attaches it:

    FROM patients q
    LEFT JOIN hospital_admissions h ON TRUE
    LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id

passes as "joined on person_id", though ``d``'s ON filters none of the (q, h) pairs: every
patient is paired with every admission, round 27's attack again. Nor does
``check_measure_rows_once`` see it: beside the summed measure, ``patients`` and ``deaths``
hold one row per person (``one_per_person`` asks what the table is, not how it is joined).
The row's person is ``COALESCE(q.person_id, ...)``, so each cell rests on every patient.

* **One person's exact total length of stay.** Keep the admissions of one resident (alone in
  her year of birth and small area) and group by the paired patients' sex: the two released
  sums are N_F and N_M times her total (seen 453596 = 3718 x 122 and 419314 = 3437 x 122 for
  a Norfolk resident whose raw total is 122), each cell resting on thousands of people who
  all "contribute" the same, so no dominance rule fires.
* **One person's attributes as group keys.** ``LEFT JOIN patients q ON TRUE`` filtered to her,
  grouped by her registration date and ethnicity: one row resting on every resident (7155),
  released with her exact registration date.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

import pytest
from attack import (
    PLANNER,
    alone_with_stays,
    assert_not_her_date_as_key,
    assert_not_multiples_of_her_stay,
    person_filter,
    query_as,
    released_rows,
)


@pytest.mark.parametrize("own_on", ["TRUE", "h.person_id IS NOT NULL"])
def test_a_later_left_joins_on_attaches_a_source_padded_by_its_own_left_join(server, raw, own_on):
    """h is padded by its own LEFT JOIN (a cross join), so d's ON attaches it to q: every
    patient x her admissions, summed by the patients' sex."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        LEFT JOIN hospital_admissions h ON {own_on}
        LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
        WHERE h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex ORDER BY q.sex"""
    assert_not_multiples_of_her_stay(
        raw, released_rows(query_as(server, PLANNER, sql)), truth, yob, lsoa)


def test_a_later_left_joins_on_attaches_a_padded_person_releasing_her_date(server, raw):
    """q LEFT JOINed ON TRUE, attached by d's ON: her registration date and ethnicity as the
    keys of a row resting on every resident."""
    yob, lsoa, _, registered = alone_with_stays(raw)
    sql = f"""
        SELECT q.registration_date AS registered, q.ethnicity AS eth,
               COUNT(DISTINCT p.person_id) AS people
        FROM patients p
        LEFT JOIN patients q ON TRUE
        LEFT JOIN deaths d ON d.person_id = p.person_id AND d.person_id = q.person_id
        WHERE q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
        GROUP BY q.registration_date, q.ethnicity"""
    assert_not_her_date_as_key(released_rows(query_as(server, PLANNER, sql)), registered, yob, lsoa)
