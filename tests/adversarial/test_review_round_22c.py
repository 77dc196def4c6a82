"""The breaks of review round 22c, kept as tests (docs/security.md lists every round).

**Two output columns of one derived table with the same name: the gateway counts the person
behind the second, the engine reads the first.** In ``(SELECT g.event_date AS k, g.person_id
AS k, ...) s`` both columns are called ``k``. The analysis finds the derived table's person
key by walking its projections (``row_person``: the first projection that *is* a person
key, the second ``k``) and then names it the only way SQL can: ``"s"."k"``. DuckDB binds
``s.k`` to the *first* column of that name, the event date. Every rule that rests on "the
person behind each row" then works on event dates:

- *Threshold and cell key.* The hidden people count beside each cell is
  ``COUNT(DISTINCT "s"."k")``: the number of distinct event dates. One resident with a dozen
  GP events is a cell of a dozen "people"; FILTER columns with ``EXISTS (... h.person_id =
  s.pid AND h.primary_diagnosis = ...)`` (a third column, ``g.person_id AS pid``, carries the
  real key) release her hospital diagnoses one column each, and her group keys besides.
  The row bound (the most one person adds to a count, review round 17) is grouped by the
  same ``"s"."k"``, so it sees one row per "person" and passes too.
- *Differential privacy.* The query is regrouped by (cell, ``"s"."k"``) and each group is
  clamped to R rows: with a unique first ``k`` (the event dates of a three-way self join on
  person_id, concatenated) every one of a person's rows is its own "person", so one person
  moves a count by the cube of their event count (5,832 for 18 events) where the noise
  assumes R = 5. Two queries told whether one person (alone in her year of birth and small
  area) had been admitted with pneumonia: 5821 (accuracy 15) against 0.

The engine's first-match binding of a duplicated name is the same for the user's own
``s.k`` and for the analysis's reading of it (``bare_origin`` takes the first match); it is
the gateway's own generated reference to the person key that moves. (``may_be_null`` also
reads the first match, which is why the DP query adds ``WHERE s.k IS NOT NULL``.)

**ORDER BY on the outer query: the rule reads a bare name the way sqlglot does, DuckDB binds
it otherwise.** The rule that the outer query may not be ordered by an aggregate (the order
would rank suppressed and rounded cells) checks a bare alias against the *first* output of
that name, and does not look inside expressions. DuckDB binds a duplicated ORDER BY alias to
the *last* output of that name (``SELECT p.practice_code AS n, COUNT(*) AS n ... ORDER BY
n`` orders by the count), and binds an alias inside an ORDER BY expression to the output
(``ORDER BY c % 5, k``, which sqlglot regenerates as written). The second gives every
released count of a threshold query exactly, from its rounded value and its position.
(``check_union_order`` uses the same ``_names_aggregate``.)

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    DP_RESEARCHER,
    MIN_PEOPLE,
    PLANNER,
    explain_as,
    norfolk_residents,
    not_opted_out,
    query_as,
    refused,
)


def _released_rows(resp) -> list[list]:
    assert resp.status_code < 500, resp.text
    if refused(resp) or resp.json()["status"] != "released":
        return []
    return resp.json()["rows"]


def _diagnoses(raw, pid: int) -> set[str]:
    return {d for (d,) in raw.execute(
        "SELECT primary_diagnosis FROM hospital_admissions WHERE person_id = ?", [pid]
    ).fetchall()}


def test_a_duplicated_derived_column_name_counts_event_dates_as_people(server, raw):
    """Threshold: one resident, alone in her year of birth and practice, with at least
    MIN_PEOPLE distinct GP event dates, passes as a cell of that many people; one FILTER
    column per diagnosis releases whether she was admitted with it."""
    row = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.practice_code FROM ({norfolk_residents()}) p
        WHERE (p.year_of_birth, p.practice_code) IN (
            SELECT (year_of_birth, practice_code) FROM ({norfolk_residents()})
            GROUP BY ALL HAVING COUNT(*) = 1)
          AND (SELECT COUNT(DISTINCT event_date) FROM gp_events g
               WHERE g.person_id = p.person_id) >= {MIN_PEOPLE + 4}
          AND EXISTS (SELECT 1 FROM hospital_admissions h WHERE h.person_id = p.person_id)
        ORDER BY p.person_id LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    pid, yob, practice = row
    had = sorted(_diagnoses(raw, pid))
    probes = [*had, "E11", "Z99"]  # hers, and two she may not have had
    columns = ", ".join(
        f"COUNT(*) FILTER (WHERE EXISTS (SELECT 1 FROM hospital_admissions h WHERE "
        f"h.person_id = s.pid AND h.primary_diagnosis = '{d}')) AS dx{n}"
        for n, d in enumerate(probes))
    sql = (f"SELECT COUNT(*) AS events, {columns} FROM (SELECT g.event_date AS k, "
           "g.person_id AS k, g.person_id AS pid FROM gp_events g JOIN patients p ON "
           f"p.person_id = g.person_id WHERE p.year_of_birth = {yob} AND p.practice_code = "
           f"'{practice}') s")
    rows = _released_rows(query_as(server, PLANNER, sql))
    shown = [r for r in rows if any(v is not None for v in r)]
    assert not shown, (
        f"one resident (person {pid}, raw diagnoses {had}) was released as a cell of many "
        f"people: {dict(zip(['events', *probes], shown[0], strict=True))}")


def test_a_duplicated_derived_column_name_unbounds_one_persons_dp_contribution(server, raw):
    """DP: the per-person clamp groups by the first ``k``, a value unique to each of one
    person's rows; one person moves the bounded count by thousands where the noise assumes
    max_rows_per_cell. Checked on the executed SQL, run on the raw data with and without her
    (no budget is spent)."""
    row = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.lsoa_code FROM ({not_opted_out()}) p
        WHERE (p.year_of_birth, p.lsoa_code) IN (
            SELECT (year_of_birth, lsoa_code) FROM ({not_opted_out()})
            GROUP BY ALL HAVING COUNT(*) = 1)
          AND EXISTS (SELECT 1 FROM hospital_admissions h WHERE h.person_id = p.person_id)
        ORDER BY (SELECT COUNT(*) FROM gp_events g WHERE g.person_id = p.person_id) DESC,
                 p.person_id
        LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    pid, yob, lsoa = row
    dx = min(_diagnoses(raw, pid))
    sql = ("SELECT COUNT(*) AS n FROM (SELECT CONCAT(CAST(g1.event_date AS VARCHAR), "
           "CAST(g2.event_date AS VARCHAR), CAST(g3.event_date AS VARCHAR)) AS k, "
           "g1.person_id AS k FROM gp_events g1 "
           "JOIN gp_events g2 ON g2.person_id = g1.person_id "
           "JOIN gp_events g3 ON g3.person_id = g1.person_id "
           "JOIN patients p ON p.person_id = g1.person_id "
           f"WHERE p.year_of_birth = {yob} AND p.lsoa_code = '{lsoa}' AND EXISTS (SELECT 1 "
           "FROM hospital_admissions h WHERE h.person_id = g1.person_id AND "
           f"h.primary_diagnosis = '{dx}')) s WHERE s.k IS NOT NULL")
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused: safe
    bound = explained["dp"]["cells_per_person"] * explained["output"]["max_rows_per_cell"]
    executed = explained["executed_sql"]
    with_her = raw.execute(executed).fetchone()[0] or 0
    without = executed.replace(
        'FROM "gp_events" WHERE', f'FROM "gp_events" WHERE "person_id" <> {pid} AND')
    assert without != executed
    without_her = raw.execute(without).fetchone()[0] or 0
    assert abs(with_her - without_her) <= bound, (
        f"one person (person {pid}, admitted with {dx}) moves the bounded count from "
        f"{without_her} to {with_her}; the noise assumes at most {bound}")


def test_order_by_a_name_shared_by_a_key_and_a_count_ranks_exact_counts(server, raw):
    """``SELECT p.practice_code AS n, COUNT(*) AS n ... ORDER BY n``: the analysis reads ``n``
    in ORDER BY as the first output of that name (the key) and lets it through; DuckDB binds
    it to the *last* (the count), so the released rows are ranked by their exact counts. Cells
    rounded to the same multiple of 5 come out in the order of their exact values (98, 98,
    100, 101, 102 all released as 100), which the rule against ORDER BY an aggregate on the
    outer query exists to prevent. (The regenerated SQL keeps ``ORDER BY "n"`` as written.)"""
    sql = ("SELECT p.practice_code AS n, COUNT(*) AS n FROM patients p GROUP BY 1 ORDER BY n")
    rows = _released_rows(query_as(server, PLANNER, sql))
    exact = dict(raw.execute(
        f"SELECT practice_code, COUNT(*) FROM ({norfolk_residents()}) GROUP BY 1").fetchall())
    shown = [exact[r[0]] for r in rows if r[1] is not None]
    assert len(shown) < 10 or shown != sorted(shown), (
        f"{len(shown)} practices released in the order of their exact counts: {shown[:12]}")


def test_order_by_an_expression_of_a_count_alias_gives_exact_counts(server, raw):
    """``ORDER BY c % 5, k`` with ``COUNT(*) AS c``: the rule against ORDER BY an aggregate
    looks at a bare alias or position only (``_names_aggregate``), and sqlglot leaves the
    alias inside the expression unexpanded (``ORDER BY "c" % 5``), which DuckDB binds to the
    exact count. The released rows come out grouped by their exact residue modulo the
    rounding base, each group sorted by key: where the key order starts again, the residue
    goes up by one. With the rounded value that gives every released count exactly, in one
    query (60 of 60 practices here), so rounding no longer hides the small differences
    between cells."""
    sql = ("SELECT p.practice_code AS k, COUNT(*) AS c FROM patients p GROUP BY 1 "
           "ORDER BY c % 5, k")
    rows = [r for r in _released_rows(query_as(server, PLANNER, sql)) if r[1] is not None]
    exact = dict(raw.execute(
        f"SELECT practice_code, COUNT(*) FROM ({norfolk_residents()}) GROUP BY 1").fetchall())
    residue, previous, recovered = 0, None, 0
    for key, rounded in rows:
        if previous is not None and key < previous:
            residue += 1
        previous = key
        guess = next(rounded + d for d in (-2, -1, 0, 1, 2) if (rounded + d) % 5 == residue)
        recovered += guess == exact[key]
    assert len(rows) < 10 or recovered < len(rows) // 2, (
        f"{recovered} of {len(rows)} released counts recovered exactly from their order")


def test_names_the_gateway_uses_for_itself_are_reserved(server):
    """The rewrite's hidden columns and subqueries are named __pid, __pp, __cells, ...: a
    caller's alias may not take one of those names."""
    sql = ("SELECT s.k, COUNT(*) AS n FROM (SELECT p.person_id, p.sex AS k, "
           "p.year_of_birth AS __pid FROM patients p) s GROUP BY 1")
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code == 400 and "reserved" in resp.json()["error"]["message"]


def test_a_repeated_name_is_refused_in_any_case_and_distinct_names_still_work(server):
    for sql in (
        "SELECT s.k, COUNT(*) AS n FROM (SELECT p.person_id, p.sex AS k, "
        "p.ethnicity AS K FROM patients p) s GROUP BY 1",
        "SELECT p.sex AS n, COUNT(*) AS N FROM patients p GROUP BY 1",
    ):
        resp = query_as(server, PLANNER, sql)
        assert resp.status_code == 400, resp.text
        assert "used twice" in resp.json()["error"]["message"]
    ok = ("SELECT s.k, COUNT(*) AS n FROM (SELECT p.person_id, p.sex AS k, "
          "p.ethnicity AS e FROM patients p) s GROUP BY 1 ORDER BY s.k")
    assert query_as(server, PLANNER, ok).status_code == 200


def test_an_order_by_expression_of_a_key_is_still_allowed(server):
    sql = ("SELECT p.year_of_birth AS y, COUNT(*) AS n FROM patients p GROUP BY 1 "
           "ORDER BY y % 10, y DESC")
    assert query_as(server, PLANNER, sql).status_code == 200
