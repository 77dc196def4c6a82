"""The README's first query, end to end over HTTP, against raw DuckDB on the same files."""

from __future__ import annotations

import pytest

from audit import verify_trail
from gateway.disclosure.threshold import round_to_base

NORFOLK, SUFFOLK = "E10000020", "E10000029"

AGE_BAND = """CASE WHEN 2026 - p.year_of_birth < 18 THEN '0-17'
            WHEN 2026 - p.year_of_birth < 40 THEN '18-39'
            WHEN 2026 - p.year_of_birth < 65 THEN '40-64'
            WHEN 2026 - p.year_of_birth < 80 THEN '65-79'
            ELSE '80+' END"""

README_QUERY = f"""
SELECT {AGE_BAND} AS age_band,
       COUNT(DISTINCT p.person_id) AS people,
       COUNT(DISTINCT d.person_id) AS with_type2_diabetes
FROM patients p
LEFT JOIN gp_events d ON d.person_id = p.person_id AND d.snomed_code = '44054006'
GROUP BY age_band
ORDER BY age_band
"""


def expected_cell(people: int, value: int | None = None, k: int = 8, base: int = 5):
    """The threshold rule, written independently of the gateway: suppress 0..k-1 (zeros are
    disclosive, as ACRO holds by default), round to 5."""
    value = people if value is None else value
    if people < k:
        return None
    return round_to_base(value, base)


