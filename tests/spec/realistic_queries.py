"""Realistic planning and research queries the gateway must accept, as analysts write them.

Each case: a name, the number of leading group-key columns, and the SQL. The integration test
runs every case through the gateway for several callers and checks each released cell against
raw DuckDB with the caller's row filters applied by hand. The list doubles as a gallery of what
the gateway accepts.
"""

from __future__ import annotations

AGE = ("CASE WHEN 2026 - p.year_of_birth < 18 THEN '0-17' WHEN 2026 - p.year_of_birth < 40 "
       "THEN '18-39' WHEN 2026 - p.year_of_birth < 65 THEN '40-64' WHEN 2026 - p.year_of_birth "
       "< 80 THEN '65-79' ELSE '80+' END")
DIABETES = "'44054006'"

REALISTIC: list[tuple[str, int, str]] = [
    # -- population -----------------------------------------------------------------------
    ("population by sex", 1,
     "SELECT p.sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex"),
    ("population by age band and sex", 2,
     f"SELECT {AGE} AS age_band, p.sex, COUNT(*) AS people FROM patients p GROUP BY 1, 2"),
    ("population by ethnicity", 1,
     "SELECT p.ethnicity, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY 1"),
    ("population by deprivation decile", 1,
     "SELECT l.imd_decile, COUNT(DISTINCT p.person_id) AS people FROM patients p "
     "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code GROUP BY l.imd_decile"),
    ("population by practice", 1,
     "SELECT p.practice_code, COUNT(*) AS registered FROM patients p GROUP BY p.practice_code"),
    ("population by small area", 1,
     "SELECT p.lsoa_code, COUNT(*) AS residents FROM patients p GROUP BY p.lsoa_code"),
    ("population by sex with a total row", 1,
     "SELECT p.sex AS sex, COUNT(DISTINCT p.person_id) AS people FROM patients p GROUP BY p.sex "
     "UNION ALL SELECT 'All', COUNT(DISTINCT p.person_id) FROM patients p"),
    ("registrations by year", 1,
     "SELECT year(p.registration_date) AS y, COUNT(*) AS registrations FROM patients p "
     "WHERE p.registration_date >= DATE '2015-01-01' GROUP BY y"),
    # -- long-term conditions -----------------------------------------------------------
    ("diabetes prevalence by age band", 1,
     f"SELECT {AGE} AS age_band, COUNT(DISTINCT p.person_id) AS people, "
     "COUNT(DISTINCT d.person_id) AS with_diabetes FROM patients p LEFT JOIN gp_events d "
     f"ON d.person_id = p.person_id AND d.snomed_code = {DIABETES} GROUP BY age_band"),
    ("diabetes prevalence by deprivation decile", 1,
     "SELECT l.imd_decile, COUNT(DISTINCT p.person_id) AS people, "
     "COUNT(DISTINCT d.person_id) AS with_diabetes FROM patients p "
     "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code LEFT JOIN gp_events d "
     f"ON d.person_id = p.person_id AND d.snomed_code = {DIABETES} GROUP BY l.imd_decile"),
    ("diabetes by ethnicity", 1,
     "SELECT p.ethnicity, COUNT(DISTINCT p.person_id) AS with_diabetes FROM patients p "
     f"WHERE p.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code = {DIABETES}) "
     "GROUP BY p.ethnicity"),
    ("hypertension by age band", 1,
     f"SELECT {AGE} AS age_band, COUNT(DISTINCT e.person_id) AS with_hypertension "
     "FROM patients p JOIN gp_events e ON e.person_id = p.person_id "
     "WHERE e.snomed_code = '38341003' GROUP BY age_band"),
    ("COPD by deprivation decile", 1,
     "SELECT l.imd_decile, COUNT(DISTINCT e.person_id) AS with_copd FROM gp_events e "
     "JOIN patients p ON p.person_id = e.person_id JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code "
     "WHERE e.snomed_code = '13645005' GROUP BY l.imd_decile"),
    ("dementia among over-65s by sex", 1,
     "SELECT p.sex, COUNT(DISTINCT e.person_id) AS with_dementia FROM patients p "
     "JOIN gp_events e ON e.person_id = p.person_id WHERE e.snomed_code = '52448006' "
     "AND 2026 - p.year_of_birth >= 65 GROUP BY p.sex"),
    ("frailty by age band", 1,
     f"SELECT {AGE} AS age_band, COUNT(DISTINCT p.person_id) FILTER (WHERE EXISTS (SELECT 1 "
     "FROM gp_events f WHERE f.person_id = p.person_id AND f.snomed_code = '248279007')) "
     "AS frail FROM patients p WHERE 2026 - p.year_of_birth >= 60 GROUP BY age_band"),
    ("multimorbidity: people by number of conditions", 1,
     "WITH c AS (SELECT person_id, COUNT(DISTINCT snomed_code) AS n FROM gp_events "
     "WHERE snomed_code IN ('44054006', '38341003', '195967001', '13645005', '35489007', "
     "'52448006') GROUP BY person_id) SELECT c.n AS conditions, COUNT(*) AS people FROM c "
     "GROUP BY c.n"),
    ("diabetes and hypertension together by deprivation", 1,
     "SELECT l.imd_decile, COUNT(DISTINCT p.person_id) AS both_conditions FROM patients p "
     "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code "
     f"WHERE p.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code = {DIABETES}) "
     "AND p.person_id IN (SELECT person_id FROM gp_events WHERE snomed_code = '38341003') "
     "GROUP BY l.imd_decile"),
    # -- primary care activity -----------------------------------------------------------
    ("mean HbA1c of diabetics by deprivation", 1,
     "SELECT l.imd_decile, AVG(e.value) AS mean_hba1c, COUNT(DISTINCT e.person_id) AS people "
     "FROM gp_events e JOIN patients p ON p.person_id = e.person_id "
     "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code "
     "WHERE e.snomed_code = '1049301000000100' GROUP BY l.imd_decile"),
    ("HbA1c tests per year", 1,
     "SELECT year(e.event_date) AS y, COUNT(*) AS tests FROM gp_events e "
     "WHERE e.snomed_code = '1049301000000100' GROUP BY y"),
    ("mean BMI by sex", 1,
     "SELECT p.sex, AVG(e.value) AS mean_bmi FROM gp_events e JOIN patients p "
     "ON p.person_id = e.person_id WHERE e.snomed_code = '60621009' GROUP BY p.sex"),
    ("flu vaccinations of over-65s by year", 1,
     "SELECT year(e.event_date) AS y, COUNT(DISTINCT e.person_id) AS vaccinated "
     "FROM gp_events e JOIN patients p ON p.person_id = e.person_id "
     "WHERE e.snomed_code = '86198006' AND 2026 - p.year_of_birth >= 65 GROUP BY y"),
    ("GP events by code", 1,
     "SELECT e.snomed_code, COUNT(*) AS events, COUNT(DISTINCT e.person_id) AS people "
     "FROM gp_events e GROUP BY e.snomed_code"),
    ("GP events in 2025 by month", 1,
     "SELECT date_trunc('month', e.event_date) AS month, COUNT(*) AS events FROM gp_events e "
     "WHERE e.event_date >= DATE '2025-01-01' AND e.event_date < DATE '2026-01-01' "
     "GROUP BY month"),
    ("people with no GP contact in 2025 by age band", 1,
     f"SELECT {AGE} AS age_band, COUNT(*) AS without_contact FROM patients p "
     "WHERE NOT EXISTS (SELECT 1 FROM gp_events e WHERE e.person_id = p.person_id "
     "AND year(e.event_date) = 2025) GROUP BY age_band"),
    ("diabetic patients by practice", 2,
     "SELECT p.local_authority_code, p.practice_code, COUNT(DISTINCT p.person_id) AS people "
     "FROM patients p JOIN gp_events e ON e.person_id = p.person_id "
     f"WHERE e.snomed_code = {DIABETES} GROUP BY 1, 2"),
    # -- hospital ------------------------------------------------------------------------
    ("admissions by method", 1,
     "SELECT h.admission_method, COUNT(*) AS spells, COUNT(DISTINCT h.person_id) AS people "
     "FROM hospital_admissions h GROUP BY h.admission_method"),
    ("emergency admissions by age band and month, 2025", 2,
     f"SELECT {AGE} AS age_band, date_trunc('month', h.admission_date) AS month, "
     "COUNT(*) AS admissions FROM hospital_admissions h JOIN patients p "
     "ON p.person_id = h.person_id WHERE h.admission_method = 'emergency' "
     "AND year(h.admission_date) = 2025 GROUP BY 1, 2"),
    ("bed days by provider", 1,
     "SELECT h.provider_code, SUM(h.length_of_stay) AS bed_days, COUNT(*) AS spells "
     "FROM hospital_admissions h GROUP BY h.provider_code"),
    ("mean length of stay by method", 1,
     "SELECT h.admission_method, AVG(h.length_of_stay) AS mean_stay "
     "FROM hospital_admissions h GROUP BY h.admission_method"),
    ("emergency admissions by diagnosis", 1,
     "SELECT h.primary_diagnosis, COUNT(*) AS admissions FROM hospital_admissions h "
     "WHERE h.admission_method = 'emergency' GROUP BY h.primary_diagnosis"),
    ("hip fractures by sex", 1,
     "SELECT p.sex, COUNT(*) AS hip_fractures FROM hospital_admissions h JOIN patients p "
     "ON p.person_id = h.person_id WHERE h.primary_diagnosis = 'S72' GROUP BY p.sex"),
    ("discharges to care homes by year", 1,
     "SELECT year(h.discharge_date) AS y, COUNT(*) AS to_care_home FROM hospital_admissions h "
     "WHERE h.discharge_destination = 'care_home' GROUP BY y"),
    ("frequent attenders: people with two or more emergency admissions", 1,
     f"SELECT {AGE} AS age_band, COUNT(*) AS people FROM patients p WHERE p.person_id IN "
     "(SELECT person_id FROM hospital_admissions WHERE admission_method = 'emergency' "
     "GROUP BY person_id HAVING COUNT(*) >= 2) GROUP BY age_band"),
    ("30-day emergency readmissions by year", 1,
     "WITH s AS (SELECT person_id, admission_date, admission_method, LAG(discharge_date) "
     "OVER (PARTITION BY person_id ORDER BY admission_date, discharge_date) AS prev_discharge "
     "FROM hospital_admissions) SELECT year(s.admission_date) AS y, COUNT(*) AS readmissions "
     "FROM s WHERE s.admission_method = 'emergency' AND s.prev_discharge IS NOT NULL "
     "AND s.admission_date - s.prev_discharge <= 30 GROUP BY y"),
    ("first admission per person by method", 1,
     "WITH f AS (SELECT person_id, admission_method, ROW_NUMBER() OVER (PARTITION BY person_id "
     "ORDER BY admission_date, admission_method) AS rn FROM hospital_admissions) "
     "SELECT f.admission_method, COUNT(*) AS people FROM f WHERE f.rn = 1 "
     "GROUP BY f.admission_method"),
    ("admissions per person", 1,
     "SELECT t.n AS admissions, COUNT(*) AS people FROM (SELECT person_id, COUNT(*) AS n "
     "FROM hospital_admissions GROUP BY person_id) t GROUP BY t.n"),
    ("length of stay bands by method", 2,
     "SELECT h.admission_method, CASE WHEN h.length_of_stay = 0 THEN 'day case' "
     "WHEN h.length_of_stay <= 7 THEN '1-7 days' ELSE 'over a week' END AS stay, "
     "COUNT(*) AS spells FROM hospital_admissions h GROUP BY 1, 2"),
    ("admissions by method with a total row", 1,
     "SELECT h.admission_method AS method, COUNT(*) AS spells FROM hospital_admissions h "
     "GROUP BY h.admission_method UNION ALL SELECT 'all', COUNT(*) FROM hospital_admissions h"),
    # -- social care ---------------------------------------------------------------------
    ("care episodes by support reason", 1,
     "SELECT s.support_reason, COUNT(*) AS episodes, COUNT(DISTINCT s.person_id) AS people "
     "FROM social_care s GROUP BY s.support_reason"),
    ("people in care by service type", 1,
     "SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
     "GROUP BY s.service_type"),
    ("weekly cost by service type", 1,
     "SELECT s.service_type, SUM(s.weekly_cost) AS weekly_cost FROM social_care s "
     "GROUP BY s.service_type"),
    ("mean weekly cost by support reason", 1,
     "SELECT s.support_reason, AVG(s.weekly_cost) AS mean_weekly_cost FROM social_care s "
     "GROUP BY s.support_reason"),
    ("open care episodes by service type", 1,
     "SELECT s.service_type, COUNT(*) AS open_episodes FROM social_care s "
     "WHERE s.end_date IS NULL GROUP BY s.service_type"),
    ("care starts by year", 1,
     "SELECT year(s.start_date) AS y, COUNT(*) AS starts FROM social_care s GROUP BY y"),
    ("care for people with dementia by service type", 1,
     "SELECT s.service_type, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
     "JOIN gp_events e ON e.person_id = s.person_id WHERE e.snomed_code = '52448006' "
     "GROUP BY s.service_type"),
    ("care by providing council", 1,
     "SELECT s.local_authority_code, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
     "GROUP BY s.local_authority_code"),
    ("care within 90 days of a hospital discharge, by support reason", 1,
     "SELECT s.support_reason, COUNT(DISTINCT s.person_id) AS people FROM social_care s "
     "JOIN hospital_admissions h ON h.person_id = s.person_id "
     "WHERE s.start_date BETWEEN h.discharge_date AND h.discharge_date + INTERVAL 90 DAY "
     "GROUP BY s.support_reason"),
    # -- deaths --------------------------------------------------------------------------
    ("deaths by year", 1,
     "SELECT year(d.date_of_death) AS y, COUNT(*) AS deaths FROM deaths d GROUP BY y"),
    ("deaths by place", 1,
     "SELECT d.place_of_death, COUNT(*) AS deaths FROM deaths d GROUP BY d.place_of_death"),
    ("deaths by underlying cause", 1,
     "SELECT d.underlying_cause, COUNT(DISTINCT d.person_id) AS deaths FROM deaths d "
     "GROUP BY d.underlying_cause"),
    ("mortality within 30 days of an emergency admission, by age band", 1,
     f"SELECT {AGE} AS age_band, COUNT(DISTINCT h.person_id) AS admitted, "
     "COUNT(DISTINCT d.person_id) AS died_within_30_days FROM hospital_admissions h "
     "JOIN patients p ON p.person_id = h.person_id LEFT JOIN deaths d ON d.person_id = "
     "h.person_id AND d.date_of_death BETWEEN h.admission_date AND h.admission_date + 30 "
     "WHERE h.admission_method = 'emergency' GROUP BY age_band"),
    ("deaths in hospital by deprivation", 2,
     "SELECT l.imd_decile, d.place_of_death = 'hospital' AS in_hospital, COUNT(*) AS deaths "
     "FROM deaths d JOIN patients p ON p.person_id = d.person_id "
     "JOIN lsoa_lookup l ON l.lsoa_code = p.lsoa_code GROUP BY 1, 2"),
    ("COVID-19 deaths by year", 1,
     "SELECT year(d.date_of_death) AS y, COUNT(*) AS covid_deaths FROM deaths d "
     "WHERE d.underlying_cause = 'U07' GROUP BY y"),
    ("deaths among diabetics by sex", 1,
     "SELECT p.sex, COUNT(DISTINCT d.person_id) AS deaths FROM deaths d JOIN patients p "
     "ON p.person_id = d.person_id JOIN gp_events e ON e.person_id = d.person_id "
     f"WHERE e.snomed_code = {DIABETES} GROUP BY p.sex"),
    # -- written as analysts write them -----------------------------------------------------
    ("diabetics by sex through a CTE read only in WHERE", 1,
     f"WITH diabetics AS (SELECT e.person_id FROM gp_events e WHERE e.snomed_code = {DIABETES}) "
     "SELECT p.sex, COUNT(*) AS people FROM patients p "
     "WHERE p.person_id IN (SELECT person_id FROM diabetics) GROUP BY p.sex"),
    ("emergency admissions by month as timestamps", 1,
     "SELECT date_trunc('month', CAST(h.admission_date AS TIMESTAMP)) AS month, "
     "COUNT(*) AS admissions FROM hospital_admissions h WHERE h.admission_method = 'emergency' "
     "AND h.admission_date >= DATE '2025-01-01' GROUP BY month"),
]
