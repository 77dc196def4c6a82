"""The breaks of review round 13, kept as tests (docs/security.md lists every round).

Each test finds a small group in the test data with raw DuckDB, asks the gateway one query,
and checks that the released figures do not pin the group's exact size. A fix may refuse the
query, suppress the cells, or count the people behind them properly: each passes.
"""

from __future__ import annotations

import pytest
from attack import DP_RESEARCHER, NORFOLK, PLANNER, cohort, explain_as, norfolk_residents, refused


def _small_group(raw, people_sql: str, below: int) -> tuple[str, int]:
    """A (year of birth, sex, ethnicity) group of 1 to below-1 people among ``people_sql``:
    its condition on alias p, and its true size."""
    yob, sex, eth, n = raw.execute(
        f"SELECT year_of_birth, sex, ethnicity, COUNT(*) AS n FROM ({people_sql}) GROUP BY ALL "
        f"HAVING COUNT(*) BETWEEN 1 AND {below - 1} ORDER BY n DESC, 1, 2, 3 LIMIT 1"
    ).fetchone()
    return f"p.year_of_birth = {yob} AND p.sex = '{sex}' AND p.ethnicity = '{eth}'", n


def _candidates_rounded(values: list, pads: list[int], base: int, below: int) -> list[int]:
    """The group sizes 0..below-1 consistent with released cells round(t + pad) (None: any)."""
    def rounded(x: int) -> int:
        return base * ((2 * x + base) // (2 * base))
    return [t for t in range(below)
            if all(v is None or v == rounded(t + k) for v, k in zip(values, pads, strict=True))]


def _empty_area_pads(raw, target: str) -> tuple[list[int], str]:
    """Five counts of the small group OR k = 8..12 areas where the planner has no resident."""
    empty = [r[0] for r in raw.execute(
        f"SELECT lsoa_code FROM lsoa_lookup WHERE local_authority_code <> '{NORFOLK}' "
        "ORDER BY lsoa_code LIMIT 12").fetchall()]
    pads = list(range(8, 13))
    cols = ", ".join(
        f"COUNT(*) FILTER (WHERE ({target}) OR l.lsoa_code IN "
        f"({', '.join(repr(c) for c in empty[:k])})) AS pad{k}" for k in pads)
    return pads, cols


def test_a_right_joined_lookup_does_not_pad_a_count_of_people(server, raw):
    """COUNT(*) over patients alone counts people, so the gateway takes the count itself as the
    people behind the cell. RIGHT JOIN lsoa_lookup adds one row per area with no resident in it:
    a FILTER choosing a small group OR k empty areas counts t + k rows, 'rests on' t + k people
    and is released rounded; k = 8..12 in one query gives t exactly."""
    target, truth = _small_group(raw, norfolk_residents(), 8)
    assert 1 <= truth <= 7
    pads, cols = _empty_area_pads(raw, target)
    sql = f"SELECT {cols} FROM patients p RIGHT JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code"
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refusing is as good as suppressing
    values = server.released(resp, "p.jones")["rows"][0]
    assert _candidates_rounded(values, pads, 5, 8) != [truth], (
        f"a group of {truth} people is pinned exactly by {values}")


def test_count_distinct_of_constant_pads_does_not_count_people(server, raw):
    """COUNT(DISTINCT CASE WHEN <small group> THEN person_id ELSE <one of k constants> END):
    the people behind it are everyone (the argument is never NULL), its value is t + k. Five
    such columns (k = 8..12) undo the rounding: the small group's exact size."""
    target, truth = _small_group(raw, norfolk_residents(), 8)
    assert 1 <= truth <= 7
    pads = list(range(8, 13))
    cols = ", ".join(
        f"COUNT(DISTINCT CASE WHEN {target} THEN p.person_id "
        f"ELSE -1 - (p.year_of_birth % {k}) END) AS pad{k}" for k in pads)
    resp = server.query(*PLANNER[:1], f"SELECT {cols} FROM patients p", *PLANNER[1:])
    if refused(resp):
        return
    values = server.released(resp, "p.jones")["rows"][0]
    assert _candidates_rounded(values, pads, 5, 8) != [truth], (
        f"a group of {truth} people is pinned exactly by {values}")


def test_count_distinct_of_constant_pads_does_not_defeat_cell_keys(server, raw):
    """The same pads under cell_key: each column has a different value, so a different draw
    from the one cell key, so released - k is t plus eighty independent zero-mean
    perturbations: their mean is t to within about 0.1 (and their range, once it spans the
    table's -2..2, pins t outright), for a group the regime suppresses (under 10 people)."""
    target, truth = _small_group(raw, cohort(), 10)
    assert 1 <= truth <= 9
    pads = list(range(8, 88))
    day = "DATE_DIFF('day', DATE '1900-01-01', p.registration_date)"
    cols = ", ".join(
        f"COUNT(DISTINCT CASE WHEN {target} THEN p.person_id "
        f"ELSE -1 - ((p.year_of_birth * 400 + {day}) % {k}) END) AS pad{k}" for k in pads)
    resp = server.query("r.smith", f"SELECT {cols} FROM patients p", "PRJ-0077", "research")
    if refused(resp):
        return
    values = server.released(resp, "r.smith")["rows"][0]
    candidates = [t for t in range(10) if all(
        v is None or abs(v - k - t) <= 2 for v, k in zip(values, pads, strict=True))]
    released = [v - k for v, k in zip(values, pads, strict=True) if v is not None]
    mean = sum(released) / len(released) if released else None
    assert candidates != [truth] and (mean is None or round(mean) != truth), (
        f"a group of {truth} people is pinned by {released} (mean {mean})")


def test_a_key_of_a_left_joined_person_table_is_not_one_cell_per_person(server, raw):
    """dp: a key computed only from patients columns is taken to put each person in one cell
    (cells_per_person 1, no cap on cells). LEFT JOIN patients ... ON person_id AND <a condition
    on the event row> gives the key on some of a person's rows and NULL (here '-') on others,
    one join per year: one person sits in up to ten cells and moves the bounded count of
    events by several times what the noise is calibrated to."""
    years = range(2016, 2027)
    keys = ", ".join(f"COALESCE(p{i}.sex, '-') AS k{i}" for i in range(len(years)))
    joins = " ".join(f"LEFT JOIN patients p{i} ON p{i}.person_id = e.person_id AND "
                     f"YEAR(e.event_date) = {y}" for i, y in enumerate(years))
    sql = f"SELECT {keys}, COUNT(*) AS events FROM gp_events e {joins} GROUP BY ALL"
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    cells = explained["dp"]["cells_per_person"]
    rows = explained["output"]["max_rows_per_cell"]
    bounded = explained["executed_sql"]
    # the (cell, person) parts the bounded aggregates add up: one row per cell a person is in
    parts = bounded[bounded.index(" FROM (") + len(" FROM ("):bounded.rindex(") AS __pp")]
    count = f"__a{len(years)}_0"
    # (the rows are the pairs kept, or every pair and, weighted -1, the pairs the bound cuts)
    cells_of = "SUM(__w)" if "__w" in parts else "COUNT(*)"
    most_cells, most_moved = raw.execute(
        f"SELECT MAX(c), MAX(s) FROM (SELECT __pid, {cells_of} AS c, SUM({count}) AS s "
        f"FROM ({parts}) GROUP BY __pid)").fetchone()
    assert most_cells <= cells and most_moved <= cells * rows, (
        f"one person is in {most_cells} cells and moves the count by {most_moved}; the noise "
        f"assumes {cells} cell(s) of at most {rows}")


# -- the neighbours of the four breaks, closed by the same fixes ----------------------------

def test_every_outer_join_that_pads_people_counts_people_not_rows(server, raw):
    """FULL JOIN, and a lookup LEFT JOINed to people, pad as RIGHT JOIN does."""
    target, truth = _small_group(raw, norfolk_residents(), 8)
    pads, cols = _empty_area_pads(raw, target)
    for source in ("patients p FULL JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code",
                   "lsoa_lookup l LEFT JOIN patients p ON l.lsoa_code = p.lsoa_code"):
        resp = server.query(*PLANNER[:1], f"SELECT {cols} FROM {source}", *PLANNER[1:])
        if refused(resp):
            continue
        values = server.released(resp, "p.jones")["rows"][0]
        assert _candidates_rounded(values, pads, 5, 8) != [truth], (source, values)


@pytest.mark.parametrize("column", [
    "COUNT(DISTINCT p.practice_code)",
    "COUNT(DISTINCT p.year_of_birth * 100000 + DAYOFYEAR(p.registration_date))",
    "COUNT(DISTINCT CASE WHEN p.sex = 'F' THEN p.person_id ELSE -1 END)",
    "COUNT(DISTINCT CASE WHEN p.sex = 'F' THEN p.person_id WHEN p.sex = 'M' THEN 0 END)",
    "COUNT(DISTINCT COALESCE(p.person_id, 0))",
])
def test_an_outer_distinct_count_counts_people_only(server, column):
    """A count of distinct values other than people is refused on the outer query: a value
    held by one person counts as much as one held by thousands, and FILTER (WHERE <small
    group> OR <k known values>) pads it by a known k."""
    resp = server.query(*PLANNER[:1], f"SELECT p.sex, {column} AS n FROM patients p "
                        "GROUP BY p.sex", *PLANNER[1:])
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "sql_rejected"


@pytest.mark.parametrize("column", [
    "COUNT(DISTINCT CASE WHEN p.year_of_birth < 1960 THEN p.person_id END)",
    "COUNT(DISTINCT CASE WHEN p.year_of_birth < 1960 THEN p.person_id ELSE NULL END)",
    "COUNT(DISTINCT p.person_id) FILTER (WHERE p.year_of_birth < 1960)",
])
def test_distinct_counts_of_people_are_still_accepted(server, raw, column):
    resp = server.query(*PLANNER[:1], f"SELECT p.sex, {column} AS n FROM patients p "
                        "GROUP BY p.sex ORDER BY p.sex", *PLANNER[1:])
    body = server.released(resp, "p.jones")
    truth = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) WHERE year_of_birth < 1960 "
        "GROUP BY sex").fetchall())
    assert {s: n for s, n in body["rows"]} == {s: 5 * round(n / 5) for s, n in truth.items()}


def test_a_person_keyed_left_join_keeps_one_cell_per_person_under_dp(server):
    """LEFT JOIN patients on the person key alone matches all of a person's rows or none:
    the sex of the joined patient still puts each person in one cell."""
    sql = ("SELECT p.sex, COUNT(*) AS events FROM gp_events e LEFT JOIN patients p "
           "ON p.person_id = e.person_id GROUP BY p.sex")
    resp = server.client.post("/v1/queries/explain", headers={
        "Authorization": f"Bearer {server.token('r.smith')}"},
        json={"sql": sql, "project": "PRJ-0042", "purpose": "research"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["dp"]["cells_per_person"] == 1
