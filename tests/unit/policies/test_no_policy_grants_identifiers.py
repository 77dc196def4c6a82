"""Property: however a policy file is written, it never grants a direct identifier, an internal
column or an engine-only register; the file is refused or the grant is not there."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets import load_catalogue
from datasets.catalogue import ENGINE_ONLY, NEVER_QUERYABLE
from policies import Caller, ColumnUse, Facts, PolicyError, decide, load_policies
from policies.loader import granted_columns, granted_tables, shipped_policies_dir

CATALOGUE = load_catalogue()
DATASETS = [d.name for d in CATALOGUE.datasets] + ["nonesuch"]
TABLES = list(CATALOGUE.tables) + ["nowhere"]
COLUMNS = sorted({c.name for t in CATALOGUE.tables.values() for c in t.columns}) + ["ghost"]
FORBIDDEN = [(t.name, c.name) for t in CATALOGUE.tables.values() for c in t.columns
             if c.cls in NEVER_QUERYABLE or t.kind in ENGINE_ONLY]


def toml_list(items) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


@st.composite
def data_sections(draw):
    datasets = draw(st.lists(st.sampled_from(DATASETS), min_size=1, max_size=6, unique=True))
    lines = ["[data]", f"datasets = {toml_list(datasets)}"]
    if draw(st.booleans()):
        lines.append(f"tables = {toml_list(draw(st.lists(st.sampled_from(TABLES), max_size=6)))}")
    columns = draw(st.dictionaries(st.sampled_from(TABLES),
                                   st.lists(st.sampled_from(COLUMNS), max_size=8), max_size=4))
    if columns:
        lines.append("[data.columns]")
        lines += [f"{t} = {toml_list(cols)}" for t, cols in columns.items()]
    return "\n".join(lines)


def policy_text(data: str) -> str:
    text = (shipped_policies_dir() / "joint-planning.toml").read_text()
    start = text.index("[data]")
    end = text.index("[rows]")
    return text[:start] + data + "\n\n" + text[end:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data_sections())
def test_no_policy_grants_an_identifier_or_a_register(data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.toml").write_text(policy_text(data))
        try:
            policies = load_policies(Path(d), CATALOGUE)
        except PolicyError:
            return  # refused outright: nothing is granted
    policy = policies.policies[0]
    tables = granted_tables(policy, CATALOGUE)
    assert not tables & {t.name for t in CATALOGUE.tables.values() if t.kind in ENGINE_ONLY}
    for table in tables:
        cols = granted_columns(policy, CATALOGUE, table)
        assert not {(table, c) for c in cols} & set(FORBIDDEN)
    caller = Caller("p.jones", "E10000020", "local_authority", ("planner",), (policy.project,))
    for table, column in FORBIDDEN:
        facts = Facts(caller, policy.project, "planning", frozenset({table}),
                      (ColumnUse(table, column, "where"),), date(2026, 11, 23))
        assert not decide(facts, policies, CATALOGUE).permitted
