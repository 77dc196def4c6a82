"""On the outer query a plain UNION (without ALL) is refused: it removes rows equal on their
exact values, which says whether two counts tie, and the gateway's hidden columns (each
branch's people counts and number) kept the engine from removing any (review round 34)."""

from __future__ import annotations

PLANNER = ("p.jones", "JOINT-PLANNING", "planning")
BRANCH = "SELECT p.sex, COUNT(*) AS people FROM patients p GROUP BY p.sex"


def test_a_plain_union_is_refused_and_union_all_keeps_both(server):
    once = server.released(server.query(PLANNER[0], BRANCH, *PLANNER[1:]), PLANNER[0])
    plain = server.query(PLANNER[0], f"{BRANCH} UNION {BRANCH}", *PLANNER[1:])
    assert plain.status_code == 400 and "UNION ALL" in plain.json()["error"]["hint"]
    both = server.released(server.query(PLANNER[0], f"{BRANCH} UNION ALL {BRANCH}",
                                        *PLANNER[1:]), PLANNER[0])
    assert len(once["rows"]) >= 2
    assert sorted(both["rows"]) == sorted(once["rows"] * 2)
