"""The numbers move as the law says, over HTTP, against raw DuckDB.

The opt-out and the consent cohort follow the legal basis, whatever the output regime. The
shipped s251 (dp) and consent (cell_key) policies cannot release until those regimes exist, so
this test serves copies of the two with the threshold regime; everything else is as shipped.
"""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from conftest import LiveServer, make_settings

from gateway.disclosure.threshold import round_to_base
from policies.loader import shipped_policies_dir

DIABETICS_BY_SEX = ("SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p "
                    "WHERE p.person_id IN (SELECT person_id FROM gp_events "
                    "WHERE snomed_code = '44054006') GROUP BY p.sex ORDER BY p.sex")
DEATHS_BY_PLACE = ("SELECT d.place_of_death, COUNT(*) AS deaths FROM deaths d "
                   "GROUP BY d.place_of_death ORDER BY d.place_of_death")
IN_CARE = ("SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
           "GROUP BY s.service_type ORDER BY s.service_type")


@pytest.fixture(scope="module")
def live(data_dir, tmp_path_factory):
    pol = tmp_path_factory.mktemp("policies")
    shutil.copytree(shipped_policies_dir(), pol, dirs_exist_ok=True)
    for name, old in [("diabetes-research-s251.toml", 'regime = "dp"\nepsilon_budget = 4.0'),
                      ("frailty-cohort-consent.toml", 'regime = "cell_key"')]:
        f = pol / name
        assert old in f.read_text()
        f.write_text(f.read_text().replace(old, 'regime = "threshold"\nmin_people = 8'))
    server = LiveServer(make_settings(data_dir, tmp_path_factory.mktemp("state"),
                                      policies_dir=pol))
    yield server
    server.stop()


def released(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return {row[0]: row[1] for row in resp.json()["rows"]}


def rounded(truth: dict) -> dict:
    return {k: (None if 0 < v < 8 else round_to_base(v, 5)) for k, v in truth.items()}


def test_s251_removes_opted_out_people_and_regulation_3_keeps_them(live, raw):
    s251 = released(live.query("r.smith", DIABETICS_BY_SEX, "PRJ-0042", "research"))
    reg3 = released(live.query("m.brown", DIABETICS_BY_SEX, "OUTBREAK-2026",
                               "communicable_disease_control"))
    everyone = dict(raw.execute(
        "SELECT sex, count(*) FROM patients WHERE person_id IN (SELECT person_id FROM gp_events "
        "WHERE snomed_code = '44054006') GROUP BY sex").fetchall())
    opted_in = dict(raw.execute(
        "SELECT sex, count(*) FROM patients WHERE person_id IN (SELECT person_id FROM gp_events "
        "WHERE snomed_code = '44054006') AND person_id NOT IN (SELECT person_id FROM opt_outs) "
        "GROUP BY sex").fetchall())
    assert s251 == rounded(opted_in)
    assert reg3 == rounded(everyone)
    assert sum(everyone.values()) - sum(opted_in.values()) >= 10, "the difference shows"
    assert s251 != reg3


def test_opted_out_people_stay_out_after_death(live, raw):
    """The opt-out outlives the person: deceased opted-out people are not counted."""
    planning = released(live.query("p.jones", DEATHS_BY_PLACE, "JOINT-PLANNING", "planning"))
    truth = dict(raw.execute(
        """SELECT d.place_of_death, count(*) FROM deaths d JOIN patients p USING (person_id)
           WHERE p.local_authority_code = 'E10000020'
           AND d.person_id NOT IN (SELECT person_id FROM opt_outs) GROUP BY 1""").fetchall())
    (dead_opted_out,) = raw.execute(
        """SELECT count(*) FROM deaths d JOIN patients p USING (person_id)
           WHERE p.local_authority_code = 'E10000020'
           AND d.person_id IN (SELECT person_id FROM opt_outs)""").fetchone()
    assert dead_opted_out > 0, "the fixture has opted-out people who have died"
    assert planning == rounded(truth)


def test_consent_cohort_only_withdrawn_excluded_opted_out_included(live, raw):
    cohort = released(live.query("r.smith", IN_CARE, "PRJ-0077", "research"))
    today = date(2026, 11, 23).isoformat()
    truth = dict(raw.execute(
        f"""SELECT s.service_type, count(DISTINCT s.person_id) FROM social_care s
            WHERE s.person_id IN (SELECT person_id FROM study_consents
                                  WHERE study_id = 'FRAILTY-2025' AND consented_on <= DATE '{today}'
                                  AND (withdrawn_on IS NULL OR withdrawn_on > DATE '{today}'))
            GROUP BY 1""").fetchall())
    assert cohort == rounded(truth)
    (withdrawn_in_care,) = raw.execute(
        f"""SELECT count(DISTINCT s.person_id) FROM social_care s JOIN study_consents c
            USING (person_id) WHERE c.study_id = 'FRAILTY-2025'
            AND c.withdrawn_on <= DATE '{today}'""").fetchone()
    (opted_out_in_cohort,) = raw.execute(
        """SELECT count(DISTINCT s.person_id) FROM social_care s JOIN study_consents c
            USING (person_id) WHERE c.study_id = 'FRAILTY-2025' AND c.withdrawn_on IS NULL
            AND s.person_id IN (SELECT person_id FROM opt_outs)""").fetchone()
    assert withdrawn_in_care > 0 and opted_out_in_cohort > 0, "both effects are in the data"


def test_the_shipped_dp_and_cell_key_policies_do_not_release_yet(server):
    for sub, project in [("r.smith", "PRJ-0042"), ("r.smith", "PRJ-0077")]:
        resp = server.query(sub, IN_CARE if project == "PRJ-0077" else DIABETICS_BY_SEX,
                            project, "research")
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "regime_unavailable"
