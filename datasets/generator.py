"""The synthetic generator: linked health and care data with plausible relations, in DuckDB SQL.

Every random draw is a hash of (seed, person, purpose), so a seed fixes the output and the
work runs set-at-a-time inside DuckDB: no per-row Python. The generator SQL below is the
project's own text, assembled from constants; no user input reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

#: The date the extract is taken; event dates stop here.
EXTRACT_DATE = "2026-06-30"
WINDOW_START = "2019-01-01"

#: Real public codes for the councils and ICBs; LSOA codes below them are synthetic.
#: (code, name, icb, relative population, number of LSOAs, postcode area, practice prefix)
LOCAL_AUTHORITIES = (
    ("E10000020", "Norfolk", "QMM", 0.92, 540, "NR", "D82"),
    ("E10000029", "Suffolk", "QMM", 0.76, 440, "IP", "D83"),
    ("E06000059", "Dorset", "QVV", 0.38, 220, "DT", "J81"),
    ("E06000058", "Bournemouth, Christchurch and Poole", "QVV", 0.40, 240, "BH", "J82"),
)
#: Hospital providers serving each council's residents.
PROVIDERS = {
    "E10000020": ("RM1", "RCX", "RGP"),
    "E10000029": ("RDE", "RGR"),
    "E06000059": ("RBD",),
    "E06000058": ("R0D",),
}

DIABETES_T2 = "44054006"
FRAILTY_STUDY = "FRAILTY-2025"


@dataclass(frozen=True)
class TableReport:
    table: str
    rows: int
    seconds: float


Progress = Callable[[int, int, str], None]


def _quiet(step: int, total: int, message: str) -> None:
    """Default progress sink: say nothing."""


def generate(
    out_dir: Path, persons: int, seed: int = 42, progress: Progress = _quiet, threads: int = 2
) -> list[TableReport]:
    """Write one Parquet file per catalogue table into ``out_dir``."""
    if persons < 1:
        raise ValueError("persons must be at least 1")
    if persons >= 30_000_000:
        raise ValueError("persons must be under 30 million (NHS number space of the generator)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": threads, "preserve_insertion_order": True})
    try:
        con.execute(f"CREATE MACRO u(i, tag) AS (hash(i, {int(seed)}, tag) % 1000003) / 1000003.0")
        con.execute(
            f"CREATE MACRO u2(i, k, tag) AS (hash(i, k, {int(seed)}, tag) % 1000003) / 1000003.0"
        )
        steps: list[tuple[str, str | None, Callable[[], None]]] = [
            ("geography", None, lambda: _geography(con)),
            ("people", None, lambda: _people(con, persons, seed)),
            ("lsoa_lookup", "lsoa_code", None),
            ("patients", "person_id", None),
            ("opt_outs", "person_id", None),
            ("study_consents", "person_id, study_id", None),
            ("deaths", "person_id", None),
            ("gp_events", "person_id, event_date, snomed_code, value", None),
            ("hospital_admissions", "person_id, admission_date, spell_id", None),
            ("social_care", "person_id, start_date, service_type", None),
        ]
        reports = []
        total = len(steps)
        for i, (name, order, action) in enumerate(steps, start=1):
            progress(i, total, name)
            t0 = time.perf_counter()
            if action is not None:
                action()
                continue
            con.execute(f"CREATE TEMP TABLE out_{name} AS {_TABLE_SQL[name]}")
            target = out_dir / f"{name}.parquet"
            con.execute(
                f"COPY (SELECT * FROM out_{name} ORDER BY {order}) TO '{target}' "
                "(FORMAT parquet, COMPRESSION zstd)"
            )
            rows = con.execute(f"SELECT count(*) FROM out_{name}").fetchone()[0]
            con.execute(f"DROP TABLE out_{name}")
            reports.append(TableReport(name, rows, time.perf_counter() - t0))
        return reports
    finally:
        con.close()


def _geography(con: duckdb.DuckDBPyConnection) -> None:
    values = ", ".join(
        f"('{c}', '{n}', '{i}', {w}, {k}, '{pc}', '{pp}', {idx})"
        for idx, (c, n, i, w, k, pc, pp) in enumerate(LOCAL_AUTHORITIES)
    )
    con.execute(
        "CREATE TEMP TABLE las(code, name, icb, weight, n_lsoa, postcode_area, practice_prefix, "
        f"idx) AS VALUES {values}"
    )
    # LSOA sizes vary five-fold, so that some small areas hold few people of a kind.
    con.execute(
        """
        CREATE TEMP TABLE lsoas AS
        WITH l AS (
            SELECT las.*, r.range AS k,
                   'E01' || lpad(CAST(100000 + las.idx * 5000 + r.range AS VARCHAR), 6, '0')
                       AS lsoa_code
            FROM las, range(las.n_lsoa) r
        )
        SELECT lsoa_code, code AS local_authority_code, name AS local_authority_name,
               icb AS icb_code, postcode_area, practice_prefix, k,
               1 + CAST(floor(u(hash(lsoa_code), 'imd') * 10) AS INTEGER) AS imd_decile,
               weight / n_lsoa * (0.35 + 1.6 * u(hash(lsoa_code), 'size')) AS w
        FROM l
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE lsoa_cum AS
        SELECT *, (sum(w) OVER (ORDER BY lsoa_code) - w) / sum(w) OVER () AS cum_lo
        FROM lsoas
        """
    )


def _people(con: duckdb.DuckDBPyConnection, persons: int, seed: int) -> None:
    """One wide row per person with every latent trait the tables derive from."""
    con.execute(
        f"""
        CREATE TEMP TABLE base AS
        SELECT range + 1 AS person_id, u(range + 1, 'lsoa') AS ul FROM range({int(persons)})
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE people AS
        WITH a AS (
            SELECT b.person_id, l.lsoa_code, l.local_authority_code, l.icb_code,
                   l.postcode_area, l.practice_prefix, l.k AS lsoa_k, l.imd_decile,
                   u(b.person_id, 'age') AS ua,
                   CASE WHEN u(b.person_id, 'sex') < 0.51 THEN 'F' ELSE 'M' END AS sex,
                   (10 - l.imd_decile) / 9.0 AS depr
            FROM base b ASOF JOIN lsoa_cum l ON b.ul >= l.cum_lo
        ), b AS (
            SELECT *,
                   CAST(CASE WHEN ua < 0.8 THEN floor(ua / 0.8 * 65)
                        ELSE 65 + floor(pow((ua - 0.8) / 0.2, 1.4) * 36) END AS INTEGER) AS age
            FROM a
        ), c AS (
            SELECT *,
                   DATE '{EXTRACT_DATE}' - INTERVAL (age) YEAR
                       - INTERVAL (CAST(floor(u(person_id, 'dob') * 365) AS INTEGER)) DAY
                       AS dob_ts,
                   CASE WHEN age >= 60 THEN u(person_id, 'frail') * (age - 55) / 45.0
                        ELSE 0 END AS frail
            FROM b
        ), d AS (
            SELECT *, CAST(dob_ts AS DATE) AS date_of_birth,
                   age >= 18 AND u(person_id, 'diab')
                       < 0.004 + 0.16 * pow(least(age, 85) / 85.0, 2) + 0.06 * depr AS diabetic,
                   age >= 65 AND u(person_id, 'dem')
                       < 0.003 + 0.25 * pow((age - 65) / 35.0, 2) AS dementia,
                   u(person_id, 'die') < 0.001 + 0.55 * pow(age / 100.0, 4) + 0.25 * frail
                       AS died
            FROM c
        )
        SELECT *,
               CASE WHEN died THEN DATE '{WINDOW_START}'
                    + CAST(floor(u(person_id, 'dod') * 2737) AS INTEGER) END AS date_of_death
        FROM d
        """
    )


_NHS_WEIGHTS = " + ".join(
    f"CAST(substr(s, {i}, 1) AS INTEGER) * {11 - i}" for i in range(1, 10)
)


def _nhs_number_sql() -> str:
    """Ten digits with a valid modulus-11 check digit, unique per person.

    The ninth digit is tried as d and d+1 (d < 8, no carry): their weighted sums differ by 2
    modulo 11, so at most one of the two gives the invalid check value 10.
    """
    return f"""
        (SELECT CASE WHEN c1 <> 10 THEN s1 || CAST(c1 % 11 AS VARCHAR)
                     ELSE s2 || CAST(c2 % 11 AS VARCHAR) END
         FROM (SELECT s1, s2,
                      11 - ((SELECT {_NHS_WEIGHTS} FROM (SELECT s1 AS s)) % 11) AS c1,
                      11 - ((SELECT {_NHS_WEIGHTS} FROM (SELECT s2 AS s)) % 11) AS c2
               FROM (SELECT pre || CAST(person_id % 8 AS VARCHAR) AS s1,
                            pre || CAST(person_id % 8 + 1 AS VARCHAR) AS s2
                     FROM (SELECT CAST(4 + person_id // 10000000 AS VARCHAR)
                                  || lpad(CAST((person_id * 7919) % 10000000 AS VARCHAR), 7, '0')
                                  AS pre))))
    """


def _pick(u_expr: str, options: list[tuple[str, float]]) -> str:
    """A CASE that picks among options with the given weights from one uniform draw."""
    total = sum(w for _, w in options)
    acc, parts = 0.0, []
    for value, w in options[:-1]:
        acc += w / total
        parts.append(f"WHEN {u_expr} < {acc:.6f} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{options[-1][0]}' END"


_DAYS_WINDOW = 2737  # 2019-01-01 .. 2026-06-30

_CONDITIONS = [
    # (code, probability expression over people columns)
    (DIABETES_T2, "diabetic"),
    ("38341003", "age >= 18 AND u(person_id, 'htn') < 0.02 + 0.5 * pow(least(age, 90) / 90.0, 2)"),
    ("195967001", "u(person_id, 'asthma') < 0.08"),
    ("13645005", "age >= 35 AND u(person_id, 'copd') < 0.002 + 0.07 * pow(age / 90.0, 2) + 0.03 * depr"),
    ("35489007", "age >= 12 AND u(person_id, 'dep') < 0.09 + 0.04 * depr"),
    ("52448006", "dementia"),
    ("248279007", "frail > 0.45"),
]

_ROUTINE = [
    ("60621009", 0.30, "round(18 + u2(person_id, k, 'bmi') * 22, 1)"),  # BMI
    ("271649006", 0.30, "round(100 + u2(person_id, k, 'sbp') * 80)"),  # systolic BP
    ("86198006", 0.20, "NULL"),  # flu vaccination
    ("182836005", 0.10, "NULL"),  # medication review
    ("77176002", 0.10, "NULL"),  # smoking status
]


def _gp_events_sql() -> str:
    diag = " UNION ALL ".join(
        f"""SELECT person_id, '{code}' AS snomed_code, CAST(NULL AS DOUBLE) AS value,
                   greatest(date_of_birth, DATE '2008-01-01')
                   + CAST(floor(u(person_id, 'd{code}')
                     * (DATE '{EXTRACT_DATE}' - greatest(date_of_birth, DATE '2008-01-01')))
                     AS INTEGER) AS event_date, date_of_death
            FROM people WHERE {cond}"""
        for code, cond in _CONDITIONS
    )
    routine_pick = "CASE " + " ".join(
        f"WHEN u2(person_id, k, 'rt') < {sum(w for _, w, _ in _ROUTINE[: i + 1]):.4f} "
        f"THEN {i}"
        for i in range(len(_ROUTINE) - 1)
    ) + f" ELSE {len(_ROUTINE) - 1} END"
    codes = "[" + ", ".join(f"'{c}'" for c, _, _ in _ROUTINE) + "]"
    values = " ".join(f"WHEN {i} THEN {v}" for i, (_, _, v) in enumerate(_ROUTINE))
    return f"""
        WITH diag AS ({diag}),
        hba1c AS (
            SELECT person_id, '1049301000000100' AS snomed_code,
                   round(42 + u2(person_id, k, 'hba') * 40 + 8 * frail, 0) AS value,
                   DATE '{WINDOW_START}' + CAST(floor(u2(person_id, k, 'hbd') * {_DAYS_WINDOW})
                       AS INTEGER) AS event_date, date_of_death
            FROM (SELECT *, unnest(range(2 + CAST(floor(u(person_id, 'nh') * 5) AS INTEGER))) AS k
                  FROM people WHERE diabetic)
        ),
        routine AS (
            SELECT person_id, list_extract({codes}, r + 1) AS snomed_code,
                   CASE r {values} END AS value, event_date, date_of_death
            FROM (SELECT person_id, date_of_death, {routine_pick} AS r, k, frail,
                         DATE '{WINDOW_START}' + CAST(floor(u2(person_id, k, 'rd') * {_DAYS_WINDOW})
                             AS INTEGER) AS event_date
                  FROM (SELECT person_id, date_of_death, frail, date_of_birth,
                               unnest(range(CAST(floor(u(person_id, 'nr') * (1 + age / 10.0))
                                            AS INTEGER))) AS k
                        FROM people)
                  WHERE date_of_birth <= DATE '{WINDOW_START}' + CAST(floor(u2(person_id, k, 'rd')
                        * {_DAYS_WINDOW}) AS INTEGER))
        ),
        allev AS (
            SELECT * FROM diag UNION ALL SELECT * FROM hba1c UNION ALL SELECT * FROM routine
        )
        SELECT person_id, event_date, snomed_code, value FROM allev
        WHERE date_of_death IS NULL OR event_date <= date_of_death
    """


def _admissions_sql() -> str:
    # emergency share rises with age and frailty; maternity only for women 16-45
    emerg = "(0.30 + 0.35 * least(age, 95) / 95.0 + 0.25 * frail)"
    method = f"""CASE WHEN sex = 'F' AND age BETWEEN 16 AND 45 AND um < 0.22 THEN 'maternity'
                     WHEN um < 0.22 + {emerg} * 0.75 THEN 'emergency'
                     WHEN um < 0.97 THEN 'elective' ELSE 'other' END"""
    emergency_dx = _pick(
        "ud",
        [("J18", 3), ("I50", 2), ("N39", 2), ("I21", 1.5), ("J44", 1.5), ("R07", 2),
         ("S72", 1), ("K35", 1), ("I63", 1)],
    )
    elective_dx = _pick(
        "ud", [("H25", 3), ("M17", 2), ("K80", 2), ("C50", 1), ("Z51", 2), ("N40", 1)]
    )
    return f"""
        WITH p AS (
            SELECT *,
                   0.04 + 0.55 * pow(least(age, 95) / 95.0, 2) + 0.9 * frail
                       + CASE WHEN diabetic THEN 0.15 ELSE 0 END AS lam
            FROM people
        ), s AS (
            SELECT *, unnest(range(CASE WHEN u(person_id, 'na') < exp(-lam) THEN 0
                                   ELSE 1 + CAST(floor(lam * 2.5 * u(person_id, 'nb')) AS INTEGER)
                                   END)) AS k
            FROM p
        ), d AS (
            SELECT *, u2(person_id, k, 'm') AS um, u2(person_id, k, 'dx') AS ud,
                   least(coalesce(date_of_death, DATE '{EXTRACT_DATE}'), DATE '{EXTRACT_DATE}',
                         DATE '{WINDOW_START}' + CAST(floor(u2(person_id, k, 'ad') * {_DAYS_WINDOW})
                             AS INTEGER)) AS admission_date
            FROM s WHERE date_of_birth <= DATE '{EXTRACT_DATE}'
        ), e AS (
            SELECT *, {method} AS admission_method FROM d WHERE admission_date >= date_of_birth
        ), f AS (
            SELECT *,
                   CAST(CASE admission_method
                        WHEN 'emergency' THEN floor(-ln(1 - u2(person_id, k, 'los') * 0.999)
                                                   * (1.5 + age / 12.0 + 6 * frail))
                        WHEN 'maternity' THEN 1 + floor(u2(person_id, k, 'los') * 3)
                        WHEN 'elective' THEN floor(u2(person_id, k, 'los') * 3)
                        ELSE floor(u2(person_id, k, 'los') * 6) END AS INTEGER) AS length_of_stay
            FROM e
        )
        SELECT (person_id * 64 + k) AS spell_id, person_id, admission_date,
               admission_date + length_of_stay AS discharge_date, admission_method,
               CASE WHEN admission_method = 'maternity' THEN 'O80'
                    WHEN admission_method = 'emergency' AND diabetic AND ud < 0.08 THEN 'E11'
                    WHEN admission_method = 'emergency' THEN {emergency_dx}
                    ELSE {elective_dx} END AS primary_diagnosis,
               length_of_stay,
               CASE local_authority_code {_provider_case()} END AS provider_code,
               CASE WHEN date_of_death IS NOT NULL
                         AND date_of_death <= admission_date + length_of_stay THEN 'died'
                    WHEN age >= 70 AND u2(person_id, k, 'dest') < 0.1 + 0.3 * frail
                         THEN 'care_home'
                    WHEN u2(person_id, k, 'dest') > 0.97 THEN 'other'
                    ELSE 'home' END AS discharge_destination
        FROM f
    """


def _provider_case() -> str:
    parts = []
    for la, codes in PROVIDERS.items():
        if len(codes) == 1:
            parts.append(f"WHEN '{la}' THEN '{codes[0]}'")
        else:
            pick = _pick("u2(person_id, k, 'prov')", [(c, 1.0) for c in codes])
            parts.append(f"WHEN '{la}' THEN {pick}")
    return " ".join(parts)


def _social_care_sql() -> str:
    las = [la[0] for la in LOCAL_AUTHORITIES]
    other_la = _pick("u2(person_id, k, 'ola')", [(c, 1.0) for c in las])
    older_service = _pick(
        "u2(person_id, k, 'svc')",
        [("home_care", 40), ("residential", 20), ("nursing", 10), ("reablement", 20),
         ("direct_payment", 10)],
    )
    younger_service = _pick(
        "u2(person_id, k, 'svc')",
        [("home_care", 25), ("residential", 10), ("reablement", 5), ("direct_payment", 60)],
    )
    younger_reason = _pick(
        "u2(person_id, k, 'rsn')",
        [("learning_disability", 50), ("mental_health", 30), ("physical", 15), ("sensory", 5)],
    )
    older_reason = _pick(
        "u2(person_id, k, 'rsn')", [("physical", 80), ("sensory", 8), ("mental_health", 12)]
    )
    return f"""
        WITH p AS (
            SELECT * FROM people
            WHERE (age >= 65 AND u(person_id, 'asc')
                       < 0.015 + 0.45 * frail + CASE WHEN dementia THEN 0.35 ELSE 0 END)
               OR (age BETWEEN 18 AND 64 AND u(person_id, 'asc') < 0.008)
        ), s AS (
            SELECT *, unnest(range(1 + CAST(floor(u(person_id, 'nasc') * 2.6) AS INTEGER))) AS k
            FROM p
        ), e AS (
            SELECT *,
                   CASE WHEN age >= 65 THEN {older_service} ELSE {younger_service} END
                       AS service_type,
                   DATE '{WINDOW_START}' + CAST(floor(u2(person_id, k, 'st') * {_DAYS_WINDOW})
                       AS INTEGER) AS start_date
            FROM s
        )
        SELECT person_id,
               CASE WHEN u2(person_id, k, 'ooa') < 0.06 THEN {other_la}
                    ELSE local_authority_code END AS local_authority_code,
               service_type,
               CASE WHEN age >= 65 AND dementia AND u2(person_id, k, 'rsn') < 0.7
                         THEN 'memory_cognition'
                    WHEN age >= 65 THEN {older_reason} ELSE {younger_reason} END
                       AS support_reason,
               start_date,
               CASE WHEN date_of_death IS NOT NULL AND date_of_death >= start_date
                         THEN date_of_death
                    WHEN u2(person_id, k, 'open') < 0.4 THEN NULL
                    ELSE least(DATE '{EXTRACT_DATE}',
                               start_date + CAST(7 + floor(u2(person_id, k, 'dur') * 700)
                                   AS INTEGER)) END AS end_date,
               round(CASE service_type
                     WHEN 'home_care' THEN 180 + u2(person_id, k, 'c') * 420
                     WHEN 'residential' THEN 700 + u2(person_id, k, 'c') * 500
                     WHEN 'nursing' THEN 900 + u2(person_id, k, 'c') * 700
                     WHEN 'reablement' THEN 150 + u2(person_id, k, 'c') * 250
                     ELSE 200 + u2(person_id, k, 'c') * 500 END, 2) AS weekly_cost
        FROM e
        WHERE date_of_death IS NULL OR start_date <= date_of_death
    """


_TABLE_SQL = {
    "lsoa_lookup": """
        SELECT lsoa_code, local_authority_code, local_authority_name, icb_code, imd_decile
        FROM lsoas
    """,
    "patients": f"""
        SELECT person_id,
               {_nhs_number_sql()} AS nhs_number,
               date_of_birth,
               postcode_area || CAST(1 + CAST(floor(u(person_id, 'pc1') * 30) AS INTEGER)
                   AS VARCHAR) || ' ' || CAST(CAST(floor(u(person_id, 'pc2') * 10) AS INTEGER)
                   AS VARCHAR)
                   || chr(65 + CAST(floor(u(person_id, 'pc3') * 26) AS INTEGER))
                   || chr(65 + CAST(floor(u(person_id, 'pc4') * 26) AS INTEGER)) AS postcode,
               CAST(year(date_of_birth) AS INTEGER) AS year_of_birth,
               sex,
               {_pick("u(person_id, 'eth')", [("White", 85), ("Asian", 6), ("Black", 3), ("Mixed", 3.5), ("Other", 2.5)])}
                   AS ethnicity,
               lsoa_code, local_authority_code,
               practice_prefix || lpad(CAST(1 + (lsoa_k * 7 + CAST(floor(u(person_id, 'pr') * 3)
                   AS INTEGER)) % 60 AS VARCHAR), 3, '0') AS practice_code,
               greatest(date_of_birth, DATE '1995-01-01'
                   + CAST(floor(u(person_id, 'reg') * 11500) AS INTEGER)) AS registration_date
        FROM people
    """,
    "opt_outs": """
        SELECT person_id,
               DATE '2018-05-25' + CAST(floor(u(person_id, 'ood') * 2958) AS INTEGER)
                   AS opt_out_date
        FROM people WHERE u(person_id, 'optout') < 0.05
    """,
    "study_consents": f"""
        SELECT person_id, '{FRAILTY_STUDY}' AS study_id,
               DATE '2025-01-06' + CAST(floor(u(person_id, 'cons') * 359) AS INTEGER)
                   AS consented_on,
               CASE WHEN u(person_id, 'wd') < 0.08
                    THEN DATE '2025-07-01' + CAST(floor(u(person_id, 'wdd') * 364) AS INTEGER)
                    END AS withdrawn_on
        FROM people WHERE age >= 65 AND u(person_id, 'frailty_study') < 0.15
        UNION ALL
        SELECT person_id, 'DIAB-LIFESTYLE-2024', DATE '2024-03-01'
                   + CAST(floor(u(person_id, 'cons2') * 300) AS INTEGER), NULL
        FROM people WHERE diabetic AND u(person_id, 'dl_study') < 0.3
    """,
    "deaths": f"""
        SELECT person_id, date_of_death,
               CASE WHEN dementia AND u(person_id, 'uc') < 0.5 THEN 'F03'
                    WHEN year(date_of_death) BETWEEN 2020 AND 2022
                         AND u(person_id, 'uc') < 0.12 THEN 'U07'
                    ELSE {_pick("u(person_id, 'uc2')", [("I21", 3), ("I64", 2), ("C34", 2), ("J44", 1.5), ("J18", 1.5), ("C18", 1), ("I50", 1), ("E11", 0.5)])}
               END AS underlying_cause,
               {_pick("u(person_id, 'pod')", [("hospital", 45), ("home", 25), ("care_home", 20), ("hospice", 6), ("other", 4)])}
                   AS place_of_death
        FROM people WHERE died
    """,
    "gp_events": _gp_events_sql(),
    "hospital_admissions": _admissions_sql(),
    "social_care": _social_care_sql(),
}
