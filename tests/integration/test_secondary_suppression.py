"""Secondary suppression over HTTP on real data: margins never give a suppressed cell away."""

from __future__ import annotations

import itertools

import pytest
from linear import solvable

CUTOFFS = [1925, 1930, 1935, 1940, 1945]
CUBE = ("SELECT p.sex, p.ethnicity, COUNT(*) AS n FROM patients p WHERE p.year_of_birth < {y} "
        "GROUP BY CUBE (p.sex, p.ethnicity) ORDER BY 1, 2")
UNION = ("SELECT p.ethnicity AS e, COUNT(*) AS n FROM patients p WHERE p.year_of_birth < {y} "
         "GROUP BY p.ethnicity UNION ALL SELECT 'All', COUNT(*) FROM patients p "
         "WHERE p.year_of_birth < {y}")


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
    return body, rules


@pytest.mark.parametrize(("template", "y"), list(itertools.product([CUBE, UNION], CUTOFFS)))
def test_no_suppressed_cell_is_recoverable(server, template, y):
    body, rules = run(server, template.format(y=y))
    nkeys = len(body["columns"]) - 1
    keys = [tuple(None if v == "All" else v for v in r[:nkeys]) for r in body["rows"]]
    hidden = {r for (r, _c) in rules}
    primary = {r for (r, _c), rule in rules.items() if rule.startswith("small_cell")}
    eqs = equations(keys)
    for cell in primary:
        assert not solvable(cell, hidden, eqs), (keys[cell], body["rows"])


def test_secondary_suppression_happens_on_real_data(server):
    seen = 0
    for template, y in itertools.product([CUBE, UNION], CUTOFFS):
        _, rules = run(server, template.format(y=y))
        seen += sum(rule.startswith("secondary") for rule in rules.values())
    assert seen > 0, "no query needed secondary suppression: the fixture checks nothing"
