"""Shared by the review-round tests (tests/adversarial/test_review_round_*.py): who attacks,
the people each caller may see, computed by hand in raw DuckDB, and a query with a deadline."""

from __future__ import annotations

import math
import time
from collections import Counter

import duckdb
import httpx
from conftest import TODAY

from gateway.errors import PERSON_LINK_BROKEN
from gateway.sql.analysis import analyse
from gateway.sql.rewrite import Plan, rewrite
from policies import Obligations
from policies.model import Output

PLANNER = ("p.jones", "JOINT-PLANNING", "planning")
RESEARCHER = ("r.smith", "PRJ-0077", "research")  # cell_key
DP_RESEARCHER = ("r.smith", "PRJ-0042", "research")
NORFOLK = "E10000020"
#: the joint-planning policy's threshold
MIN_PEOPLE = 8
#: how long a request may take before a test calls it a hang (the engine's own limit)
BOUND_S = 30.0


def norfolk_residents() -> str:
    """The Norfolk planner's people, by hand: residents, not opted out."""
    return (f"SELECT * FROM patients WHERE local_authority_code = '{NORFOLK}' AND person_id "
            "NOT IN (SELECT person_id FROM opt_outs WHERE person_id IS NOT NULL)")


def not_opted_out() -> str:
    """Everyone but the opted-out: the people of an ICB-wide caller."""
    return ("SELECT * FROM patients WHERE person_id NOT IN "
            "(SELECT person_id FROM opt_outs WHERE person_id IS NOT NULL)")


def cohort() -> str:
    """The researcher's people, by hand: consented to FRAILTY-2025 and not withdrawn."""
    return ("SELECT * FROM patients WHERE person_id IN (SELECT person_id FROM study_consents "
            f"WHERE study_id = 'FRAILTY-2025' AND consented_on <= DATE '{TODAY}' AND "
            f"(withdrawn_on IS NULL OR withdrawn_on > DATE '{TODAY}'))")


def query_as(server, who: tuple[str, str, str], sql: str) -> httpx.Response:
    sub, project, purpose = who
    return server.query(sub, sql, project, purpose)


def refused(resp: httpx.Response) -> bool:
    """Whether the gateway refused: any reply but a 200, which must then be a 4xx (a 500 is a
    failure, never a refusal)."""
    if resp.status_code == 200:
        return False
    assert 400 <= resp.status_code < 500, resp.text
    return True


def explain_as(server, who: tuple[str, str, str], sql: str) -> dict | None:
    """The explain output of a permitted query (its executed SQL, its dp plan), or None if the
    query is refused (a 4xx, or a decision other than permit)."""
    sub, project, purpose = who
    resp = server.client.post(
        "/v1/queries/explain", headers={"Authorization": f"Bearer {server.token(sub)}"},
        json={"sql": sql, "project": project, "purpose": purpose})
    if refused(resp) or resp.json()["decision"] != "permit":
        return None
    return resp.json()


def assert_bounded_without(raw, explained: dict, table: str, person: int) -> None:
    """dp: the exact bounded count the gateway would noise, run on the raw data with and
    without one person's rows in ``table``, moves by at most what the noise assumes (cells
    per person times rows per cell)."""
    bound = explained["dp"]["cells_per_person"] * explained["output"]["max_rows_per_cell"]
    executed = explained["executed_sql"]
    try:
        with_her = sum(r[1] for r in raw.execute(executed).fetchall())
    except duckdb.InvalidInputException as exc:
        # the engine's person-link check stops it: the gateway would refuse it (400)
        assert PERSON_LINK_BROKEN in str(exc), exc
        return
    without = executed.replace(  # every scan of the table, seen through the filters
        f'FROM "{table}" WHERE', f'FROM "{table}" WHERE "person_id" <> {person} AND')
    assert without != executed
    without_her = sum(r[1] for r in raw.execute(without).fetchall())
    assert abs(with_her - without_her) <= bound, (
        f"one person moves the bounded count from {without_her} to {with_her}; the noise "
        f"assumes at most {bound}")


