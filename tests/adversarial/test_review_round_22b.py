"""The breaks of review round 22b, kept as tests (docs/security.md lists every round).

**A table alias with a column list renames columns by position, and the analysis reads them
by name.** DuckDB reads ``FROM lsoa_lookup AS l(icb_code, lsoa_code)`` as the lookup with its
first two columns renamed: ``l.lsoa_code`` is then the lookup's *local authority code*. The
analysis resolves ``l.lsoa_code`` by name to the catalogue column ``lsoa_code`` (sqlglot's
qualifier keeps the column list on a base table, and pushes it into the projections only for
derived tables and CTEs), and the rewrite regenerates the column list into the executed SQL.

- *Threshold (JOINT-PLANNING).* The lookup is not row-filtered, so its column list survives.
  ``patients p JOIN lsoa_lookup AS l(icb_code, lsoa_code) ON l.lsoa_code =
  p.local_authority_code`` passes the rule that a lookup is joined on its key, but matches
  every one of Norfolk's 540 areas: each resident's row is copied 540 times. On a table taken
  to hold one row per person, COUNT(*) is taken as its own count of people, so one resident
  (alone in her year of birth and practice) is released as a cell of 540 "people", with her
  registration date and small area as group keys and one bit of her hospital record per
  FILTER column (raw: the same date, area and admissions).
- *No row filter (OUTBREAK-2026: no residence rule, no opt-out).* Person-level tables are not
  rewritten, so the column list on ``patients`` itself survives: ``patients AS p(person_id,
  sex, registration_date, lsoa_code)`` makes ``p.sex`` the NHS number, ``p.registration_date``
  the full date of birth and ``p.lsoa_code`` the postcode, all direct identifiers the
  analysis never sees. With the lookup copy above, an NHS number gives that person's date of
  birth and postcode in one released row; alone, postcode districts are released as "LSOA
  codes".
- *A CTE reference (any policy).* The rewrite replaces base-table scans only, so ``FROM e AS
  x(event_date, person_id)`` over a CTE keeps its column list even under row filters: DuckDB's
  ``x.person_id`` is the event date, and the gateway counts event dates as the people behind
  a cell. One resident with a dozen GP events is released with her registration date and
  small area as group keys.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import PLANNER, norfolk_residents, query_as, refused

#: p.jones under the outbreak-control policy: threshold regime, no row filter at all
OUTBREAK = ("p.jones", "OUTBREAK-2026", "communicable_disease_control")

#: the lookup with its first two columns renamed: l.lsoa_code is its local authority code
COPIES = ("JOIN lsoa_lookup AS l(icb_code, lsoa_code) "
          "ON l.lsoa_code = p.local_authority_code")


def _released_rows(resp) -> list[list]:
    assert resp.status_code < 500, resp.text
    if refused(resp) or resp.json()["status"] != "released":
        return []
    return resp.json()["rows"]


def _alone(raw) -> tuple[int, int, str, str, str]:
    """A Norfolk resident alone in her (year of birth, practice): her person_id and group,
    and the registration date and small area the attack reads."""
    row = raw.execute(f"""
        SELECT person_id, year_of_birth, practice_code, CAST(registration_date AS VARCHAR),
               lsoa_code
        FROM ({norfolk_residents()}) p
        WHERE (year_of_birth, practice_code) IN (
            SELECT (year_of_birth, practice_code) FROM ({norfolk_residents()})
            GROUP BY ALL HAVING COUNT(*) = 1)
          AND EXISTS (SELECT 1 FROM hospital_admissions h WHERE h.person_id = p.person_id)
        ORDER BY person_id LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    return row


def test_a_renamed_lookup_copies_one_resident_past_the_threshold(server, raw):
    """Threshold: one resident, alone in her group, released as a cell of 540 with her
    registration date, small area and whether she was ever admitted as an emergency."""
    pid, yob, practice, registered, lsoa = _alone(raw)
    emergency = raw.execute(
        "SELECT COUNT(*) > 0 FROM hospital_admissions WHERE person_id = ? "
        "AND admission_method = 'emergency'", [pid]).fetchone()[0]
    sql = (f"SELECT p.registration_date, p.lsoa_code, COUNT(*) AS n, COUNT(*) FILTER (WHERE "
           "EXISTS (SELECT 1 FROM hospital_admissions h WHERE h.person_id = p.person_id AND "
           "h.admission_method = 'emergency')) AS emergency "
           f"FROM patients p {COPIES} WHERE p.year_of_birth = {yob} "
           f"AND p.practice_code = '{practice}' GROUP BY p.registration_date, p.lsoa_code")
    rows = _released_rows(query_as(server, PLANNER, sql))
    shown = [r for r in rows if r[2] is not None]
    assert not shown, (
        f"one resident (raw: registered {registered} in {lsoa}, emergency admission "
        f"{emergency}) was released as {shown}: a cell of one person passed the threshold")


