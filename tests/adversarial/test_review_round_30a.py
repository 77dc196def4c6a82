"""The breaks of review round 30a, kept as tests (docs/security.md lists every round).

**An outer join's equalities attach the source it pads, and then whatever that source was
just attached to.** Round 29's fix to ``check_person_links`` (``gateway/sql/analysis.py``)
lets a LEFT JOIN's ON equalities only *attach* the source that join pads (``mine``), and only
while ``only_padded(mine)``: while every source in mine's component is padded. But the attach
pairs of one ON are applied one after the other, and each merge grows mine's component. With
the equalities in the other order than round 29's test:

    FROM patients q
    LEFT JOIN hospital_admissions h ON TRUE
    LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id

the first pair attaches ``d`` to ``h`` (both padded: ``h`` by its own ``ON TRUE``, a cross
join), and the second then finds mine's component ``{d, h}`` still "only padded" and attaches
it to ``q``. ``h`` passes as joined on person_id, though ``d``'s ON filters none of the
(q, h) pairs: every patient is paired with every admission, round 27's attack once more. In
the original order (``d = q`` first) the same query is refused, so the rule's answer depends
on the order of two conjuncts. A chain of LEFT JOINs does the same with each ON in the
"right" order (``LEFT JOIN deaths d ON d.person_id = h.person_id LEFT JOIN deaths e ON
e.person_id = d.person_id AND e.person_id = q.person_id``: ``d`` joins ``h``, ``e`` joins
``{d, h}``, then ``q``). ``check_measure_rows_once`` does not see it (patients and deaths hold
one row per person, whatever the join), and ``row_person`` is ``COALESCE(q.person_id, ...)``,
so every cell rests on every patient.

* **One person's exact total length of stay** (threshold). Keep the admissions of one
  Norfolk resident alone in her year of birth and small area and group by the paired
  patients' sex: the two released sums are N_F and N_M times her total (seen F 345254 =
  3523 x 98 and M 332906 = 3397 x 98, raw total 98), each cell resting on thousands of people
  who all "contribute" the same, so no dominance rule fires.
* **One person's attributes as group keys** (threshold). ``LEFT JOIN patients q ON TRUE``
  filtered to her, grouped by her registration date and ethnicity: one row resting on every
  resident (6920), released with her exact registration date (2026-01-21).
* **Under ``dp``** the same pairing lets one person move ``COUNT(*)`` by every resident
  times her admissions (seen 0 to 57096) against noise calibrated for a bound of 5.

The same merge-then-attach happens in every scope that ``check_person_links`` judges: a
correlated ``EXISTS`` (tied to the outer person through ``{e, x}``), a derived table with a
window ``MAX(h.length_of_stay) OVER (PARTITION BY q.person_id)`` over the pairs, and a WHERE
equality between two padded sources (``... LEFT JOIN deaths d ON TRUE ... WHERE h.person_id =
d.person_id``) that makes ``{h, d}`` one all-padded component for a later ON to attach.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

import pytest
from attack import (
    DP_RESEARCHER,
    PLANNER,
    alone_anywhere_with_stays,
    alone_with_stays,
    assert_bounded_without,
    assert_not_her_date_as_key,
    assert_not_multiples_of_her_stay,
    column_base,
    explain_as,
    norfolk_residents,
    person_filter,
    query_as,
    refused,
    released_rows,
)

#: the joins that pair every patient q with every admission h, and pass as linked
CROSS_JOINS = {
    "on_true": """LEFT JOIN hospital_admissions h ON TRUE
        LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id""",
    "on_not_null": """LEFT JOIN hospital_admissions h ON h.person_id IS NOT NULL
        LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id""",
    "chain": """LEFT JOIN hospital_admissions h ON TRUE
        LEFT JOIN deaths d ON d.person_id = h.person_id
        LEFT JOIN deaths e ON e.person_id = d.person_id AND e.person_id = q.person_id""",
    # e joins q properly first; d then attaches to h and carries {d, h} onto {q, e}
    "joined_first": """LEFT JOIN hospital_admissions h ON TRUE
        LEFT JOIN deaths e ON e.person_id = q.person_id
        LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = e.person_id""",
}


@pytest.mark.parametrize("joins", list(CROSS_JOINS), ids=list(CROSS_JOINS))
def test_an_attached_padded_source_carries_a_cross_joined_one_onto_the_people(
        server, raw, joins):
    """d's ON names h before q: d is attached to h (both padded), then {d, h}, still all
    padded, to q. Every patient x her admissions, summed by the patients' sex."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        {CROSS_JOINS[joins]}
        WHERE h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex ORDER BY q.sex"""
    assert_not_multiples_of_her_stay(raw, released_rows(query_as(server, PLANNER, sql)), truth, yob, lsoa)


def test_the_same_query_with_the_equalities_swapped_is_refused(server, raw):
    """The control: round 29's order (d = q first) is refused, so the rule's answer turns on
    the order of two conjuncts. (Passes today; kept beside the break to show it.)"""
    yob, lsoa, _, _ = alone_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, SUM(h.length_of_stay) AS los
        FROM patients q
        LEFT JOIN hospital_admissions h ON TRUE
        LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = h.person_id
        WHERE h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex ORDER BY q.sex"""
    assert released_rows(query_as(server, PLANNER, sql)) is None


