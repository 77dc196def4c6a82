"""The breaks of review round 35a, kept as tests (docs/security.md lists every round).

This round looked, after round 34, at what an answer does around its released cells, and
found all three ways through in secondary suppression (``Pipeline._secondary`` in
``gateway/pipeline.py``, ``protect`` in ``gateway/disclosure/secondary.py``). It runs before
``_withhold_small_groups`` and on the exact values, so which cells it adds (their positions
and the rule text, in ``disclosure.suppressed``, shown whether the output is released or
held) can be made to depend on one person. Every test below fails on the code as reviewed.
A fix may refuse such a query (a 4xx) or answer it safely: either passes. The target is
always "the one resident born in <yob> living in <lsoa>" among the Norfolk planner's people
(threshold regime; ``cell_key`` and ``dp`` run no secondary suppression), found in the raw
data (``_alone_with_events`` of round 33a) and named in the SQL by those two
quasi-identifiers only. Her registration date is 15781 days from 1970 (2013-03-17).

**1. Whether a ROLLUP detail row exists decides its sibling's suppression: 16 bits of her
registration date, one COUNT(*) column, one query.** Round 33 made a withheld row's cells
alike whatever they hold (zeros are suppressed as small counts are), so that the holes
secondary suppression adds around them could no longer follow a bit per *column*. But a
withheld row can be made to exist or not, and under ROLLUP the relations are built from the
rows present, withheld ones included (``_row_shapes``, ``relations``):

    WITH ev AS (... ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY event_date, ...) rn)
    SELECT CASE WHEN <her> THEN a.rn - 1 ELSE <event day> % 16 END AS j,
           CASE WHEN <her> AND a.rn <= 16 AND <bit (rn - 1) of her date> THEN 'H'
                ELSE 'N' END AS x,
           COUNT(*) AS n
    FROM patients p JOIN ev a ON a.person_id = p.person_id WHERE a.rn <= 16 OR NOT <her>
    GROUP BY ROLLUP (j, x) ORDER BY j, x

Each (j, 'N') cell and each (j, NULL) subtotal rests on hundreds of people or more. A (j, 'H') row,
her j-th event alone, exists only where bit j of her date is set; it is suppressed (one
person) and withheld. Its relation ``(j, NULL) = (j, 'N') + (j, 'H')`` then has one hidden
cell, and ``protect`` suppresses (j, 'N') "to protect a suppressed cell from recovery through
the margins"; where the bit is clear the relation has no hidden cell and (j, 'N') is
released. The released rows j with a null 'N' count spell 15781. Root cause: secondary
suppression protects the cells of rows that are then withheld, whose very existence is what
the withholding hides (``Pipeline._control`` runs ``_secondary`` on ``raw.rows`` before
``_withhold_small_groups``; ``relations`` counts every row).

**2. The complement ``protect`` picks is the smaller exact count: 16 bits of her registration
date from the order of two rounded-alike counts.** Where a relation has one hidden cell,
``protect`` suppresses its "cheapest" released cell, ``min(open_, key=lambda c: (c == parent,
abs(values[c]), c))``, on ``values = raw.rows[r][c]``: the exact counts, not the rounded ones.
So the choice says which of two cells is smaller, however alike they are released. Two
detail cells holding the same people, less her in one of them:

    WITH ev AS (... rn, COUNT(*) OVER (PARTITION BY person_id) AS m FROM gp_events e)
    SELECT CASE WHEN a.rn = 1 THEN 'A' WHEN a.rn = 2 THEN 'B' ELSE 'S' END AS x,
           COUNT(*) FILTER (WHERE NOT (<her> AND a.rn = 2 - <bit j of her date>)) AS b<j>, ...
    FROM patients p JOIN ev a ON a.person_id = p.person_id
    WHERE (a.rn <= 2 AND a.m >= 2) OR (<her> AND a.rn = 3)
    GROUP BY ROLLUP (x) ORDER BY x

'A' and 'B' hold the first and second GP event of every person with two or more (thousands,
rounded to 4000 alike); 'S' is her third event alone, in every column a suppressed cell, and
withheld. In column b<j>, 'A' is one less than 'B' where bit j is set and one more where not,
and the one suppressed beside 'S' is the smaller: 'A' suppressed spells the bit. Sixteen
columns, 15781, from one query (the relation is the same in every column; only the exact
values differ). Root cause: ``protect`` (``cheapest``, and the last pick of its search) and
``_quick`` order candidates by their exact values.

**3. Where the relations are unknown, the level kept is the one whose first row, withheld
rows included, sorts first: four bits of her date from one query.** In a UNION ALL a column
with a suppressed cell releases one branch only, the one with the most cells left, ties going
to ``-level.index(lv)``: the branch of the earliest row of ``raw.rows`` (``_one_level_only``),
before withholding. Eight branches, each a count by a key that is 'M<i>' for everyone and,
for her, a letter sorted before every 'M': in pair t, 'A' or 'C' by bit t of her date in the
first branch, 'B' in the second. In column n<t> only pair t's branches count anyone (the
others FILTER on an impossible year, so their cells are suppressed zeros), so the pair ties
on cells left, and her withheld row decides which branch is released: the other one's 'M'
cell is suppressed "secondary: ... one is released". The output is held (most cells are
holes), and the response still lists them: the suppressed 'M' rows of n0..n3 spell bits 0 to
3 of 15781 (5). Root cause: ``_one_level_only`` breaks ties by the position of rows that are
withheld, and ORDER BY puts those where her data says.

What held: the one rows factor and draws band a query, ``_first`` (a LIMIT taken after
withholding, and its 413), the dp release (cells told apart by ``key_text``, which quotes list
and struct members; ORDER BY and LIMIT after the noise), the result store (a held output is
read back by its requester without rows, as it was answered), the explain endpoint (runs
nothing), grouping-set sums (margins' contributions are unknown, so they are suppressed), and
``key_text`` collisions (DuckDB groups -0.0 with 0.0, every NaN together, and equal
intervals, each one text)."""

