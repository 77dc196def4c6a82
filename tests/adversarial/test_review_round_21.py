"""The breaks of review round 21, kept as tests (docs/security.md lists every round).

**Many rows average the rounding away, as many columns did.** Round 20 capped a query at 20
aggregate columns, because 163 pairs of count columns over sets differing by the same small
group G averaged the rounding (or the cell-key perturbation) away. The cap counts columns,
not cells: one count column under ``GROUP BY GROUPING SETS ((1), (2), ..., (400))`` over 400
boolean keys, ``(cut OR g)`` and ``(cut AND NOT g)`` for 200 cuts of the people (years of
birth, registration dates), releases 400 cells, each rounded on its own. For each cut, the
TRUE rows of its two keys count ``cut + G`` and ``cut - G``, and the FALSE rows count the two
complements, which differ by G as well: 380 or so pairs in one query of 9,000 characters,
every cell resting on hundreds of people, nothing suppressed. As in round 20, the share of
pairs whose difference is 5 higher is ``(t % 5) / 5`` and pins the size of G (raw: 1, 2, 3, 6
and 7 people, each pinned exactly by one query); under ``cell_key`` the mean difference of
430 perturbed pairs is G's size to within 0.1.

**Many one-key grouping sets hang the server.** The same shape without a small group, one
count column over 1,000 one-key grouping sets of boolean cuts (13,000 characters), holds the
request far past the engine's 30 s time limit (600 sets: 32 s; 1,000 sets under ``cell_key``:
over two minutes); nothing bounds the number of grouping sets or of released cells.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

import statistics

import httpx
from attack import (
    PLANNER,
    RESEARCHER,
    answered_in_time,
    cohort,
    norfolk_residents,
    query_as,
    refused,
    rounding_guess,
    small_groups,
    timed_query,
)

#: no disclosure control should take longer than the engine may take to run the query


def _cuts(first_year: int, last_year: int, day_step: int, n: int) -> list[str]:
    """Distinct cuts of the people: by year of birth, then by days registered since 1990."""
    return ([f"y > {y}" for y in range(first_year, last_year)]
            + [f"d > {d}" for d in range(1900, 13200, day_step)])[:n]


def _grouping_sets_query(yob: int, practice: str, cuts: list[str]) -> str:
    """One count column; per cut, two boolean keys whose TRUE (and FALSE) cells differ by
    exactly the people of G (born in ``yob`` at ``practice``), each key its own grouping set."""
    group = f"p.year_of_birth = {yob} AND p.practice_code = '{practice}'"
    keys = []
    for cut in cuts:
        keys += [f"({cut} OR g)", f"({cut} AND NOT g)"]
    sets = ", ".join(f"({i + 1})" for i in range(len(keys)))
    sql = (f"SELECT {', '.join(keys)}, COUNT(*) AS n FROM (SELECT p.person_id, "
           "p.year_of_birth AS y, DATE_DIFF('day', DATE '1990-01-01', p.registration_date) AS d, "
           f"{group} AS g FROM patients p) t GROUP BY GROUPING SETS ({sets})")
    assert len(sql) < 20_000
    return sql


def _differences(resp: httpx.Response, n_keys: int) -> list[int] | None:
    """The released differences of each pair of cells, or None if the query was refused."""
    assert resp.status_code < 500, resp.text
    if refused(resp):
        return None
    body = resp.json()
    if body["status"] != "released":
        return None
    cell: dict[tuple[int, bool], int] = {}
    for row in body["rows"]:
        keyed = [i for i in range(n_keys) if row[i] is not None]
        if len(keyed) == 1 and row[n_keys] is not None:
            cell[(keyed[0], row[keyed[0]])] = row[n_keys]
    diffs = []
    for i in range(0, n_keys, 2):
        # TRUE: (cut or G) - (cut and not G); FALSE: not (cut and not G) - not (cut or G)
        for bigger, smaller in (((i, True), (i + 1, True)), ((i + 1, False), (i, False))):
            if bigger in cell and smaller in cell:
                diffs.append(cell[bigger] - cell[smaller])
    return diffs


def test_many_rounded_rows_of_grouping_sets_pin_a_small_group(server, raw):
    """Threshold regime: one count column over 400 one-key grouping sets gives about 380
    pairs of cells differing by the same small group; the share of pairs 5 apart more than
    the least pins the group's size (raw: 1, 3, 6 and 7 people) exactly, in one query each."""
    cuts = _cuts(1921, 2024, 60, 200)
    pinned = {}
    for size, (yob, practice) in small_groups(raw, norfolk_residents(), (1, 3, 6, 7)).items():
        diffs = _differences(query_as(server, PLANNER, _grouping_sets_query(yob, practice, cuts)),
                             2 * len(cuts))
        if not diffs:
            return
        pinned[size] = rounding_guess(diffs)
    assert any(guess != size for size, guess in pinned.items()), (
        f"one query each pinned small groups of 1 to 7 people exactly (true: guessed): {pinned}")


def test_many_perturbed_rows_of_grouping_sets_pin_a_small_group(server, raw):
    """cell_key (min 10 people): the same query over the consented cohort gives about 430
    pairs of perturbed cells; their mean difference is the group's size (raw: 1 and 2)."""
    first, last = raw.execute(f"SELECT MIN(year_of_birth), MAX(year_of_birth) "
                              f"FROM ({cohort()})").fetchone()
    cuts = _cuts(first, last, 50, 220)
    pinned = {}
    for size, (yob, practice) in small_groups(raw, cohort(), (1, 2)).items():
        diffs = _differences(query_as(server, RESEARCHER,
                                    _grouping_sets_query(yob, practice, cuts)), 2 * len(cuts))
        if not diffs:
            return
        pinned[size] = round(statistics.mean(diffs))
    assert any(guess != size for size, guess in pinned.items()), (
        f"one query each pinned small groups exactly under cell_key (true: guessed): {pinned}")


def test_a_thousand_one_key_grouping_sets_do_not_hang(server):
    """1,000 boolean keys, each its own grouping set, one count column: answered (or refused)
    within the engine's time limit, not minutes later."""
    keys = ([f"y > {y}" for y in range(1900, 2030)]
            + [f"d > {d}" for d in range(1800, 13300, 10)])[:1000]
    sets = ", ".join(f"({i + 1})" for i in range(len(keys)))
    sql = (f"SELECT {', '.join(keys)}, COUNT(*) AS n FROM (SELECT p.person_id, "
           "p.year_of_birth AS y, DATE_DIFF('day', DATE '1990-01-01', p.registration_date) AS d "
           f"FROM patients p) t GROUP BY GROUPING SETS ({sets})")
    assert len(sql) < 20_000
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, f"{len(keys)} one-key grouping sets")


def test_columns_times_grouping_sets_or_branches_are_capped(server):
    """A person is in one cell per column per grouping set or UNION branch: at most 32."""
    base = ("SELECT p.sex, p.ethnicity, COUNT(*) AS n, COUNT(*) FILTER (WHERE "
            "p.year_of_birth < 1960) AS o FROM patients p ")
    ok = server.query(*PLANNER[:1], base + "GROUP BY CUBE (p.sex, p.ethnicity)", *PLANNER[1:])
    assert ok.status_code == 200, ok.text  # 2 columns x 4 sets
    branch = "SELECT 'x' AS k, COUNT(*) AS n FROM patients p"
    many = " UNION ALL ".join([branch] * 33)
    resp = server.query(*PLANNER[:1], many, *PLANNER[1:])
    assert resp.status_code == 400 and "at most 32" in resp.json()["error"]["message"]
