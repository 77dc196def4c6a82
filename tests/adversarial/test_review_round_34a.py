"""The breaks of review round 34a, kept as tests (docs/security.md lists every round).

This round looked at round 33's fixes: zeros suppressed like small counts, the caller's LIMIT
taken after withholding (``_first``), contributions matched on the engine's key text, the one
rows factor a query, and the hidden person column of the link check. Every test below fails on
the code as reviewed. A fix may refuse such a query (a 4xx) or answer it safely: either passes.
The target is always "the one resident born in <yob> living in <lsoa>", found in the raw data
(``_alone_with_events`` of round 33a) and named in the SQL by those two quasi-identifiers only.

**1. A LIMIT on a UNION branch still runs in the engine, before small groups are withheld
(threshold and cell_key): round 33's first break, unchanged, one part of her registration
date a query.** Round 33 moved the caller's LIMIT out of the engine: ``user_limit`` (in
``gateway/sql/rewrite.py``) reads the LIMIT of the root of the tree and ``_first``
(``gateway/pipeline.py``) takes it after ``_withhold_small_groups``. But the analysis allows a
LIMIT on any outer select (``check_nodes``: ``node.parent is tree or is_in(node.parent,
outers)``), and a parenthesised UNION branch is one of the outer selects:

    (SELECT CASE WHEN <her> AND (a.rn - 1) * <her events> + b.rn <= <value>
                 THEN 'A' || ... ELSE 'B' || <event date % 40> END AS k, COUNT(*) AS n
     FROM patients p JOIN ev a ON ... JOIN ev b ON ... GROUP BY k ORDER BY k LIMIT 40)
    UNION ALL (SELECT 'total' AS k, COUNT(*) AS n FROM patients p)

The branch's ``ORDER BY k LIMIT 40`` stays in the executed SQL (neither ``_rewrite`` nor
``user_limit`` looks at a branch), so the engine returns her ``<value>`` one-person groups
'A...' and the first ``40 - <value>`` of the big 'B...' groups; the 'A' rows are withheld and
nothing takes their places. ``40`` minus the released 'B' rows is the value: with her
registration day, month and year - 1994, three queries give 2013-03-17 (threshold, the Norfolk
planner) and the cohort member's date (cell_key). Root cause: the LIMIT of a UNION branch is
left to the engine (``rewrite._rewrite``, ``user_limit`` reads only the root's).

**2. ORDER BY a parenthesised position sorts by a count (threshold and cell_key): her
registration date, 16 bits, from one query.** ``ORDER BY 2`` naming a count is refused
(``_names_aggregate`` in ``gateway/sql/analysis.py`` reads an integer literal as a position),
but ``ORDER BY (2)`` is a ``Paren`` around the literal: not a literal, no column inside, so it
passes, and the engine reads it as the position 2, the exact count. The released rows come in
the order of the exact counts, ties broken by the next term. Two UNION branches count the same
GP events by a bucket j (her j-th event for her, the event date modulo 16 for everyone else);
the first, keyed ``'<j>-0'``, adds her j-th event if bit j of her registration date (days since
1970) is set; the second, keyed ``'<j>-1'``, leaves her out:

    SELECT CAST(<bucket> AS VARCHAR) || '-0' AS k, COUNT(*) AS n FROM ...
      WHERE NOT <her> OR <bit (rn - 1) of her date> GROUP BY 1
    UNION ALL
    SELECT CAST(<bucket> AS VARCHAR) || '-1' AS k, COUNT(*) AS n FROM ... WHERE NOT <her> GROUP BY 1
    ORDER BY (2), 1

Each pair of cells rests on hundreds of people and is released (both rounded alike), but
where her bit is set '<j>-0' is one larger and sorts after '<j>-1'; where not, they tie and the
key puts '<j>-0' first. The order of the 32 released rows spells 15781 days, 2013-03-17
(threshold), and the cohort member's date under cell_key (the order is of exact counts, not of
the perturbed ones). Root cause: ``_names_aggregate`` recognises a position only as a bare
``exp.Literal``; the engine also reads ``(2)`` as one (round 31 found the same of ``(4)`` in
GROUP BY).

**3. UNION (distinct) releases duplicate rows (threshold and cell_key): a wrong answer.**
``SELECT p.sex AS k, COUNT(*) AS n ... GROUP BY p.sex UNION SELECT p.sex, COUNT(*) ...`` is
two rows in DuckDB (the branches' rows are equal and UNION removes duplicates), and four
in the gateway's answer: ``_rewrite`` appends the hidden ``__branch`` number (and the people
counts) to every branch, so the engine's UNION compares rows that always differ. Root cause:
the hidden columns of ``_rewrite`` take part in the UNION's duplicate removal.
"""

