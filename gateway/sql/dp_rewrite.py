"""The rewrite for the ``dp`` regime: bound what one person can add to the answer, in SQL.

Differential privacy needs a bound on how much one person can move the released values (the
sensitivity); the noise is calibrated to it. The query is regrouped by (cell, person), so each
person's part of each cell is one row, and there it is bounded:

- a count of rows counts at most R of a person's rows per cell (``max_rows_per_cell``);
- COUNT(DISTINCT person) counts a person once per cell;
- a sum or average of a measure clamps each value to the bounds the catalogue declares, and
  counts at most R of a person's values per cell (a person with more contributes their mean
  R times), so a person moves a sum by at most R times the larger bound;
- a person counts in at most L cells (``max_cells_per_person``), chosen by a hash of the
  cell's keys; when every group key is a column of a table with one row per person, each
  person is in one cell already and no choice is needed.

The outer query then adds the bounded parts up per cell, with the number of people behind
each cell (for the noisy threshold of cells whose keys are not public). Only these exact,
bounded aggregates leave the engine, and only into the mechanisms of gateway.disclosure.dp.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from datasets import Catalogue, ColumnClass, TableKind
from gateway.errors import SqlRejected
from gateway.sql.analysis import Analysis
from gateway.sql.people_behind import key_text, row_person
from gateway.sql.rules.measures import is_indicator
from gateway.sql.rules.people import bare_origin, is_person_key, may_be_null, padded_sources
from gateway.sql.rules.size import too_complex_on_recursion
from gateway.sql.scans import filter_scans, safe_casts
from gateway.sql.tree import DIALECT, is_constant
from policies import Obligations

HINT = ("under differential privacy a query is one SELECT of group keys and COUNT(*), "
        "COUNT(x), COUNT(DISTINCT person_id), or SUM/AVG of a measure column (FILTER allowed), "
        "grouped by the keys; ORDER BY keys and LIMIT are applied after the noise")


@dataclass(frozen=True)
class DpStatistic:
    """One released aggregate column: what it counts and how far one person can move it."""

    column: int  # position in the outputs
    kind: str  # "rows" | "people" | "sum" | "average"
    #: COUNT(DISTINCT person) with no FILTER: the people behind the cell, which the noisy
    #: threshold releases anyway (no second measurement)
    #: per cell, the most one person can change it (for a sum: R times the larger bound)
    per_cell: float
    bounds: tuple[float, float] | None = None
    all_people: bool = False


@dataclass(frozen=True)
class DpPlan:
    sql: str
    keys: tuple[int, ...]  # output positions of the group keys
    key_columns: tuple[str, ...]  # the catalogue columns (table, column) behind bare keys
    public_domains: tuple[tuple[str, ...], ...] | None  # per key, its public values
    statistics: tuple[DpStatistic, ...]
    #: the most cells one person can be in
    cells_per_person: int
    #: result layout: keys, then per statistic its value(s), then the people behind the cell
    #: (output position, descending, NULLs first) from ORDER BY, as the engine would order
    order: tuple[tuple[int, bool, bool], ...]
    limit: int | None
    #: whether each row ends with the engine's text of its keys (rewrite.key_text): cells are
    #: told apart by it
    key_text: bool = False


@too_complex_on_recursion
def rewrite_dp(analysis: Analysis, obligations: Obligations, catalogue: Catalogue, *,
               max_cells: int, max_rows: int, row_cap: int) -> DpPlan:
    tree = analysis.tree
    if not isinstance(tree, exp.Select) or analysis.margins:
        raise SqlRejected("UNION, ROLLUP, CUBE and GROUPING SETS are not available under "
                          "differential privacy", hint=HINT, code="output_not_allowed")
    for arg, what in (("having", "HAVING"), ("distinct", "SELECT DISTINCT"),
                      ("qualify", "QUALIFY")):
        if tree.args.get(arg):
            raise SqlRejected(f"{what} is not available under differential privacy: it would "
                              "choose cells on exact values", hint=HINT,
                              code="output_not_allowed")
    tree = tree.copy()
    safe_casts(tree)
    scope = next(s for s in traverse_scope(tree) if s.expression is tree)
    if any(p.find(exp.Window) for p in tree.expressions):
        raise SqlRejected("window functions in the output are not available under "
                          "differential privacy", hint=HINT, code="output_not_allowed")
    rowpid = row_person(scope, catalogue)
    outputs = analysis.outputs
    keys = [i for i, o in enumerate(outputs) if o.kind == "group_key"]
    key_exprs = {i: tree.expressions[i].unalias().copy() for i in keys}
    names = [tree.expressions[i].alias_or_name for i in range(len(outputs))]

    inner: list[exp.Expression] = [exp.alias_(key_exprs[i], f"__k{i}") for i in keys]
    inner.append(exp.alias_(rowpid.copy(), "__pid"))
    outer: list[exp.Expression] = [exp.alias_(exp.column(f"__k{i}"), f"__k{i}") for i in keys]
    stats: list[DpStatistic] = []
    for i, o in enumerate(outputs):
        if o.kind != "aggregate":
            continue
        node = tree.expressions[i].unalias()
        stat, parts = _statistic(i, node, scope, catalogue, max_rows, rowpid)
        stats.append(stat)
        for n, part in enumerate(parts):
            inner.append(exp.alias_(part, f"__a{i}_{n}"))
            outer.append(exp.alias_(exp.Sum(this=exp.column(f"__a{i}_{n}")), f"__a{i}_{n}"))
    outer.append(exp.alias_(exp.Count(this=exp.Star()), "__people"))
    tree.set("expressions", inner)
    grouped = [key_exprs[i].copy() for i in keys if not is_constant(key_exprs[i])]
    tree.set("group", exp.Group(expressions=[*grouped, rowpid.copy()]))
    for arg in ("order", "limit"):
        tree.set(arg, None)
    one_cell = all(_person_grain(key_exprs[i], scope, catalogue) for i in keys)
    cells = 1 if one_cell else max_cells
    filter_scans(tree, obligations, catalogue, analysis.columns)
    source = tree.sql(dialect=DIALECT)
    having = ""
    if not one_cell:
        # A person in more than L cells keeps the L of them with the smallest hash of (keys,
        # person): a choice made from their own rows only. Only those people are ranked: a
        # window over everyone costs more than the rest of the query.
        chosen = ", ".join([*(f"__k{i}" for i in keys), "__pid"])
        # The parts are materialised once for their reads, and the people over the bound are
        # found by SEMI/ANTI joins (faster than IN / NOT IN, bench/dp_bound_variants.py; and
        # rows with no person, reference rows an outer join keeps, are never ranked, where a
        # NULL in NOT IN would empty the unranked side).
        head = (f"WITH __parts AS MATERIALIZED ({source}), __many AS (SELECT __pid FROM "
                f"__parts GROUP BY __pid HAVING COUNT(*) > {max_cells})")
        ranked = (f"SELECT __parts.* FROM __parts SEMI JOIN __many USING (__pid) QUALIFY "
                  f"ROW_NUMBER() OVER (PARTITION BY __pid ORDER BY HASH({chosen}))")
        if all(st.kind in ("rows", "people") for st in stats):
            # Whole-number parts: every part, minus the parts the bound cuts, is exact and
            # cheaper than splitting the parts in two (bench/dp_bound_variants.py).
            cols = [*(f"__k{i}" for i in keys), "__pid"]
            parts = [e.alias for e in outer[len(keys):-1]]
            negated = ", ".join([*cols, *(f"-{a}" for a in parts), "-1"])
            source = (f"{head}, __cut AS ({ranked} > {max_cells}) "
                      f"SELECT *, 1 AS __w FROM __parts UNION ALL SELECT {negated} FROM __cut")
            outer[-1] = exp.alias_(exp.Sum(this=exp.column("__w")), "__people")
            # a cell whose every pair was cut has no one left in it: it is no cell at all
            having = " HAVING SUM(__w) > 0" if keys else ""
        else:
            source = (f"{head} SELECT * FROM __parts ANTI JOIN __many USING (__pid) "
                      f"UNION ALL {ranked} <= {max_cells}")
    group = f" GROUP BY {', '.join(f'__k{i}' for i in keys)}" if keys else ""
    if keys:
        # each cell's keys as the engine tells them apart (rewrite.key_text): two cells Python
        # reads as one (DATE '-infinity', 0001-01-01) were one entry, the last read winning,
        # and one person's cell then hid everyone's (review round 34)
        outer.append(exp.alias_(key_text([exp.column(f"__k{i}") for i in keys]), "__kt"))
    # The number of exact cells is itself data: cap it well above what can be released.
    sql = (f"SELECT {', '.join(e.sql(dialect=DIALECT) for e in outer)} FROM ({source}) AS __pp"
           f"{group}{having} LIMIT {10 * row_cap + 1}")
    domains = _public_domains([key_exprs[i] for i in keys], scope, catalogue)
    return DpPlan(
        sql=sql, keys=tuple(keys),
        key_columns=tuple(names[i] for i in keys), public_domains=domains,
        statistics=tuple(stats), cells_per_person=cells,
        order=_order(analysis.tree, keys, key_exprs, names),
        limit=_limit(analysis.tree, row_cap), key_text=bool(keys),
    )


def _statistic(i: int, node: exp.Expression, scope, catalogue: Catalogue, max_rows: int,
               rowpid: exp.Expression) -> tuple[DpStatistic, list[exp.Expression]]:
    """The bounded per-(cell, person) parts of one aggregate, and its sensitivity."""
    cond = node.expression.copy() if isinstance(node, exp.Filter) else None
    agg = node.this if isinstance(node, exp.Filter) else node

    def filtered(e: exp.Expression) -> exp.Expression:
        return exp.Filter(this=e, expression=cond.copy()) if cond is not None else e

    def least(e: exp.Expression, n: int) -> exp.Expression:
        # the engine's own LEAST: sqlglot's generic one spells out a NULL check around it
        return exp.Anonymous(this="least", expressions=[
            exp.Coalesce(this=e, expressions=[exp.Literal.number(0)]), exp.Literal.number(n)])

    arg = agg.this
    if isinstance(agg, exp.Count):
        if isinstance(arg, exp.Distinct):
            if (len(arg.expressions) == 1 and isinstance(arg.expressions[0], exp.Column)
                    and is_person_key(arg.expressions[0], scope, catalogue)):
                person = arg.expressions[0]
                if cond is None and person.sql() == rowpid.sql():
                    # the row's own person, a group key here: 1 unless no one is behind the
                    # row, with no aggregate to compute (a tenth of the query's time)
                    part: exp.Expression = exp.Case(
                        ifs=[exp.If(this=exp.Is(this=person.copy(), expression=exp.Null()),
                                    true=exp.Literal.number(0))],
                        default=exp.Literal.number(1))
                else:
                    part = least(filtered(exp.Count(this=person.copy())), 1)
                # everyone in the cell only if every row has this key: not a source an
                # outer join pads (COUNT(DISTINCT d.person_id) of LEFT JOINed deaths counts
                # the dead)
                everyone = cond is None and not may_be_null(person, scope, catalogue)
                return DpStatistic(i, "people", 1.0, all_people=everyone), [part]
            raise SqlRejected("COUNT(DISTINCT ...) of anything but the person key is not "
                              "available under differential privacy", hint=HINT,
                              code="output_not_allowed")
        return DpStatistic(i, "rows", float(max_rows)), [least(filtered(agg.copy()), max_rows)]
    if isinstance(agg, exp.Sum) and is_indicator(arg):  # SUM(CASE WHEN .. THEN 1 ELSE 0 END)
        return DpStatistic(i, "rows", float(max_rows)), [least(filtered(agg.copy()), max_rows)]
    if isinstance(agg, exp.Sum | exp.Avg) and isinstance(arg, exp.Column):
        origin = bare_origin(arg, scope, catalogue)
        column = origin[1] if origin else None
        if column is not None and column.cls is ColumnClass.MEASURE and column.bounds:
            lo, hi = column.bounds
            clamped = exp.Anonymous(this="least", expressions=[exp.Anonymous(
                this="greatest", expressions=[arg.copy(), exp.Literal.number(lo)]),
                exp.Literal.number(hi)])
            n = filtered(exp.Count(this=arg.copy()))
            kept = least(n.copy(), max_rows)
            total = exp.Coalesce(this=exp.Div(
                this=exp.Mul(this=filtered(exp.Sum(this=clamped)), expression=kept.copy()),
                expression=exp.Nullif(this=n, expression=exp.Literal.number(0))),
                expressions=[exp.Literal.number(0)])
            per_cell = max_rows * max(abs(lo), abs(hi))
            kind = "sum" if isinstance(agg, exp.Sum) else "average"
            return DpStatistic(i, kind, float(per_cell), (lo, hi)), [total, kept]
        if column is not None and column.cls is ColumnClass.MEASURE:
            raise SqlRejected(f"the measure {column.name!r} has no bounds in the catalogue, so "
                              "its sensitivity is unknown", hint=HINT, code="output_not_allowed")
    raise SqlRejected(f"output {node.sql(dialect=DIALECT)!r} is not available under "
                      "differential privacy", hint=HINT, code="output_not_allowed")


def _person_grain(key: exp.Expression, scope, catalogue: Catalogue) -> bool:
    """Whether a key takes one value per person: computed only from columns of tables with
    one row per person, read directly (the rows of a query all belong to one person)."""
    if key.find(exp.Subquery, exp.Select, exp.AggFunc, exp.Window):
        return False
    # An outer join on more than the person key (LEFT JOIN patients p ON ... AND <a condition
    # on the event row>) leaves the key NULL on some of a person's rows: two cells or more.
    padded = padded_sources(scope.expression, scope, catalogue, by_person=True)
    for col in key.find_all(exp.Column):
        if col.table in padded:
            return False
        source = scope.sources.get(col.table)
        if not isinstance(source, exp.Table):
            return False
        table = catalogue.table(source.name)
        if table is None or table.kind is not TableKind.PERSON_LEVEL or table.grain != "person":
            return False
    return True


def _public_domains(keys: list[exp.Expression], scope, catalogue: Catalogue
                    ) -> tuple[tuple[str, ...], ...] | None:
    """Each key's public values, when every key is a bare column with a declared code list,
    and NULL beside them where the column may be NULL (declared nullable, or padded by an
    outer join): a LEFT JOINed place of death is NULL for the living, decided by the query,
    not the data (review round 31)."""
    domains = []
    for key in keys:
        if not isinstance(key, exp.Column):
            return None
        origin = bare_origin(key, scope, catalogue)
        if origin is None or not origin[1].values:
            return None
        nullable = origin[1].nullable or may_be_null(key, scope, catalogue)
        domains.append(tuple(origin[1].values) + ((None,) if nullable else ()))
    return tuple(domains)


def _order(tree: exp.Select, keys: list[int], key_exprs: dict, names: list[str]
           ) -> tuple[tuple[int, bool, bool], ...]:
    order = tree.args.get("order")
    out = []
    for ordered in order.expressions if order else []:
        term = ordered.this
        match = None
        if isinstance(term, exp.Literal) and term.is_int and int(term.this) - 1 in keys:
            match = int(term.this) - 1
        else:
            match = next((i for i in keys if key_exprs[i].sql() == term.sql()
                          or (isinstance(term, exp.Column) and term.name == names[i])), None)
        if match is None:
            raise SqlRejected("under differential privacy ORDER BY may name group keys only: "
                              "an order on exact values would leak them", hint=HINT,
                              code="output_not_allowed")
        # sqlglot spells out the engine's default (NULLs last, either way) in nulls_first
        out.append((match, bool(ordered.args.get("desc")), bool(ordered.args.get("nulls_first"))))
    return tuple(out)


def _limit(tree: exp.Select, row_cap: int) -> int | None:
    limit = tree.args.get("limit")
    value = limit.expression if limit else None
    if isinstance(value, exp.Literal) and value.is_int:
        return min(int(value.this), row_cap)
    return None