def oracle(raw, la_codes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Raw counts per age band for residents of the given councils, opted-out people removed."""
    placeholders = ", ".join("?" for _ in la_codes)
    rows = raw.execute(
        f"""
        WITH p AS (SELECT * FROM patients WHERE local_authority_code IN ({placeholders})
                   AND person_id NOT IN (SELECT person_id FROM opt_outs)),
             d AS (SELECT DISTINCT person_id FROM gp_events WHERE snomed_code = '44054006')
        SELECT {AGE_BAND} AS age_band, count(DISTINCT p.person_id),
               count(DISTINCT d.person_id)
        FROM p LEFT JOIN d ON d.person_id = p.person_id GROUP BY 1 ORDER BY 1
        """,
        list(la_codes),
    ).fetchall()
    return {band: (people, diab) for band, people, diab in rows}


def test_readme_query_releases_norfolk_residents_only(server, raw):
    resp = server.query("p.jones", README_QUERY, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "released"
    assert body["columns"] == ["age_band", "people", "with_type2_diabetes"]
    assert body["policy"]["id"] == "joint-planning"
    expected = oracle(raw, (NORFOLK,))
    assert [r[0] for r in body["rows"]] == list(expected)
    for band, people, diab in body["rows"]:
        raw_people, raw_diab = expected[band]
        assert people == expected_cell(raw_people)
        assert diab == expected_cell(raw_diab)
    # the people column differs from the unfiltered and from the opted-in-only population
    everyone = raw.execute("SELECT count(*) FROM patients").fetchone()[0]
    assert sum(r[1] for r in body["rows"]) < everyone / 2
    d = body["disclosure"]
    assert d["regime"] == "threshold" and d["min_people"] == 8 and d["rounding_base"] == 5
    assert set(d["rounded_columns"]) == {"people", "with_type2_diabetes"}


def test_readme_query_is_audited_with_the_facts(server):
    resp = server.query("p.jones", README_QUERY, "JOINT-PLANNING", "planning")
    entry = server.entry_for(resp)
    assert entry["decision"] == "released"
    assert entry["subject"] == "p.jones" and entry["org"] == NORFOLK
    assert entry["policy_id"] == "joint-planning"
    assert entry["legal_basis"]["type"] == "copi_joint_planning"
    assert entry["tables"] == ["gp_events", "patients"]
    assert entry["datasets"] == ["gp"]
    assert entry["rows_released"] == len(resp.json()["rows"])
    assert resp.json()["audit"] == {"seq": entry["seq"], "hash": entry["hash"]}
    assert "opt_outs" in entry["executed_sql"] and NORFOLK in entry["executed_sql"]
    assert entry["obligations"] == {
        "residents_of": {"by": "patients.local_authority_code", "values": [NORFOLK]},
        "opt_out_removed": True, "consent_study": None}
    # the trail never holds released values
    for row in resp.json()["rows"]:
        for value in row[1:]:
            if value is not None and value > 100:
                assert str(value) not in str(entry.get("cells_suppressed"))


def test_icb_analyst_sees_norfolk_and_suffolk(server, raw):
    resp = server.query("m.brown", README_QUERY, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    expected = oracle(raw, (NORFOLK, SUFFOLK))
    for band, people, diab in resp.json()["rows"]:
        assert people == expected_cell(expected[band][0])
        assert diab == expected_cell(expected[band][1])


def test_small_groups_are_withheld_and_small_cells_suppressed(server, raw):
    sql = ("SELECT p.lsoa_code, COUNT(DISTINCT p.person_id) AS people, "
           "SUM(CASE WHEN p.year_of_birth < 1950 THEN 1 ELSE 0 END) AS older "
           "FROM patients p GROUP BY p.lsoa_code ORDER BY p.lsoa_code")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = server.released(resp, "p.jones")
    truth = {lsoa: (n, older) for lsoa, n, older in raw.execute(
        "SELECT lsoa_code, count(*), count(*) FILTER (WHERE year_of_birth < 1950) FROM patients "
        "WHERE local_authority_code = ? AND person_id NOT IN (SELECT person_id FROM opt_outs) "
        "GROUP BY 1", [NORFOLK]).fetchall()}
    released = {r[0]: r for r in body["rows"]}
    small = {lsoa for lsoa, (n, _) in truth.items() if 0 < n < 8}
    assert small, "the synthetic data should produce small areas"
    # a small area's row is withheld whole: its key would describe fewer than 8 people
    assert set(released) == set(truth) - small
    # how many rows were withheld is itself a small count: on the record, not in the response
    assert "rows_withheld" not in body["disclosure"]
    assert server.entry_for(resp)["rows_withheld"] == len(small)
    suppressed = {(s["row"], s["column"]) for s in body["disclosure"]["suppressed"]}
    assert any(col == "older" for _, col in suppressed), "some small cells in kept rows"
    for i, (lsoa, people, older) in enumerate(body["rows"]):
        assert people == expected_cell(truth[lsoa][0])
        assert older == expected_cell(truth[lsoa][1])
        assert ((i, "older") in suppressed) == (older is None)


def test_threshold_counts_people_not_events(server, raw):
    """A count of events can be large while few people lie behind it: still suppressed."""
    sql = ("SELECT p.lsoa_code, COUNT(*) AS hba1c_tests FROM gp_events e JOIN patients p "
           "ON p.person_id = e.person_id WHERE e.snomed_code = '1049301000000100' "
           "GROUP BY p.lsoa_code")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = server.released(resp, "p.jones")  # mostly small cells: held, then reviewed
    rows = raw.execute(
        """SELECT p.lsoa_code, count(*), count(DISTINCT e.person_id) FROM gp_events e
           JOIN patients p USING (person_id) WHERE e.snomed_code = '1049301000000100'
           AND p.local_authority_code = ? AND p.person_id NOT IN (SELECT person_id FROM opt_outs)
           GROUP BY 1""", [NORFOLK]).fetchall()
    truth = {code: (events, people) for code, events, people in rows}
    assert any(events >= 8 > people > 0 for events, people in truth.values()), \
        "fixture should contain an area with many tests from few people"
    assert len(body["rows"]) < len(truth)
    for code, events in body["rows"]:
        raw_events, raw_people = truth[code]
        assert events == expected_cell(raw_people, raw_events)


def test_out_of_area_care_placements_are_not_visible(server, raw):
    """Norfolk provides care to some non-residents; a Norfolk planner must not count them."""
    sql = ("SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
           "WHERE s.local_authority_code = 'E10000020' GROUP BY s.service_type")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    truth = dict(raw.execute(
        """SELECT s.service_type, count(DISTINCT s.person_id) FROM social_care s
           JOIN patients p USING (person_id)
           WHERE s.local_authority_code = ? AND p.local_authority_code = ?
           AND s.person_id NOT IN (SELECT person_id FROM opt_outs) GROUP BY 1""",
        [NORFOLK, NORFOLK]).fetchall())
    everyone = dict(raw.execute(
        "SELECT service_type, count(DISTINCT person_id) FROM social_care "
        "WHERE local_authority_code = ? GROUP BY 1", [NORFOLK]).fetchall())
    assert sum(everyone.values()) > sum(truth.values()), "fixture should hold placements"
    for service, people in resp.json()["rows"]:
        assert people == expected_cell(truth[service])


@pytest.mark.parametrize(
    ("case", "sub", "project", "purpose", "sql", "status", "code", "decision"),
    [
        ("project not held", "s.patel", "OUTBREAK-2026", "communicable_disease_control",
         README_QUERY, 403, "policy_denied", "denied"),
        ("purpose not permitted", "p.jones", "JOINT-PLANNING", "winter_planning",
         README_QUERY, 403, "policy_denied", "denied"),
        ("select star", "p.jones", "JOINT-PLANNING", "planning",
         "SELECT * FROM patients", 400, "sql_rejected", "refused"),
        ("proposed basis", "p.jones", "JOINT-PLANNING-DRAFT", "planning",
         README_QUERY, 403, "policy_denied", "denied"),
        ("ig auditor queries", "ig.lead", "JOINT-PLANNING", "planning",
         README_QUERY, 403, "policy_denied", "denied"),
        ("commercial under reg 3", "c.trader", "OUTBREAK-2026", "communicable_disease_control",
         README_QUERY, 403, "policy_denied", "denied"),
        ("expired covid notice", "p.jones", "COVID19-RESPONSE", "covid19",
         README_QUERY, 403, "policy_denied", "denied"),
    ],
)
def test_refusals_are_4xx_in_the_error_shape_and_audited(
    server, case, sub, project, purpose, sql, status, code, decision
):
    resp = server.query(sub, sql, project, purpose)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code
    assert err["message"] and set(err) == {"code", "message", "reasons", "hint"}
    entry = server.entry_for(resp)
    assert entry["decision"] == decision
    assert entry["error_code"] == code
    assert entry["subject"] == sub
    assert "rows" not in resp.json()


def test_denial_says_what_would_be_allowed(server):
    resp = server.query("p.jones", README_QUERY, "JOINT-PLANNING", "winter_planning")
    err = resp.json()["error"]
    assert err["reasons"][0]["policy"] == "joint-planning"
    assert err["reasons"][0]["rule"] == "purpose"
    assert "planning" in err["hint"]


def test_expired_notice_names_the_date(server):
    resp = server.query("p.jones", README_QUERY, "COVID19-RESPONSE", "covid19")
    assert any("2022-06-30" in r["message"] for r in resp.json()["error"]["reasons"])


@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("missing", None),
        ("garbage", "not-a-jwt"),
        ("alg none", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJwLmpvbmVzIn0."),
    ],
)
def test_bad_tokens_get_401_and_are_audited(server, case, token):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = server.client.post("/v1/queries", headers=headers, json={
        "sql": README_QUERY, "project": "JOINT-PLANNING", "purpose": "planning"})
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "unauthenticated"
    entry = server.entry_for(resp)
    assert entry["decision"] == "refused" and "subject" not in entry


def test_token_from_another_issuer_key_is_refused(server, tmp_path):
    from gateway.auth import issue_token
    from gateway.state import ensure_state

    other = ensure_state(tmp_path / "other")
    forged = issue_token(other.token_private_pem, issuer="sde-gateway", audience="sde-gateway",
                         sub="p.jones", org="E10000020", org_type="local_authority",
                         roles=["planner"], projects=["JOINT-PLANNING"])
    resp = server.query(None, README_QUERY, "JOINT-PLANNING", "planning", token=forged)
    assert resp.status_code == 401


def test_oversized_body_is_413_and_audited(server):
    before = len(server.audit_entries())
    resp = server.client.post("/v1/queries", headers={"Content-Type": "application/json"},
                              content=b'{"sql": "' + b"x" * 100_000 + b'"}')
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "too_large"
    after = server.audit_entries()
    assert len(after) == before + 1 and after[-1]["error_code"] == "too_large"


def test_malformed_body_is_422_in_the_error_shape_and_audited(server):
    resp = server.client.post("/v1/queries", content=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_request"
    assert server.entry_for(resp)["decision"] == "refused"


def test_unknown_path_is_json_404_and_audited(server):
    resp = server.client.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    entry = server.entry_for(resp)
    assert entry["event"] == "request_rejected" and entry["path"] == "/v1/nothing-here"
    wrong = server.client.delete("/v1/queries")
    assert wrong.status_code == 405 and server.entry_for(wrong)["error_code"] == \
        "method_not_allowed"


def test_healthz(server):
    resp = server.client.get("/healthz")
    assert resp.status_code == 200 and resp.json()["audit"] == "writable"


def test_trail_verifies_after_a_mixed_session(fresh_server):
    s = fresh_server
    s.query("p.jones", README_QUERY, "JOINT-PLANNING", "planning")
    s.query("p.jones", "SELECT * FROM patients", "JOINT-PLANNING", "planning")
    s.query(None, README_QUERY, "JOINT-PLANNING", "planning")
    result = verify_trail(s.settings.audit_path, s.keys.audit_key,
                          public_key=s.keys.checkpoint_public_key)
    assert result.ok and result.entries == 6 and result.checkpoint_seq == 6


def test_count_idioms_are_rounded_too(server, raw):
    """SUM(1) and SUM(CASE ... THEN 1 ELSE 0 END) are counts: they are rounded like COUNT."""
    sql = ("SELECT p.sex, SUM(1) AS n, SUM(CASE WHEN p.year_of_birth < 1950 THEN 1 ELSE 0 END) "
           "AS older FROM patients p GROUP BY p.sex ORDER BY p.sex")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    truth = raw.execute(
        """SELECT sex, count(*), count(*) FILTER (WHERE year_of_birth < 1950) FROM patients
           WHERE local_authority_code = ? AND person_id NOT IN (SELECT person_id FROM opt_outs)
           GROUP BY sex ORDER BY sex""", [NORFOLK]).fetchall()
    for (sex, n, older), (tsex, tn, tolder) in zip(resp.json()["rows"], truth, strict=True):
        assert sex == tsex
        assert n == expected_cell(tn) and n % 5 == 0
        assert older == expected_cell(tolder) and older % 5 == 0


def test_sums_of_measures_are_released_with_people_behind_them(server, raw):
    """SUM and AVG of one column come from separate queries: together they divide to a count."""
    sums = server.query("p.jones", "SELECT h.admission_method, SUM(h.length_of_stay) AS "
                        "bed_days FROM hospital_admissions h GROUP BY h.admission_method",
                        "JOINT-PLANNING", "planning")
    means = server.query("p.jones", "SELECT h.admission_method, AVG(h.length_of_stay) AS "
                         "mean_stay FROM hospital_admissions h GROUP BY h.admission_method",
                         "JOINT-PLANNING", "planning")
    assert sums.status_code == 200 and means.status_code == 200, sums.text + means.text
    truth = {m: (s, a, n) for m, s, a, n in raw.execute(
        """SELECT admission_method, sum(length_of_stay), avg(length_of_stay),
                  count(DISTINCT person_id) FILTER (WHERE length_of_stay <> 0)
           FROM hospital_admissions WHERE person_id IN (SELECT person_id FROM patients
           WHERE local_authority_code = ?) AND person_id NOT IN (SELECT person_id FROM opt_outs)
           GROUP BY 1""", [NORFOLK]).fetchall()}
    sum_rows = server.released(sums, "p.jones")["rows"]
    mean_rows = server.released(means, "p.jones")["rows"]
    assert any(v is not None for _, v in sum_rows) and any(v is not None for _, v in mean_rows)
    for method, bed_days in sum_rows:
        assert bed_days is None or bed_days == truth[method][0]
    for method, mean_stay in mean_rows:
        # averages leave to 3 significant figures (an exact double is an exact fraction)
        assert mean_stay is None or mean_stay == float(f"{truth[method][1]:.3g}")


def test_union_of_aggregates_with_a_total_row_is_filtered_in_every_branch(server, raw):
    sql = ("SELECT p.sex AS sex, COUNT(DISTINCT p.person_id) AS people FROM patients p "
           "GROUP BY p.sex UNION ALL SELECT 'Total', COUNT(DISTINCT p.person_id) FROM patients p "
           "UNION ALL SELECT 'Suffolk', COUNT(DISTINCT p.person_id) FROM patients p "
           "WHERE p.local_authority_code = 'E10000029' ORDER BY sex")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    truth = dict(raw.execute(
        "SELECT sex, count(*) FROM patients WHERE local_authority_code = ? AND person_id NOT IN "
        "(SELECT person_id FROM opt_outs) GROUP BY sex", [NORFOLK]).fetchall())
    rows = dict(resp.json()["rows"])
    assert rows["F"] == expected_cell(truth["F"]) and rows["M"] == expected_cell(truth["M"])
    # a Norfolk planner sees no Suffolk residents in any branch: an empty cell, suppressed as
    # a small one is (zeros are disclosive); the branches' relations are unknown, so one level
    # of the column is released and the Total, another, goes as secondary
    assert rows["Suffolk"] is None and rows["Total"] is None
    rules = {s["row"]: s["rule"] for s in resp.json()["disclosure"]["suppressed"]}
    order = [r[0] for r in resp.json()["rows"]]
    assert rules[order.index("Suffolk")].startswith("small_cell")
    assert rules[order.index("Total")].startswith("secondary")
    # without the empty branch, the Total is released
    resp = server.query("p.jones", sql.split(" UNION ALL SELECT 'Suffolk'")[0] + " ORDER BY sex",
                        "JOINT-PLANNING", "planning")
    rows = dict(resp.json()["rows"])
    assert rows["Total"] == expected_cell(truth["F"] + truth["M"])


@pytest.mark.parametrize("sql", [
    "SELECT SUM(CAST('inf' AS DOUBLE)) AS s FROM patients p",
    "SELECT SUM(CAST('-inf' AS DOUBLE)) AS s FROM patients p",
    "SELECT SUM(p.year_of_birth * 1e308) AS s FROM patients p",
    "SELECT INTERVAL 1 DAY AS k, COUNT(*) AS n FROM patients p GROUP BY 1",
])
def test_odd_values_never_break_the_response(server, sql):
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code < 500, resp.text
    entries = server.entries_for(resp)
    assert any(e["event"] == "query" for e in entries), "the request was closed on the trail"


@pytest.mark.parametrize("sql", [
    "SELECT SUM(CASE WHEN p.year_of_birth = 1925 AND p.sex = 'M' THEN 5.0 ELSE 0.000001 END) "
    "AS n FROM patients p",
    "SELECT SUM(CASE WHEN p.year_of_birth = 1925 THEN 1000000 + h.length_of_stay ELSE 1000000 "
    "END) AS s FROM patients p JOIN hospital_admissions h ON h.person_id = p.person_id",
    "SELECT SUM(h.length_of_stay) AS a, SUM(h.length_of_stay) FILTER (WHERE NOT (p.year_of_birth "
    "= 1925)) AS b FROM patients p JOIN hospital_admissions h ON h.person_id = p.person_id",
    "SELECT SUM(2) AS twice FROM patients p",
])
def test_sums_of_anything_but_a_measure_or_an_indicator_are_refused(server, sql):
    """A filler, an offset or a FILTER would let one person's value pass as a safe cell."""
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "output_not_allowed"


def test_a_failing_conversion_cannot_read_out_a_record(server, raw):
    """CAST is TRY_CAST in the executed SQL: one person's text cannot surface in an error."""
    (eth, practice) = raw.execute(
        "SELECT ethnicity, practice_code FROM patients WHERE local_authority_code = ? "
        "AND person_id NOT IN (SELECT person_id FROM opt_outs) ORDER BY person_id LIMIT 1",
        [NORFOLK]).fetchone()
    sql = ("SELECT COUNT(*) AS n FROM patients p WHERE CAST(CASE WHEN p.practice_code = "
           f"'{practice}' THEN p.ethnicity || '|' || p.practice_code END AS INT) = 1")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text
    assert practice not in resp.text.replace(f"'{practice}'", "")
    assert "TRY_CAST" in server.entry_for(resp)["executed_sql"]


def test_engine_errors_are_generic(server):
    sql = ("SELECT p.sex, COUNT(*) FILTER (WHERE date_add(p.registration_date, INTERVAL "
           "999999999 YEAR) > DATE '2020-01-01') AS x FROM patients p GROUP BY p.sex")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith("the engine could not run the query (")
    assert "999999999" not in message and "date" not in message.lower()


def test_a_rollup_margin_is_never_judged_on_a_real_null_groups_contributions(server):
    sql = ("SELECT CASE WHEN p.sex = 'F' THEN 'F' END AS k, SUM(e.value) AS s FROM gp_events e "
           "JOIN patients p ON p.person_id = e.person_id WHERE e.value IS NOT NULL "
           "GROUP BY ROLLUP (k)")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = server.released(resp, "p.jones")
    # the margin and the real NULL group share the key NULL; neither may give the other away
    null_rows = [row for row in body["rows"] if row[0] is None]
    assert null_rows and all(row[1] is None for row in null_rows), body["rows"]
    rules = {s["row"]: s["rule"] for s in body["disclosure"]["suppressed"]}
    assert any("unknown" in r for r in rules.values())


@pytest.mark.parametrize("extra", ["", ", COUNT(*) FILTER (WHERE p.year_of_birth < 0) AS zero"])
def test_a_key_that_describes_one_person_is_never_released(server, raw, extra):
    """A CASE key can carry one person's exact date; a row resting on fewer than 8 people is
    withheld whole, whatever zero or suppressed cells stand beside it."""
    pid, reg = raw.execute(
        "SELECT person_id, registration_date FROM patients WHERE local_authority_code = ? "
        "AND person_id NOT IN (SELECT person_id FROM opt_outs) ORDER BY person_id LIMIT 1",
        [NORFOLK]).fetchone()
    (lsoa, yob, sex) = raw.execute("SELECT lsoa_code, year_of_birth, sex FROM patients "
                                   "WHERE person_id = ?", [pid]).fetchone()
    sql = (f"SELECT CASE WHEN p.lsoa_code = '{lsoa}' AND p.year_of_birth = {yob} AND p.sex = "
           f"'{sex}' THEN p.registration_date END AS k, COUNT(*) AS n{extra} FROM patients p "
           "GROUP BY 1")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = server.released(resp, "p.jones")
    assert reg.isoformat() not in str(body["rows"])
    assert server.entry_for(resp)["rows_withheld"] >= 1


def test_an_integer_constant_beside_a_sum_runs(server):
    sql = ("SELECT 4 AS c, h.admission_method, SUM(h.length_of_stay) AS bed_days, "
           "COUNT(DISTINCT h.person_id) AS people FROM hospital_admissions h "
           "GROUP BY h.admission_method")
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    assert resp.status_code == 200, resp.text


def test_a_bad_query_parameter_is_422_naming_the_parameter_not_the_body(server):
    resp = server.client.get("/v1/audit/events?limit=0",
                             headers={"Authorization": f"Bearer {server.token('ig.lead')}"})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "invalid_request" and "parameters" in error["message"]
    assert error["reasons"][0]["field"] == "query.limit"
    assert server.entry_for(resp)["decision"] == "refused"
