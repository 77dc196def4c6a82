"""The control stage of the threshold and cell_key regimes: a raw result in, the released
table out.

In order: each cell is judged (the people behind it, dominance on sums, rounding or cell-key
perturbation, each count's scale grown with the rows and cells one person can add), keyed
rows resting on fewer than k people are withheld whole, secondary suppression protects the
suppressed cells of what is left, and the caller's LIMIT is taken last. The dp regime has its
own (gateway.disclosure.dp). The rules on one cell are in gateway.disclosure; this module
applies them to a whole result, with what the rewrite's hidden columns say about it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

from sqlglot import exp

from gateway.disclosure.cellkey import PerturbationTable, apply_cell_key
from gateway.disclosure.threshold import (
    Controlled,
    Dominance,
    SuppressedCell,
    apply_threshold,
    hold_reason,
)
from gateway.engine import RawResult
from gateway.errors import ResultTooLarge
from gateway.margins import secondary
from gateway.sql.analysis import Analysis
from gateway.sql.rewrite import Plan
from gateway.sql.tree import grouping_sets, outer_selects
from policies.model import Output


def count_scales(analysis: Analysis, plan: Plan, raw: RawResult,
                 bound: list[Any] | None, *, rounded: bool) -> tuple[dict[int, int], int]:
    """Per count column, the scale of its rounding or perturbation.

    Rounding to 5 and a perturbation of at most 2 are sized for a count one person moves
    by one, seen once. A count of rows moves by the most rows one person adds to a cell
    (see rewrite.row_bound; review round 17). And each cell a person is in is one more
    draw of the rounding or perturbation: cells differing by one small group, by the
    hundred, average the draws away (rounds 20 to 23). So past FREE_DRAWS cells a person
    (aggregate columns times grouping sets or UNION branches times the groups their rows
    fall in), every count is made coarser, so that n draws tell no more than FREE_DRAWS
    did: a perturbation (``rounded`` false) by the square root of n / FREE_DRAWS, as
    for noise; a rounding base by n / FREE_DRAWS itself, since the share of pairs that
    round apart pins a group of t people with a variance of base * t / n, not base^2 / n.
    The scale is raised to 1, 2, 5, 10, 20, 50, ..., so that it says little about any
    one person.

    The rows are one figure for the whole query, the most over every column that counts
    rows, and every such column takes it. Per column, a column that counts one chosen
    person's rows (a FILTER on her, and a bit of her registration date) got a scale that
    told whether she had rows in it: sixteen columns, her date (review round 32).

    Returns the scales and the draws (cells a person) they were sized for. ``bound`` is the
    row of the plan's row-bound query, where ``needs_row_bound`` said to run it."""
    per_cell: dict[int, Any] = {}
    counted: set[int] = set()  # the columns that count rows, known from the query alone
    cells = None  # the most (cell, branch) groups one person's rows fall in, if measured
    if plan.cells_index is not None:  # found by the single pass, per cell
        per_cell = {c: max((row[h] for row in raw.rows if row[h] is not None), default=0)
                    for c, h in plan.row_max_index}
        counted = set(per_cell)
        cells = max((row[plan.cells_index] for row in raw.rows
                     if row[plan.cells_index] is not None), default=0)
    elif bound is not None:
        per_cell = dict(zip(plan.row_bound.columns, bound[:-1], strict=True))
        counted = set(plan.row_bound.asked)
        cells = bound[-1] or 0
    if cells is None and plan.row_bound is not None:  # not asked: at most every cell
        draws = len(raw.rows) * _aggregates(analysis)
    else:
        draws = _draws_per_person(analysis, cells)
    spread = max(1.0, draws / FREE_DRAWS)
    if not rounded:
        spread = math.sqrt(spread)
    # a float: SUM(CASE ... THEN 1.0 ...) counts as a DECIMAL (review round 36)
    most = max((float(per_cell.get(c) or 1) for c in counted), default=1.0)
    return {c: _band(max(1, most if c in counted else 1) * spread)
            for c, o in enumerate(plan.outputs) if o.is_count}, draws


def needs_row_bound(analysis: Analysis, plan: Plan, raw: RawResult) -> bool:
    """Whether the plan's row-bound query must run to size the counts: not when the single
    pass measured it, nor when no one can be in more cells than the result has."""
    if plan.cells_index is not None or plan.row_bound is None:
        return False
    return plan.row_bound.asks_rows or len(raw.rows) * _aggregates(analysis) > FREE_DRAWS


