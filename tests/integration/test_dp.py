"""The dp regime over HTTP under the shipped s251 policy: bounds, budget, repeats, refusals."""

from __future__ import annotations

import shutil
import sqlite3

import duckdb
import pytest
from conftest import LiveServer, make_settings

from datasets import load_catalogue
from gateway.engine import DuckDBEngine

PROJECT, PURPOSE = "PRJ-0042", "research"
BY_LA = ("SELECT p.local_authority_code, COUNT(DISTINCT p.person_id) AS people FROM patients p "
         "GROUP BY p.local_authority_code")
EVENTS_BY_CODE = ("SELECT e.snomed_code, COUNT(*) AS events, COUNT(DISTINCT e.person_id) AS "
                  "people FROM gp_events e GROUP BY e.snomed_code")


@pytest.fixture(scope="module")
def live(data_dir, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    server = LiveServer(make_settings(data_dir, state))
    yield server
    server.stop()


def budget(server: LiveServer, sub: str = "r.smith", project: str = PROJECT):
    return server.client.get(f"/v1/projects/{project}/budget",
                             headers={"Authorization": f"Bearer {server.token(sub)}"})


def test_a_release_reports_its_cost_accuracy_and_what_is_left(live, raw):
    before = budget(live).json()
    resp = live.query("r.smith", BY_LA, PROJECT, PURPOSE, epsilon=0.5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    d = body["disclosure"]
    assert d["regime"] == "dp" and d["epsilon_spent"] == pytest.approx(0.5)
    assert d["epsilon_left"] == pytest.approx(before["epsilon_left"] - 0.5)
    assert set(d["accuracy"]) == {"people"} and 0 < d["accuracy"]["people"] < 10
    # public keys (the catalogue's code list): every area is released, none thresholded
    assert {r[0] for r in body["rows"]} == {"E10000020", "E10000029", "E06000059", "E06000058"}
    assert d["mechanism"]["cells_per_person"] == 1  # each person has one local authority
    truth = dict(raw.execute(
        "SELECT local_authority_code, count(*) FROM patients WHERE person_id NOT IN "
        "(SELECT person_id FROM opt_outs) GROUP BY 1").fetchall())
    for code, n in body["rows"]:
        assert abs(n - truth[code]) <= 4 * d["accuracy"]["people"]
    entry = live.entry_for(resp)
    assert entry["epsilon_spent"] == pytest.approx(0.5) and entry["delta_spent"] == 0
    after = budget(live).json()
    assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + 0.5)


def test_keys_from_the_data_pass_a_noisy_threshold(live, raw):
    resp = live.query("a.khan", EVENTS_BY_CODE, PROJECT, PURPOSE, epsilon=0.5)
    assert resp.status_code == 200, resp.text
    d = resp.json()["disclosure"]
    assert d["delta_spent"] > 0 and d["mechanism"]["threshold"]["people"] > 1
    released = {r[0] for r in resp.json()["rows"]}
    assert released, "common codes clear the threshold"
    people = dict(raw.execute(
        "SELECT snomed_code, count(DISTINCT person_id) FROM gp_events GROUP BY 1").fetchall())
    tau = d["mechanism"]["threshold"]["people"]
    assert all(people[c] > tau / 2 for c in released)


def test_an_identical_query_returns_the_stored_answer_and_spends_nothing(live):
    sql = BY_LA + " ORDER BY p.local_authority_code"
    first = live.query("r.smith", sql, PROJECT, PURPOSE, epsilon=0.25)
    spent = budget(live).json()["epsilon_spent"]
    again = live.query("a.khan", sql, PROJECT, PURPOSE, epsilon=0.25)  # another member
    assert again.status_code == 200
    assert again.json()["rows"] == first.json()["rows"]
    assert again.json()["disclosure"]["epsilon_spent"] == 0
    assert again.json()["disclosure"]["repeat_of"] == first.json()["query_id"]
    assert budget(live).json()["epsilon_spent"] == spent
    assert live.entry_for(again)["repeat_of"] == first.json()["query_id"]
    # another epsilon is another query: it spends
    third = live.query("r.smith", sql, PROJECT, PURPOSE, epsilon=0.3)
    assert third.json()["disclosure"]["epsilon_spent"] == pytest.approx(0.3)


def test_refusals_spend_nothing(live):
    spent = budget(live).json()["epsilon_spent"]
    cases = [
        ("j.doe", BY_LA, 403),  # holds the project claim but is not a named user
        ("r.smith", BY_LA + " HAVING COUNT(DISTINCT p.person_id) > 5", 400),
        ("r.smith", "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY p.sex ORDER BY n",
         400),
        ("r.smith", "SELECT p.sex, COUNT(DISTINCT p.ethnicity) FROM patients p GROUP BY 1", 400),
        ("r.smith", "SELECT p.sex, COUNT(*) FROM patients p GROUP BY ROLLUP (p.sex)", 400),
    ]
    for sub, sql, status in cases:
        resp = live.query(sub, sql, PROJECT, PURPOSE)
        assert resp.status_code == status, (sql, resp.text)
        assert live.entry_for(resp)["decision"] in ("refused", "denied")
    too_much = live.query("r.smith", BY_LA, PROJECT, PURPOSE, epsilon=50)
    assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "invalid_epsilon"
    assert budget(live).json()["epsilon_spent"] == spent


def test_who_may_read_a_budget(live):
    assert budget(live, "a.khan").status_code == 200
    assert budget(live, "ig.lead").status_code == 200
    outsider = budget(live, "p.jones")
    unknown = budget(live, "r.smith", "NO-SUCH-PROJECT")
    assert outsider.status_code == unknown.status_code == 404
    assert outsider.json()["error"]["code"] == "not_found"
    planning = budget(live, "p.jones", "JOINT-PLANNING").json()
    assert planning["regime"] == "threshold" and planning["epsilon_total"] is None
    events = [e for e in live.audit_entries() if e.get("event") == "budget_read"]
    assert {e["decision"] for e in events} >= {"permitted", "refused"}


def test_an_overspend_is_a_429_with_the_figures_and_the_ledger_survives_a_restart(
        data_dir, tmp_path):
    state = tmp_path / "state"
    server = LiveServer(make_settings(data_dir, state))
    try:
        for limit in (10, 11):  # two different queries
            sql = BY_LA + f" LIMIT {limit}"
            assert server.query("r.smith", sql, PROJECT, PURPOSE, epsilon=1.5).status_code == 200
        sql_a = EVENTS_BY_CODE + " LIMIT 7"
        resp = server.query("a.khan", sql_a, PROJECT, PURPOSE, epsilon=1.5)
        assert resp.status_code == 429
        err = resp.json()["error"]
        assert err["code"] == "budget_exhausted"
        figures = err["reasons"][0]
        assert figures["epsilon_requested"] == pytest.approx(1.5)
        assert figures["epsilon_left"] == pytest.approx(1.0)
        assert server.entry_for(resp)["error_code"] == "budget_exhausted"
        spent = budget(server).json()
    finally:
        server.stop()
    restarted = LiveServer(make_settings(data_dir, state))
    try:
        assert budget(restarted).json() == spent
        ok = restarted.query("a.khan", sql_a, PROJECT, PURPOSE, epsilon=1.0)
        assert ok.status_code == 200, ok.text
        assert budget(restarted).json()["epsilon_left"] == pytest.approx(0.0, abs=1e-6)
    finally:
        restarted.stop()
    with sqlite3.connect(state / "budget.sqlite") as con:
        rows = con.execute("SELECT epsilon, status FROM spends").fetchall()
    assert [s for _, s in rows] == ["released"] * 3
    assert sum(e for e, _ in rows) == pytest.approx(4.0)


@pytest.fixture(scope="module")
def heavy(data_dir, tmp_path_factory):
    """The generated data plus one new person (not opted out) with 500 events of one code."""
    out = tmp_path_factory.mktemp("heavy")
    for f in data_dir.glob("*.parquet"):
        shutil.copy(f, out / f.name)
    con = duckdb.connect()
    (new_id,) = con.execute(f"SELECT max(person_id) + 1 FROM '{data_dir}/patients.parquet'"
                            ).fetchone()
    con.execute(f"""COPY (SELECT * FROM '{data_dir}/patients.parquet' UNION ALL
                          SELECT * REPLACE ({new_id} AS person_id) FROM
                          (SELECT * FROM '{data_dir}/patients.parquet' LIMIT 1))
                    TO '{out}/patients.parquet' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT * FROM '{data_dir}/gp_events.parquet' UNION ALL
                          SELECT e.* REPLACE ({new_id} AS person_id, '44054006' AS snomed_code)
                          FROM (SELECT * FROM '{data_dir}/gp_events.parquet' LIMIT 1) e,
                               range(500))
                    TO '{out}/gp_events.parquet' (FORMAT parquet)""")
    return out


@pytest.mark.parametrize("sql", [
    EVENTS_BY_CODE,
    "SELECT COUNT(*) AS events, COUNT(DISTINCT e.person_id) AS people FROM gp_events e "
    "WHERE e.snomed_code = '44054006'",
])
def test_a_person_with_500_events_moves_the_exact_aggregates_by_at_most_the_bound(
        live, data_dir, heavy, tmp_path, sql):
    """The bounded aggregates, before any noise, with and without the heavy person."""
    explained = live.client.post("/v1/queries/explain", headers={
        "Authorization": f"Bearer {live.token('r.smith')}"},
        json={"sql": sql, "project": PROJECT, "purpose": PURPOSE}).json()
    bounded_sql = explained["executed_sql"]
    cells, rows = (explained["output"]["max_cells_per_person"],
                   explained["output"]["max_rows_per_cell"])
    catalogue = load_catalogue()

    def run(data):
        engine = DuckDBEngine(data, tmp_path / data.name, catalogue, memory_limit="1GB",
                              threads=1)
        try:
            return engine.execute(bounded_sql, timeout_s=60, row_cap=100_000).rows
        finally:
            engine.close()

    keyed = "GROUP BY" in sql
    without = {r[0] if keyed else (): r for r in run(data_dir)}
    with_ = {r[0] if keyed else (): r for r in run(heavy)}
    first = 1 if keyed else 0  # the statistic columns start after the key
    moved_rows = [with_[k][first] - without.get(k, [0] * 9)[first] for k in with_]
    moved_people = [with_[k][first + 1] - without.get(k, [0] * 9)[first + 1] for k in with_]
    assert max(moved_rows) >= 1, "the person is in the data"
    assert all(0 <= m <= rows for m in moved_rows)
    assert sum(moved_rows) <= cells * rows
    assert all(0 <= m <= 1 for m in moved_people) and sum(moved_people) <= cells
    # without the bound the person would move the count by 500
    plain = duckdb.connect().execute(
        f"SELECT count(*) FROM '{heavy}/gp_events.parquet' WHERE snomed_code = '44054006'"
    ).fetchone()[0] - duckdb.connect().execute(
        f"SELECT count(*) FROM '{data_dir}/gp_events.parquet' WHERE snomed_code = '44054006'"
    ).fetchone()[0]
    assert plain == 500


def test_a_broken_ledger_fails_closed_with_a_503_spending_and_releasing_nothing(
        data_dir, tmp_path):
    """The ledger file really broken under a running server (overwritten with junk): queries
    and budget reads get 503 in the error shape, audited, and no row leaves."""
    state = tmp_path / "state"
    server = LiveServer(make_settings(data_dir, state))
    try:
        for suffix in ("", "-wal", "-shm"):
            (state / f"budget.sqlite{suffix}").unlink(missing_ok=True)
        (state / "budget.sqlite").write_bytes(b"this is not a database" * 100)
        resp = server.query("r.smith", BY_LA, PROJECT, PURPOSE)
        assert resp.status_code == 503, resp.text
        err = resp.json()["error"]
        assert err["code"] == "budget_unavailable" and "rows" not in resp.json()
        entry = server.entry_for(resp)
        assert entry["decision"] == "failed" and "rows_released" not in entry
        read = budget(server)
        assert read.status_code == 503
        assert server.entry_for(read)["decision"] == "failed"
        # a threshold project does not depend on the ledger and keeps working
        ok = server.query("p.jones", "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY p.sex",
                          "JOINT-PLANNING", "planning")
        assert ok.status_code == 200
    finally:
        server.stop()


def test_a_cell_whose_every_pair_the_bound_cuts_is_no_cell(live, data_dir, tmp_path):
    """Per-day cells: people with events on more than L days keep L of them, so some days lose
    everyone. Those days must not come back as cells holding nobody (their keys would then
    come from the very rows the bound dropped)."""
    sql = "SELECT e.event_date, COUNT(*) AS events FROM gp_events e GROUP BY e.event_date"
    explained = live.client.post("/v1/queries/explain", headers={
        "Authorization": f"Bearer {live.token('r.smith')}"},
        json={"sql": sql, "project": PROJECT, "purpose": PURPOSE}).json()
    assert explained["dp"]["cells_per_person"] > 1
    bounded = explained["executed_sql"]
    engine = DuckDBEngine(data_dir, tmp_path / "engine", load_catalogue(), memory_limit="1GB",
                          threads=1)
    try:
        def people(q: str) -> list:
            # the people behind each cell, before the engine's text of its keys
            return [r[-2] for r in engine.execute(q, timeout_s=60, row_cap=100_000).rows]
        assert min(people(bounded)) >= 1, "a cell with no one left in it"
        # the same cells before the empty ones are dropped: some days did lose everyone
        assert min(people(bounded.replace(" HAVING SUM(__w) > 0", ""))) == 0
    finally:
        engine.close()
