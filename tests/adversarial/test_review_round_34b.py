"""The breaks of review round 34b, kept as tests (docs/security.md lists every round).

This round attacked the two regimes that resist averaging and differencing, `cell_key` and
`dp`, at the level of their mechanisms: what Python does with the exact cells after the engine,
the noise, the budget ledger and its free repeats. Every test below fails on the code as
reviewed; a fix may refuse the query (a 4xx) or answer it correctly.

**1. dp: two cells the engine tells apart and Python does not are merged, and one person
deletes a cell of 19,000 people (her ethnicity, her sex, any bit of her record: one query
each).** Round 33 found that ``DATE '-infinity'`` and ``DATE '0001-01-01'`` both reach Python
as ``date(1, 1, 1)``, and fixed it for the threshold and cell_key regimes (``key_text``). The
dp release was left out: ``dp.release`` in ``gateway/disclosure/dp.py`` builds ``exact =
{tuple(row[:nkeys]): ...}`` from the engine's rows, so two engine cells with Python-equal keys
become one dict entry, and the *last* row read wins. The query

    SELECT CASE WHEN p.year_of_birth = <hers> AND p.lsoa_code = '<hers>' AND <her attribute>
                THEN DATE '0001-01-01' ELSE DATE '-infinity' END AS k, COUNT(*) AS n
    FROM patients p GROUP BY k

has data keys, so the cells go through the noisy threshold (about 185 people at epsilon
0.2). Raw DuckDB on the executed SQL gives two cells: everyone else (19,030 people) and, if the
attribute is hers, her cell of one, which the engine returns last. Python keeps her cell
under the shared key, the threshold drops it, and the answer is empty; without her (the
attribute is not hers) the cell of 19,030 is released. So the answer is empty exactly when the
attribute is hers: her ethnicity from five queries, each spending 0.2, where the mechanism
promises that her presence moves the probability of any output by a factor of at most
e^0.2 (plus delta 1e-8). The exact bounded counts of the executed SQL, with and without her,
differ by one (the bound holds in SQL: the break is after it). Root cause: ``dp.release``
(``exact`` and ``codes`` keyed by Python's values of the keys, not the engine's).

What held (no test):

- dp contribution bounding, read and run against the exact SQL on raw data: COUNT(*),
  COUNT(x), SUM of 0/1 indicators (a negative literal is not an indicator, so the missing
  lower clamp on ``LEAST(SUM(...), R)`` is not reachable), COUNT(DISTINCT person_id) with and
  without FILTER and of a LEFT JOINed source, clamped measures (a NULL clamps to the lower
  bound, which is 0 for every catalogue measure), the L-cut by hash in both of its SQL forms,
  person-grain keys (one cell) through LEFT JOINs on the person key alone.
- dp composition: the epsilon charged is the sum of OpenDP's maps of every measurement run;
  an average's two measurements are both charged; a COUNT(DISTINCT person_id) released by
  the threshold is not charged twice, and is released only when the threshold runs.
- The ledger: a repeat must match on SQL text, epsilon repr, policy, delta and data
  version, and anything else is charged again; overspending is refused within 1e-9; request
  ids are the server's own, so ``cancel`` and ``settle`` cannot be pointed at another spend.
- dp answers checked against the exact bounded SQL on raw data (FILTER, CTE, averages of a
  nullable measure, public NULL cells, constants, GROUP BY position or ALL) differed only by
  the stated noise. OFFSET and non-literal LIMITs are refused.
- Public keys are VARCHAR code lists, so they cannot collide in Python; list and struct keys
  are refused (``array()``, ``struct()``).
- cell_key: the perturbation is read per engine row, so keys Python cannot tell apart do not
  merge cells; sums cannot be averaged within one query (a measure takes no FILTER, no second
  source, no UNION, and margin rows' contributions are unknown, so they are suppressed).
  Several statistics of one differencing pair make "identical means absent" more certain
  (each adds an independent draw when she is present). That is the accepted membership
  limit, so it is not reported.
"""

from __future__ import annotations

from attack import DP_RESEARCHER, alone_anywhere_with_stays, explain_as, not_opted_out

ETHNICITIES = ("White", "Mixed", "Asian", "Black", "Other")


def _twin_dates(yob: int, lsoa: str, attribute: str) -> str:
    return (f"SELECT CASE WHEN p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}' AND "
            f"{attribute} THEN DATE '0001-01-01' ELSE DATE '-infinity' END AS k, "
            "COUNT(*) AS n FROM patients p GROUP BY k")


def test_dp_does_not_merge_cells_python_cannot_tell_apart(fresh_server, raw):
    yob, lsoa, pid = alone_anywhere_with_stays(raw)
    (truth,) = raw.execute(f"SELECT ethnicity FROM patients WHERE person_id = {pid}").fetchone()
    (others,) = raw.execute(f"SELECT COUNT(*) - 1 FROM ({not_opted_out()})").fetchone()
    sub, project, purpose = DP_RESEARCHER
    # the evidence on raw data: the executed SQL, with her attribute in the CASE, has her cell
    # of one beside the cell of everyone else; without her, only the cell of everyone else
    sql = _twin_dates(yob, lsoa, f"p.ethnicity = '{truth}'")
    explained = explain_as(fresh_server, DP_RESEARCHER, sql)
    exact = raw.execute(explained["executed_sql"]).fetchall()
    assert sorted(r[2] for r in exact) == [1, others], exact
    without = explained["executed_sql"].replace(
        'FROM "patients" WHERE', f'FROM "patients" WHERE "person_id" <> {pid} AND')
    assert [r[2] for r in raw.execute(without).fetchall()] == [others]
    answers = {}
    for value in ETHNICITIES:
        resp = fresh_server.query(sub, _twin_dates(yob, lsoa, f"p.ethnicity = '{value}'"),
                                  project, purpose, epsilon=0.2)
        assert resp.status_code == 200, resp.text
        threshold = resp.json()["disclosure"]["mechanism"]["threshold"]["people"]
        assert threshold < others // 10  # a cell of `others` people clears it for certain
        answers[value] = resp.json()["rows"]
    empty = [v for v, rows in answers.items() if not rows]
    assert not empty, (
        f"a cell of {others} people (the noisy threshold is {threshold}) was not released "
        f"when the CASE gave one person's ethnicity {empty}; hers is {truth!r}: "
        "dp.release merged her cell of one with it (both keys are date(1, 1, 1) in Python)")