def test_a_renamed_person_table_reads_direct_identifiers(server, raw):
    """No row filter: patients AS p(person_id, sex, registration_date, lsoa_code) reads the NHS
    number, date of birth and postcode by other names; with the lookup copy, one NHS number
    gives that person's date of birth and postcode."""
    pid, *_ = _alone(raw)
    nhs, dob, postcode = raw.execute(
        "SELECT nhs_number, CAST(date_of_birth AS VARCHAR), postcode FROM patients "
        "WHERE person_id = ?", [pid]).fetchone()
    sql = ("SELECT p.registration_date AS born, p.lsoa_code AS area, COUNT(*) AS n "
           "FROM patients AS p(person_id, sex, registration_date, lsoa_code) "
           f"{COPIES} WHERE p.sex = '{nhs}' GROUP BY 1, 2")
    rows = _released_rows(query_as(server, OUTBREAK, sql))
    assert not any(r[0] == dob or r[1] == postcode for r in rows), (
        f"NHS number {nhs} gave date of birth and postcode {rows} (raw: {dob}, {postcode})")


def test_postcodes_are_not_released_as_small_areas(server, raw):
    """No row filter, no copying: the postcode renamed lsoa_code is a group key, and its
    districts (the part before the space) are released as if they were small areas."""
    sql = ("SELECT SUBSTRING(p.lsoa_code, 1, 4) AS area, COUNT(*) AS n "
           "FROM patients AS p(person_id, sex, ethnicity, lsoa_code) GROUP BY 1")
    rows = _released_rows(query_as(server, OUTBREAK, sql))
    districts = {d for (d,) in raw.execute(
        "SELECT DISTINCT SUBSTRING(postcode, 1, 4) FROM patients").fetchall()}
    lsoas = {d for (d,) in raw.execute(
        "SELECT DISTINCT SUBSTRING(lsoa_code, 1, 4) FROM patients").fetchall()}
    leaked = [r for r in rows if r[0] in districts - lsoas and r[1] is not None]
    assert not leaked, f"postcode districts released as small areas: {leaked[:5]}"


def test_a_renamed_cte_reference_moves_the_person_key(server, raw):
    """Threshold, row-filtered: a CTE is never rewritten, so ``FROM e AS x(event_date,
    person_id)`` keeps its column list whatever the policy. DuckDB's ``x.person_id`` is then
    the event date, which the gateway takes as the person behind each row: one resident's
    events count as many "people" as she has event dates, and her registration date and small
    area are released as the keys of a cell of one person."""
    row = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.practice_code,
               CAST(p.registration_date AS VARCHAR), p.lsoa_code
        FROM ({norfolk_residents()}) p
        WHERE (p.year_of_birth, p.practice_code) IN (
            SELECT (year_of_birth, practice_code) FROM ({norfolk_residents()})
            GROUP BY ALL HAVING COUNT(*) = 1)
          AND (SELECT COUNT(DISTINCT event_date) FROM gp_events g
               WHERE g.person_id = p.person_id) >= 12
        ORDER BY p.person_id LIMIT 1""").fetchone()
    assert row is not None, "the shape this test needs (checked on raw data)"
    _, yob, practice, registered, lsoa = row
    sql = ("WITH e AS (SELECT g.person_id, g.event_date, p.registration_date, p.lsoa_code "
           "FROM gp_events g JOIN patients p ON p.person_id = g.person_id "
           f"WHERE p.year_of_birth = {yob} AND p.practice_code = '{practice}') "
           "SELECT x.registration_date, x.lsoa_code, COUNT(*) AS events "
           "FROM e AS x(event_date, person_id) GROUP BY 1, 2")
    rows = _released_rows(query_as(server, PLANNER, sql))
    shown = [r for r in rows if r[2] is not None]
    assert not shown, (f"one resident (raw: registered {registered} in {lsoa}) was released "
                       f"as {shown}")


def test_a_column_list_on_a_table_alias_is_refused_with_the_way_to_rename(server):
    sql = ("SELECT l.lsoa_code, COUNT(*) AS n FROM patients p "
           f"{COPIES} GROUP BY 1")
    resp = query_as(server, PLANNER, sql)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert "column list on the table alias 'l'" in err["message"]
    assert "AS new_name" in err["hint"]


def test_a_derived_tables_column_list_still_renames_what_the_analysis_reads(server):
    """Near-miss kept as a test: a derived table's (or CTE's) column list is folded into its
    projections, so a renamed NHS number is still the NHS number to every rule."""
    for sql in (
        "SELECT d.sex, COUNT(*) AS n FROM (SELECT p.person_id, p.nhs_number FROM patients p) "
        "AS d(person_id, sex) GROUP BY 1",
        "WITH d(person_id, sex) AS (SELECT p.person_id, p.nhs_number FROM patients p) "
        "SELECT d.sex, COUNT(*) AS n FROM d GROUP BY 1",
    ):
        resp = query_as(server, OUTBREAK, sql)
        assert resp.status_code in (400, 403), resp.text
        assert "nhs_number" in resp.text, resp.text
