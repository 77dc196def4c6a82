"""CTEs wherever the rewrite moves a query's parts around.

sqlglot names a select's WITH clause ``with_`` (as it names FROM ``from_``); two places still
read and wrote ``with``, which is no argument at all. The row-bound query of a UNION rebuilt
its branches without the CTEs they read, so a UNION ALL over a CTE, counting rows, was a
binder error (a 400 for a fair query); and the size check counted every CTE body once more
than it is read, so it refused queries under its own limit.
"""

from __future__ import annotations

from attack import PLANNER, norfolk_residents, query_as

from gateway.sql.analysis import analyse
from gateway.sql.rules.size import MAX_EXPANDED_SCANS


def test_a_union_over_a_cte_counting_rows_is_answered(server, raw):
    sql = ("WITH adm AS (SELECT h.person_id, h.admission_method FROM hospital_admissions h) "
           "SELECT a.admission_method AS method, COUNT(*) AS stays FROM adm a GROUP BY 1 "
           "UNION ALL SELECT 'all' AS method, COUNT(*) AS stays FROM adm a ORDER BY 1")
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "released"
    truth = dict(raw.execute(f"""
        SELECT h.admission_method, COUNT(*) FROM hospital_admissions h
        JOIN ({norfolk_residents()}) p ON p.person_id = h.person_id GROUP BY 1
        UNION ALL SELECT 'all', COUNT(*) FROM hospital_admissions h
        JOIN ({norfolk_residents()}) p ON p.person_id = h.person_id""").fetchall())
    base = body["disclosure"]["column_rounding_bases"].get(
        "stays", body["disclosure"]["rounding_base"])
    assert base > 1 and "row_bound_sql" in server.entry_for(resp)  # the second query ran
    released = {m: n for m, n in body["rows"] if n is not None}
    assert released and set(released) <= set(truth)
    for method, n in released.items():
        assert abs(n - truth[method]) <= base / 2, (method, n, truth[method], base)


def test_the_size_check_counts_each_cte_body_as_often_as_it_is_read(catalogue):
    """Seventy CTEs over patients, the query reading one of them: one scan to the engine (the
    bodies counted once more made it 71, over the limit)."""
    n = 70
    assert n > MAX_EXPANDED_SCANS
    ctes = ", ".join(f"c{i} AS (SELECT p.person_id, p.sex FROM patients p)" for i in range(n))
    analyse(f"WITH {ctes} SELECT c.sex, COUNT(DISTINCT c.person_id) AS n FROM c0 c GROUP BY 1",
            catalogue, max_chars=100_000, max_depth=200)
