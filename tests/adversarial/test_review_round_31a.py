"""The breaks of review round 31a, kept as tests (docs/security.md lists every round).

This round attacked the run-time person-link assertion added after round 30
(``assert_person_links`` in ``gateway/sql/rewrite.py``): in every select that reads two or
more person-level sources it adds ``CASE WHEN LEAST(keys) <> GREATEST(keys) THEN error(...)
ELSE TRUE END`` to WHERE, "so that a join the proof wrongly took for a link is refused, not
released" (docs/security.md, docs/architecture.md). No new hole was found in the static proof
(``check_person_links``) itself; what was found is that the second line does not hold on its
own, which is the one thing it is there for.

**A derived table's listed person key can be NULL on rows whose values are real.** The keys
the check compares are, per source, ``_person_columns``: a table's person key, or the *first*
bare person-key projection of a derived table. LEAST and GREATEST skip NULLs, so that the rows
an outer join pads pass. But a derived table can pass on a person key taken from a source that
*its own* outer join pads, beside values from a source that is always there:

    (SELECT z.person_id AS pid, h.length_of_stay AS los
     FROM hospital_admissions h
     LEFT JOIN deaths z ON z.person_id = h.person_id AND FALSE
     WHERE h.person_id IN <her>) t

Inside ``t`` everything is sound (``z`` is attached to ``h`` by its own ON; the check there
compares ``h`` and ``z`` and passes because ``z`` is NULL). Outside, ``t.pid`` is NULL on
every row, so on a select pairing ``t`` with anyone, ``LEAST(q.person_id, t.pid)`` equals
``GREATEST(q.person_id, t.pid)`` on every row and the check never fires, whatever the join.
The same comes from a NULL group (``GROUP BY z.person_id``: everyone's admissions summed into
one row with a NULL person key) and from a NULL key listed before the real one (``z.person_id
AS pid, h.person_id AS hid``: the check reads ``pid`` only).

With the proof switched off (as ``tests/unit/gateway/test_person_link_check.py`` does to test
the second line alone), the plain cross join ``FROM patients q, t`` is then:

* **One person's exact total length of stay** (threshold, HTTP 200): every Norfolk resident
  paired with one resident's admissions, summed by the residents' sex: F 345254 = 3523 x 98
  and M 332906 = 3397 x 98 (raw: her total is 98), each cell resting on thousands of people
  who "contribute" the same, so no dominance rule fires. Exactly round 27's to 30's result,
  now with the engine's check in the executed SQL, passing.
* **Her registration date as a group key** (threshold): a row keyed by her date resting on
  every resident.
* **Under dp**, one person moves the bounded count by thousands against a bound of 5.

Root cause: ``_person_columns`` (``gateway/sql/rewrite.py``) takes a derived table's person
to be its first person-key column, and ``assert_person_links`` trusts a NULL there to mean
"no one's rows" (as it does for a padded base table). For a derived table that is not so: a
NULL key says only that *one* of its sources was padded, not that its values are. (The proof
would refuse every one of these queries today, as the first test checks; what fails is the
claim that a wrong proof is caught by the engine.) A fix has to compare a key that is there
whenever the derived table's values are (for instance every person key of each inner source,
passed up as a hidden COALESCE), or refuse a derived table whose person key can be NULL
where it is used as a person source.

Ideas that held, not kept as tests: a lateral or correlated reference rebinding (DuckDB binds a
derived table's reference to a preceding sibling or the outer query; every person link is an
equality the engine evaluates on whatever it binds, so it pins the rows to the outer person);
type coercion in LEAST/GREATEST (every person key is a bare BIGINT column); the error being
optimised away or pushed into a LEFT JOIN (DuckDB keeps it above the join, and a row that
survives WHERE has passed it); a NULL-keyed derived table under the proof (a NULL key never
satisfies a linking equality); repeating one person's rows under a summed measure or in a
COUNT(*) taken for people (``check_measure_rows_once``, ``_measure_rows_once_below``,
``one_per_person``, ``one_row_per_person``, ``_check_lookups`` each held: every non-FROM
source needs a filtering equality or its own ON on a declared key). Also seen, without a leak:
a nested join written without parentheses (``JOIN h JOIN d ON ... ON ...``) is in the
analysis, but ``filter_scans`` replaces the carrying table ``h`` by a filtered subquery and
drops the nested ``JOIN d`` from the executed SQL (a binder error, 400, where ``d`` is used),
and ``padded_sources`` does not mark a nested outer join's sources as padded; every nested
source still has to be linked by a filtering equality, which keeps it non-NULL.
"""

from __future__ import annotations

import pytest
from attack import (
    DP_RESEARCHER,
    PLANNER,
    alone_anywhere_with_stays,
    alone_with_stays,
    assert_bounded_without,
    assert_not_her_date_as_key,
    assert_not_multiples_of_her_stay,
    executed,
    explain_as,
    person_filter,
    planned,
    query_as,
    refused,
    released_rows,
)

from gateway.errors import SqlRejected
from gateway.sql import analysis as analysis_module

#: a deaths row that never matches: its person key is NULL on every row it is joined to
NEVER = "z.person_id = {src}.person_id AND z.date_of_death < DATE '1800-01-01'"


def _stays(her: str, *, second_key: bool = False) -> str:
    """Her admissions, passed on under a person key that is NULL on every row."""
    hid = "h.person_id AS hid, " if second_key else ""
    return f"""(SELECT z.person_id AS pid, {hid}h.length_of_stay AS los
                FROM hospital_admissions h
                LEFT JOIN deaths z ON {NEVER.format(src="h")}
                WHERE h.person_id IN {her}) t"""


