"""The numbers move as the law says, over HTTP, against raw DuckDB, under the shipped policies.

The opt-out and the consent cohort follow the legal basis, whatever the output regime: the s251
project (dp) and the consent project (cell_key) are checked within their noise, the planning
and regulation 3 projects (threshold) exactly, after rounding.
"""

from __future__ import annotations

from datetime import date

import pytest
from conftest import LiveServer, make_settings

from gateway.disclosure.threshold import round_to_base

DIABETICS_BY_SEX = ("SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p "
                    "WHERE p.person_id IN (SELECT person_id FROM gp_events "
                    "WHERE snomed_code = '44054006') GROUP BY p.sex ORDER BY p.sex")
DEATHS_BY_PLACE = ("SELECT d.place_of_death, COUNT(*) AS deaths FROM deaths d "
                   "GROUP BY d.place_of_death ORDER BY d.place_of_death")
IN_CARE = ("SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
           "GROUP BY s.service_type ORDER BY s.service_type")


@pytest.fixture(scope="module")
def live(data_dir, tmp_path_factory):
    """A server of its own: the s251 test spends the project's privacy budget."""
    server = LiveServer(make_settings(data_dir, tmp_path_factory.mktemp("state")))
    yield server
    server.stop()


def released(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return {row[0]: row[1] for row in resp.json()["rows"]}


def rounded(truth: dict) -> dict:
    return {k: (None if 0 < v < 8 else round_to_base(v, 5)) for k, v in truth.items()}


def test_s251_removes_opted_out_people_and_regulation_3_keeps_them(live, raw):
    resp = live.query("r.smith", DIABETICS_BY_SEX, "PRJ-0042", "research", epsilon=2.0)
    s251 = released(resp)
    half_width = resp.json()["disclosure"]["accuracy"]["people"]
    reg3 = released(live.query("m.brown", DIABETICS_BY_SEX, "OUTBREAK-2026",
                               "communicable_disease_control"))
    everyone = dict(raw.execute(
        "SELECT sex, count(*) FROM patients WHERE person_id IN (SELECT person_id FROM gp_events "
        "WHERE snomed_code = '44054006') GROUP BY sex").fetchall())
    opted_in = dict(raw.execute(
        "SELECT sex, count(*) FROM patients WHERE person_id IN (SELECT person_id FROM gp_events "
        "WHERE snomed_code = '44054006') AND person_id NOT IN (SELECT person_id FROM opt_outs) "
        "GROUP BY sex").fetchall())
    assert reg3 == rounded(everyone)
    assert half_width < 3
    for sex in everyone:  # dp: within noise of the opted-in truth, and clearly not everyone
        assert abs(s251[sex] - opted_in[sex]) <= 3 * half_width
        assert everyone[sex] - opted_in[sex] > 6 * half_width, "the difference shows"
        assert abs(s251[sex] - everyone[sex]) > 3 * half_width


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
    resp = live.query("r.smith", IN_CARE, "PRJ-0077", "research")
    cohort = released(resp)
    assert resp.json()["disclosure"]["regime"] == "cell_key"
    today = date(2026, 11, 23).isoformat()
    truth = dict(raw.execute(
        f"""SELECT s.service_type, count(DISTINCT s.person_id) FROM social_care s
            WHERE s.person_id IN (SELECT person_id FROM study_consents
                                  WHERE study_id = 'FRAILTY-2025' AND consented_on <= DATE '{today}'
                                  AND (withdrawn_on IS NULL OR withdrawn_on > DATE '{today}'))
            GROUP BY 1""").fetchall())
    assert cohort.keys() <= truth.keys()
    for key, n in truth.items():  # cell key: withheld under 10 people, else within 2
        if n < 10:
            assert key not in cohort
        else:
            assert abs(cohort[key] - n) <= 2
    (withdrawn_in_care,) = raw.execute(
        f"""SELECT count(DISTINCT s.person_id) FROM social_care s JOIN study_consents c
            USING (person_id) WHERE c.study_id = 'FRAILTY-2025'
            AND c.withdrawn_on <= DATE '{today}'""").fetchone()
    (opted_out_in_cohort,) = raw.execute(
        """SELECT count(DISTINCT s.person_id) FROM social_care s JOIN study_consents c
            USING (person_id) WHERE c.study_id = 'FRAILTY-2025' AND c.withdrawn_on IS NULL
            AND s.person_id IN (SELECT person_id FROM opt_outs)""").fetchone()
    assert withdrawn_in_care > 0 and opted_out_in_cohort > 0, "both effects are in the data"
