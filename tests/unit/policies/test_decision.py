"""The decision on plain facts, for the rules the walking skeleton relies on."""

from __future__ import annotations

from datetime import date

import pytest

from policies import Caller, ColumnUse, Facts, decide, load_policies
from policies.loader import load_demo_users

USERS = {u.sub: u for u in load_demo_users()}


@pytest.fixture(scope="module")
def policies(catalogue):
    return load_policies(None, catalogue)


def facts(sub, project, purpose, cols=(("patients", "sex", "select"),), today=date(2026, 11, 23),
          **caller_over):
    u = USERS[sub]
    caller = Caller(sub=u.sub, org=u.org, org_type=u.org_type, roles=u.roles,
                    projects=u.projects)
    if caller_over:
        caller = Caller(**{**caller.__dict__, **caller_over})
    uses = tuple(ColumnUse(*c) for c in cols)
    return Facts(caller, project, purpose, frozenset(u.table for u in uses), uses, today)


@pytest.mark.parametrize(
    ("sub", "project", "purpose", "today", "permitted", "rule"),
    [
        ("p.jones", "JOINT-PLANNING", "planning", date(2026, 11, 23), True, "permit"),
        ("p.jones", "JOINT-PLANNING", "planning", date(2026, 3, 31), False, "validity"),
        ("p.jones", "JOINT-PLANNING", "planning", date(2029, 3, 31), True, "permit"),
        ("p.jones", "JOINT-PLANNING", "planning", date(2029, 4, 1), False, "validity"),
        ("p.jones", "JOINT-PLANNING-DRAFT", "planning", date(2026, 11, 23), False, "basis_status"),
        ("p.jones", "COVID19-RESPONSE", "covid19", date(2021, 6, 1), True, "permit"),
        ("p.jones", "COVID19-RESPONSE", "covid19", date(2022, 6, 30), True, "permit"),
        ("p.jones", "COVID19-RESPONSE", "covid19", date(2022, 7, 1), False, "validity"),
        ("p.jones", "COVID19-RESPONSE", "planning", date(2021, 6, 1), False, "purpose"),
        ("c.trader", "OUTBREAK-2026", "communicable_disease_control", date(2026, 11, 23), False,
         "reg3_eligibility"),
        ("m.brown", "OUTBREAK-2026", "communicable_disease_control", date(2026, 11, 23), True,
         "permit"),
        ("j.doe", "PRJ-0042", "research", date(2026, 11, 23), False, "named_user"),
        ("a.khan", "PRJ-0042", "research", date(2026, 11, 23), True, "permit"),
        ("r.smith", "PRJ-0042", "research", date(2027, 12, 31), True, "permit"),
        ("r.smith", "PRJ-0042", "research", date(2028, 1, 1), False, "validity"),
        ("ig.lead", "JOINT-PLANNING", "planning", date(2026, 11, 23), False, "role"),
        ("s.patel", "OUTBREAK-2026", "communicable_disease_control", date(2026, 11, 23), False,
         "project_membership"),
    ],
)
def test_decisions(policies, catalogue, sub, project, purpose, today, permitted, rule):
    d = decide(facts(sub, project, purpose, today=today), policies, catalogue)
    assert d.permitted is permitted, d.reasons
    assert rule in {r.rule for r in d.reasons}


def test_s251_overdue_review_is_not_an_expiry(policies, catalogue):
    assert policies.by_id("diabetes-research-s251").legal_basis.annual_review_due < date(2026, 11, 23)
    assert decide(facts("r.smith", "PRJ-0042", "research"), policies, catalogue).permitted


def test_column_not_granted_is_refused_in_any_clause(policies, catalogue):
    d = decide(facts("r.smith", "PRJ-0042", "research",
                     cols=[("patients", "practice_code", "where")]), policies, catalogue)
    assert not d.permitted
    assert "patients.practice_code" in d.reasons[0].message and "where" in d.reasons[0].message
    assert "year_of_birth" in d.hint


def test_dataset_not_granted_is_refused(policies, catalogue):
    d = decide(facts("r.smith", "PRJ-0042", "research",
                     cols=[("social_care", "service_type", "group")]), policies, catalogue)
    assert not d.permitted and d.reasons[0].rule == "table"


def test_obligations_for_a_council_planner(policies, catalogue):
    d = decide(facts("p.jones", "JOINT-PLANNING", "planning"), policies, catalogue)
    o = d.obligations
    assert o.remove_opted_out and o.consent is None
    assert o.residence.column == "local_authority_code" and o.residence.values == ("E10000020",)
    assert o.residence.lookup_table is None


def test_obligations_for_an_icb_analyst(policies, catalogue):
    o = decide(facts("m.brown", "JOINT-PLANNING", "planning"), policies, catalogue).obligations
    assert o.residence.lookup_table == "lsoa_lookup" and o.residence.via == "lsoa_code"
    assert o.residence.column == "icb_code" and o.residence.values == ("QMM",)


def test_opt_out_by_legal_basis(policies, catalogue):
    reg3 = decide(facts("m.brown", "OUTBREAK-2026", "communicable_disease_control"),
                  policies, catalogue)
    s251 = decide(facts("r.smith", "PRJ-0042", "research"), policies, catalogue)
    consent = decide(facts("r.smith", "PRJ-0077", "research"), policies, catalogue)
    assert not reg3.obligations.remove_opted_out
    assert s251.obligations.remove_opted_out
    assert not consent.obligations.remove_opted_out
    assert consent.obligations.consent.study_id == "FRAILTY-2025"
