"""The breaks of review round 32b, kept as tests (docs/security.md lists every round).

This round attacked the disclosure control of answers (threshold and cell_key) with one
query at a time. Every test below fails on the code as reviewed. A fix may refuse such a
query (a 4xx) or answer it safely: either passes.

**1. The stated rounding base (threshold) or table width (cell_key) of each column is an
oracle on one person's rows: 16 columns, her exact registration date.** Round 17 made a count
of rows rounded to 5 x (the most rows one person adds to a cell of the column), and round 23
multiplied it by the draws; both are stated per column, in
``disclosure.column_rounding_bases`` (threshold) and ``disclosure.perturbation.column_max``
(cell_key). ``_row_bound`` in ``gateway/pipeline.py`` takes that "most rows" from every cell
of the result, suppressed and withheld ones too, *per column*. A FILTER column that counts
only one person's rows therefore gets a base that is a function of her rows alone: 0 rows
gives the floor (1), her 19 GP events give 19. One column per bit of a value of hers:

    SELECT p.sex,
           COUNT(*) FILTER (WHERE <her yob and lsoa> AND
                            (DATEDIFF('day', DATE '1970-01-01', p.registration_date)
                             // 2^j) % 2 = 1) AS b<j>,     -- j = 0 .. 15
    FROM patients p JOIN gp_events e ON e.person_id = p.person_id GROUP BY p.sex

Every cell is hers alone or zero, so no row is even released (both keyed rows rest on fewer
than k people and are withheld): the answer is a 200 ``released`` with no rows. But its
bases read, under threshold, ``{b0: 250, b1: 10, b2: 250, ...}``: 250 where the bit is set
(5 x band(19 events x 16 draws / 8)), 10 where it is not (5 x band(1 x 2)). The 16 bases
spell her registration date as days since 1970, exactly (15781: 2013-03-17). Under
cell_key, ``column_max`` reads 100 or 4 per column, and spells the cohort member's date
(11056: 2000-04-09) the same way. The documented limit is that a base "says a band" of the
rows and draws; here one query says sixteen independent bits of one chosen person, and any
attribute a WHERE clause can test (a diagnosis, an area, a date) can be read the same way.
Root cause: the rows factor is computed per column over cells that describe fewer than k
people (``_row_bound``; ``row_max_index`` of ``single_pass`` in ``gateway/sql/rewrite.py``,
and the row-bound query likewise), and is then published per column (``_control``,
``_control_cell_key``), so that a column's disclosure metadata rests on one person.
"""

from __future__ import annotations

from datetime import date

import pytest
from attack import PLANNER, RESEARCHER, cohort, norfolk_residents, query_as, refused

BITS = 16


def _alone_with_events(raw, people: str) -> tuple[int, str, int, date]:
    """A person alone in her year of birth and small area among ``people``, with several GP
    events: her year, area, number of events and registration date."""
    found = raw.execute(f"""
        WITH r AS ({people}),
        alone AS (SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM r
                  GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, COUNT(*) AS n,
               ANY_VALUE(p.registration_date)
        FROM alone a JOIN gp_events e ON e.person_id = a.pid
        JOIN patients p ON p.person_id = a.pid
        GROUP BY ALL HAVING COUNT(*) >= 5 ORDER BY n DESC, 1, 2 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    return found


def _bit_columns(yob: int, lsoa: str) -> str:
    her = f"p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}'"
    return ", ".join(
        f"COUNT(*) FILTER (WHERE {her} AND (DATEDIFF('day', DATE '1970-01-01', "
        f"p.registration_date) // {2 ** j}) % 2 = 1) AS b{j}" for j in range(BITS))


CASES = {
    "threshold": (PLANNER, norfolk_residents),
    "cell_key": (RESEARCHER, cohort),
}


@pytest.mark.parametrize("regime", sorted(CASES))
def test_per_column_bases_do_not_spell_one_persons_date(server, raw, regime):
    who, people = CASES[regime]
    yob, lsoa, events, registered = _alone_with_events(raw, people())
    truth = (registered - date(1970, 1, 1)).days
    assert truth < 2 ** BITS
    sql = (f"SELECT p.sex, {_bit_columns(yob, lsoa)} FROM patients p "
           "JOIN gp_events e ON e.person_id = p.person_id GROUP BY p.sex")
    resp = query_as(server, who, sql)
    if refused(resp):
        return
    body = resp.json()
    disclosure = body["disclosure"]
    if regime == "threshold":
        stated = {f"b{j}": disclosure["column_rounding_bases"].get(
            f"b{j}", disclosure["rounding_base"]) for j in range(BITS)}
    else:
        widths = disclosure["perturbation"]["column_max"]
        stated = {f"b{j}": widths.get(f"b{j}", disclosure["perturbation"]["max"])
                  for j in range(BITS)}
    floor = min(stated.values())
    read = sum(2 ** j for j in range(BITS) if stated[f"b{j}"] > floor)
    assert read != truth, (
        f"{regime}: the stated per-column scales {stated} (status {body['status']}, "
        f"{len(body['rows'])} rows) spell {read} = days from 1970 to {registered}, the exact "
        f"registration date of the one person born in {yob} living in {lsoa} ({events} GP "
        "events)")
