"""Secondary suppression of a whole released table: where each row sits (its grouping set or
UNION branch, and its keys as the engine tells them apart), whether the linear relations
between its cells are known, and which further cells to suppress so that no suppressed cell
can be recovered from the margins and totals released beside it.

The search itself (``protect``, on known relations) is in gateway.disclosure.secondary; this
module applies it to a result, with what the rewrite's hidden columns say about each row.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.disclosure.secondary import MAX_SEARCH_WORK, RowShape, protect, relations
from gateway.disclosure.threshold import Controlled, SuppressedCell
from gateway.engine import RawResult
from gateway.sql.analysis import Analysis
from gateway.sql.rewrite import Plan


def secondary(analysis: Analysis, plan: Plan, raw: RawResult,
              controlled: Controlled, names: list[str]) -> Controlled:
    """Protect suppressed cells from recovery through the other cells of the same result.

    Where the relations between the result's cells are known, exactly (ROLLUP, CUBE, or
    GROUPING SETS holding the detail level, with keys Python tells apart), the search of
    secondary.protect runs on them. Elsewhere they are not known: UNION branches may
    read the same rows under other aliases, or rows a WHERE splits; grouping sets
    without their details may group by keys that determine one another. There, a column
    with a suppressed cell releases one level (a branch or a grouping set) only, the one
    with the most cells left, and suppresses the others: the cells of one level are
    disjoint groups, and no sum of some of them gives another away (review round 23)."""
    shapes = _row_shapes(plan, raw)
    if shapes is None:
        return controlled
    complete = _relations_known(shapes)
    rels = relations(shapes) if complete else []
    rows = [list(r) for r in controlled.rows]
    extra = []
    additive = [c for c, out in enumerate(plan.outputs)
                if out.kind == "aggregate" and out.additive]
    work = sum(len({s.row for s in controlled.suppressed if s.column == names[c]})
               for c in additive) * len(rels)
    quick = work > MAX_SEARCH_WORK  # bounded work per request, not only per column
    for c in additive:
        hidden = {s.row for s in controlled.suppressed if s.column == names[c]}
        values = [row[c] for row in controlled.rows]  # as released: rounded, or None
        if complete:
            more = protect(values, hidden, rels, quick=quick)
            why = "secondary: protects a suppressed cell from recovery through the margins"
        else:
            more = _one_level_only(shapes, hidden)
            why = ("secondary: the result's other tables could give a suppressed cell "
                   "away; one is released")
        for r in sorted(more):
            rows[r][c] = None
            extra.append(SuppressedCell(r, names[c], why))
    return Controlled(rows, controlled.suppressed + tuple(extra),
                      controlled.rounded_columns, controlled.hold)


def _row_shapes(plan: Plan, raw: RawResult) -> list[RowShape] | None:
    """Where each row sits: its level (the key columns a grouping set rolls up, or its UNION
    branch, each branch a family of its own) and its keys; None if the result is one
    plain table."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind != "aggregate"]

    def key_values(row) -> tuple:  # the key columns, aggregate positions blanked
        if plan.key_text_index is not None:
            # as the engine tells the keys apart, or finds them equal (a NaN inside a tuple
            # key is equal to itself there, and not in Python: review round 37)
            text = dict(zip(keys, row[plan.key_text_index], strict=True))
            return tuple(text.get(i) for i in range(len(plan.outputs)))
        return tuple(row[i] if i in keys else None for i in range(len(plan.outputs)))

    if plan.grouping_index:
        return [RowShape(0, frozenset(i for i, h in plan.grouping_index if row[h]),
                         key_values(row)) for row in raw.rows]
    if plan.branch_index is None:
        return None
    return [RowShape(row[plan.branch_index], frozenset(), key_values(row)) for row in raw.rows]


def _relations_known(shapes: list[RowShape]) -> bool:
    """Whether every linear relation between the cells is one secondary.relations finds:
    one family of rows (not UNION branches), a level finer than every other (the details,
    of which each cell is then a sum), and no two rows of a level with keys Python cannot
    tell apart (DATE '-infinity' and '0001-01-01' both arrive as date(1, 1, 1))."""
    if len({s.family for s in shapes}) > 1:
        return False
    levels = {s.rolled for s in shapes}
    if not any(all(lv <= other for other in levels) for lv in levels):
        return False
    seen = {(s.rolled, tuple(_hashable_key(v) for v in s.keys)) for s in shapes}
    return len(seen) == len(shapes)


def _hashable_key(v: Any) -> Any:
    return ("nan",) if isinstance(v, float) and v != v else v


def _one_level_only(shapes: list[RowShape], hidden: set[int]) -> set[int]:
    """With a suppressed cell and relations unknown: every level but the one with the most
    cells left to release is suppressed in this column."""
    if not hidden:
        return set()
    level = [(s.family, s.rolled) for s in shapes]
    left = Counter(lv for r, lv in enumerate(level) if r not in hidden)
    if not left:
        return set()
    keep = max(left, key=lambda lv: (left[lv], -level.index(lv)))
    return {r for r, lv in enumerate(level) if lv != keep and r not in hidden}
