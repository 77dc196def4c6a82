"""Which cells need a hidden count of distinct people, and which already are one."""

from __future__ import annotations

import pytest

from gateway.sql.analysis import analyse
from gateway.sql.rewrite import rewrite
from policies import Obligations
from policies.model import Output


def plan(sql, catalogue):
    analysis = analyse(sql, catalogue, max_chars=20_000, max_depth=64)
    return rewrite(analysis, Obligations(None, True, None, Output(regime="threshold")),
                   catalogue, 10_000)


@pytest.mark.parametrize("sql", [
    "SELECT p.lsoa_code, COUNT(*) AS n FROM patients p GROUP BY p.lsoa_code",
    "SELECT l.imd_decile, COUNT(*) AS n FROM patients p JOIN lsoa_lookup l "
    "ON l.lsoa_code = p.lsoa_code GROUP BY l.imd_decile",
    "SELECT p.sex, COUNT(*) FILTER (WHERE p.year_of_birth < 1950) AS older FROM patients p "
    "GROUP BY p.sex",
])
def test_counting_rows_of_a_one_row_per_person_table_counts_people(sql, catalogue):
    p = plan(sql, catalogue)
    assert p.people_index[1] == 1  # the cell is its own people count
    assert "DISTINCT" not in p.sql.upper()


@pytest.mark.parametrize("sql", [
    "SELECT e.snomed_code, COUNT(*) AS n FROM gp_events e GROUP BY e.snomed_code",
    "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN gp_events e "
    "ON e.person_id = p.person_id GROUP BY p.sex",
    "SELECT x.sex, COUNT(*) AS n FROM (SELECT p.sex, p.person_id FROM patients p) x "
    "GROUP BY x.sex",
])
def test_rows_that_can_repeat_a_person_get_a_distinct_count(sql, catalogue):
    """Counted by person: a distinct count, or a regrouping by (cell, person) that also finds
    the most rows one person adds to a cell (review round 17)."""
    p = plan(sql, catalogue)
    assert p.people_index[1] != 1
    assert "COUNT(DISTINCT" in p.sql.upper() or (
        "__PID" in p.sql.upper() and p.row_max_index == ((1, p.row_max_index[0][1]),))
