"""What the rewrite hands the engine and the control stage: the SQL to run, and where in each
row the hidden columns are (the people behind each cell, cell keys, margins, branches, the
second queries for contributions and row bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from gateway.sql.rules.released import OutputColumn

HIDDEN_PREFIX = "__sdc_people_"


@dataclass(frozen=True)
class Contributions:
    """A second query: per group, the largest per-person totals behind SUM/AVG cells.

    Its rows are the group-key values (in output order), then for each measure column a list of
    the n largest per-person totals, the total of all of them, and the smallest.
    """

    sql: str
    key_columns: tuple[int, ...]
    measure_columns: tuple[int, ...]
    #: when the contributions come back in the result itself (single pass): where they start
    inline_offset: int | None = None
    #: whether each row ends with the engine's text of its keys (``key_text``), to match on
    keyed_by_text: bool = False


@dataclass(frozen=True)
class RowBound:
    """A second query: the most one person adds to each count column, over all the rows the
    query counts (an upper bound on what they add to any one cell), and the most cells of the
    result one person's rows fall in. One row: per column in ``columns``, that maximum, then
    the cells (counted once per distinct detail cell and UNION branch: margins multiply it
    by their grouping sets, which the caller knows)."""

    sql: str
    columns: tuple[int, ...]
    #: the count columns that can take several rows of one person (if none, the query is
    #: asked for the cells alone, and a small enough result answers that without it)
    asked: tuple[int, ...] = ()

    @property
    def asks_rows(self) -> bool:
        return bool(self.asked)


@dataclass(frozen=True)
class Plan:
    sql: str
    outputs: tuple[OutputColumn, ...]
    #: per output column, whether a hidden people count follows the visible columns
    people_index: tuple[int | None, ...]
    person_level: bool
    row_cap: int
    contributions: Contributions | None = None
    #: (output column, hidden column) pairs: GROUPING() of each key, for ROLLUP/CUBE/SETS
    grouping_index: tuple[tuple[int, int], ...] = ()
    #: the hidden column that numbers the UNION branch of each row
    branch_index: int | None = None
    #: cell_key regime: per output column, the hidden column holding its cell key (the XOR of
    #: the record keys of the people behind it); the SQL then takes the secret as a parameter
    key_index: tuple[int | None, ...] = ()
    #: the most one person adds to each count column (None: at most one, nothing to ask)
    row_bound: RowBound | None = None
    #: single pass: (count column, hidden column) pairs holding, per cell, the most one
    #: person adds to it (in place of the row_bound query)
    row_max_index: tuple[tuple[int, int], ...] = ()
    #: single pass: the hidden column holding, per cell, the most cells of the result any
    #: one of its people is in (in place of the row_bound query)
    cells_index: int | None = None
    #: the hidden column holding the engine's text of each row's keys (``key_text``), in
    #: the order of the non-aggregate output columns: to match the contributions query's
    #: rows on, and for secondary suppression to relate margins to their details by
    key_text_index: int | None = None
    #: the caller's LIMIT, applied after small groups are withheld: the engine runs to the
    #: row cap, so that a withheld row never leaves a gap a LIMIT would show (review round 33)
    limit: int | None = None


def user_limit(tree: exp.Expression, row_cap: int) -> int | None:
    """The caller's LIMIT, if it is a number within the row cap."""
    limit = tree.args.get("limit")
    current = limit.expression if limit else None
    if isinstance(current, exp.Literal) and current.is_int and int(current.this) <= row_cap:
        return int(current.this)
    return None
