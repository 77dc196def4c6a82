"""The breaks of review round 27a, kept as tests (docs/security.md lists every round).

**A short query that the analysis makes huge, outside every time limit.** The limits on the
SQL (20,000 characters, 64 levels deep, 64 tables once CTEs are expanded) are checked on the
text as sent. ``qualify`` in ``gateway/sql/analysis.py`` (sqlglot's) then replaces every
reference to an output column by a *copy* of its expression, and nothing bounds the tree it
makes; every rule after it, the rewrite, the SQL sent to the engine and the audit entry work
on the copy. (The time limit, ``deadline``, starts only when the engine slot is taken.)
- A chain of output aliases, each the one before added to itself (``p.year_of_birth AS a0,
  a0 + a0 AS a1, a1 + a1 AS a2, ...``), doubles at each step: sixteen steps (331 characters)
  make a tree of 2^16 copies. The request holds a server thread for about 45 s (then the
  engine refuses the megabytes of SQL with a parser error, a 400), the server grows by about
  2 GB, and the audit entry holds 2.9 MB of executed SQL; each step more doubles all three.
- ``GROUP BY 1, 1, 1, ...`` (or ``GROUP BY k, k, k, ...``, or the positions inside GROUPING
  SETS, expanded by ``expand_margin_positions``) copies the output column once per position:
  a CASE of 250 branches grouped by position 300 times (10,099 characters) is answered (200)
  after about 45 s, past the engine's limit of 30 s, with a 3 MB audit entry.
Six such requests at once each took 110 s; a few dozen hold every server thread.
The explain endpoint runs the same analysis.

A fix may refuse such a query (a 4xx), or answer it safely: each passes.
"""

from __future__ import annotations

from attack import PLANNER, answered_in_time, timed_query


def test_a_chain_of_output_aliases_each_doubling_the_one_before(server):
    """qualify expands a16 into 2^16 copies of p.year_of_birth: minutes for 331 characters."""
    aliases = ["p.year_of_birth AS a0"] + [f"a{i - 1} + a{i - 1} AS a{i}" for i in range(1, 17)]
    sql = f"SELECT {', '.join(aliases)}, COUNT(*) AS c FROM patients p GROUP BY ALL"
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, "sixteen output aliases, each the one before twice")


def test_a_group_by_position_repeated_copies_the_column_each_time(server):
    """GROUP BY 1, repeated 300 times, copies a CASE of 250 branches 300 times."""
    case = "CASE " + " ".join(f"WHEN p.year_of_birth = {1900 + i} THEN {i}"
                              for i in range(250)) + " END"
    sql = (f"SELECT {case} AS k, COUNT(*) AS c FROM patients p GROUP BY "
           + ", ".join(["1"] * 300))
    resp, took = timed_query(server, PLANNER, sql)
    answered_in_time(resp, took, "GROUP BY one position 300 times over a long CASE")