def release(analysis: Analysis, plan: Plan, raw: RawResult, output: Output,
            contributions: list[dict[int, Any]] | None = None,
            per_person: dict[int, int] | None = None) -> dict[str, Any]:
    """The released body of a threshold or cell_key answer: every cell judged (the people
    behind it, dominance, rounding or perturbation), small groups withheld, secondary
    suppression on what is left, the caller's LIMIT, and the ``disclosure`` block that says
    what was done. ``per_person`` is each count column's scale (``count_scales``);
    ``_rows_withheld`` is for the audit trail only."""
    per_person = per_person or {}
    width = len(plan.outputs)
    rows = [[json_value(v) for v in row[:width]] for row in raw.rows]
    names = [o.name for o in plan.outputs]
    disclosure: dict[str, Any] = {"regime": output.regime, "epsilon_spent": None}
    if not plan.person_level:
        disclosure.update(suppressed=[], rounded_columns=[],
                          note="public reference data only: no people behind the cells")
        return {"columns": names, "rows": rows, "disclosure": disclosure}
    people = [[row[i] if i is not None else None for i in plan.people_index]
              for row in raw.rows]
    dominance = Dominance(output.nk_n, output.nk_k, output.p_ratio)
    if output.regime == "cell_key":
        return _release_cell_key(analysis, plan, raw, output, contributions,
                                 names, rows, people, dominance, per_person)
    bases = {c: output.rounding_base * s for c, s in per_person.items() if s > 1}
    controlled = apply_threshold(
        rows, names, [o.kind for o in plan.outputs], [o.is_count for o in plan.outputs],
        people, min_people=output.min_people, rounding_base=output.rounding_base,
        contributions=contributions, dominance=dominance,
        column_bases=bases,
    )
    # Small groups are withheld first, and secondary suppression protects what is left,
    # on the released (rounded) values: protecting a withheld row showed that it existed,
    # and choosing the cheapest cell by exact values told which of two was smaller
    # (review round 35).
    controlled, withheld, kept = _withhold_small_groups(
        controlled, people, output.min_people, _keyed_rows(analysis, plan, raw))
    controlled = secondary(
        analysis, plan, RawResult(raw.columns, [raw.rows[r] for r in kept]), controlled,
        names)
    controlled = _first(controlled, plan.limit, raw.truncated)
    averages = [c for c, shape in enumerate(_shapes(analysis)) if shape == "average"]
    for row in controlled.rows:  # see _significant
        for c in averages:
            row[c] = _significant(row[c])
    # How many rows were withheld is a count of small groups: for the audit trail only.
    # And whether to hold is judged on what would be released, not on withheld rows.
    controlled = replace(controlled, hold=hold_reason(
        controlled, [o.kind for o in plan.outputs]))
    if controlled.hold:
        disclosure["held_because"] = controlled.hold
    disclosure.update(
        min_people=output.min_people,
        rounding_base=output.rounding_base,
        # counts of rows where one person adds several: rounded to a larger base
        column_rounding_bases={names[c]: b for c, b in sorted(bases.items())},
        dominance={"nk_n": dominance.nk_n, "nk_k": dominance.nk_k,
                   "p_ratio": dominance.p_ratio},
        suppressed=[{"row": s.row, "column": s.column, "rule": s.rule}
                    for s in controlled.suppressed],
        rounded_columns=list(controlled.rounded_columns),
    )
    return {"columns": names, "rows": controlled.rows, "disclosure": disclosure,
            "_rows_withheld": withheld}


