"""Dominance over HTTP on a crafted data directory: one resident's care costs swamp a cell."""

from __future__ import annotations

import shutil

import duckdb
import pytest
from conftest import LiveServer, make_settings

from gateway.disclosure.threshold import round_to_base

NORFOLK = "E10000020"


@pytest.fixture(scope="module")
def crafted(data_dir, tmp_path_factory):
    """The generated data with one Norfolk resident's nursing care made enormously expensive."""
    out = tmp_path_factory.mktemp("crafted")
    for f in data_dir.glob("*.parquet"):
        shutil.copy(f, out / f.name)
    con = duckdb.connect()
    (whale,) = con.execute(
        f"""SELECT s.person_id FROM read_parquet('{out}/social_care.parquet') s
            JOIN read_parquet('{out}/patients.parquet') p USING (person_id)
            WHERE p.local_authority_code = ? AND s.service_type = 'nursing'
            AND s.person_id NOT IN (SELECT person_id FROM read_parquet('{out}/opt_outs.parquet'))
            ORDER BY s.person_id LIMIT 1""", [NORFOLK]).fetchone()
    con.execute(
        f"""COPY (SELECT * REPLACE (CASE WHEN person_id = {whale} AND service_type = 'nursing'
                  THEN 5000000.0 ELSE weekly_cost END AS weekly_cost)
                  FROM read_parquet('{data_dir}/social_care.parquet'))
            TO '{out}/social_care.parquet' (FORMAT parquet)""")
    return out


@pytest.fixture(scope="module")
def live(crafted, tmp_path_factory):
    server = LiveServer(make_settings(crafted, tmp_path_factory.mktemp("state")))
    yield server
    server.stop()


def test_a_dominated_sum_is_suppressed_and_the_others_released(live, crafted):
    sql = ("SELECT s.service_type, SUM(s.weekly_cost) AS weekly_cost, "
           "COUNT(DISTINCT s.person_id) AS people "
           "FROM social_care s GROUP BY s.service_type ORDER BY s.service_type")
    resp = live.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rows = {r[0]: r for r in body["rows"]}
    assert rows["nursing"][1] is None
    assert rows["nursing"][2] is not None, "the count of people is not dominated"
    rules = {(s["row"], s["column"]): s["rule"] for s in body["disclosure"]["suppressed"]}
    nursing_row = [r[0] for r in body["rows"]].index("nursing")
    assert rules[(nursing_row, "weekly_cost")].startswith("dominance")
    truth = dict(duckdb.connect().execute(
        f"""SELECT s.service_type, sum(s.weekly_cost) FROM read_parquet('{crafted}/social_care.parquet') s
            JOIN read_parquet('{crafted}/patients.parquet') p USING (person_id)
            WHERE p.local_authority_code = ? AND s.person_id NOT IN
            (SELECT person_id FROM read_parquet('{crafted}/opt_outs.parquet')) GROUP BY 1""",
        [NORFOLK]).fetchall())
    for service, row in rows.items():
        if service != "nursing" and row[1] is not None:
            assert row[1] == pytest.approx(truth[service])
    assert body["disclosure"]["dominance"] == {"nk_n": 2, "nk_k": 0.9, "p_ratio": 0.1}
    entry = live.entry_for(resp)
    # a count of distinct people decomposes over per-person partials (a person is counted in
    # a cell if any of their rows there is counted): one pass, filtered, no second query
    assert "contributions_sql" not in entry and NORFOLK in entry["executed_sql"]


def test_single_pass_gives_the_same_verdicts(live, crafted):
    """SUM, AVG and COUNT decompose over per-person partials: one query does it all."""
    sql = ("SELECT s.service_type, AVG(s.weekly_cost) AS m, "
           "COUNT(*) AS episodes FROM social_care s GROUP BY s.service_type "
           "ORDER BY s.service_type")
    resp = live.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = live.released(resp, "p.jones")
    entry = live.entry_for(resp)
    assert "__pid" in entry["executed_sql"] and "contributions_sql" not in entry
    rows = {r[0]: r for r in body["rows"]}
    assert rows["nursing"][1] is None
    truth = dict(duckdb.connect().execute(
        f"""SELECT s.service_type, count(*) FROM read_parquet('{crafted}/social_care.parquet') s
            JOIN read_parquet('{crafted}/patients.parquet') p USING (person_id)
            WHERE p.local_authority_code = ? AND s.person_id NOT IN
            (SELECT person_id FROM read_parquet('{crafted}/opt_outs.parquet')) GROUP BY 1""",
        [NORFOLK]).fetchall())
    # several episodes per person: rounded to the larger base the response states
    base = body["disclosure"].get("column_rounding_bases", {}).get("episodes", 5)
    for service, row in rows.items():
        assert row[2] is None or row[2] == round_to_base(truth[service], base)


def test_two_query_path_matches_for_a_non_decomposable_query(live, crafted):
    """A sum under ROLLUP cannot be built from per-(cell, person) partials in one pass: the
    contributions come from a second query, with the same verdicts."""
    sql = ("SELECT s.service_type, SUM(s.weekly_cost) AS weekly_cost "
           "FROM social_care s GROUP BY ROLLUP (s.service_type)")
    resp = live.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = live.released(resp, "p.jones")
    rows = {r[0]: r for r in body["rows"]}
    assert rows["nursing"][1] is None
    assert "contributions_sql" in live.entry_for(resp)


def test_contributions_are_per_person_totals_not_single_records(live, crafted):
    """Many modest episodes of one person add up: the rule sees the person's total."""
    sql = ("SELECT s.service_type, SUM(s.weekly_cost) AS weekly_cost FROM social_care s "
           "WHERE s.service_type = 'nursing' GROUP BY s.service_type")
    plan_sql = live.app.state.pipeline  # the same pipeline the server runs
    analysis = plan_sql._analyse(sql)
    from datetime import date

    from gateway.sql.rewrite import rewrite
    from policies import Caller, Facts, decide

    caller = Caller("p.jones", NORFOLK, "local_authority", ("planner",), ("JOINT-PLANNING",))
    decision = decide(Facts(caller, "JOINT-PLANNING", "planning", analysis.tables,
                            analysis.columns, date(2026, 11, 23)),
                      plan_sql.policies, plan_sql.catalogue)
    plan = rewrite(analysis, decision.obligations, plan_sql.catalogue, 100)
    from gateway.control import inline_contributions

    raw = plan_sql.engine.execute(plan.sql, timeout_s=10, row_cap=100)
    got = inline_contributions(plan, raw)  # per row: {column: (top, total, smallest)}
    want = duckdb.connect().execute(
        f"""WITH pp AS (SELECT s.person_id, sum(s.weekly_cost) AS t
                        FROM read_parquet('{crafted}/social_care.parquet') s
                        JOIN read_parquet('{crafted}/patients.parquet') p USING (person_id)
                        WHERE p.local_authority_code = ? AND s.service_type = 'nursing'
                        AND s.person_id NOT IN (SELECT person_id FROM
                            read_parquet('{crafted}/opt_outs.parquet'))
                        GROUP BY 1)
            SELECT list(t ORDER BY t DESC)[1:2], sum(t) FROM pp""", [NORFOLK]).fetchone()
    assert raw.rows[0][0] == "nursing"
    top, total, smallest = got[0][1]
    assert top == pytest.approx(want[0]) and total == pytest.approx(want[1])
    assert smallest > 0  # the smallest per-person total (no negative contributions here)
