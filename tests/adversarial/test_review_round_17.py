"""The breaks of review round 17, kept as tests (docs/security.md lists every round).

**A count of rows that is a known multiple of a count of people.** Rounding to 5 (threshold)
and a perturbation of at most 2 (cell_key) are sized for a count in which one person moves
the value by one. A count of rows moves by as many rows as a person has, and the query
chooses that number: a derived table grouped by person_id ``HAVING COUNT(*) = 5`` joined to
gp_events (or a window, ``ROW_NUMBER() OVER (PARTITION BY person_id ...) <= 5`` with
``COUNT(*) OVER (PARTITION BY person_id) >= 5``) gives every person counted exactly five
rows. ``COUNT(*)`` is then 5t for t people: rounded to 5 it is exact, and perturbed by at
most 2 it still divides back to t. Under threshold, two columns of one query, each resting on
hundreds of people, differ by five times a small group (one person), so a group of 1 to 7 is
counted exactly; under cell_key every released count is exact, and the exact counts that the
regime promises no one can get, cell by cell, in one query.

**ORDER BY ALL ranks suppressed cells.** The outer query may not be ordered by an aggregate
(``check_outer``), by expression or by position, but ``ORDER BY ALL`` is neither: DuckDB
orders by every output column left to right, so an aggregate first orders the released rows
by its exact, unsuppressed values.

A fix may refuse the query, suppress the cells, or control them properly (round or perturb a
count of rows by as much as one person can move it): each passes.
"""

from __future__ import annotations

from attack import PLANNER, RESEARCHER, cohort, norfolk_residents, refused

#: every person with exactly five GP events, each of their events: five rows per person
FIVE_EACH = ("patients p JOIN gp_events e ON e.person_id = p.person_id JOIN (SELECT g.person_id "
             "FROM gp_events g GROUP BY g.person_id HAVING COUNT(*) = 5) k "
             "ON k.person_id = e.person_id")
#: the same with windows: the first five events of everyone with at least five
FIRST_FIVE = ("patients p JOIN (SELECT e.person_id, ROW_NUMBER() OVER (PARTITION BY "
              "e.person_id ORDER BY e.event_date) AS rn, COUNT(*) OVER (PARTITION BY "
              "e.person_id) AS n FROM gp_events e) x ON x.person_id = p.person_id")


def _events(people: str, condition: str) -> str:
    return (f"SELECT r.* FROM ({people}) r WHERE (SELECT COUNT(*) FROM gp_events g WHERE "
            f"g.person_id = r.person_id) {condition}")


def _small_group(raw, people: str) -> tuple[str, int]:
    """A (year of birth, sex, ethnicity) group of 1 to 7 among ``people`` (not of 5, the
    multiple): (condition on alias p, its size)."""
    yob, sex, eth, n = raw.execute(
        f"SELECT year_of_birth, sex, ethnicity, COUNT(*) AS n FROM ({people}) GROUP BY ALL "
        "HAVING COUNT(*) BETWEEN 1 AND 7 AND COUNT(*) <> 5 "
        "ORDER BY n DESC, year_of_birth, sex, ethnicity LIMIT 1").fetchone()
    return f"p.year_of_birth = {yob} AND p.sex = '{sex}' AND p.ethnicity = '{eth}'", n


def test_five_rows_per_person_do_not_count_a_small_group_exactly(server, raw):
    """a is five rows for each of the ~470 residents with exactly five GP events, b the same
    without a small (year of birth, sex, ethnicity) group: both rest on hundreds of people,
    both are rounded to 5, and (a - b) / 5 is the small group's exact size."""
    target, small = _small_group(raw, _events(norfolk_residents(), "= 5"))
    sql = (f"SELECT COUNT(*) AS a, COUNT(*) FILTER (WHERE NOT ({target})) AS b "
           f"FROM {FIVE_EACH}")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    ((a, b),) = server.released(resp, "p.jones")["rows"]
    assert a is None or b is None or (a - b) != 5 * small, (
        f"a group of {small} people is counted exactly from one query: a = {a}, b = {b}")


def test_the_first_five_events_of_each_person_do_not_count_a_small_group_exactly(server, raw):
    """The same with windows: ROW_NUMBER() <= 5 of everyone with COUNT(*) OVER () >= 5."""
    target, small = _small_group(raw, _events(norfolk_residents(), ">= 5"))
    where = "x.rn <= 5 AND x.n >= 5"
    sql = (f"SELECT COUNT(*) FILTER (WHERE {where}) AS a, COUNT(*) FILTER (WHERE {where} "
           f"AND NOT ({target})) AS b FROM {FIRST_FIVE}")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    ((a, b),) = server.released(resp, "p.jones")["rows"]
    assert a is None or b is None or (a - b) != 5 * small, (
        f"a group of {small} people is counted exactly from one query: a = {a}, b = {b}")


