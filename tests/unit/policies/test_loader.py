"""Policy files: the shipped ones load; a broken one is refused naming the file, field and fix."""

from __future__ import annotations

import shutil

import pytest

from policies import PolicyError, load_policies
from policies.loader import shipped_policies_dir

SHIPPED_IDS = {"covid19-copi-notice", "outbreak-control-reg3", "joint-planning",
               "joint-planning-draft", "diabetes-research-s251", "frailty-cohort-consent"}


def test_shipped_policies_load(catalogue):
    policies = load_policies(None, catalogue)
    assert {p.id for p in policies.policies} == SHIPPED_IDS


def test_effective_dates_and_opt_out_follow_the_basis(catalogue):
    ps = load_policies(None, catalogue)
    covid = ps.by_id("covid19-copi-notice")
    assert str(covid.effective_end) == "2022-06-30" and not covid.opt_out_applies
    s251 = ps.by_id("diabetes-research-s251")
    assert str(s251.effective_end) == "2027-12-31" and s251.opt_out_applies
    assert not ps.by_id("frailty-cohort-consent").opt_out_applies
    assert ps.by_id("joint-planning").opt_out_applies
    assert not ps.by_id("outbreak-control-reg3").opt_out_applies


def broken(tmp_path, name, edit):
    d = tmp_path / "policies"
    shutil.copytree(shipped_policies_dir(), d)
    path = d / name
    path.write_text(edit(path.read_text()))
    return d


@pytest.mark.parametrize(
    ("file", "edit", "expect"),
    [
        ("joint-planning.toml", lambda s: s.replace('regime = "threshold"', 'regime = "magic"'),
         "joint-planning.toml: output.regime"),
        ("joint-planning.toml", lambda s: s.replace("purposes =", "purposez ="),
         "joint-planning.toml: purposez: unknown field"),
        ("joint-planning.toml", lambda s: s.replace("start = 2026-04-01\nend", "start = 2026-13-01\nend"),
         "joint-planning.toml: not valid TOML"),
        ("outbreak-control-reg3.toml",
         lambda s: s.replace('org_types = ["icb"', 'org_types = ["commercial", "icb"'),
         "regulation 3 cannot be cited"),
        ("outbreak-control-reg3.toml",
         lambda s: s.replace('purposes = ["communicable_disease_control"]',
                             'purposes = ["winter_planning"]'),
         "not within regulation 3(1)"),
        ("diabetes-research-s251.toml",
         lambda s: s.replace('patients = ["year_of_birth"', 'patients = ["nhs_number", "year_of_birth"'),
         "'nhs_number' is a direct_identifier and is never granted"),
        ("joint-planning.toml", lambda s: s.replace('"reference"]', '"reference", "ndop"]'),
         "'ndop' is read by the engine only"),
        ("joint-planning.toml", lambda s: s.replace('"reference"]', '"nonesuch"]'),
         "unknown dataset 'nonesuch'"),
        ("frailty-cohort-consent.toml", lambda s: s.replace('consent_study = "FRAILTY-2025"', ""),
         "a consent basis needs rows.consent_study"),
        ("joint-planning.toml", lambda s: s.replace('roles = ["planner"]', 'roles = ["ig_auditor"]'),
         "ig_auditor never queries data"),
        ("joint-planning-draft.toml",
         lambda s: s.replace('project = "JOINT-PLANNING-DRAFT"', 'project = "JOINT-PLANNING"'),
         "project JOINT-PLANNING is also used by"),
    ],
)
def test_broken_policy_is_refused_naming_file_and_field(tmp_path, catalogue, file, edit, expect):
    with pytest.raises(PolicyError) as info:
        load_policies(broken(tmp_path, file, edit), catalogue)
    assert any(expect in p for p in info.value.problems), info.value.problems
