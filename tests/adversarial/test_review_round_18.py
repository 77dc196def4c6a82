"""The breaks of review round 18, kept as tests (docs/security.md lists every round).

All four come from rows whose person the gateway takes to be NULL, "rows of no one":

**Rows of no one are left out of the row bound.** The row-bound query (round 17's fix, taken
when the single pass cannot be, e.g. beside a COUNT(DISTINCT person_id)) ends ``WHERE __pid
IS NOT NULL``. ``lsoa_lookup l LEFT JOIN patients p`` has one row per area without a resident,
each of person NULL: k areas outside Norfolk are k rows nobody else can have, known exactly
from the public lookup. ``COUNT(*) FILTER (WHERE p.person_id IS NOT NULL OR <k such areas>)``
is N + k, rounded to 5 (the rows of no one do not raise the base); k = 0..4 gives N exactly,
the same without a small group gives N - t exactly: round 13's pads, back through COUNT(*).

**A row of no one counted as a person.** The single pass counts the people behind a cell as
its (cell, person) groups with a row: the NULL person is one such group. A FILTER choosing a
small group of 7 OR one empty area "rests on 8 people" and is released, beside the same
FILTER without the area, suppressed: the group has exactly 7.

**A person key an outer join pads, passed out of a derived table.** ``SELECT q.person_id FROM
patients p ... LEFT JOIN patients q ON q.person_id = p.person_id AND NOT (<small group>)``
is NULL on exactly the small group's rows, and the gateway takes it as the person of every
row of the outer query. Those rows then have nobody behind them: they are left out of the
row bound (five rows each, base still 5: a - b = 5t), out of the cell-key (ten rows each:
a - b = 10t within 4), and a cell of nothing but them rests on "0 people", a true zero, so
neither suppression nor dominance looks at it: one person's exact total length of stay.

A fix may refuse the query, suppress the cells, or control them properly: each passes.
"""

from __future__ import annotations

from attack import NORFOLK, PLANNER, RESEARCHER, cohort, norfolk_residents, refused


def _with_events(people: str, at_least: int) -> str:
    return (f"SELECT r.* FROM ({people}) r WHERE (SELECT COUNT(*) FROM gp_events g WHERE "
            f"g.person_id = r.person_id) >= {at_least}")


def _small_group(raw, people: str, below: int = 8, sex_only: bool = False) -> tuple[str, int]:
    """A (year of birth, sex[, ethnicity]) group of 1 to below-1 among ``people``: (condition
    on alias p, its size)."""
    keys = "year_of_birth, sex" + ("" if sex_only else ", ethnicity")
    row = raw.execute(
        f"SELECT {keys}, COUNT(*) AS n FROM ({people}) GROUP BY ALL "
        f"HAVING COUNT(*) BETWEEN 1 AND {below - 1} ORDER BY n DESC, {keys} LIMIT 1").fetchone()
    cond = f"p.year_of_birth = {row[0]} AND p.sex = '{row[1]}'"
    if not sex_only:
        cond += f" AND p.ethnicity = '{row[2]}'"
    return cond, row[-1]


