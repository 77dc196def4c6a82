"""Every realistic query, through the gateway, for three callers, against raw DuckDB with the
row filters applied by hand (as views written here, not by the gateway's rewrite)."""

from __future__ import annotations

import duckdb
import pytest
from spec.realistic_queries import REALISTIC

from gateway.disclosure.threshold import round_to_base

PERSON_TABLES = ("gp_events", "hospital_admissions", "social_care", "deaths")

#: caller, project, purpose, who they may see (SQL over main.patients), opt-out removed,
#: datasets granted
SCENARIOS = {
    "norfolk planner": ("p.jones", "JOINT-PLANNING", "planning",
                        "local_authority_code = 'E10000020'", True, None),
    "ICB analyst": ("m.brown", "JOINT-PLANNING", "planning",
                    "lsoa_code IN (SELECT lsoa_code FROM main.lsoa_lookup WHERE icb_code = 'QMM')",
                    True, None),
    "outbreak control": ("m.brown", "OUTBREAK-2026", "communicable_disease_control", "TRUE",
                         False, {"patients", "gp_events", "hospital_admissions", "deaths",
                                 "lsoa_lookup"}),
}


def test_there_are_at_least_fifty():
    assert len(REALISTIC) >= 50


@pytest.fixture(scope="module")
def oracles(data_dir):
    """One DuckDB schema per scenario whose tables hold exactly the rows the caller may see."""
    con = duckdb.connect()
    for f in data_dir.glob("*.parquet"):
        con.execute(f"CREATE TABLE main.{f.stem} AS SELECT * FROM read_parquet('{f}')")
    for name, (_, _, _, residents, opt_out, _) in SCENARIOS.items():
        schema = name.replace(" ", "_").replace("-", "_")
        con.execute(f"CREATE SCHEMA {schema}")
        people = f"SELECT person_id FROM main.patients WHERE {residents}"
        if opt_out:
            people += " AND person_id NOT IN (SELECT person_id FROM main.opt_outs)"
        for table in ("patients", *PERSON_TABLES):
            con.execute(f"CREATE VIEW {schema}.{table} AS SELECT * FROM main.{table} "
                        f"WHERE person_id IN ({people})")
        con.execute(f"CREATE VIEW {schema}.lsoa_lookup AS SELECT * FROM main.lsoa_lookup")
    yield con
    con.close()


def run_oracle(con, scenario: str, sql: str):
    schema = scenario.replace(" ", "_").replace("-", "_")
    cur = con.cursor()
    cur.execute(f"USE memory.{schema}")
    return cur.execute(sql).fetchall()


def tables_of(sql: str) -> set[str]:
    return {t for t in ("patients", *PERSON_TABLES, "lsoa_lookup") if f" {t} " in f" {sql} "}


CASES = [(scenario, name) for scenario in SCENARIOS for name, _, _ in REALISTIC]


@pytest.mark.parametrize(("scenario", "name"), CASES)
def test_realistic_query(server, oracles, scenario, name):
    keys, sql = next((k, q) for n, k, q in REALISTIC if n == name)
    sub, project, purpose, _, _, granted = SCENARIOS[scenario]
    resp = server.query(sub, sql, project, purpose)
    if granted is not None and not tables_of(sql) <= granted:
        assert resp.status_code == 403 and resp.json()["error"]["reasons"][0]["rule"] == "table"
        return
    body = server.released(resp, sub)
    truth = {tuple(_norm(v) for v in row[:keys]): row[keys:]
             for row in run_oracle(oracles, scenario, sql)}
    released = {tuple(row[:keys]): row[keys:] for row in body["rows"]}
    assert set(released) <= set(truth), "a group that the hand-filtered truth does not have"
    withheld = server.entry_for(resp).get("rows_withheld", 0)
    assert len(truth) - len(released) == withheld
    rounded = set(body["disclosure"]["rounded_columns"])
    base = body["disclosure"]["rounding_base"]
    agg_names = body["columns"][keys:]
    averages = {name for name, node in zip(body["columns"], _projections(sql), strict=False)
                if node.upper().startswith("AVG(")}
    shown = 0
    for key, values in released.items():
        for col, got, want in zip(agg_names, values, truth[key], strict=True):
            if got is None:
                continue  # suppressed (listed in the response; judged in other tests)
            shown += 1
            if col in rounded:  # counts of rows where one person adds several: a larger base
                col_base = body["disclosure"].get("column_rounding_bases", {}).get(col, base)
                assert got == round_to_base(want, col_base), (key, col)
            elif isinstance(want, float) and col in averages:
                assert got == float(f"{want:.3g}"), (key, col)  # 3 significant figures
            elif isinstance(want, float):
                assert got == pytest.approx(want), (key, col)
            else:
                assert got == _norm(want), (key, col)
    assert shown > 0, "every cell was suppressed: the case checks nothing"


def _norm(v):
    """JSON renders dates as ISO text and DuckDB returns date objects; compare alike."""
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return float(v) if type(v).__name__ == "Decimal" else v


def _projections(sql: str) -> list[str]:
    """The outer select's projections as SQL text (to tell averages apart)."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="duckdb")
    select = tree if isinstance(tree, sqlglot.exp.Select) else tree.find(sqlglot.exp.Select)
    return [e.unalias().sql(dialect="duckdb") for e in select.expressions]