def timed_query(server, who: tuple[str, str, str], sql: str
                ) -> tuple[httpx.Response | None, float]:
    """The response (None if it did not come within the bound) and how long it took."""
    sub, project, purpose = who
    started = time.monotonic()
    try:
        resp = server.client.post(
            "/v1/queries", headers={"Authorization": f"Bearer {server.token(sub)}"},
            json={"sql": sql, "project": project, "purpose": purpose},
            timeout=BOUND_S + 5)
    except httpx.ReadTimeout:
        return None, time.monotonic() - started
    return resp, time.monotonic() - started


#: how late after the limit a 504 may come: the engine is interrupted, then unwinds
INTERRUPT_SLACK_S = 2.0


def answered_in_time(resp: httpx.Response | None, took: float, what: str) -> None:
    """A hang is a failure: the reply must come within BOUND_S, as a 200, a 4xx, or the 504
    of the time limit itself (once the interrupted engine has unwound)."""
    assert resp is not None and took < BOUND_S + INTERRUPT_SLACK_S, (
        f"{what} took over {took:.0f} s (the engine's limit is {BOUND_S:.0f} s)")
    if resp.status_code != 504 or resp.json()["error"]["code"] != "query_timeout":
        refused(resp)  # a 200 or a 4xx, never another 5xx


def rounding_guess(diffs: list[int], base: int = 5) -> int:
    """The attacker's estimate of a small group's size from many pairs of counts rounded to
    ``base`` (the response says which) that differ by it: each difference is base * (t //
    base) or base more, the larger in a share (t % base) / base of the pairs."""
    seen = Counter(diffs)
    low = min(seen)
    return low + round(base * seen[low + base] / len(diffs))


def column_base(resp: httpx.Response, column: str) -> int:
    """The rounding base a released column states (5 unless it says otherwise)."""
    disclosure = resp.json()["disclosure"]
    return disclosure.get("column_rounding_bases", {}).get(column, disclosure.get("rounding_base", 5))


def small_groups(raw, people: str, sizes: tuple[int, ...]) -> dict[int, tuple[int, str]]:
    """One (year of birth, practice) group of each size, among ``people``."""
    found = raw.execute(f"""
        SELECT year_of_birth, practice_code, COUNT(*) AS n FROM ({people})
        GROUP BY ALL ORDER BY 1, 2""").fetchall()
    out: dict[int, tuple[int, str]] = {}
    for yob, practice, n in found:
        if n in sizes:
            out.setdefault(n, (yob, practice))
    assert set(out) == set(sizes), "the shape this test needs (checked on raw data)"
    return out


def released_rows(resp: httpx.Response) -> list[list] | None:
    """The rows of a released answer, or None if the query was refused (a 4xx) or held."""
    assert resp.status_code < 500, resp.text
    if refused(resp):
        return None
    body = resp.json()
    return body["rows"] if body["status"] == "released" else None


def small_group(raw, people: str, below: int = MIN_PEOPLE) -> tuple[int, str, int]:
    """A (year of birth, practice) group of 1 to below-1 people among ``people``: the largest
    such (the hardest for rounding to hide), then by year and practice."""
    found = raw.execute(f"""
        SELECT year_of_birth, practice_code, COUNT(*) AS n FROM ({people}) r
        GROUP BY ALL HAVING n BETWEEN 1 AND {below - 1} ORDER BY n DESC, 1, 2""").fetchone()
    assert found, "the shape this test needs (checked on raw data)"
    return found[0], found[1], found[2]


def group_condition(yob: int, practice: str, alias: str = "p") -> str:
    return f"({alias}.year_of_birth = {yob} AND {alias}.practice_code = '{practice}')"


