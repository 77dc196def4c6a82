"""The breaks of review round 22a, kept as tests (docs/security.md lists every round).

**Many rows of a plain GROUP BY average the rounding away, as columns and grouping sets
did.** Round 20 capped a query at 20 aggregate columns and round 21 at 32 cells a person
(aggregate columns times grouping sets or UNION branches). Both count the cells a person is
in by the *shape of the outer query*, as if a plain GROUP BY put each person in one cell.
It does not when the rows are events: a person is in one cell per row of theirs. A CTE
numbers each person's GP events (``ROW_NUMBER() OVER (PARTITION BY person_id ...)``, a
window within a person, allowed), keeps the people with at least four, and joins the
numbered events to themselves four times on ``person_id``: every such person then has
exactly 256 rows, tagged 0 to 255, one row per tag. One count column grouped by ``(tag,
flag)``, where the flag is ``(cut OR g)`` on even tags and ``(cut AND NOT g)`` on odd ones,
for a cut that changes with the pair of tags (registration dates), releases 512 cells, each
resting on hundreds of people, each rounded on its own: 256 pairs of cells (the TRUE and
the FALSE cells of 128 pairs of tags) that differ by exactly the small group G, from one
query of under 1,000 characters. The row bound sees one row per person per cell (it is), so the
base stays 5, and the caps see one column and one grouping set. As in rounds 20 and 21, the
share of pairs whose difference is 5 higher pins the size of G (raw 1, 2, 3 and 4 people:
guessed 1, 2, 3 and 4, one query each); under ``cell_key`` the mean of the 256 perturbed
differences is G's size (raw 1 and 2: means 0.84 and 1.96). Nothing bounds the number of
such cells but the row cap (4,096 tags answer in 3 s), so a fix must bound the cells one
person's *rows* can fall in, not the shape of the outer query. ``dp`` does already
(``max_cells_per_person``: 5 cells a person are kept); threshold and ``cell_key`` do not.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

import statistics

import httpx
from attack import (
    MIN_PEOPLE,
    PLANNER,
    RESEARCHER,
    cohort,
    column_base,
    norfolk_residents,
    query_as,
    refused,
    rounding_guess,
)

#: events a person needs, and self-joins of the numbered events: EVENTS ** DEPTH tags each
EVENTS, DEPTH = 4, 4
TAGS = EVENTS ** DEPTH


def _tagged_rows_query(yob: int, practice: str) -> str:
    """One count column grouped by (tag, flag): every person with at least EVENTS GP events
    has one row per tag; the flag of an even tag is (cut OR g), of the odd tag after it
    (cut AND NOT g), so the two cells of a pair differ by exactly the people of G (born in
    ``yob`` at ``practice``), TRUE cells and FALSE cells alike."""
    group = f"(p.year_of_birth = {yob} AND p.practice_code = '{practice}')"
    aliases = "abcdefgh"[:DEPTH]
    tag = " + ".join(f"({x}.rn - 1) * {EVENTS ** (DEPTH - 1 - i)}"
                     for i, x in enumerate(aliases))
    joins = " ".join(f"JOIN e {x} ON {x}.person_id = a.person_id" for x in aliases[1:])
    first = " AND ".join(f"{x}.rn <= {EVENTS}" for x in aliases)
    cut = ("(DATE_DIFF('day', DATE '1990-01-01', p.registration_date) "
           "> 12800 - 70 * ((t.tag - t.tag % 2) / 2))")
    return ("WITH e AS (SELECT x.person_id, ROW_NUMBER() OVER (PARTITION BY x.person_id "
            "ORDER BY x.event_date, x.snomed_code, x.value) AS rn, COUNT(*) OVER (PARTITION BY "
            "x.person_id) AS ne FROM gp_events x), "
            f"t AS (SELECT a.person_id, {tag} AS tag FROM e a {joins} "
            f"WHERE a.ne >= {EVENTS} AND {first}) "
            f"SELECT t.tag, CASE WHEN t.tag % 2 = 0 THEN ({cut} OR {group}) "
            f"ELSE ({cut} AND NOT {group}) END AS f, COUNT(*) AS n "
            "FROM t JOIN patients p ON p.person_id = t.person_id GROUP BY t.tag, f")


def _groups_among_the_tagged(raw, people: str, below: int) -> dict[int, tuple[int, str]]:
    """One (year of birth, practice) group of each size under ``below``, among the people
    with at least EVENTS GP events (those the query tags)."""
    found = raw.execute(f"""
        SELECT year_of_birth, practice_code, COUNT(*) AS n FROM ({people}) r
        WHERE (SELECT COUNT(*) FROM gp_events e WHERE e.person_id = r.person_id) >= {EVENTS}
        GROUP BY ALL ORDER BY 1, 2""").fetchall()
    out: dict[int, tuple[int, str]] = {}
    for yob, practice, n in found:
        if n < below:
            out.setdefault(n, (yob, practice))
    assert len(out) >= 2, "the shape this test needs (checked on raw data)"
    return out


def _differences(resp: httpx.Response) -> list[int] | None:
    """The released differences of each pair of cells, or None if the query was refused."""
    assert resp.status_code < 500, resp.text
    if refused(resp):
        return None
    body = resp.json()
    if body["status"] != "released":
        return None
    cell = {(row[0], row[1]): row[2] for row in body["rows"]}
    diffs = []
    for tag in range(0, TAGS, 2):
        # TRUE: (cut or G) - (cut and not G); FALSE: not (cut and not G) - not (cut or G)
        for bigger, smaller in (((tag, True), (tag + 1, True)), ((tag + 1, False), (tag, False))):
            if cell.get(bigger) is not None and cell.get(smaller) is not None:
                diffs.append(cell[bigger] - cell[smaller])
    return diffs


def test_many_rounded_rows_of_a_plain_group_by_pin_a_small_group(server, raw):
    """Threshold regime: one count column, one grouping set, but 256 rows per person (their
    first four GP events joined to themselves four times, numbered): 512 cells, 256 pairs
    differing by the same small group; the share of pairs 5 apart more than the least pins
    the group's size exactly, in one query each."""
    pinned = {}
    for size, (yob, practice) in _groups_among_the_tagged(
            raw, norfolk_residents(), MIN_PEOPLE).items():
        resp = query_as(server, PLANNER, _tagged_rows_query(yob, practice))
        diffs = _differences(resp)
        if not diffs:
            return
        pinned[size] = rounding_guess(diffs, column_base(resp, "n"))
    assert any(guess != size for size, guess in pinned.items()), (
        f"one query each pinned small groups of fewer than {MIN_PEOPLE} people exactly "
        f"(true: guessed): {pinned}")


