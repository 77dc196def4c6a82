"""Secondary suppression: no suppressed cell may be recovered from the released cells and the
margins of the same result.

A result with margins (ROLLUP, CUBE, GROUPING SETS, or a UNION ALL total over the same rows)
holds linear relations: each margin cell is the sum of the cells one level below it. If a
relation has exactly one suppressed cell, subtraction reveals it; more subtly, several
relations together can pin a cell down. So:

1. while some relation has exactly one suppressed cell, suppress its smallest released cell
   (a detail cell before a margin): the classic hypercube heuristic, losing least;
2. then check exactly: a primary-suppressed cell is recoverable iff its unit vector lies in the
   row space of the relations restricted to the suppressed cells. While any is, suppress one
   more released cell of a relation that touches it, and check again.

Anchors: tau-argus's hypercube method, ONS SRS secondary suppression. Step 2 makes the result
exact for recovery by linear algebra, whatever the shape of the margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowShape:
    """Where a row sits in the margins: which columns are rolled up, in which family of rows
    (rows aggregated from the same FROM/WHERE), and its values on the other key columns."""

    family: int
    rolled: frozenset[int]
    keys: tuple


Relation = tuple[int, list[int]]  # (margin row, the rows it sums)


def relations(shapes: Sequence[RowShape]) -> list[Relation]:
    """Each margin row equals the sum of the rows of a finer level that agree with it.

    A level is the set of rolled-up columns. A margin is related to each level just below it
    among the levels the result holds: one column fewer rolled up in a ROLLUP or CUBE, but
    also a level that skips some, as ``GROUPING SETS ((a, b), ())`` puts the grand total
    beside the details with no subtotals between (round 20's note).

    Two levels neither of which is finer (``GROUPING SETS ((a), (b))``, or a UNION of a
    count by age band and one by sex) each sum to the level that rolls up both: the totals
    by age band and by sex both add up to everyone. Where the result does not hold that
    level, its cells are *virtual* rows, numbered from ``len(shapes)`` on: never released,
    always unknown, so the search below eliminates them like any hidden margin.

    Rows are indexed by (family, finer level, margin level, key values on the columns the
    margin keeps), so that a large ROLLUP is matched in linear time, not by comparing every
    pair of rows."""
    width = len(shapes[0].keys) if shapes else 0
    present: dict[int, set[frozenset[int]]] = {}
    for ss in shapes:
        present.setdefault(ss.family, set()).add(ss.rolled)
    below: dict[tuple[int, frozenset[int]], list[frozenset[int]]] = {}
    virtual_levels: dict[int, set[frozenset[int]]] = {}
    for family, levels in present.items():
        unions = {a | b for a in levels for b in levels if not (a <= b or b <= a)}
        virtual_levels[family] = unions - levels
        for upper in levels | virtual_levels[family]:
            finer = [lv for lv in levels if lv < upper]
            below[(family, upper)] = [lv for lv in finer
                                      if not any(lv < mid < upper for mid in finer)]
    above: dict[tuple[int, frozenset[int]], list[frozenset[int]]] = {}
    for (family, upper), finers in below.items():
        for finer in finers:
            above.setdefault((family, finer), []).append(upper)
    index: dict[tuple, list[int]] = {}
    virtual: dict[tuple, int] = {}  # (family, level, kept keys) -> its virtual row
    for s, ss in enumerate(shapes):
        for upper in above.get((ss.family, ss.rolled), []):
            kept = tuple(_hashable(ss.keys[j]) for j in range(width) if j not in upper)
            index.setdefault((ss.family, ss.rolled, upper, kept), []).append(s)
            if upper in virtual_levels[ss.family]:
                virtual.setdefault((ss.family, upper, kept), len(shapes) + len(virtual))
    out: list[Relation] = []
    margins = [(p, ps.family, ps.rolled, tuple(_hashable(ps.keys[j]) for j in range(width)
                                              if j not in ps.rolled))
               for p, ps in enumerate(shapes)]
    margins += [(v, family, level, kept) for (family, level, kept), v in virtual.items()]
    for p, family, level, kept in margins:
        for finer in below[(family, level)]:
            children = [s for s in index.get((family, finer, level, kept), []) if s != p]
            if children:
                out.append((p, children))
    return out


_NAN = ("nan",)  # NaN is one group in the engine, and not equal to itself in Python


def _hashable(v):
    return _NAN if isinstance(v, float) and v != v else v


#: Past this many suppressed cells or relations, the search below (a matrix rank per cell,
#: per step) would take minutes (review round 19): every margin is suppressed instead.
MAX_SEARCH_CELLS = 60
MAX_SEARCH_RELATIONS = 400


#: ... and past this much search over all the columns of one result (suppressed cells times
#: relations, summed), every column takes the quick way (review round 20: 100 columns).
MAX_SEARCH_WORK = 20_000


def protect(values: Sequence[float | None], suppressed: set[int],
            rels: list[Relation], *, quick: bool = False) -> set[int]:
    """The rows to suppress as well, so that no suppressed row of this column is recoverable.

    For a large table, every margin row of a relation is suppressed instead: with all margins
    unknown, any values of the hidden cells fit them, so none can be solved for."""
    primary = set(suppressed)
    hidden = primary | {p for p, _ in rels if p >= len(values)}  # virtual rows are unknown
    added: set[int] = set()
    if not primary or not rels:
        return added
    if quick or len(primary) > MAX_SEARCH_CELLS or len(rels) > MAX_SEARCH_RELATIONS:
        return _quick(values, primary, rels)

    def cheapest(cells: list[int], parent: int) -> int | None:
        open_ = [c for c in cells if c not in hidden and values[c] is not None]
        return min(open_, key=lambda c: (c == parent, abs(values[c]), c)) if open_ else None

    while True:
        changed = True
        while changed:
            changed = False
            for p, children in rels:
                cells = [p, *children]
                if sum(c in hidden for c in cells) == 1:
                    pick = cheapest(cells, p)
                    if pick is not None:
                        hidden.add(pick)
                        added.add(pick)
                        changed = True
        exposed = recoverable(primary, hidden, rels)
        if not exposed:
            return added
        target = min(exposed)
        touching = [r for r in rels if target in (r[0], *r[1])] or rels
        picks = [pick for p, ch in touching if (pick := cheapest([p, *ch], p)) is not None]
        if not picks:
            picks = [c for p, ch in rels for c in (p, *ch)
                     if c not in hidden and values[c] is not None]
        if not picks:
            return added  # every cell in every relation is already hidden
        pick = min(picks, key=lambda c: (abs(values[c]), c))
        hidden.add(pick)
        added.add(pick)


def _quick(values: Sequence[float | None], primary: set[int],
           rels: list[Relation]) -> set[int]:
    """Every released margin goes, and every row tied through a virtual total to a hidden
    one: then any values of the hidden cells fit what is released."""
    n = len(values)
    out = {p for p, _ in rels if p < n and p not in primary and values[p] is not None}
    # a suppressed margin whose details are all released would be their sum: one goes too
    for p, children in rels:
        if p in primary and not any(c in primary or c in out for c in children):
            open_ = [c for c in children if values[c] is not None]
            if open_:
                out.add(min(open_, key=lambda c: (abs(values[c]), c)))
    # levels summing to one total (the totals by age band and those by sex, both adding up
    # to everyone, held by the result or virtual) are tied to one another: where one of
    # their rows is hidden, all go, so that no level pins the total for the other
    sums: dict[int, list[list[int]]] = {}
    for p, children in rels:
        sums.setdefault(p, []).append(children)
    tied = [{c for children in parts for c in children}
            for p, parts in sums.items() if len(parts) > 1]
    changed = True
    while changed:
        changed = False
        for cells in tied:
            if any(c in primary or c in out for c in cells):
                more = {c for c in cells
                        if c not in primary and c not in out and values[c] is not None}
                if more:
                    out |= more
                    changed = True
    return out


def recoverable(cells: set[int], hidden: set[int], rels: list[Relation]) -> set[int]:
    """Which of ``cells`` the released values and the relations determine exactly."""
    unknown = sorted(hidden)
    index = {c: i for i, c in enumerate(unknown)}
    rows = []
    for p, children in rels:
        row = np.zeros(len(unknown))
        touched = False
        for c, coef in ((p, 1.0), *((ch, -1.0) for ch in children)):
            if c in index:
                row[index[c]] += coef
                touched = True
        if touched:
            rows.append(row)
    if not rows:
        return set()
    a = np.array(rows)
    rank = np.linalg.matrix_rank(a)
    out = set()
    for c in cells:
        unit = np.zeros(len(unknown))
        unit[index[c]] = 1.0
        if np.linalg.matrix_rank(np.vstack([a, unit])) == rank:
            out.add(c)
    return out
