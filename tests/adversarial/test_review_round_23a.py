"""The breaks of review round 23a, kept as tests (docs/security.md lists every round).

**Two output columns with the same released name: disclosure control finds a column by its
name, and the name is not unique.** Round 22 made the names of one SELECT unique, but it
checks the *qualified* names (``check_output_names``), while the names the caller sees and
that disclosure control works with are the *display* names (``OutputColumn.name``, from
``_output_name``): the alias as typed, or for an unaliased column the lower-cased expression
text, or ``col_<i>`` past 60 characters. sqlglot gives an unaliased aggregate the qualified
name ``_col_<i>``, so

- ``COUNT(*) FILTER (WHERE <long condition>)`` at position 0 (display ``col_0``, qualified
  ``_col_0``) and ``COUNT(*) ... AS col_0`` (display and qualified ``col_0``) pass the
  uniqueness check and are both released as ``col_0``;
- likewise two unaliased expressions whose text differs only in the case of a string literal
  (``= 'J18'`` and ``= 'j18'``) share a display name and mean different things.

The pipeline then looks cells up by that name:

- *cell_key*: a count column in which one person adds more than ``CK_MAX_SCALE`` (100) rows
  to a cell is to be suppressed (round 19), and ``_control_cell_key`` does it with
  ``controlled.rows[cell.row][names.index(cell.column)] = None``: the *first* column of that
  name is blanked, and the column that should have been cut is released, perturbed by the
  base table (at most 2) although one person moves it by hundreds. With two such columns that
  differ by one resident (``NOT (<her> AND EXISTS (<admission with diagnosis X>))``), one
  query tells which diagnoses she was admitted with: 18281 and 18506 against the raw 18280
  and 18505, her 15 GP events self-joined being the difference of 225.
- *threshold*: secondary suppression (``_secondary``) takes a column's suppressed cells to
  be every suppressed cell *of that name*; a cell suppressed in the other column counts as
  hidden in this one, so no complementary cell is suppressed and a small detail cell is the
  released margin minus the released details (within the rounding).

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import (
    PLANNER,
    RESEARCHER,
    cohort,
    norfolk_residents,
    query_as,
    refused,
)


def _released(resp) -> tuple[list[str], list[list]]:
    assert resp.status_code < 500, resp.text
    if refused(resp) or resp.json()["status"] != "released":
        return [], []
    return resp.json()["columns"], resp.json()["rows"]


def test_a_display_name_shared_with_a_too_wide_column_releases_it_unperturbed(server, raw):
    """cell_key: two sacrificial unaliased columns are named col_0 and col_1 for the caller;
    two columns aliased col_0 and col_1 count GP event pairs (one person adds up to 256 rows,
    so they must be suppressed), without one resident if she was admitted with J18, or with
    I50. The cut blanks the sacrificial columns; the two aliased ones are released within 2
    of their exact values, and their difference is her row count when she had exactly one of
    the two diagnoses."""
    row = raw.execute(f"""
        SELECT p.person_id, p.year_of_birth, p.lsoa_code,
               (SELECT COUNT(*) FROM gp_events g WHERE g.person_id = p.person_id) AS n
        FROM ({cohort()}) p
        WHERE (p.year_of_birth, p.lsoa_code) IN (
            SELECT (year_of_birth, lsoa_code) FROM ({cohort()}) GROUP BY ALL
            HAVING COUNT(*) = 1)
          AND EXISTS (SELECT 1 FROM hospital_admissions h WHERE h.person_id = p.person_id)
        ORDER BY n DESC, p.person_id LIMIT 1""").fetchone()
    assert row is not None and row[3] >= 5, "the shape this test needs (checked on raw data)"
    pid, yob, lsoa, events = row
    had = {d for (d,) in raw.execute(
        "SELECT primary_diagnosis FROM hospital_admissions WHERE person_id = ?", [pid]).fetchall()}
    dx = min(had)
    other = next(d for d in ("I50", "J18", "N39", "H25", "R07", "Z99") if d not in had)

    def without_her_if(code: str, alias: str) -> str:
        return (f"COUNT(*) FILTER (WHERE NOT (p.year_of_birth = {yob} AND p.lsoa_code = "
                f"'{lsoa}' AND EXISTS (SELECT 1 FROM hospital_admissions h WHERE "
                f"h.person_id = g1.person_id AND h.primary_diagnosis = '{code}'))) AS {alias}")

    sql = ("SELECT COUNT(*) FILTER (WHERE p.year_of_birth > 0 AND p.year_of_birth > 1 AND "
           "p.year_of_birth > 2), "
           "COUNT(*) FILTER (WHERE p.year_of_birth > 0 AND p.year_of_birth > 1 AND "
           "p.year_of_birth > 3), "
           f"{without_her_if(dx, 'col_0')}, {without_her_if(other, 'col_1')} "
           "FROM gp_events g1 JOIN gp_events g2 ON g2.person_id = g1.person_id "
           "JOIN patients p ON p.person_id = g1.person_id")
    columns, rows = _released(query_as(server, RESEARCHER, sql))
    if not rows:
        return  # refused or held: safe
    with_dx, with_other = rows[0][2], rows[0][3]
    assert with_dx is None and with_other is None, (
        f"counts in which one person adds {events ** 2} rows were released ({columns}: "
        f"{rows[0]}): {with_other} - {with_dx} = {(with_other or 0) - (with_dx or 0)}, "
        f"person {pid} (her {events}^2 = {events ** 2} rows) was admitted with {dx}, "
        f"not {other}")


def test_a_display_name_shared_with_another_column_defeats_secondary_suppression(server, raw):
    """threshold: ROLLUP by sex; column A (unaliased, shown as col_1) is small for women and
    large for men, column B (aliased col_1) the reverse. A's suppressed cell (women) is
    protected by B's suppressed cell (men), which is released in A: A's women are its total
    minus its men, and B's men its total minus its women."""
    found = raw.execute(f"""
        SELECT practice_code, COUNT(*) FILTER (WHERE sex = 'F') AS f,
               COUNT(*) FILTER (WHERE sex = 'M') AS m
        FROM ({norfolk_residents()}) WHERE year_of_birth < 1935 GROUP BY 1
        HAVING LEAST(f, m) BETWEEN 1 AND 7 ORDER BY 1 LIMIT 1""").fetchone()
    assert found is not None, "the shape this test needs (checked on raw data)"
    practice = found[0]
    group = f"(p.practice_code = '{practice}' AND p.year_of_birth < 1935)"
    sql = (f"SELECT p.sex, COUNT(*) FILTER (WHERE p.sex = 'M' OR {group}), "
           f"COUNT(*) FILTER (WHERE p.sex = 'F' OR {group}) AS col_1 "
           "FROM patients p WHERE p.sex IN ('F', 'M') GROUP BY ROLLUP (p.sex)")
    columns, rows = _released(query_as(server, PLANNER, sql))
    by_sex = {r[0]: r for r in rows}
    if set(by_sex) != {"F", "M", None}:
        return  # refused, held, or rows withheld: nothing to solve
    for c, small in ((1, "F"), (2, "M")):
        large = "M" if small == "F" else "F"
        cells = [by_sex[small][c], by_sex[large][c], by_sex[None][c]]
        assert not (cells[0] is None and cells[1] is not None and cells[2] is not None), (
            f"column {c} ({columns[c]}): the suppressed cell ({small}) is its released total "
            f"{cells[2]} minus its released other detail {cells[1]}: no secondary suppression")
