"""The breaks of review round 26b, kept as tests (docs/security.md lists every round).

**A derived table grouped by the person key and an expression passes as one row per person.**
``check_measure_rows_once`` (``gateway/sql/analysis.py``, review rounds 12 and 25) lets a
summed measure be joined only to sources with at most one row per person; for a derived
table, ``one_per_person`` takes "grouped by the person key" as the proof. It refuses a
derived table whose GROUP BY holds another key beside the person key only when that key is a
bare ``exp.Column``: ``GROUP BY e.person_id, e.rn`` is refused, but the same key written
``(e.rn)`` (a Paren), or any expression (``CASE WHEN e.rn = 1 THEN 'A' ELSE 'B' END``),
passes, and the derived table then holds one row per person *per tag*.

That is round 12's attack again: each person's first two GP events, tagged A and B, grouped
by (person, tag), with the chosen resident's B row left out (``NOT (<her year of birth and
small area> AND e.rn = 2)``). Joined to the admissions, every admission is summed in both
cells, and the two cells share everyone but her. Both rest on thousands of people and pass
dominance, and sums of a measure are released exact under ``threshold``: ``A - B`` is her
exact total length of stay (seen 9202 - 9166 = 36 for a Norfolk resident alone in her year
of birth and small area, whose raw total is 36; the same under OUTBREAK-2026).

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import PLANNER, norfolk_residents, query_as, refused


def _her(raw) -> tuple[int, str, float]:
    """A Norfolk resident alone in her year of birth and small area, with at least two GP
    events and admissions: her year of birth, small area and exact total length of stay."""
    people = norfolk_residents()
    found = raw.execute(f"""
        WITH alone AS (
            SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM ({people})
            GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, SUM(h.length_of_stay)
        FROM alone a JOIN hospital_admissions h ON h.person_id = a.pid
        WHERE (SELECT COUNT(*) FROM gp_events g WHERE g.person_id = a.pid) >= 2
        GROUP BY ALL HAVING SUM(h.length_of_stay) > 0
        ORDER BY 3 DESC, 1, 2 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    return found


def _tagged_twice(yob: int, lsoa: str, tag_key: str) -> str:
    """Every admission summed under tag A and tag B; her B row is left out."""
    return f"""
WITH e AS (SELECT g.person_id,
                  ROW_NUMBER() OVER (PARTITION BY g.person_id ORDER BY g.event_date) AS rn,
                  COUNT(*) OVER (PARTITION BY g.person_id) AS ne
           FROM gp_events g),
t AS (SELECT e.person_id, {tag_key} AS tag
      FROM e JOIN patients p ON p.person_id = e.person_id
      WHERE e.rn <= 2 AND e.ne >= 2
        AND NOT (p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}' AND e.rn = 2)
      GROUP BY e.person_id, {tag_key})
SELECT t.tag, SUM(h.length_of_stay) AS los
FROM hospital_admissions h JOIN t ON t.person_id = h.person_id
GROUP BY t.tag ORDER BY t.tag
"""


def _assert_not_her_total(server, raw, tag_key: str) -> None:
    yob, lsoa, truth = _her(raw)
    resp = query_as(server, PLANNER, _tagged_twice(yob, lsoa, tag_key))
    if refused(resp) or resp.json()["status"] != "released":
        return
    rows = resp.json()["rows"]
    if len(rows) != 2 or rows[0][1] is None or rows[1][1] is None:
        return
    gap = rows[0][1] - rows[1][1]
    assert abs(gap - truth) > 0.5, (
        f"two cells resting on thousands differ by {gap}: the exact total length of stay "
        f"({truth}) of the one resident born in {yob} living in {lsoa}")


def test_a_case_tag_beside_the_person_key_repeats_each_admission(server, raw):
    """GROUP BY person_id, CASE ... END: two rows a person, taken as one."""
    _assert_not_her_total(server, raw, "CASE WHEN e.rn = 1 THEN 'A' ELSE 'B' END")


def test_a_parenthesised_tag_beside_the_person_key_repeats_each_admission(server, raw):
    """GROUP BY person_id, (rn): the bare column is refused, the same in parentheses passed."""
    _assert_not_her_total(server, raw, "(e.rn)")
