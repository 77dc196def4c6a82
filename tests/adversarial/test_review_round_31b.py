"""The breaks of review round 31b, kept as tests (docs/security.md lists every round).

This round looked for wrong answers: accepted queries whose released values differ from what
raw DuckDB gives on the same data with the caller's filters applied by hand, beyond the
documented rounding, perturbation and noise. Every test below fails on the code as reviewed.
None of them is a disclosure; each is a released table that is not the table the caller asked
for (or a fair query refused after its budget was spent).

**1. dp: ORDER BY is applied with Python's ordering, not the engine's.** ``dp.release``
(``gateway/disclosure/dp.py``) sorts the noisy rows with ``key=(row[p] is None, row[p])`` and
``reverse=desc``, and ``_order`` (``gateway/sql/dp_rewrite.py``) keeps only (column, desc)
from each ORDER BY term:

- ``ORDER BY k DESC``: reversing the key list puts NULL *first*; DuckDB puts NULLs last in
  both directions (its default is NULLS LAST). With ``LIMIT 1``, ``SELECT CASE WHEN
  p.year_of_birth < 1960 THEN 'old' END AS band, COUNT(*) ... GROUP BY 1 ORDER BY 1 DESC
  LIMIT 1`` released the NULL band (15,650 people) where DuckDB returns 'old' (3,379): a
  different cell.
- ``ORDER BY k NULLS FIRST`` (or ``DESC NULLS LAST``): the explicit NULL placement is dropped
  (``nulls_first`` is never read), so the NULL row comes last / first against what was asked.

**2. dp: a NULL group of a public-code-list key is silently dropped.** When every key is a bare
column with a catalogue code list, ``dp.release`` releases ``itertools.product`` of the code
lists (``_public_domains``) and nothing else. A key from a LEFT JOINed source is NULL for
everyone it pads: ``SELECT d.place_of_death, COUNT(*) AS n FROM patients p LEFT JOIN deaths d
ON d.person_id = p.person_id GROUP BY d.place_of_death`` is, in raw DuckDB, five places of
death (1,529 people) and a NULL row of 17,503 living people; the gateway releases the five
rows only, with nothing in ``suppressed`` and no note: the largest group of the table is gone
and the released counts no longer add up to the people asked about. NULL is as public a value
of such a key as the code list itself (it follows from the query's LEFT JOIN, not from the
data), so the cell can be released with the others (or the query refused); dropping it
silently is a wrong answer.

**3. A constant key that is not a bare literal is read by the engine as a column position.**
Round 25 left literal keys out of the regrouping's GROUP BY (``GROUP BY 2`` is a position),
testing ``isinstance(key, exp.Literal)``. But ``-1`` parses as ``Neg(Literal)`` and ``(4)`` as
``Paren(Literal)``, and DuckDB reads both as positions (``GROUP BY -1``: "GROUP BY term out of
range"; ``GROUP BY (4)``: the fourth column of the regrouped select, an aggregate). So ``SELECT
-1 AS k, p.sex, COUNT(*) AS n, SUM(h.length_of_stay) AS s ... GROUP BY ALL``, which raw DuckDB
answers, is a ``400 query_failed (binder error)`` under threshold (``single_pass``), under
cell_key (every count query takes the single pass there) and under dp (``rewrite_dp``), where
it fails *after* the spend: the project is charged epsilon for a query the gateway broke
itself. (``_contributions`` and ``row_bound`` group by the same expressions and would fail the
same way once the single pass is mended.)

What held (no test): COUNT(x) with NULLs, COUNT(DISTINCT person) [FILTER], SUM/AVG over LEFT
JOINed NULL keys, sums of indicators, constants and GROUP BY ALL, positional GROUP BY/ORDER BY,
ROLLUP/CUBE/GROUPING SETS totals, UNION ALL totals, dates and CASE keys, lsoa_lookup joins,
ORDER BY an alias that shadows a column (the resolver and DuckDB agree), NULL placement in
the threshold and cell_key ORDER BY (the single pass keeps it):
every threshold answer was the raw DuckDB value rounded to the stated base (or suppressed or
withheld as documented), cell_key counts within the stated D and sums within the stated share.
"""

from __future__ import annotations

import re

import pytest
from attack import DP_RESEARCHER, PLANNER, RESEARCHER, cohort, norfolk_residents, not_opted_out

BAND = "CASE WHEN p.year_of_birth < 1960 THEN 'old' END"


def _dp(server, sql: str, epsilon: float):
    sub, project, purpose = DP_RESEARCHER
    return server.query(sub, sql, project, purpose, epsilon=epsilon)


def _raw_as(raw, people: str, sql: str) -> list[tuple]:
    """The caller's query on raw DuckDB, every person-level table seen through the caller's
    people (by hand)."""
    tables = "patients|gp_events|hospital_admissions|social_care|deaths"
    filtered = re.sub(
        rf"\b(FROM|JOIN)\s+({tables})\b",
        lambda m: (f"{m[1]} (SELECT * FROM {m[2]} WHERE person_id IN "
                   f"(SELECT person_id FROM ({people})))"), sql)
    assert filtered != sql
    return raw.execute(filtered).fetchall()


# --- 1. dp: ORDER BY ------------------------------------------------------------------------

