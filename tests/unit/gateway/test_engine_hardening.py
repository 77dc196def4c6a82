"""The engine is a boundary of its own: with the SQL layer bypassed entirely, a hostile statement
sent straight to the connection still cannot read files, write, attach, load code or reconfigure.
"""

from __future__ import annotations

import contextlib

import duckdb
import pytest

from gateway.engine import DuckDBEngine
from gateway.errors import QueryFailed, QueryTimeout, ResultTooLarge


def run_raw(engine: DuckDBEngine, sql: str):
    """Straight to a cursor of the engine's connection: no analysis, no rewrite."""
    return engine._con.cursor().execute(sql).fetchall()


def attacks(data_dir, db_path, scratch):
    parquet = data_dir / "patients.parquet"
    return [
        ("read a system file", "SELECT * FROM read_csv('/etc/passwd')"),
        ("read text", "SELECT * FROM read_text('/etc/hostname')"),
        ("read the raw parquet", f"SELECT count(*) FROM read_parquet('{parquet}')"),
        ("replacement scan", f"SELECT count(*) FROM '{parquet}'"),
        ("glob the disk", "SELECT * FROM glob('/*')"),
        ("copy out", f"COPY (SELECT * FROM patients) TO '{scratch}/leak.csv'"),
        ("overwrite own db", f"COPY (SELECT 1) TO '{db_path}' (FORMAT csv, USE_TMP_FILE false)"),
        ("export database", f"EXPORT DATABASE '{scratch}/export'"),
        ("attach", f"ATTACH '{scratch}/other.duckdb' AS other"),
        ("attach memory", "ATTACH ':memory:' AS scratch"),
        ("install", "INSTALL httpfs"),
        ("load", "LOAD httpfs"),
        ("set threads", "SET threads = 1"),
        ("set memory", "SET memory_limit = '100GB'"),
        ("re-enable access", "SET enable_external_access = true"),
        ("unlock", "SET lock_configuration = false"),
        ("re-enable file systems", "SET disabled_filesystems = ''"),
        ("create table", "CREATE TABLE leak AS SELECT * FROM patients"),
        ("insert", "INSERT INTO patients (person_id) VALUES (1)"),
        ("delete", "DELETE FROM opt_outs"),
        ("drop", "DROP TABLE opt_outs"),
        ("update", "UPDATE patients SET sex = 'X'"),
    ]


def test_every_file_write_and_config_attack_fails_on_the_raw_connection(engine, data_dir, tmp_path):
    failures = {}
    for name, sql in attacks(data_dir, engine.db_path, tmp_path):
        try:
            run_raw(engine, sql)
        except duckdb.Error as exc:
            failures[name] = type(exc).__name__
        else:
            failures[name] = None
    succeeded = [n for n, f in failures.items() if f is None]
    assert succeeded == [], f"attacks that succeeded on the engine connection: {succeeded}"
    assert list(tmp_path.iterdir()) == [], "an attack wrote a file"
    # still serving after all of that, with the opt-out register intact
    assert run_raw(engine, "SELECT count(*) FROM opt_outs")[0][0] > 0


def test_database_file_is_unchanged_by_attacks(engine, data_dir, tmp_path):
    before = engine.db_path.read_bytes()
    for _, sql in attacks(data_dir, engine.db_path, tmp_path):
        with contextlib.suppress(duckdb.Error):
            run_raw(engine, sql)
    assert engine.db_path.read_bytes() == before


def test_time_limit_interrupts_the_running_query(engine):
    with pytest.raises(QueryTimeout):
        engine.execute("SELECT count(*) FROM range(100000000000) a", timeout_s=0.3, row_cap=10)
    # the engine is usable afterwards
    assert engine.execute("SELECT 42", timeout_s=5, row_cap=10).rows == [(42,)]


def test_a_request_deadline_bounds_each_of_its_queries(engine):
    """The time limit is the request's: a later query of the same request gets what is left,
    and none once it is spent (review round 24: the row bound ran as long again)."""
    import time

    deadline = time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit of 30 s"):
        engine.execute("SELECT count(*) FROM range(100000000000) a", timeout_s=30,
                       row_cap=10, deadline=deadline)
    assert time.monotonic() - started < 5
    with pytest.raises(QueryTimeout):
        engine.execute("SELECT 42", timeout_s=30, row_cap=10, deadline=time.monotonic() - 1)
    assert engine.execute("SELECT 42", timeout_s=5, row_cap=10,
                          deadline=time.monotonic() + 5).rows == [(42,)]


def test_row_cap_is_enforced(engine):
    with pytest.raises(ResultTooLarge):
        engine.execute("SELECT range FROM range(100)", timeout_s=5, row_cap=10)
    assert len(engine.execute("SELECT range FROM range(10)", timeout_s=5, row_cap=10).rows) == 10


def test_engine_errors_are_typed_without_internals(engine):
    with pytest.raises(QueryFailed) as info:
        engine.execute("SELECT CAST('x' AS INTEGER)", timeout_s=5, row_cap=10)
    assert "\n" not in info.value.message


def test_a_second_engine_on_the_same_file_is_hardened_too(engine, data_dir, catalogue):
    """DuckDB shares an instance per file within a process; hardening must hold for both."""
    second = DuckDBEngine(data_dir, engine.db_path.parent.parent, catalogue,
                          memory_limit="1GB", threads=2)
    with pytest.raises(duckdb.Error):
        second._con.cursor().execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    second.close()