def test_an_attached_padded_person_releases_her_registration_date(server, raw):
    """q LEFT JOINed ON TRUE, then d's ON names q before p: her registration date and
    ethnicity as the keys of a row resting on every resident."""
    yob, lsoa, _, registered = alone_with_stays(raw)
    sql = f"""
        SELECT q.registration_date AS registered, q.ethnicity AS eth,
               COUNT(DISTINCT p.person_id) AS people
        FROM patients p
        LEFT JOIN patients q ON TRUE
        LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = p.person_id
        WHERE q.year_of_birth = {yob} AND q.lsoa_code = '{lsoa}'
        GROUP BY q.registration_date, q.ethnicity"""
    assert_not_her_date_as_key(released_rows(query_as(server, PLANNER, sql)), registered, yob, lsoa)


def test_an_attached_padded_source_is_bounded_under_dp(server, raw):
    """dp: COUNT(*) over every patient x one person's admissions moves by thousands when she
    is taken out; the noise assumes cells x rows per cell."""
    yob, lsoa, person = alone_anywhere_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, COUNT(*) AS n
        FROM patients q
        {CROSS_JOINS["on_true"]}
        WHERE h.person_id IN {person_filter(yob, lsoa)}
        GROUP BY q.sex"""
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    assert_bounded_without(raw, explained, "hospital_admissions", person)


def _other_scopes(her: str) -> dict[str, str]:
    """The same merge in the other scopes ``check_person_links`` judges."""
    return {
        # one bit a query about her stays, for every dead resident at once
        "a correlated EXISTS": f"""
            SELECT p.sex AS sex, COUNT(*) AS n FROM patients p
            WHERE EXISTS (
                SELECT 1 FROM deaths z LEFT JOIN hospital_admissions h ON TRUE
                LEFT JOIN deaths e ON e.person_id = h.person_id AND e.person_id = z.person_id
                WHERE z.person_id = p.person_id AND h.person_id IN {her}
                  AND h.length_of_stay > 5)
            GROUP BY p.sex""",
        "a per-person window over the pairs": f"""
            SELECT t.sex AS sex, COUNT(*) AS n FROM (
                SELECT q.person_id, q.sex,
                       MAX(h.length_of_stay) OVER (PARTITION BY q.person_id) AS m
                FROM patients q LEFT JOIN hospital_admissions h ON TRUE
                LEFT JOIN deaths d ON d.person_id = h.person_id AND d.person_id = q.person_id
                WHERE h.person_id IN {her}) t
            WHERE t.m > 20 GROUP BY t.sex""",
        "two padded sources paired in WHERE, then attached": f"""
            SELECT q.sex AS sex, SUM(h.length_of_stay) AS los FROM patients q
            LEFT JOIN hospital_admissions h ON TRUE LEFT JOIN deaths d ON TRUE
            LEFT JOIN deaths e ON e.person_id = d.person_id AND e.person_id = q.person_id
            WHERE h.person_id = d.person_id AND h.person_id IN {her} GROUP BY q.sex""",
    }


@pytest.mark.parametrize("shape", [
    "a correlated EXISTS", "a per-person window over the pairs",
    "two padded sources paired in WHERE, then attached"])
def test_the_same_merge_is_refused_in_every_scope(server, raw, shape):
    yob, lsoa, _, _ = alone_with_stays(raw)
    resp = query_as(server, PLANNER, _other_scopes(person_filter(yob, lsoa))[shape])
    assert refused(resp), f"{shape}: {resp.text[:300]}"


def test_a_where_equality_that_forces_the_padded_source_still_links(server, raw):
    """WHERE h.person_id = d.person_id keeps only rows where d is there, and on those d's ON
    holds, so h is q: a sound link, accepted, and answered as raw DuckDB answers it."""
    sql = """
        SELECT q.sex AS sex, COUNT(*) AS n FROM patients q
        LEFT JOIN hospital_admissions h ON TRUE
        LEFT JOIN deaths d ON d.person_id = q.person_id
        WHERE h.person_id = d.person_id GROUP BY q.sex ORDER BY q.sex"""
    resp = query_as(server, PLANNER, sql)
    rows = released_rows(resp)
    assert rows, resp.text[:300]
    truth = dict(raw.execute(f"""
        SELECT q.sex, COUNT(*) FROM ({norfolk_residents()}) q
        JOIN hospital_admissions h ON h.person_id = q.person_id
        JOIN deaths d ON d.person_id = q.person_id GROUP BY q.sex""").fetchall())
    base = column_base(resp, "n")
    for sex, n in rows:
        if n is not None:
            assert abs(n - truth[sex]) <= base, (sex, n, truth[sex], base)