ORDER_CASES = {
    # DuckDB: NULLS LAST by default, in both directions
    "desc_puts_null_last": (f"SELECT {BAND} AS band, COUNT(*) AS n FROM patients p "
                            "GROUP BY 1 ORDER BY 1 DESC LIMIT 1"),
    "nulls_first_is_kept": (f"SELECT {BAND} AS band, COUNT(*) AS n FROM patients p "
                            "GROUP BY 1 ORDER BY 1 NULLS FIRST LIMIT 1"),
    "desc_nulls_last_is_kept": (f"SELECT {BAND} AS band, COUNT(*) AS n FROM patients p "
                                "GROUP BY 1 ORDER BY 1 DESC NULLS LAST LIMIT 1"),
}


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_dp_orders_and_limits_rows_as_the_engine_does(fresh_server, raw, case):
    """dp: ORDER BY keys and LIMIT are applied after the noise, but they must choose the
    same cells, in the same order, as the query does in DuckDB (the noise moves values, not
    which keys are asked for). Every cell here rests on thousands of people, far above the
    noisy threshold at this epsilon."""
    sql = ORDER_CASES[case]
    resp = _dp(fresh_server, sql, 1.0)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    released = [r[0] for r in body["rows"]]
    truth = [r[0] for r in _raw_as(raw, not_opted_out(), sql)]
    assert released == truth, (
        f"{sql}\nreleased the cells {released}, in that order; DuckDB gives {truth}")


# --- 2. dp: the NULL group of a public key ----------------------------------------------------


def test_dp_does_not_drop_the_null_group_of_a_public_key(fresh_server, raw):
    """dp: a public-code-list key read from a LEFT JOINed source is NULL for every row the
    join pads. That group is part of the answer DuckDB gives (here the living, most of the
    people asked about); the gateway must release it like the others (or refuse the query),
    not drop it without a word."""
    sql = ("SELECT d.place_of_death, COUNT(*) AS n FROM patients p "
           "LEFT JOIN deaths d ON d.person_id = p.person_id GROUP BY d.place_of_death")
    truth = dict(_raw_as(raw, not_opted_out(), sql))
    assert truth.get(None, 0) > 10_000, "the shape this test needs (checked on raw data)"
    resp = _dp(fresh_server, sql, 1.0)
    assert resp.status_code < 500, resp.text
    if resp.status_code != 200:
        return  # refused: no wrong answer
    body = resp.json()
    released = {r[0] for r in body["rows"]}
    reported = {s["row"] for s in body["disclosure"]["suppressed"]}
    assert None in released or reported, (
        f"the NULL place of death ({truth[None]} people in DuckDB) is missing from the "
        f"released table {body['rows']}, and nothing says so")


# --- 3. a constant key the engine reads as a position ---------------------------------------

CONSTANT_KEYS = {
    "negative": "-1",
    "parenthesised": "(4)",
}

MEASURE_SQL = ("SELECT {k} AS k, p.sex, COUNT(*) AS n, SUM(h.length_of_stay) AS s "
               "FROM patients p JOIN hospital_admissions h ON h.person_id = p.person_id "
               "GROUP BY ALL")
COUNT_SQL = "SELECT {k} AS k, p.sex, COUNT(*) AS n FROM patients p GROUP BY ALL"


@pytest.mark.parametrize("key", sorted(CONSTANT_KEYS))
def test_threshold_answers_a_constant_key_beside_a_sum(server, raw, key):
    """threshold: a constant label computed as -1 or (4) beside a sum is a fair query that
    DuckDB answers; the single pass must not turn it into a column position."""
    sql = MEASURE_SQL.format(k=CONSTANT_KEYS[key])
    truth = {(k, sex): (n, s) for k, sex, n, s in _raw_as(raw, norfolk_residents(), sql)}
    sub, project, purpose = PLANNER
    resp = server.query(sub, sql, project, purpose)
    assert resp.status_code == 200, f"{sql}\n{resp.status_code} {resp.text[:300]}"
    for k, sex, _n, s in resp.json()["rows"]:
        assert s is None or s == truth[(k, sex)][1]


@pytest.mark.parametrize("key", sorted(CONSTANT_KEYS))
def test_cell_key_answers_a_constant_key(server, raw, key):
    """cell_key: every count query takes the single pass, so a constant label computed as -1
    or (4) fails even beside a plain count."""
    sql = COUNT_SQL.format(k=CONSTANT_KEYS[key])
    truth = {(k, sex): n for k, sex, n in _raw_as(raw, cohort(), sql)}
    sub, project, purpose = RESEARCHER
    resp = server.query(sub, sql, project, purpose)
    assert resp.status_code == 200, f"{sql}\n{resp.status_code} {resp.text[:300]}"
    for k, sex, n in resp.json()["rows"]:
        assert n is None or abs(n - truth[(k, sex)]) <= 2


@pytest.mark.parametrize("key", sorted(CONSTANT_KEYS))
def test_dp_does_not_charge_for_a_constant_key_it_breaks(fresh_server, key):
    """dp: the same constant key fails in the engine only because the rewrite grouped by it
    as a position, after the spend. A fair query must be answered; failing that, it must not
    cost the project its epsilon."""
    sql = COUNT_SQL.format(k=CONSTANT_KEYS[key])
    sub, project, _ = DP_RESEARCHER
    budget_url = f"/v1/projects/{project}/budget"
    headers = {"Authorization": f"Bearer {fresh_server.token(sub)}"}
    before = fresh_server.client.get(budget_url, headers=headers).json()
    resp = _dp(fresh_server, sql, 0.5)
    after = fresh_server.client.get(budget_url, headers=headers).json()
    assert resp.status_code < 500, resp.text
    if resp.status_code == 200:
        return
    assert after["epsilon_spent"] == before["epsilon_spent"], (
        f"{sql}\nrefused with {resp.status_code} {resp.json()['error']['message']!r}, yet "
        f"charged epsilon {after['epsilon_spent'] - before['epsilon_spent']:g}")