from __future__ import annotations

from datetime import date

import pytest
from attack import (
    PLANNER,
    RESEARCHER,
    cohort,
    norfolk_residents,
    query_as,
    refused,
)
from test_review_round_33a import (
    _alone_with_events,
    _days,
    _her,
    assert_not_her_date_parts,
    smallest_bucket,
)

BITS = 16
BUCKETS = 40
#: the cell_key policy's threshold (frailty-cohort-consent)
CK_MIN_PEOPLE = 10

CASES = {
    "threshold": (PLANNER, norfolk_residents, 8),
    "cell_key": (RESEARCHER, cohort, CK_MIN_PEOPLE),
}

#: each person's GP events numbered in date order, as a derived table (a CTE cannot stand
#: before a parenthesised UNION branch)
EV = """(SELECT e.person_id, e.event_date, ROW_NUMBER() OVER (
    PARTITION BY e.person_id ORDER BY e.event_date, e.snomed_code) AS rn FROM gp_events e)"""


# -- 1. a LIMIT on a UNION branch ------------------------------------------------------------

PARTS = {
    "day": "DAY(p.registration_date)",
    "month": "MONTH(p.registration_date)",
    "year": "YEAR(p.registration_date) - 1994",
}


def _withheld_through_branch_limit(server, who, yob: int, lsoa: str, events: int,
                                   value: str) -> int:
    sql = f"""
    (SELECT CASE WHEN {_her(yob, lsoa)} AND (a.rn - 1) * {events} + b.rn <= {value}
                 THEN 'A' || CAST(10000 + (a.rn - 1) * {events} + b.rn AS VARCHAR)
                 ELSE 'B' || CAST(1000 + DATEDIFF('day', DATE '1970-01-01', a.event_date)
                                  % {BUCKETS} AS VARCHAR) END AS k,
            COUNT(*) AS n
     FROM patients p JOIN {EV} a ON a.person_id = p.person_id
     JOIN {EV} b ON b.person_id = p.person_id
     GROUP BY k ORDER BY k LIMIT {BUCKETS})
    UNION ALL (SELECT 'total' AS k, COUNT(*) AS n FROM patients p)"""
    resp = query_as(server, who, sql)
    if refused(resp):
        return -1
    body = resp.json()
    assert body["status"] == "released", body
    big = [k for k, _ in body["rows"] if k.startswith("B")]
    assert all(k.startswith("B") or k == "total" for k, _ in body["rows"])
    return BUCKETS - len(big)


@pytest.mark.parametrize("regime", sorted(CASES))
def test_a_limit_on_a_union_branch_does_not_count_the_rows_withheld(server, raw, regime):
    who, people, k = CASES[regime]
    yob, lsoa, events, registered, _ = _alone_with_events(raw, people())
    assert events * events >= BUCKETS and registered.year - 1994 < BUCKETS
    assert smallest_bucket(raw, people()) >= k, "the shape this test needs (raw data)"
    read = {part: _withheld_through_branch_limit(server, who, yob, lsoa, events, value)
            for part, value in PARTS.items()}
    if -1 in read.values():
        return
    assert_not_her_date_parts(read, registered, f"{regime}: {BUCKETS} minus the 'B' rows "
                              f"released under a branch's LIMIT {BUCKETS}, for the one person "
                              f"born in {yob} living in {lsoa}")


