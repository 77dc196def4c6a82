"""On the outer query a plain UNION keeps every branch's rows (docs/architecture.md): rows of
different branches are different cells, each with its own hidden people counts."""

from __future__ import annotations

PLANNER = ("p.jones", "JOINT-PLANNING", "planning")
BRANCH = "SELECT p.sex, COUNT(*) AS people FROM patients p GROUP BY p.sex"


def test_a_plain_union_of_equal_branches_keeps_both(server):
    once = server.released(server.query(PLANNER[0], BRANCH, *PLANNER[1:]), PLANNER[0])
    both = server.released(server.query(PLANNER[0], f"{BRANCH} UNION {BRANCH}", *PLANNER[1:]),
                           PLANNER[0])
    assert len(once["rows"]) >= 2
    assert sorted(both["rows"]) == sorted(once["rows"] * 2)