from __future__ import annotations

from datetime import date

from attack import PLANNER, norfolk_residents, query_as, refused
from test_review_round_33a import EVENTS, _alone_with_events, _days, _her

BITS = 16
#: the joint-planning policy's threshold
K = 8


def _truth(registered: date) -> int:
    return (registered - date(1970, 1, 1)).days


def _smallest_bucket(raw, modulo: int) -> int:
    """The fewest Norfolk residents in a bucket of GP events by event date modulo ``modulo``
    (each big cell of test 1 rests on at least k people: only hers are small)."""
    return raw.execute(f"""
        SELECT MIN(n) FROM (SELECT DATEDIFF('day', DATE '1970-01-01', e.event_date) % {modulo}
                                   AS b, COUNT(DISTINCT r.person_id) AS n
                            FROM ({norfolk_residents()}) r JOIN gp_events e
                                 ON e.person_id = r.person_id GROUP BY b)""").fetchone()[0]


# -- 1. a withheld ROLLUP row's existence ---------------------------------------------------

def _rollup_existence(yob: int, lsoa: str) -> str:
    her = _her(yob, lsoa)
    power = "CASE a.rn " + " ".join(f"WHEN {j + 1} THEN {2 ** j}" for j in range(BITS)) + \
        " ELSE 1 END"
    return f"""WITH {EVENTS}
    SELECT CASE WHEN {her} THEN a.rn - 1
                ELSE DATEDIFF('day', DATE '1970-01-01', a.event_date) % {BITS} END AS j,
           CASE WHEN {her} AND a.rn <= {BITS} AND ({_days()} // ({power})) % 2 = 1
                THEN 'H' ELSE 'N' END AS x,
           COUNT(*) AS n
    FROM patients p JOIN ev a ON a.person_id = p.person_id
    WHERE a.rn <= {BITS} OR NOT ({her})
    GROUP BY ROLLUP (j, x) ORDER BY j, x"""


def test_a_withheld_rollup_row_does_not_decide_its_siblings_suppression(server, raw):
    yob, lsoa, events, registered, _ = _alone_with_events(raw, norfolk_residents())
    truth = _truth(registered)
    assert truth < 2 ** BITS and events >= BITS
    assert _smallest_bucket(raw, BITS) >= K, "the shape this test needs (raw data)"
    resp = query_as(server, PLANNER, _rollup_existence(yob, lsoa))
    if refused(resp):
        return
    body = resp.json()
    assert body["status"] == "released", body
    detail = {r: row[0] for r, row in enumerate(body["rows"])
              if row[0] is not None and row[1] == "N"}
    holes = {s["row"] for s in body["disclosure"]["suppressed"] if s["column"] == "n"}
    buckets = sorted(detail[r] for r in holes if r in detail)
    read = sum(2 ** j for j in buckets)
    assert read != truth, (
        f"ROLLUP (j, x): the 'N' cells of buckets {buckets} (hundreds of people each) are suppressed as secondary: {read} = days from "
        f"1970 to {registered}, the registration date of the one resident born in {yob} "
        f"living in {lsoa}; each hole protects a one-person row of hers that exists only where "
        "a bit of her date is set, and is then withheld")


# -- 2. the complement is the smaller exact count -------------------------------------------