# -- 2. ORDER BY (2) ----------------------------------------------------------------------------

def _order_by_parenthesised_position(yob: int, lsoa: str) -> str:
    her = _her(yob, lsoa)
    power = "CASE a.rn " + " ".join(f"WHEN {j + 1} THEN {2 ** j}" for j in range(BITS)) + " END"
    bucket = (f"CASE WHEN {her} THEN a.rn - 1 "
              f"ELSE DATEDIFF('day', DATE '1970-01-01', a.event_date) % {BITS} END")
    return f"""
    SELECT CAST({bucket} AS VARCHAR) || '-0' AS k, COUNT(*) AS n
      FROM patients p JOIN {EV} a ON a.person_id = p.person_id
      WHERE a.rn <= {BITS} AND (NOT ({her}) OR ({_days()} // ({power})) % 2 = 1)
      GROUP BY 1
    UNION ALL
    SELECT CAST({bucket} AS VARCHAR) || '-1' AS k, COUNT(*) AS n
      FROM patients p JOIN {EV} a ON a.person_id = p.person_id
      WHERE a.rn <= {BITS} AND NOT ({her})
      GROUP BY 1
    ORDER BY (2), 1"""


@pytest.mark.parametrize("regime", sorted(CASES))
def test_order_by_a_parenthesised_position_does_not_rank_exact_counts(server, raw, regime):
    who, people, k = CASES[regime]
    yob, lsoa, events, registered, _ = _alone_with_events(raw, people())
    truth = (registered - date(1970, 1, 1)).days
    assert truth < 2 ** BITS and events >= BITS
    smallest = raw.execute(f"""
        SELECT MIN(n) FROM (
            SELECT DATEDIFF('day', DATE '1970-01-01', e.event_date) % {BITS} AS b,
                   COUNT(DISTINCT r.person_id) AS n
            FROM ({people()}) r JOIN (SELECT *, ROW_NUMBER() OVER (PARTITION BY person_id
                  ORDER BY event_date, snomed_code) AS rn FROM gp_events) e
                 ON e.person_id = r.person_id WHERE e.rn <= {BITS} GROUP BY b)""").fetchone()[0]
    assert smallest >= k, "the shape this test needs (checked on raw data)"
    resp = query_as(server, who, _order_by_parenthesised_position(yob, lsoa))
    if refused(resp):
        return
    body = resp.json()
    assert body["status"] == "released", body
    position = {key: r for r, (key, _) in enumerate(body["rows"])}
    if not all(f"{j}-{s}" in position for j in range(BITS) for s in (0, 1)):
        return  # not every pair released: nothing to read
    read = sum(2 ** j for j in range(BITS) if position[f"{j}-0"] > position[f"{j}-1"])
    assert read != truth, (
        f"{regime}: ORDER BY (2) released the pairs of counts in the order of their exact "
        f"values: {read} = days from 1970 to {registered}, the registration date of the one "
        f"person born in {yob} living in {lsoa}, from one query")


# -- 3. UNION (distinct) --------------------------------------------------------------------

@pytest.mark.parametrize("regime", sorted(CASES))
def test_union_removes_duplicate_rows_as_the_engine_does(server, raw, regime):
    who, people, _ = CASES[regime]
    branch = "SELECT p.sex AS k, COUNT(*) AS n FROM patients p GROUP BY p.sex"
    resp = query_as(server, who, f"{branch} UNION {branch}")
    if refused(resp):
        return
    body = resp.json()
    assert body["status"] == "released", body
    truth = raw.execute(f"WITH patients AS ({people()}) {branch} UNION {branch}").fetchall()
    assert len(truth) == 2
    assert len(body["rows"]) == len(truth), (
        f"{regime}: UNION of two identical counts by sex is {len(truth)} rows in DuckDB, and "
        f"{len(body['rows'])} in the answer: {body['rows']}")
