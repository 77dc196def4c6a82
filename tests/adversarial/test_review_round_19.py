"""The breaks of review round 19, kept as tests (docs/security.md lists every round).

Both are hangs: disclosure control that runs in Python after the engine has answered, outside
the engine's time limit (``query_timeout_s``, 30 s), for as long as the query's shape makes it.

**Secondary suppression is cubic in the size of the result.** ``protect`` (in
``gateway/disclosure/secondary.py``) checks each primary-suppressed cell by the rank of the
relations matrix with that cell's unit vector added: one full matrix rank (an SVD of
relations x hidden cells) per suppressed cell, and again on every pass of its loop, for every
count column. A planner's ``GROUP BY ROLLUP (p.practice_code, p.year_of_birth)`` has about
4,000 detail cells of one or two people, all suppressed: about 4,000 ranks of a 61 x 4,000
matrix, a minute and more of one core per count column. ``ROLLUP (p.lsoa_code,
p.year_of_birth)`` has 6,600 suppressed cells under 540 margins: 6,600 ranks of a 541 x 6,600
matrix, about half an hour per column, with nothing to stop it (the request never answers).

**The cell-key table is rebuilt for every cell, as wide as one person's rows.** Round 17 made
a count of rows perturbed from a table ``band`` times wider (``PerturbationTable(2 * band,
band ** 2)``), and the query chooses the band: four self-joins of ``gp_events`` on person_id
give one person 16 ** 4 rows, band 100,000, a table over [-200,000, 200,000]. ``_table``
solves for its variance by 200 bisection steps over the whole support, uncached, once per
released cell: tens of seconds a cell, and a few more joins make it hours and gigabytes.

A fix may refuse such a query (a 4xx), or answer it in bounded time: each passes.
"""

from __future__ import annotations

from attack import PLANNER, RESEARCHER, answered_in_time, norfolk_residents, timed_query

#: no disclosure control should take longer than the engine may take to run the query


def test_secondary_suppression_of_a_large_rollup_does_not_hang(server, raw):
    """ROLLUP over (practice, year of birth): thousands of suppressed detail cells, each
    checked by its own matrix rank. The planner's one query holds a core for minutes, past
    the time limit that bounds the engine; a finer key (the small area) makes it hours."""
    details, margins = raw.execute(
        "SELECT COUNT(DISTINCT (practice_code, year_of_birth)), COUNT(DISTINCT practice_code) "
        f"FROM ({norfolk_residents()})").fetchone()
    assert details > 2000 and margins < 200, "the shape this test needs (checked on raw data)"
    sql = ("SELECT p.practice_code, p.year_of_birth, COUNT(*) AS n FROM patients p "
           "GROUP BY ROLLUP (p.practice_code, p.year_of_birth)")
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, f"a {details}-cell ROLLUP")


def test_a_wide_cell_key_perturbation_table_does_not_hang(server, raw):
    """cell_key, per ethnic group: four self-joins give one person up to n ** 4 rows, so the
    count's perturbation table is that wide, and it is rebuilt by bisection over its whole
    support for every cell released (five cells)."""
    cohort = ("SELECT person_id FROM study_consents WHERE study_id = 'FRAILTY-2025' "
              "AND withdrawn_on IS NULL")
    (most,) = raw.execute(
        f"SELECT MAX(n) FROM (SELECT person_id, COUNT(*) AS n FROM gp_events WHERE person_id "
        f"IN ({cohort}) GROUP BY person_id)").fetchone()
    assert most ** 4 > 20_000, "the shape this test needs (checked on raw data)"
    sql = ("SELECT p.ethnicity, COUNT(*) AS n FROM patients p "
           "JOIN gp_events a ON a.person_id = p.person_id "
           "JOIN gp_events b ON b.person_id = p.person_id "
           "JOIN gp_events c ON c.person_id = p.person_id "
           "JOIN gp_events d ON d.person_id = p.person_id GROUP BY p.ethnicity")
    resp, took = timed_query(server, RESEARCHER, sql)
    answered_in_time(resp, took, f"five cells of a count whose band is about {most ** 4} rows")
