"""Secondary suppression over HTTP on real data: margins never give a suppressed cell away."""

from __future__ import annotations

import itertools

import pytest
from linear import solvable

CUTOFFS = [1925, 1930, 1935, 1940, 1945]
# a second column that is never small keeps every row in the result, so that the margins of
# the small column can be checked on the released table
OLD = "SUM(CASE WHEN p.year_of_birth < {y} THEN 1 ELSE 0 END)"
CUBE = ("SELECT p.sex, p.ethnicity, COUNT(*) AS n, " + OLD + " AS old FROM patients p "
        "WHERE p.year_of_birth < 1975 GROUP BY CUBE (p.sex, p.ethnicity) ORDER BY 1, 2")
UNION = ("SELECT p.ethnicity AS e, COUNT(*) AS n, " + OLD + " AS old FROM patients p "
         "WHERE p.year_of_birth < 1975 GROUP BY p.ethnicity UNION ALL SELECT 'All', COUNT(*), "
         + OLD + " FROM patients p WHERE p.year_of_birth < 1975")


def equations(keys):
    """From the layout of the released table: each margin (None in a key) sums the rows that
    agree with it elsewhere and have a value there."""
    eqs = []
    for t, kt in enumerate(keys):
        for j, v in enumerate(kt):
            if v is not None:
                continue
            parts = [r for r, kr in enumerate(keys) if kr[j] is not None
                     and all(kr[i] == kt[i] for i in range(len(kt)) if i != j)]
            if parts:
                eqs.append((t, parts))
    return eqs


def run(server, sql):
    resp = server.query("p.jones", sql, "JOINT-PLANNING", "planning")
    body = server.released(resp, "p.jones")
    rules = {(s["row"], s["column"]): s["rule"] for s in body["disclosure"]["suppressed"]}
    body["rows_withheld"] = server.entry_for(resp).get("rows_withheld", 0)
    return body, rules


@pytest.mark.parametrize(("template", "y"), list(itertools.product([CUBE, UNION], CUTOFFS)))
def test_no_suppressed_cell_is_recoverable(server, template, y):
    body, rules = run(server, template.format(y=y))
    assert body["rows_withheld"] == 0, "the check needs every row"
    nkeys = len(body["columns"]) - 2
    keys = [tuple(None if v == "All" else v for v in r[:nkeys]) for r in body["rows"]]
    hidden = {r for (r, c) in rules if c == "old"}
    primary = {r for (r, c), rule in rules.items() if c == "old" and rule.startswith("small")}
    eqs = equations(keys)
    for cell in primary:
        assert not solvable(cell, hidden, eqs), (keys[cell], body["rows"])


# Two tables in one result whose levels are incomparable: a count by ethnicity and one by
# sex both add up to everyone, a total the result does not hold. Their suppressed cells must
# not be recoverable by subtracting one table's released cells from the other's.
BY_TWO_UNION = (
    "SELECT 'ethnicity' AS dim, p.ethnicity AS v, COUNT(*) AS n, " + OLD + " AS old "
    "FROM patients p WHERE p.year_of_birth < 1975 GROUP BY p.ethnicity UNION ALL "
    "SELECT 'sex', p.sex, COUNT(*), " + OLD + " FROM patients p "
    "WHERE p.year_of_birth < 1975 GROUP BY p.sex")
BY_TWO_SETS = (
    "SELECT p.ethnicity, p.sex, COUNT(*) AS n, " + OLD + " AS old FROM patients p "
    "WHERE p.year_of_birth < 1975 GROUP BY GROUPING SETS ((p.ethnicity), (p.sex))")


@pytest.mark.parametrize(("template", "y"),
                         list(itertools.product([BY_TWO_UNION, BY_TWO_SETS], CUTOFFS)))
def test_two_tables_in_one_result_do_not_give_each_other_away(server, template, y):
    body, rules = run(server, template.format(y=y))
    assert body["rows_withheld"] == 0, "the check needs every row"
    rows = body["rows"]
    if template is BY_TWO_UNION:
        first = [r for r, row in enumerate(rows) if row[0] == "ethnicity"]
    else:
        first = [r for r, row in enumerate(rows) if row[1] is None]
    second = [r for r in range(len(rows)) if r not in first]
    total = len(rows)  # the virtual total: never released
    eqs = [(total, first), (total, second)]
    hidden = {r for (r, c) in rules if c == "old"} | {total}
    primary = {r for (r, c), rule in rules.items() if c == "old" and rule.startswith("small")}
    for cell in primary:
        assert not solvable(cell, hidden, eqs), (rows[cell], rows)


@pytest.mark.parametrize("templates", [(CUBE, UNION), (BY_TWO_UNION, BY_TWO_SETS)])
def test_secondary_suppression_happens_on_real_data(server, templates):
    seen = 0
    for template, y in itertools.product(templates, CUTOFFS):
        _, rules = run(server, template.format(y=y))
        seen += sum(rule.startswith("secondary") for rule in rules.values())
    assert seen > 0, "no query needed secondary suppression: the fixture checks nothing"