def test_many_perturbed_rows_of_a_plain_group_by_pin_a_small_group(server, raw):
    """cell_key (min 10 people): the same query over the consented cohort; the mean of the
    256 perturbed differences was the group's size every time. Now the table is widened by
    the square root of the draws over 8 (256 draws: 10 times), so the mean of the 256
    differences has a spread of about 0.9 and hits the size well under every time. Over
    every tagged group of fewer than 10 (the cell-key secret is new in each test run, so
    this is a rate, not a fixed answer), at most 90% may be exact."""
    found = raw.execute(f"""
        SELECT year_of_birth, practice_code, COUNT(*) AS n FROM ({cohort()}) r
        WHERE (SELECT COUNT(*) FROM gp_events e WHERE e.person_id = r.person_id) >= {EVENTS}
        GROUP BY ALL HAVING n < 10 ORDER BY 1, 2 LIMIT 12""").fetchall()
    assert len(found) >= 6, "the shape this test needs (checked on raw data)"
    exact = 0
    for yob, practice, size in found:
        resp = query_as(server, RESEARCHER, _tagged_rows_query(yob, practice))
        diffs = _differences(resp)
        if not diffs:
            return
        assert resp.json()["disclosure"]["perturbation"]["column_max"]["n"] >= 2 * 10
        exact += round(statistics.mean(diffs)) == size
    assert exact < 0.9 * len(found), (
        f"one query each pinned {exact} of {len(found)} small groups exactly under cell_key")


def test_the_cells_of_a_person_are_counted_only_where_they_could_be_many(server):
    """The count costs an engine pass where the single pass does not carry it. A result of
    at most 8 cells cannot hold one person more than 8 times: no pass; a larger one over
    several rows per person is counted, and the count is on the audit entry."""
    def union(key: str) -> str:
        return (f"SELECT {key} AS k, COUNT(DISTINCT h.person_id) AS people FROM "
                f"hospital_admissions h GROUP BY 1 UNION ALL SELECT 'all', "
                "COUNT(DISTINCT h.person_id) FROM hospital_admissions h")

    small = query_as(server, PLANNER, union("h.admission_method"))
    assert small.status_code == 200, small.text
    entry = server.entry_for(small)
    assert "row_bound_sql" not in entry and entry["cells_per_person"] <= 8
    large = query_as(server, PLANNER, union("CAST(h.admission_date AS VARCHAR)"))
    assert large.status_code == 200, large.text
    entry = server.entry_for(large)
    assert "row_bound_sql" in entry and entry["cells_per_person"] > 1


def test_the_single_pass_counts_cells_beside_the_callers_own_ctes(server):
    sql = ("WITH e AS (SELECT g.person_id, g.snomed_code FROM gp_events g) "
           "SELECT e.snomed_code, COUNT(*) AS events FROM e GROUP BY 1")
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code == 200, resp.text
    entry = server.entry_for(resp)
    assert "WITH __pp AS (WITH" in entry["executed_sql"] and entry["cells_per_person"] > 1