def test_five_rows_per_person_do_not_undo_the_cell_key_perturbation(server, raw):
    """cell_key: COUNT(*) over five rows per person is 5t + d with |d| <= 2, so every
    released cell divided by 5 and rounded is its exact count of people."""
    people = _events(cohort(), ">= 5")
    truth = dict(raw.execute(
        f"SELECT sex || '/' || (year_of_birth // 20 * 20), COUNT(*) FROM ({people}) "
        "GROUP BY 1").fetchall())
    sql = ("SELECT p.sex AS sex, p.year_of_birth // 20 * 20 AS born, COUNT(*) AS n "
           f"FROM {FIRST_FIVE} WHERE x.rn <= 5 AND x.n >= 5 GROUP BY p.sex, born")
    resp = server.query(*RESEARCHER[:1], sql, *RESEARCHER[1:])
    if refused(resp):
        return  # refused
    body = server.released(resp, "r.smith")
    assert body["disclosure"]["regime"] == "cell_key"
    shown = {f"{sex}/{born}": n for sex, born, n in body["rows"] if n is not None}
    exact = {k: n for k, n in shown.items() if round(n / 5) == truth[k]}
    assert len(shown) < 3 or exact != shown, (
        f"every released cell gives its exact count of people: {shown} / 5 = {truth}")


def _ranked_year(raw) -> tuple[int, list[str]]:
    """A year of birth in which at least three ethnic groups hold 1 to 7 residents, all of
    different sizes, ordered by size neither alphabetically nor in reverse."""
    for (year,) in raw.execute(f"SELECT DISTINCT year_of_birth FROM ({norfolk_residents()}) "
                               "ORDER BY 1").fetchall():
        small = sorted((n, e) for e, n in raw.execute(
            f"SELECT ethnicity, COUNT(*) FILTER (WHERE year_of_birth = {year}) FROM "
            f"({norfolk_residents()}) GROUP BY 1").fetchall() if 1 <= n <= 7)
        order = [e for _, e in small]
        if (len(small) >= 3 and len({n for n, _ in small}) == len(small)
                and order not in (sorted(order), sorted(order, reverse=True))):
            return year, order
    raise AssertionError("no such year in the generated data")


def test_order_by_all_does_not_rank_suppressed_cells(server, raw):
    """ORDER BY ALL with an aggregate first orders the released table by that aggregate's
    exact values, suppressed cells included: the rule against ORDER BY an aggregate on the
    outer query, passed by naming no column."""
    year, by_size = _ranked_year(raw)
    sql = (f"SELECT COUNT(*) FILTER (WHERE p.year_of_birth = {year}) AS n, COUNT(*) AS m, "
           "p.ethnicity FROM patients p GROUP BY p.ethnicity ORDER BY ALL")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return  # refused
    rows = server.released(resp, "p.jones")["rows"]
    shown = [e for n, _, e in rows if n is None and e in by_size]
    assert shown != by_size, (
        f"the suppressed cells of {year} come back ranked by their exact sizes: {by_size}")


# -- how the fix scales the control --------------------------------------------------------------

def test_a_count_of_rows_is_rounded_to_the_base_times_the_most_one_person_adds(server, raw):
    """GP events by code: the base is 5 times the most events one person has in one code,
    raised to 1, 2, 5, 10, 20, ...; a count of people beside it stays at 5, unless one
    person is in more than 8 cells (round 22: two columns times the codes of the person with
    the most), when both are scaled by how many times more."""
    sql = ("SELECT e.snomed_code, COUNT(*) AS events, COUNT(DISTINCT e.person_id) AS people "
           "FROM gp_events e GROUP BY e.snomed_code")
    body = server.released(server.query(*PLANNER[:1], sql, *PLANNER[1:]), PLANNER[0])
    mine = (f"FROM gp_events e WHERE e.person_id IN (SELECT person_id FROM "
            f"({norfolk_residents()}))")
    (most,) = raw.execute(f"SELECT MAX(n) FROM (SELECT e.snomed_code, e.person_id, COUNT(*) "
                          f"AS n {mine} GROUP BY 1, 2)").fetchone()
    (codes,) = raw.execute(f"SELECT MAX(n) FROM (SELECT e.person_id, COUNT(DISTINCT "
                           f"e.snomed_code) AS n {mine} GROUP BY 1)").fetchone()
    spread = max(1.0, 2 * codes / 8)

    def band(m: float) -> int:
        return next(k * 10 ** e for e in range(6) for k in (1, 2, 5) if k * 10 ** e >= m)

    assert most > 1, "someone has several events of one code (else this tests nothing)"
    events, people = 5 * band(most * spread), 5 * band(spread)
    expected = {"events": events} | ({"people": people} if people > 5 else {})
    assert body["disclosure"]["column_rounding_bases"] == expected
    assert all(r[1] is None or r[1] % events == 0 for r in body["rows"])
    assert all(r[2] is None or r[2] % people == 0 for r in body["rows"])