def alone_with_stays(raw) -> tuple[int, str, float, str]:
    """A Norfolk resident alone in her year of birth and small area, with admissions: her year
    of birth, small area, exact total length of stay and registration date."""
    found = raw.execute(f"""
        WITH alone AS (
            SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM ({norfolk_residents()})
            GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, SUM(h.length_of_stay),
               CAST(ANY_VALUE(p.registration_date) AS VARCHAR)
        FROM alone a JOIN hospital_admissions h ON h.person_id = a.pid
        JOIN patients p ON p.person_id = a.pid
        GROUP BY ALL HAVING SUM(h.length_of_stay) > 0
        ORDER BY 3 DESC, 1, 2 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    return found[0], found[1], float(found[2]), found[3]


def person_filter(yob: int, lsoa: str) -> str:
    return (f"(SELECT x.person_id FROM patients x WHERE x.year_of_birth = {yob} "
            f"AND x.lsoa_code = '{lsoa}')")


def assert_not_multiples_of_her_stay(raw, rows, truth: float, yob: int, lsoa: str) -> None:
    """Sums by sex over every Norfolk resident paired with one resident's admissions are N
    times her total length of stay; neither a cell nor the gcd of two may give it."""
    people = dict(raw.execute(
        f"SELECT sex, COUNT(*) FROM ({norfolk_residents()}) GROUP BY sex").fetchall())
    for sex, los in rows or []:
        assert los is None or abs(los - people[sex] * truth) > 0.5, (
            f"the cell {sex} is {los} = {people[sex]} people x {truth}, the exact total length "
            f"of stay of the one resident born in {yob} living in {lsoa}")
    sums = [int(los) for _, los in rows or [] if los is not None and float(los).is_integer()]
    if len(sums) == 2:
        assert math.gcd(*sums) != truth, f"the gcd of the two sums is her total {truth}"


def alone_anywhere_with_stays(raw) -> tuple[int, str, int]:
    """A person alone in her year of birth and small area among everyone not opted out (the
    dp project's people), with admissions: her year, area and person key."""
    return raw.execute(f"""
        WITH r AS ({not_opted_out()}),
        alone AS (SELECT year_of_birth, lsoa_code, MIN(person_id) AS pid FROM r
                  GROUP BY ALL HAVING COUNT(*) = 1)
        SELECT a.year_of_birth, a.lsoa_code, a.pid FROM alone a
        WHERE a.pid IN (SELECT person_id FROM hospital_admissions)
        ORDER BY 1, 2 LIMIT 1""").fetchone()


def planned(sql: str, catalogue) -> Plan:
    """The threshold plan of a query (opt-outs removed), without the server."""
    obligations = Obligations(None, True, None, Output(regime="threshold"))
    return rewrite(analyse(sql, catalogue, max_chars=20_000, max_depth=64), obligations,
                   catalogue, 10_000)


def executed(plan: Plan) -> list[str]:
    """Every query the pipeline would run for a plan."""
    out = [plan.sql]
    if plan.row_bound is not None:
        out.append(plan.row_bound.sql)
    if plan.contributions is not None and plan.contributions.sql:
        out.append(plan.contributions.sql)
    return out


def assert_not_her_date_as_key(rows, registered: str, yob: int, lsoa: str) -> None:
    """No released row has as its first key the registration date of the one resident born
    in ``yob`` living in ``lsoa`` (a row resting on everyone, keyed by her attribute)."""
    for row in rows or []:
        assert str(row[0]) != str(registered), (
            f"the registration date of the one resident born in {yob} living in {lsoa} "
            f"({registered}) released as the key of a row: {row}")


def assert_tag_sums_not_her_stay(rows, truth: float) -> None:
    """Two released sums keyed by tags 1 and 2 must not differ by one person's exact total
    length of stay (two cells sharing everyone but her)."""
    cell = {r[0]: r[1] for r in rows or []}
    if cell.get(1) is None or cell.get(2) is None:
        return
    assert abs((cell[1] - cell[2]) - truth) > 0.5, (
        f"released sums {cell[1]} and {cell[2]} differ by one person's exact total length "
        f"of stay ({truth})")


def days_registered(alias: str) -> str:
    """A person's registration date as days after 1990-01-01, on the given alias."""
    return f"DATEDIFF('day', DATE '1990-01-01', {alias}.registration_date)"


def assert_not_named_by_pseudonym(server, raw, named=None, how: str = "", *, column=None,
                                  from_: str = "FROM patients p",
                                  batches=(range(0, 10), range(10, 15))) -> None:
    """Seven residents named by pseudonym, and a target if bit j of her registration date is
    set (and, beside it, if it is not): 8 people (released) or 7 (suppressed) per column, so
    a few queries would read her date. ``named(ids)`` is a condition true of the people whose
    pseudonyms ``ids`` lists (a comma-separated text), written the way under test; or
    ``column(j, want, known, target)`` writes the whole column ``AS b<j>_<want>``."""
    ids = [r[0] for r in raw.execute(
        f"SELECT person_id FROM ({norfolk_residents()}) ORDER BY person_id LIMIT 8").fetchall()]
    known, target = ", ".join(map(str, ids[:7])), ids[7]
    truth = raw.execute("SELECT DATEDIFF('day', DATE '1990-01-01', registration_date) "
                        f"FROM patients WHERE person_id = {target}").fetchone()[0]

    def named_column(j: int, want: int, known: str, target: int) -> str:
        return (f"COUNT(DISTINCT p.person_id) FILTER (WHERE {named(known)} OR "
                f"({named(str(target))} AND ({days_registered('p')} // {2 ** j}) % 2 = {want}))"
                f" AS b{j}_{want}")

    column = column or named_column
    bits: dict[int, int] = {}
    for js in batches:
        sql = ("SELECT " + ", ".join(column(j, w, known, target) for j in js for w in (1, 0))
               + f" {from_}")
        resp = query_as(server, PLANNER, sql)
        if refused(resp) or resp.json()["status"] != "released":
            return
        body = resp.json()
        for name, value in zip(body["columns"], body["rows"][0], strict=True):
            j, w = name[1:].split("_")
            if value is not None:
                bits[int(j)] = int(w)
    found = sum(v << j for j, v in bits.items())
    assert found != truth, (
        f"the registration date of the resident with pseudonym {target} is {truth} days after "
        f"1990-01-01, read exactly from queries that name people by pseudonym ({how})")


def _crt(residues: dict[int, int]) -> int:
    """The one value below the product of the (coprime) moduli with these residues."""
    n, value = 1, 0
    for m, r in residues.items():
        while value % m != r:
            value += n
        n *= m
    return value


def assert_total_stay_not_pinned(server, raw, pinned_sum, how: str) -> None:
    """Her admissions beside others' whose stays are multiples of M: were the pin to hold,
    the sum of her sex's cell would be her exact total stay modulo M, for M = 7, 11 and 13
    (one query each), which gives it exactly. ``pinned_sum(yob, lsoa, m)`` is the query,
    written the way under test."""
    yob, lsoa, truth, _ = alone_with_stays(raw)
    sex = raw.execute(f"SELECT sex FROM ({norfolk_residents()}) WHERE year_of_birth = {yob} "
                      f"AND lsoa_code = '{lsoa}'").fetchone()[0]
    assert truth < 7 * 11 * 13, "the shape this test needs (checked on raw data)"
    residues: dict[int, int] = {}
    for m in (7, 11, 13):
        resp = query_as(server, PLANNER, pinned_sum(yob, lsoa, m))
        if refused(resp) or resp.json()["status"] != "released":
            return
        cells = {r[0]: r[1] for r in resp.json()["rows"]}
        if cells.get(sex) is None:
            return
        residues[m] = int(cells[sex]) % m
    found = _crt(residues)
    assert found != int(truth), (
        f"one resident's exact total length of stay, {truth:g} days, from three sums of a "
        f"measure pinned to multiples of 7, 11 and 13 ({how}; residues {residues})")