def shapes(raw) -> dict[str, str]:
    yob, lsoa, _, _ = alone_with_stays(raw)
    her = person_filter(yob, lsoa)
    return {
        "a derived table whose person key is NULL": f"""
            SELECT q.sex AS sex, SUM(t.los) AS los
            FROM patients q, {_stays(her)}
            GROUP BY q.sex""",
        "a NULL person key listed before her key": f"""
            SELECT q.sex AS sex, SUM(t.los) AS los
            FROM patients q, {_stays(her, second_key=True)}
            GROUP BY q.sex""",
        "a round-29 shape through the NULL-keyed table": f"""
            SELECT q.sex AS sex, SUM(t.los) AS los
            FROM patients q
            LEFT JOIN {_stays(her)} ON TRUE
            LEFT JOIN deaths d ON d.person_id = q.person_id AND d.person_id = t.pid
            WHERE t.los IS NOT NULL
            GROUP BY q.sex""",
        "everyone's stays grouped under a NULL person": """
            SELECT q.sex AS sex, COUNT(*) AS n
            FROM patients q,
                 (SELECT z.person_id AS pid, COUNT(*) AS stays
                  FROM hospital_admissions h
                  LEFT JOIN deaths z ON z.person_id = h.person_id
                       AND z.date_of_death < DATE '1800-01-01'
                  GROUP BY z.person_id) t
            WHERE t.stays > 100
            GROUP BY q.sex""",
        "her registration date beside everyone": f"""
            SELECT t.reg AS registered, COUNT(DISTINCT p.person_id) AS people
            FROM patients p,
                 (SELECT z.person_id AS pid, x.registration_date AS reg
                  FROM patients x LEFT JOIN deaths z ON {NEVER.format(src="x")}
                  WHERE x.year_of_birth = {yob} AND x.lsoa_code = '{lsoa}') t
            GROUP BY t.reg""",
    }


def _proof_off(monkeypatch) -> None:
    """The first line switched off, as tests/unit/gateway/test_person_link_check.py does: a
    proof that is wrong is a failure these tests cannot cause for real."""
    monkeypatch.setattr(analysis_module, "check_person_links", lambda scope, cat: None)


@pytest.mark.parametrize("name", [
    "a derived table whose person key is NULL", "a NULL person key listed before her key",
    "a round-29 shape through the NULL-keyed table",
    "everyone's stays grouped under a NULL person", "her registration date beside everyone",
])
def test_with_the_proof_switched_off_the_engine_refuses_pairs_behind_a_null_key(
        name, raw, catalogue, engine, monkeypatch):
    """Each shape pairs one person's (or everyone's) rows with every patient. The proof
    refuses it; without the proof, the engine's check must, on every query the pipeline
    would run. Today they all run: the key compared for ``t`` is NULL on every row."""
    sql = shapes(raw)[name]
    with pytest.raises(SqlRejected, match="not all joined on person_id"):
        planned(sql, catalogue)  # the first line holds ...
    _proof_off(monkeypatch)
    try:
        plan = planned(sql, catalogue)  # ... and, without it, the query is planned
    except SqlRejected:
        return  # or refused by another rule: also safe
    assert "error(" in plan.sql.lower()  # with the engine's check in it
    for query in executed(plan):
        with pytest.raises(SqlRejected) as stopped:
            engine.execute(query, timeout_s=30, row_cap=10_000)
        assert stopped.value.code == "person_link_broken"


def test_with_the_proof_switched_off_her_exact_stay_is_released(server, raw, monkeypatch):
    """Over HTTP, threshold: the sums by sex of every resident x her admissions, released as
    N_F and N_M times her exact total length of stay."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sql = shapes(raw)["a derived table whose person key is NULL"] + \
        "\nORDER BY q.sex -- round 31a: her stay"
    _proof_off(monkeypatch)
    rows = released_rows(query_as(server, PLANNER, sql))
    assert_not_multiples_of_her_stay(raw, rows, truth, yob, lsoa)


def test_with_the_proof_switched_off_her_registration_date_is_a_key(server, raw, monkeypatch):
    """Over HTTP, threshold: her exact registration date as the key of a row resting on every
    resident."""
    yob, lsoa, _, registered = alone_with_stays(raw)
    sql = shapes(raw)["her registration date beside everyone"] + \
        "\n-- round 31a: her registration date"
    _proof_off(monkeypatch)
    assert_not_her_date_as_key(released_rows(query_as(server, PLANNER, sql)), registered, yob, lsoa)


def test_with_the_proof_switched_off_one_person_is_bounded_under_dp(server, raw, monkeypatch):
    """dp: COUNT(*) over every patient x one person's admissions moves by thousands when she
    is taken out; the noise assumes cells x rows per cell."""
    yob, lsoa, person = alone_anywhere_with_stays(raw)
    sql = f"""
        SELECT q.sex AS sex, COUNT(*) AS n
        FROM patients q, {_stays(person_filter(yob, lsoa))}
        GROUP BY q.sex -- round 31a: dp"""
    _proof_off(monkeypatch)
    explained = explain_as(server, DP_RESEARCHER, sql)
    if explained is None:
        return  # refused
    assert_bounded_without(raw, explained, "hospital_admissions", person)


def test_a_nested_join_is_refused_not_dropped(server):
    """``JOIN h JOIN d ON ... ON ...`` hangs d's join under h, where the rules on a select's
    joins do not read it and the rewrite dropped it: refused, with a hint, as a 400."""
    sql = """
        SELECT p.sex AS sex, COUNT(*) AS n FROM patients p
        JOIN hospital_admissions h JOIN deaths d ON d.person_id = h.person_id
          ON h.person_id = p.person_id
        GROUP BY p.sex"""
    resp = query_as(server, PLANNER, sql)
    assert refused(resp) and resp.status_code == 400
    assert "nested joins" in resp.json()["error"]["message"]