def _release_cell_key(analysis: Analysis, plan: Plan, raw: RawResult, output: Output,
                      contributions: list[dict[int, Any]] | None, names: list[str],
                      rows: list[list[Any]], people: list[list[int | None]],
                      dominance: Dominance, per_person: dict[int, int]) -> dict[str, Any]:
    keys = [[row[i] if i is not None else None for i in plan.key_index] for row in raw.rows]
    table = PerturbationTable(output.ck_max_perturbation, output.ck_variance)
    # a count of rows where one person adds up to s: the same table, s times as wide; past
    # CK_MAX_SCALE the counts would be noise, and the table too large (review round 19)
    scaled = {c: PerturbationTable(output.ck_max_perturbation * s, output.ck_variance * s * s)
              for c, s in per_person.items() if 1 < s <= CK_MAX_SCALE}
    too_wide = {c for c, s in per_person.items() if s > CK_MAX_SCALE}
    controlled = apply_cell_key(
        rows, names, [o.kind for o in plan.outputs], _shapes(analysis), people, keys,
        min_people=output.min_people, table=table,
        magnitude_share=output.ck_magnitude_share,
        contributions=contributions, dominance=dominance,
        column_tables=scaled)
    if too_wide:
        cut = []
        for r, row in enumerate(controlled.rows):
            for c in sorted(too_wide):
                if row[c] is not None:
                    row[c] = None
                    cut.append(SuppressedCell(r, names[c], "one person's rows are too many "
                                              "or in too many cells for this column"))
        controlled = replace(controlled, suppressed=controlled.suppressed + tuple(cut))
    controlled, withheld, _ = _withhold_small_groups(
        controlled, people, output.min_people, _keyed_rows(analysis, plan, raw))
    controlled = _first(controlled, plan.limit, raw.truncated)
    disclosure = {
        "regime": "cell_key", "epsilon_spent": None,
        "min_people": output.min_people,
        "perturbation": {"max": table.max_perturbation, "variance": table.variance,
                         "magnitude_share": output.ck_magnitude_share,
                         "column_max": {names[c]: t.max_perturbation
                                        for c, t in sorted(scaled.items())}},
        "suppressed": [{"row": s.row, "column": s.column, "rule": s.rule}
                       for s in controlled.suppressed],
        "rounded_columns": [],
        "note": "counts are perturbed by at most "
                f"{table.max_perturbation}, the same way every time for the same cell",
    }
    return {"columns": names, "rows": controlled.rows, "disclosure": disclosure,
            "_rows_withheld": withheld}


def _shapes(analysis: Analysis) -> list[str]:
    """Per output column: "count", "sum" or "average" (cell_key perturbs each its own way)."""
    out = []
    tree = analysis.tree
    first = tree if isinstance(tree, exp.Select) else None
    for i, o in enumerate(analysis.outputs):
        if o.shape != "measure" or first is None:
            out.append("count" if o.is_count else o.shape)
            continue
        node = first.expressions[i].unalias()
        node = node.this if isinstance(node, exp.Filter) else node
        out.append("average" if isinstance(node, exp.Avg) else "sum")
    return out


AVERAGE_DIGITS = 3


def _significant(value: Any) -> Any:
    """An average to 3 significant figures. Released in full, a double is an exact fraction:
    the sum over the count, and so an exact count beside the rounded one (review round 12)."""
    if not isinstance(value, float) or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{AVERAGE_DIGITS}g}")


#: cell_key: the widest scale of the perturbation table for a count of rows (D x 100)
CK_MAX_SCALE = 100


#: cells one person may be in before counts are rounded (or perturbed) more coarsely: at
#: this many, four pairs of cells differing by one small group (review round 23)
FREE_DRAWS = 8


def _band(m: Any) -> int:
    """The least of 1, 2, 5, 10, 20, 50, ... that is at least ``m``."""
    m = max(1, math.ceil(float(m or 0)))
    step = 1
    while True:
        for k in (1, 2, 5):
            if k * step >= m:
                return k * step
        step *= 10