def _rounded(x: int, base: int = 5) -> int:
    return base * ((2 * x + base) // (2 * base))


def _pinned(values: list, pads: list[int], candidates: range) -> list[int]:
    """The candidates x consistent with every released round(x + pad) (None: any)."""
    return [x for x in candidates
            if all(v is None or v == _rounded(x + k) for v, k in zip(values, pads, strict=True))]


def _outside_areas(raw, k: int) -> list[str]:
    """k areas outside Norfolk: the planner has no resident in any (public reference data)."""
    return [r[0] for r in raw.execute(
        f"SELECT lsoa_code FROM lsoa_lookup WHERE local_authority_code <> '{NORFOLK}' "
        f"ORDER BY lsoa_code LIMIT {k}").fetchall()]


def test_rows_of_no_one_are_not_left_out_of_the_row_bound(server, raw):
    """a_k = everyone's rows + k empty areas' rows, b_k = the same without a small group, k =
    0..4: the COUNT(DISTINCT) beside them sends the query to the row-bound query, which drops
    rows of person NULL, so every column is rounded to 5 and the pads undo the rounding."""
    target, small = _small_group(raw, norfolk_residents())
    (total,) = raw.execute(f"SELECT COUNT(*) FROM ({norfolk_residents()})").fetchone()
    areas = _outside_areas(raw, 4)

    def pad(k: int) -> str:
        return f"l.lsoa_code IN ({', '.join(repr(c) for c in areas[:k])})" if k else "FALSE"

    pads = list(range(5))
    cols = ["COUNT(DISTINCT p.person_id) AS people"]
    cols += [f"COUNT(*) FILTER (WHERE p.person_id IS NOT NULL OR {pad(k)}) AS a{k}" for k in pads]
    cols += [f"COUNT(*) FILTER (WHERE (p.person_id IS NOT NULL AND NOT ({target})) "
             f"OR {pad(k)}) AS b{k}" for k in pads]
    sql = (f"SELECT {', '.join(cols)} FROM lsoa_lookup l "
           "LEFT JOIN patients p ON p.lsoa_code = l.lsoa_code")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return
    row = server.released(resp, PLANNER[0])["rows"][0]
    near = range(total - 100, total + 100)  # any range the attacker would search
    everyone = _pinned(row[1:6], pads, near)
    others = _pinned(row[6:11], pads, near)
    assert not (len(everyone) == 1 and len(others) == 1
                and everyone[0] - others[0] == small), (
        f"a group of {small} people is counted exactly from one query: {row}")


def test_a_row_of_no_one_is_not_counted_as_a_person(server, raw):
    """Single pass: the NULL person of a padded area is a (cell, person) group with a row, so
    it counts as one of the people behind the cell. A group of 7 OR one empty area rests on
    '8 people' and is released; beside it, the group alone is suppressed: exactly 7."""
    people = norfolk_residents()
    row = raw.execute(
        f"SELECT year_of_birth, sex, ethnicity FROM ({people}) GROUP BY ALL "
        "HAVING COUNT(*) = 7 ORDER BY 1, 2, 3 LIMIT 1").fetchone()
    target = f"p.year_of_birth = {row[0]} AND p.sex = '{row[1]}' AND p.ethnicity = '{row[2]}'"
    (area,) = _outside_areas(raw, 1)
    sql = (f"SELECT COUNT(*) FILTER (WHERE {target}) AS alone, COUNT(*) FILTER (WHERE "
           f"({target}) OR l.lsoa_code = '{area}') AS padded FROM lsoa_lookup l "
           "LEFT JOIN patients p ON p.lsoa_code = l.lsoa_code")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return
    ((alone, padded),) = server.released(resp, PLANNER[0])["rows"]
    assert alone is None, "the group of 7 alone is suppressed"
    assert padded is None, (
        f"a cell resting on 7 people (and one empty area) is released: {padded}")


def _hidden_group(target: str, each: int) -> str:
    """Everyone with at least ``each`` GP events: one row each, with their person key; the
    small group ``each`` rows each, with a person key the LEFT JOIN leaves NULL."""
    return ("(SELECT q.person_id AS person_id FROM patients p JOIN (SELECT g.person_id, "
            "ROW_NUMBER() OVER (PARTITION BY g.person_id ORDER BY g.event_date) AS rn, "
            "COUNT(*) OVER (PARTITION BY g.person_id) AS n FROM gp_events g) e "
            f"ON e.person_id = p.person_id LEFT JOIN patients q ON q.person_id = p.person_id "
            f"AND NOT ({target}) WHERE e.n >= {each} AND (e.rn = 1 OR (({target}) "
            f"AND e.rn <= {each}))) x")


def test_a_person_key_padded_in_a_derived_table_does_not_hide_rows_from_the_row_bound(
        server, raw):
    """The small group's five rows each have person NULL: the row bound drops them and the
    base stays 5. a = (N - t) + 5t and b = N - t differ by a multiple of 5, so their roundings
    differ by exactly 5t."""
    target, small = _small_group(raw, _with_events(norfolk_residents(), 5))
    sql = ("SELECT COUNT(DISTINCT x.person_id) AS people, COUNT(*) AS a, "
           f"COUNT(*) FILTER (WHERE x.person_id IS NOT NULL) AS b FROM {_hidden_group(target, 5)}")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return
    ((_, a, b),) = server.released(resp, PLANNER[0])["rows"]
    assert a is None or b is None or a - b != 5 * small, (
        f"a group of {small} people is counted exactly from one query: a = {a}, b = {b}")


def test_a_person_key_padded_in_a_derived_table_does_not_undo_the_cell_key(server, raw):
    """cell_key: ten rows each for a small group of the cohort, person NULL: the perturbation
    stays at most 2, so a - b = 10t within 4 names t."""
    target, small = _small_group(raw, _with_events(cohort(), 10), below=10, sex_only=True)
    sql = ("SELECT COUNT(DISTINCT x.person_id) AS people, COUNT(*) AS a, "
           "COUNT(*) FILTER (WHERE x.person_id IS NOT NULL) AS b "
           f"FROM {_hidden_group(target, 10)}")
    resp = server.query(*RESEARCHER[:1], sql, *RESEARCHER[1:])
    if refused(resp):
        return
    body = server.released(resp, RESEARCHER[0])
    assert body["disclosure"]["regime"] == "cell_key"
    ((_, a, b),) = body["rows"]
    candidates = [] if a is None or b is None else [
        t for t in range(10) if abs(a - b - 10 * t) <= 4]
    assert candidates != [small], (
        f"a group of {small} people is counted exactly from one query: a = {a}, b = {b}")


def test_a_person_key_padded_in_a_derived_table_does_not_release_one_persons_sum(server, raw):
    """Every row of the cell has person NULL: it rests on 0 people, a 'true zero', so neither
    suppression nor dominance judges it, and SUM of the lengths of stay of one resident picked
    by her (year of birth, sex, ethnicity, small area) comes back exact."""
    yob, sex, eth, lsoa, pid = raw.execute(
        "SELECT year_of_birth, sex, ethnicity, lsoa_code, person_id FROM ("
        f"{norfolk_residents()}) p WHERE person_id IN (SELECT person_id FROM "
        "hospital_admissions WHERE length_of_stay > 0) QUALIFY COUNT(*) OVER (PARTITION BY "
        "year_of_birth, sex, ethnicity, lsoa_code) = 1 ORDER BY 1, 2, 3, 4 LIMIT 1").fetchone()
    (stay,) = raw.execute("SELECT SUM(length_of_stay) FROM hospital_admissions "
                          f"WHERE person_id = {pid}").fetchone()
    her = (f"p.year_of_birth = {yob} AND p.sex = '{sex}' AND p.ethnicity = '{eth}' "
           f"AND p.lsoa_code = '{lsoa}'")
    sql = ("SELECT COUNT(DISTINCT x.person_id) AS people, SUM(x.los) AS los FROM (SELECT "
           "q.person_id AS person_id, h.length_of_stay AS los FROM patients p JOIN "
           "hospital_admissions h ON h.person_id = p.person_id LEFT JOIN patients q ON "
           f"q.person_id = p.person_id AND NOT ({her}) WHERE {her}) x")
    resp = server.query(*PLANNER[:1], sql, *PLANNER[1:])
    if refused(resp):
        return
    ((_, los),) = server.released(resp, PLANNER[0])["rows"]
    assert los is None or los != stay, (
        f"one resident's total length of stay comes back exact: {los}")
