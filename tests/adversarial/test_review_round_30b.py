"""The breaks of review round 30b, kept as tests (docs/security.md lists every round).

**A dp answer holding a value JSON cannot carry is a 500, its spend is never settled, and its
twin waits 60 s.** Under ``threshold`` and ``cell_key`` every released value goes through
``_json_value`` (``gateway/pipeline.py``): dates become ISO text, Decimals floats, NaN and
infinities NULL. Under ``dp`` nothing does: ``dp.release`` (``gateway/disclosure/dp.py``)
puts the engine's raw key values (``cells``, from the exact rows) and ``_constants`` puts
sqlglot's ``Literal.to_py()`` (a ``Decimal`` for ``1.5``) straight into the rows. Then, in
``Pipeline.run``, the result is kept (``ResultStore.put`` has ``default=str``), audited as
*released*, and only then ``_settle`` stores the answer for identical queries with
``BudgetLedger.settle``: ``json.dumps(answer)`` with no ``default``. A ``datetime``/``date``
key or a ``Decimal`` constant raises ``TypeError``; ``settle`` rolls back (the spend stays
``running``), ``_settle`` only catches ``LedgerUnavailable``, and the request ends as an
unhandled ``500 internal_error``. A NaN key passes the ledger (``json.dumps`` writes
``NaN``) and fails in the response's ``JSONResponse.render`` (``allow_nan=False``): a 500
now and for every repeat, which is served from the stored answer.

Three plain queries do it (a one-cell date key from ``LEAST(e.event_date, DATE ...)``, a
decimal constant label beside the public ``sex`` key, a CASE key that is NaN on some rows),
all permitted under ``diabetes-research-s251``. And because the spend is left ``running``,
``BudgetLedger.reserve`` takes any identical query (the same SQL and epsilon, by any member
of the project) for a twin still computing and waits ``wait_s`` = 60 s for its answer, then
spends again and fails the same way: seen 60.07 s and 60.10 s, twice the engine's 30 s limit,
each retry charged and answered with a 500.

A fix may refuse such a query (a 4xx), or answer it (with values JSON can carry): each passes.

Also seen, a wrong answer and no leak (round 28b noted it too): under ``dp``, with keys from
the data, ``COUNT(DISTINCT d.person_id)`` of a LEFT JOINed ``deaths d`` was marked as counting
everyone in the cell (``_statistic`` in ``gateway/sql/dp_rewrite.py``), and released the noisy
count of the whole cell, not of the dead. Kept as the last test.
"""

from __future__ import annotations

import time

import httpx
import pytest
from attack import BOUND_S, DP_RESEARCHER, not_opted_out, refused

#: a dp query whose one released cell has a date key (everyone with an event is in it)
DATE_KEY = ("SELECT LEAST(e.event_date, DATE '{year}-01-01') AS d, COUNT(*) AS n "
            "FROM gp_events e GROUP BY 1")

CASES = {
    # a decimal constant beside a public key: every combination is released, whatever epsilon
    "decimal_constant": ("SELECT p.sex, 1.5 AS w, COUNT(*) AS n FROM patients p GROUP BY p.sex",
                         0.01),
    # a date key: one cell of some 15,000 people clears the noisy threshold at epsilon 0.05
    "date_key": (DATE_KEY.format(year=2000), 0.05),
    # a NaN key (the engine groups it like any double)
    "nan_key": ("SELECT CASE WHEN e.value IS NULL THEN CAST('NaN' AS DOUBLE) ELSE 0.0 END AS k, "
                "COUNT(*) AS n FROM gp_events e GROUP BY 1", 0.05),
}


def _spend_status(server, request_id: str) -> str | None:
    _, project, _ = DP_RESEARCHER
    ledger = server.app.state.pipeline.ledger
    return next((s["status"] for s in ledger.spends(project) if s["request_id"] == request_id),
                None)


def _post(server, sub: str, sql: str, epsilon: float) -> httpx.Response | None:
    """The response, or None if none came within the bound (or the connection was dropped,
    as an unhandled error can do)."""
    _, project, purpose = DP_RESEARCHER
    try:
        return server.client.post(
            "/v1/queries", headers={"Authorization": f"Bearer {server.token(sub)}"},
            json={"sql": sql, "project": project, "purpose": purpose, "epsilon": epsilon},
            timeout=BOUND_S + 5)
    except httpx.TransportError:
        return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_dp_answer_is_never_a_500_whatever_its_values(server, case):
    """dp: a released table whose keys or constants are a date, a Decimal or NaN must be
    answered (as JSON) or refused, never a 500; and a spend must not be left running once the
    request is over (asked twice: the repeat comes from the stored answer)."""
    sql, epsilon = CASES[case]
    for attempt in (1, 2):
        resp = _post(server, "r.smith", sql, epsilon)
        assert resp is not None, f"{case}, attempt {attempt}: no response (connection dropped)"
        assert resp.status_code < 500, (
            f"{case}, attempt {attempt}: {resp.status_code} {resp.text[:200]}")
        if refused(resp):
            return
        status = _spend_status(server, resp.headers["x-request-id"])
        assert status != "running", f"{case}: the spend of an answered query is left running"


def test_a_twin_of_a_dp_answer_is_not_kept_waiting_past_the_time_limit(server):
    """dp: the same query by a second member of the project, after the first was answered,
    must be answered (from the stored answer) or refused within the engine's time limit, not
    left waiting 60 s for a spend that is never settled."""
    sql = DATE_KEY.format(year=2001)
    first = _post(server, "r.smith", sql, 0.05)
    if first is not None and first.status_code != 500 and refused(first):
        return
    started = time.monotonic()
    twin = _post(server, "a.khan", sql, 0.05)
    took = time.monotonic() - started
    assert twin is not None and took < BOUND_S, (
        f"the identical query waited {took:.0f} s (the engine's limit is {BOUND_S:.0f} s)")
    assert twin.status_code < 500, f"{twin.status_code} {twin.text[:200]}"


def test_a_distinct_count_of_a_left_joined_source_counts_its_people(fresh_server, raw):
    """Also seen in round 30b (a wrong answer, not a leak): COUNT(DISTINCT d.person_id) of
    LEFT JOINed deaths was taken for "everyone in the cell" and answered with the noisy count
    of the whole cell. It counts the dead."""
    sub, project, purpose = DP_RESEARCHER
    # a key from the data (not public), so the cells come from a noisy count of people
    band = "CASE WHEN p.year_of_birth < 1960 THEN 'older' ELSE 'younger' END"
    sql = (f"SELECT {band} AS band, COUNT(DISTINCT d.person_id) AS dead FROM patients p "
           "LEFT JOIN deaths d ON d.person_id = p.person_id GROUP BY 1")
    resp = fresh_server.query(sub, sql, project, purpose, epsilon=2.0)
    assert resp.status_code == 200, resp.text
    truth = {b: (dead, everyone) for b, dead, everyone in raw.execute(f"""
        SELECT {band}, COUNT(d.person_id), COUNT(*) FROM ({not_opted_out()}) p
        LEFT JOIN deaths d ON d.person_id = p.person_id GROUP BY 1""").fetchall()}
    rows = resp.json()["rows"]
    assert rows
    for b, dead in rows:
        true_dead, everyone = truth[b]
        assert everyone - true_dead > 100, "the shape this test needs"
        assert abs(dead - true_dead) < abs(dead - everyone), (b, dead, true_dead, everyone)
