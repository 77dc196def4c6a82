"""Runs the decision table in decisions.md: the SQL is analysed for real, then decided."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway.errors import SqlParseError, SqlRejected
from gateway.sql.analysis import analyse
from policies import Caller, Facts, decide, load_policies
from policies.loader import load_demo_users

TABLE = Path(__file__).with_name("decisions.md")
QUERIES = {
    "sex": "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
    "care": "SELECT service_type, COUNT(*) FROM social_care GROUP BY service_type",
    "spells": "SELECT admission_method, COUNT(*) FROM hospital_admissions GROUP BY admission_method",
    "deaths": "SELECT place_of_death, COUNT(*) FROM deaths GROUP BY place_of_death",
    "imd": "SELECT l.imd_decile, COUNT(*) FROM patients p JOIN lsoa_lookup l "
           "ON l.lsoa_code = p.lsoa_code GROUP BY 1",
}
EVERY_PROJECT = ("JOINT-PLANNING", "JOINT-PLANNING-DRAFT", "COVID19-RESPONSE", "OUTBREAK-2026",
                 "PRJ-0042", "PRJ-0077", "NO-SUCH-PROJECT")
CALLERS = {u.sub: Caller(u.sub, u.org, u.org_type, u.roles, u.projects) for u in load_demo_users()}
CALLERS["c.trader"] = Caller("c.trader", "COMM-0001", "commercial", ("planner",), EVERY_PROJECT)
CALLERS.update({
    "t.nurse": Caller("t.nurse", "RGN", "nhs_trust", ("planner",), EVERY_PROJECT),
    "u.analyst": Caller("u.analyst", "10007163", "university", ("researcher",), EVERY_PROJECT),
    "c.broker": Caller("c.broker", "COMM-0002", "commercial", ("planner", "researcher"),
                       EVERY_PROJECT),
})


def rows() -> list[dict[str, str]]:
    lines = [x for x in TABLE.read_text().splitlines() if x.startswith("| ") and "---" not in x]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True))
            for line in lines[1:]]


CASES = rows()


def test_the_table_has_sixty_cases_and_covers_every_policy_and_rule():
    assert len(CASES) >= 60
    assert {c["project"] for c in CASES} >= set(EVERY_PROJECT)
    assert {c["rule"] for c in CASES} >= {
        "permit", "validity", "purpose", "role", "project_membership", "org_type",
        "basis_status", "reg3_eligibility", "named_user", "table", "column", "no_policy", "sql"}


@pytest.fixture(scope="module")
def policies(catalogue):
    return load_policies(None, catalogue)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['#']}-{c['caller']}-{c['rule']}" for c in CASES])
def test_decision(case, policies, catalogue):
    sql = QUERIES.get(case["query"], case["query"])
    try:
        analysis = analyse(sql, catalogue, max_chars=20_000, max_depth=64)
    except (SqlRejected, SqlParseError):
        assert case["expected"] == "refused", f"the SQL layer refused: {sql}"
        return
    assert case["expected"] != "refused", "the SQL layer should have refused this"
    facts = Facts(CALLERS[case["caller"]], case["project"], case["purpose"], analysis.tables,
                  analysis.columns, date.fromisoformat(case["date"]))
    decision = decide(facts, policies, catalogue)
    assert decision.permitted is (case["expected"] == "permit"), decision.reasons
    assert case["rule"] in {r.rule for r in decision.reasons}, decision.reasons
    if not decision.permitted:
        assert all(r.message for r in decision.reasons)
        return
    o = decision.obligations
    who = "all"
    if o.consent:
        who = f"consent {o.consent.study_id}"
    elif o.residence:
        who = (f"ICB {o.residence.values[0]}" if o.residence.lookup_table
               else f"LA {o.residence.values[0]}")
    opt = "opt-out removed" if o.remove_opted_out else "opt-out not applied"
    assert f"{who}, {opt}" == case["rows"]
