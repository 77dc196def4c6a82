"""The engine reads only the columns the analysis resolved.

Every catalogue table scan in every query the pipeline runs becomes a derived table that
selects the columns the analysis resolved for that table (which the policy then granted) and
the person key, under the caller's row filters (``filter_scans`` in gateway/sql/scans.py).
Review round 37 found a name the resolver took for an output alias (inside an ORDER BY
expression) that DuckDB read as a table's column: a direct identifier, and under dp a column
the project was not granted, chose each person's row and reached the released counts. The
analysis now refuses that name (``check_names_bound``); these tests switch that rule off to
show the second line alone: the column is not there for the engine to read, so the query
means what the analysis took it to mean.
"""

from __future__ import annotations

import pytest
import sqlglot
from attack import executed, planned
from sqlglot import exp

from datasets import ColumnClass
from gateway.errors import GatewayError, SqlRejected
from gateway.sql import analysis as analysis_module
from gateway.sql.analysis import analyse
from gateway.sql.rewrite import rewrite
from policies import Obligations
from policies.model import Output

#: per person, the first GP event if the hidden condition holds, else the last; the output
#: named like the hidden column is the event number
CHOOSE = """
    WITH c AS (SELECT g.person_id, ROW_NUMBER() OVER (PARTITION BY g.person_id
                   ORDER BY g.event_date, g.snomed_code) AS rn FROM gp_events g),
    x AS (SELECT DISTINCT ON (c.person_id) c.person_id, c.rn, c.rn AS {hidden}
          FROM c JOIN patients p ON p.person_id = c.person_id
          ORDER BY CASE WHEN {condition} THEN c.rn ELSE -c.rn END)
    SELECT p2.sex, COUNT(DISTINCT x.person_id) AS people
    FROM x JOIN patients p2 ON p2.person_id = x.person_id WHERE x.rn > 1 GROUP BY 1"""


def scanned_columns(sql: str, catalogue) -> dict[str, set[str]]:
    """Per catalogue table, the columns the executed SQL's scans of it select."""
    out: dict[str, set[str]] = {}
    for table in sqlglot.parse_one(sql, dialect="duckdb").find_all(exp.Table):
        meta = catalogue.table(table.name)
        select = table.find_ancestor(exp.Select)
        if meta is None or select is None or table.parent is not select.args.get("from_"):
            continue
        if select.args.get("joins"):
            continue  # a filter's own lookup, not a scan of the caller's query
        out.setdefault(meta.name, set()).update(select.named_selects)
    return out


def test_the_rule_refuses_an_output_name_inside_an_order_by_expression(catalogue):
    sql = CHOOSE.format(hidden="date_of_birth", condition="MONTH(date_of_birth) <= 6")
    with pytest.raises(SqlRejected, match="names an output column inside an expression"):
        planned(sql, catalogue)


@pytest.mark.parametrize("hidden, condition", [
    # a direct identifier; as text a date holds a '-', an event number never does
    ("date_of_birth", "CAST(date_of_birth AS VARCHAR) LIKE '%-0%'"),
    ("date_of_birth", "MONTH(date_of_birth) <= 6"),  # binds to a date only
    ("registration_date", "CAST(registration_date AS VARCHAR) LIKE '%-%'"),  # not named
])
def test_with_the_rule_switched_off_the_engine_reads_the_output_column(
        hidden, condition, catalogue, engine, raw, monkeypatch):
    monkeypatch.setattr(analysis_module, "check_names_bound", lambda tree, cat: None)
    plan = planned(CHOOSE.format(hidden=hidden, condition=condition), catalogue)
    for query in executed(plan):
        assert hidden not in scanned_columns(query, catalogue).get("patients", set())
    try:
        got = engine.execute(plan.sql, timeout_s=30, row_cap=10_000)
    except GatewayError:
        assert "MONTH" in condition  # MONTH() of an event number: nothing to bind, a 400
        return
    released = {row[0]: row[1] for row in got.rows}
    # read as the output column (an event number), the condition never holds: each person's
    # last event is chosen, and everyone with two or more events counts. Read as the table's
    # column, only some would (or, for '%-%', no one)
    everyone = dict(raw.execute("""
        SELECT p.sex, COUNT(*) FROM patients p
        JOIN (SELECT person_id FROM gp_events GROUP BY 1 HAVING COUNT(*) > 1) e
          ON e.person_id = p.person_id
        WHERE p.person_id NOT IN (SELECT person_id FROM opt_outs WHERE person_id IS NOT NULL)
        GROUP BY 1""").fetchall())
    assert released == everyone, (released, everyone)


def test_scans_select_the_resolved_columns_and_the_person_key(catalogue):
    sql = ("SELECT p.sex, l.icb_code, COUNT(*) AS stays FROM patients p "
           "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code "
           "JOIN hospital_admissions h ON h.person_id = p.person_id GROUP BY 1, 2")
    plan = planned(sql, catalogue)
    for query in executed(plan):
        scanned = scanned_columns(query, catalogue)
        assert scanned["patients"] == {"person_id", "sex", "lsoa_code"}
        assert scanned["lsoa_lookup"] == {"icb_code", "lsoa_code"}
        assert scanned["hospital_admissions"] == {"person_id"}


def test_no_direct_identifier_is_ever_selected_by_a_scan(catalogue):
    """Even without row filters (a policy with none), the tables are read narrowed."""
    sql = "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY 1"
    plan = rewrite(analyse(sql, catalogue, max_chars=20_000, max_depth=64),
                   Obligations(None, False, None, Output(regime="threshold")), catalogue, 10_000)
    identifiers = {c.name for t in catalogue.tables.values() for c in t.columns
                   if c.cls is ColumnClass.DIRECT_IDENTIFIER}
    assert identifiers
    for query in executed(plan):
        for columns in scanned_columns(query, catalogue).values():
            assert not columns & identifiers