def _keyed_rows(analysis: Analysis, plan: Plan, raw: RawResult) -> list[bool]:
    """Per row, whether it carries group keys taken from the data (not only constant labels
    or the NULLs of a margin)."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind == "group_key"]
    out = []
    for row in raw.rows:
        if plan.branch_index is not None:
            kinds = analysis.branch_kinds[row[plan.branch_index]]
            out.append(any(kinds[i] == "group_key" for i in keys))
        elif plan.grouping_index:
            out.append(any(not row[h] for _, h in plan.grouping_index))
        else:
            out.append(bool(keys))
    return out


def _withhold_small_groups(controlled: Controlled, people: list[list[int | None]],
                           min_people: int, keyed: list[bool]
                           ) -> tuple[Controlled, int, list[int]]:
    """A keyed row that no cell shows to rest on at least k people is not released at all: its
    keys alone would describe fewer than k people (a CASE key can carry one person's exact
    date), whatever zero or suppressed cells stand beside them. (Rows without keys, an
    ungrouped total or a constant label, describe nobody and stay.) Returns the rows left,
    how many went, and the positions of those left."""
    drop = {r for r, row in enumerate(people)
            if keyed[r] and max((n or 0 for n in row), default=min_people) < min_people}
    kept = [r for r in range(len(controlled.rows)) if r not in drop]
    if not drop:
        return controlled, 0, kept
    new_index = {}
    rows = []
    for r, row in enumerate(controlled.rows):
        if r not in drop:
            new_index[r] = len(rows)
            rows.append(row)
    cells = tuple(SuppressedCell(new_index[c.row], c.column, c.rule)
                  for c in controlled.suppressed if c.row in new_index)
    return Controlled(rows, cells, controlled.rounded_columns, controlled.hold), len(drop), kept


def _first(controlled: Controlled, limit: int | None, truncated: bool) -> Controlled:
    """The caller's LIMIT, taken from the rows left after withholding (the engine ran to the
    row cap): the rows a LIMIT shows never count the rows withheld (review round 33). If the
    rows read to the cap leave fewer than the LIMIT, and more were left unread, the answer
    would be short by the withheld rows: too large instead."""
    if limit is None:
        return controlled
    if truncated and len(controlled.rows) < limit:
        raise ResultTooLarge(
            f"more than the row cap of groups precede the first {limit} that can be "
            "released", hint="aggregate to fewer groups, or order so that larger groups come "
            "first")
    if len(controlled.rows) <= limit:
        return controlled
    return Controlled(controlled.rows[:limit],
                      tuple(c for c in controlled.suppressed if c.row < limit),
                      controlled.rounded_columns, controlled.hold)


def _aggregates(analysis: Analysis) -> int:
    return sum(o.kind == "aggregate" for o in analysis.outputs)


def _draws_per_person(analysis: Analysis, cells: int | None) -> int:
    """How many released cells one person can be in: aggregate columns times grouping sets
    or UNION branches, times the groups of the table one person's rows fall in where that
    was measured (``cells``: per person, the (detail cell, branch) groups, summed over
    branches); where it was not, each branch reads one row per person."""
    aggregates = _aggregates(analysis)
    if cells is None:
        return aggregates * sum(grouping_sets(q) for q in outer_selects(analysis.tree))
    return cells * aggregates * (grouping_sets(analysis.tree) if analysis.margins else 1)


def inline_contributions(plan: Plan, raw: RawResult) -> list[dict[int, Any]]:
    """The contributions a single-pass plan returned beside each row: its own, with no keys
    to match (matching on Python's values of the keys took a withheld row's contributions
    for a released row's when the engine told their keys apart and Python did not: round
    33)."""
    c = plan.contributions
    o = c.inline_offset
    return [{col: (row[o + 3 * m] or [], row[o + 3 * m + 1], row[o + 3 * m + 2])
             for m, col in enumerate(c.measure_columns)} for row in raw.rows]


def match_contributions(plan: Plan, raw: RawResult, result: RawResult
                        ) -> list[dict[int, Any]]:
    """Per released row, the contributions behind each SUM/AVG-of-measure cell, from the
    separate contributions query (matched on the group keys).

    A row without a match gets None for its cells, which the dominance rule treats as
    dominated: unknown contributions are never assumed safe.
    """
    c = plan.contributions
    nkeys = len(c.key_columns)
    by_text = c.keyed_by_text and plan.key_text_index is not None

    def their_key(row) -> tuple:  # a row of the contributions query
        return tuple(row[-1]) if by_text else tuple(row[:nkeys])

    def our_key(row) -> tuple:  # a row of the released query
        return (tuple(row[plan.key_text_index]) if by_text
                else tuple(row[i] for i in c.key_columns))

    by_key = {}
    # Matched on the engine's text of the keys (rewrite.key_text), which tells apart what the
    # engine tells apart. A key seen twice all the same cannot be matched: its cells count as
    # unknown.
    seen = Counter(their_key(row) for row in result.rows)
    seen.update(our_key(row) for row in raw.rows
                if not any(row[h] for _, h in plan.grouping_index))
    for row in result.rows:
        key = their_key(row)
        if seen[key] > 2 or key in by_key:
            by_key[key] = dict.fromkeys(c.measure_columns)
            continue
        by_key[key] = {
            col: (row[nkeys + 3 * m] or [], row[nkeys + 3 * m + 1], row[nkeys + 3 * m + 2])
            for m, col in enumerate(c.measure_columns)
        }
    matched = []
    for row in raw.rows:
        if any(row[h] for _, h in plan.grouping_index):
            # A margin row: its key values (NULLs) can equal a real group's, and the
            # contributions were computed per detail group; unknown, so judged dominated.
            matched.append(dict.fromkeys(c.measure_columns))
            continue
        matched.append(by_key.get(our_key(row), dict.fromkeys(c.measure_columns)))
    return matched


def json_value(value: Any) -> Any:
    """A value of the released table as plain JSON; no type can break the response."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, date | datetime | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return json_value(float(value))
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)