EVENTS_COUNTED = """ev AS (SELECT e.person_id, e.event_date, ROW_NUMBER() OVER (
    PARTITION BY e.person_id ORDER BY e.event_date, e.snomed_code) AS rn,
    COUNT(*) OVER (PARTITION BY e.person_id) AS m FROM gp_events e)"""


def _smaller_exact_count(yob: int, lsoa: str) -> str:
    her = _her(yob, lsoa)
    cols = ", ".join(
        f"COUNT(*) FILTER (WHERE NOT ({her} AND a.rn = 2 - ({_days()} // {2 ** j}) % 2)) "
        f"AS b{j}" for j in range(BITS))
    return f"""WITH {EVENTS_COUNTED}
    SELECT CASE WHEN a.rn = 1 THEN 'A' WHEN a.rn = 2 THEN 'B' ELSE 'S' END AS x, {cols}
    FROM patients p JOIN ev a ON a.person_id = p.person_id
    WHERE (a.rn <= 2 AND a.m >= 2) OR ({her} AND a.rn = 3)
    GROUP BY ROLLUP (x) ORDER BY x"""


def test_secondary_suppression_does_not_rank_exact_counts(server, raw):
    yob, lsoa, events, registered, _ = _alone_with_events(raw, norfolk_residents())
    truth = _truth(registered)
    assert truth < 2 ** BITS and events >= 3
    resp = query_as(server, PLANNER, _smaller_exact_count(yob, lsoa))
    if refused(resp):
        return
    body = resp.json()
    rows = body["rows"]
    if body["status"] != "released" or [row[0] for row in rows] != ["A", "B", None]:
        return  # not the table read below
    secondary = {(s["row"], s["column"]) for s in body["disclosure"]["suppressed"]
                 if s["rule"].startswith("secondary")}
    read = sum(2 ** j for j in range(BITS) if (0, f"b{j}") in secondary)
    assert read != truth, (
        f"ROLLUP (x): in each column the one of 'A' and 'B' (thousands each, released alike as "
        f"{rows[0][1] or rows[1][1]}) suppressed beside a small cell is the smaller exact "
        f"count: 'A' in {sorted(c for r, c in secondary if r == 0)}, {read} = days from 1970 "
        f"to {registered}, the registration date of the one resident born in {yob} living in "
        f"{lsoa}, from one query")


# -- 3. ties between levels broken by withheld rows ---------------------------------------------

PAIRS = 4


def _level_by_withheld_row(yob: int, lsoa: str) -> str:
    her = _her(yob, lsoa)
    branches = []
    for i in range(2 * PAIRS):
        t = i // 2
        hers = (f"CASE WHEN ({_days()} // {2 ** t}) % 2 = 1 THEN 'A' ELSE 'C' END"
                if i % 2 == 0 else "'B'")
        cols = ", ".join(f"COUNT(*) AS n{c}" if c == t else
                         f"COUNT(*) FILTER (WHERE p.year_of_birth < 0) AS n{c}"
                         for c in range(PAIRS))
        branches.append(f"SELECT CASE WHEN {her} THEN {hers} ELSE 'M{i}' END AS x, {cols} "
                        "FROM patients p GROUP BY 1")
    return " UNION ALL ".join(branches) + " ORDER BY x"


def test_the_level_released_does_not_follow_a_withheld_row(server, raw):
    yob, lsoa, _, registered, _ = _alone_with_events(raw, norfolk_residents())
    truth = _truth(registered) % 2 ** PAIRS
    resp = query_as(server, PLANNER, _level_by_withheld_row(yob, lsoa))
    if refused(resp):
        return
    body = resp.json()
    # her eight rows are withheld; the rows left are 'M0' to 'M7', in that order (ORDER BY x)
    secondary = {(s["row"], s["column"]) for s in body["disclosure"]["suppressed"]
                 if s["rule"].startswith("secondary")}
    kept_first = [(2 * t + 1, f"n{t}") in secondary for t in range(PAIRS)]
    kept_second = [(2 * t, f"n{t}") in secondary for t in range(PAIRS)]
    if not all(a != b for a, b in zip(kept_first, kept_second, strict=True)):
        return  # not one branch of each pair released: nothing to read
    read = sum(2 ** t for t in range(PAIRS) if kept_first[t])
    assert read != truth, (
        f"status {body['status']}: in each column n<t> the branch released of the pair that "
        f"ties on cells left is the one whose withheld row (hers) sorts first: {read} = bits 0 "
        f"to {PAIRS - 1} of the days from 1970 to {registered}, the registration date of the "
        f"one resident born in {yob} living in {lsoa}, from one query")
