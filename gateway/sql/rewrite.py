"""The rewrite: make the checked query see only what the decision allows, and say who is behind
each cell. Everything is done on the syntax tree; the SQL executed is regenerated from it.

1. Every scan of a person-level table, in every CTE and subquery, becomes a filtered derived
   table (residence, consent cohort, national data opt-out), so that no join, subquery or CTE
   can reach a row outside the filters; and every select that pairs people's sources checks,
   on the data, that each row is one person's (``gateway.sql.scans``).
2. Each aggregate output column gets a hidden companion: the number of distinct people behind
   the cell, computed by the engine whatever the user's aggregate counts (events, spells, sums)
   (``gateway.sql.people_behind``).
3. Second queries where the control stage needs them: per-person contributions behind sums
   (dominance), and the most rows and cells one person adds (``row_bound``); or all of it in
   one query where the aggregates allow (``gateway.sql.single_pass``).
4. The row cap becomes a LIMIT (one over the cap, so that exceeding it can be told).
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from datasets import Catalogue, TableKind
from gateway.errors import SqlRejected
from gateway.sql.analysis import Analysis
from gateway.sql.people_behind import (
    cell_key_of,
    counts_rows,
    key_text,
    one_row_per_person,
    people_behind,
    row_person,
)
from gateway.sql.plan import HIDDEN_PREFIX, Contributions, Plan, RowBound, user_limit
from gateway.sql.rules.released import counts_people
from gateway.sql.rules.size import too_complex_on_recursion
from gateway.sql.scans import filter_scans, safe_casts
from gateway.sql.single_pass import single_pass
from gateway.sql.tree import DIALECT, group_keys, is_constant, outer_selects
from policies import Obligations


@too_complex_on_recursion
def rewrite(
    analysis: Analysis, obligations: Obligations, catalogue: Catalogue, row_cap: int,
    top_n: int = 2, cell_keys: bool = False,
) -> Plan:
    plan = _rewrite(analysis, obligations, catalogue, row_cap, top_n, cell_keys)
    if not plan.person_level or plan.cells_index is not None:
        return plan
    return replace(plan, row_bound=row_bound(analysis, obligations, catalogue))


def row_bound(analysis: Analysis, obligations: Obligations, catalogue: Catalogue
              ) -> RowBound | None:
    """The query that finds how many rows one person can add to each count column, and in
    how many cells of the result one person's rows fall.

    Rounding to 5 and a perturbation of at most 2 are sized for counts in which one person
    moves a value by one. A count of rows moves by as many rows as the person has there, and
    a query can fix that number (five rows each, by a per-person HAVING or ROW_NUMBER), which
    makes a count of rows an exact multiple of a count of people (review round 17). Each
    branch is regrouped by (cell, person): the largest value is the most anyone adds to any
    one cell; under ROLLUP, CUBE and GROUPING SETS, whose totals add a person's cells up, the
    largest sum over a person's cells. Columns that count people, and counts over one row
    per person, add at most one and are not asked.

    Each rounded or perturbed cell is one draw, and cells that differ by one small group,
    by the hundred, average the draws away (rounds 20 and 21). The caps on aggregate columns
    and grouping sets bound that from the query's shape only when each person is one row;
    a person with many rows is in one cell per row, and a query can give everyone 256 rows
    tagged 0 to 255 (round 22). So the same query counts, per person, the (cell, person)
    groups: the cells that person is in.
    """
    columns = [i for i, o in enumerate(analysis.outputs)
               if o.kind == "aggregate" and o.shape == "count"]
    tree = analysis.tree.copy()
    safe_casts(tree)
    scopes = {id(s.expression): s for s in traverse_scope(tree)}
    parts = []
    asked: set[int] = set()
    several = False  # whether some branch can hold several rows of one person
    for branch in outer_selects(tree):
        scope = scopes[id(branch)]
        one_row_each = one_row_per_person(scope, catalogue)
        several = several or not one_row_each
        rowpid = row_person(scope, catalogue)
        select = [exp.alias_(rowpid.copy(), "__pid")]
        for i in columns:
            proj = branch.expressions[i].unalias()
            if counts_people(proj, scope, catalogue) or (one_row_each and counts_rows(proj)):
                select.append(exp.alias_(exp.Literal.number(1), f"__m{i}"))
                continue
            asked.add(i)
            select.append(exp.alias_(proj.copy(), f"__m{i}"))
        # per (detail cell, person)
        group = branch.args.get("group")
        cells = [k.copy() for k in group_keys(group) if not is_constant(k)] if analysis.margins else [
            branch.expressions[k].unalias().copy() for k, o in enumerate(analysis.outputs)
            if o.kind == "group_key"
            and not is_constant(branch.expressions[k].unalias())]
        per_person = branch.copy()
        per_person.set("expressions", select)
        per_person.set("group", exp.Group(expressions=[*cells, rowpid.copy()]))
        for arg in ("order", "limit", "having", "qualify", "distinct"):
            per_person.set(arg, None)
        parts.append(per_person)
    if not asked and not several:
        return None
    # the branches keep the query's CTEs (a UNION's WITH sits on the root)
    with_ = tree.args.get("with_")
    body: exp.Expression = parts[0]
    for part in parts[1:]:
        body = exp.Union(this=body, expression=part, distinct=False)
    if with_ is not None and isinstance(body, exp.Union):
        body.set("with_", with_.copy())
    inner = exp.Subquery(this=body, alias=exp.TableAlias(this=exp.to_identifier("__pp")))
    # per person: the most added to one cell (a total adds up the person's cells), and cells
    over = exp.Sum if analysis.margins else exp.Max
    person = exp.select(
        exp.column("__pid"),
        *[exp.alias_(over(this=exp.Abs(this=exp.column(f"__m{i}"))), f"__m{i}")
          for i in columns],
        exp.alias_(exp.Count(this=exp.Star()), "__cells"),
    ).from_(inner).where(
        exp.Not(this=exp.Is(this=exp.column("__pid"), expression=exp.Null()))
    ).group_by(exp.column("__pid"))
    query = exp.select(*[exp.alias_(exp.Max(this=exp.column(f"__m{i}")), f"__m{i}")
                         for i in columns],
                       exp.alias_(exp.Max(this=exp.column("__cells")), "__cells")).from_(
        exp.Subquery(this=person, alias=exp.TableAlias(this=exp.to_identifier("__per"))))
    filter_scans(query, obligations, catalogue, analysis.columns)
    return RowBound(query.sql(dialect=DIALECT), tuple(columns), asked=tuple(sorted(asked)))


def _rewrite(
    analysis: Analysis, obligations: Obligations, catalogue: Catalogue, row_cap: int,
    top_n: int, cell_keys: bool,
) -> Plan:
    single = single_pass(analysis, obligations, catalogue, row_cap, top_n, cell_keys)
    if single is not None:
        return single
    tree = analysis.tree.copy()
    safe_casts(tree)
    contributions = _contributions(analysis, obligations, catalogue, row_cap, top_n)
    person_level = any(
        (t := catalogue.table(name)) is not None and t.kind is TableKind.PERSON_LEVEL
        for name in analysis.tables
    )
    people_index: list[int | None] = [None] * len(analysis.outputs)
    key_index: list[int | None] = [None] * len(analysis.outputs)
    aggregates = [i for i, o in enumerate(analysis.outputs) if o.kind == "aggregate"]
    hidden_count = 0
    if person_level:
        scopes = {id(s.expression): s for s in traverse_scope(tree)}
        branches = outer_selects(tree)
        single = len(branches) == 1
        for branch in branches:
            # every branch gets the same hidden columns, so that a UNION lines up
            scope = scopes[id(branch)]
            rowpid = row_person(scope, catalogue)
            seen: dict[str, int] = {}
            hidden = []
            one_row_each = single and not cell_keys and one_row_per_person(scope, catalogue)
            for i in aggregates:
                proj = branch.expressions[i].unalias()
                if one_row_each and counts_rows(proj):
                    people_index[i] = i  # one row per person: the rows counted are people
                    continue
                people = people_behind(proj, branch, rowpid, scope, catalogue)
                key = people.sql(dialect=DIALECT)
                if single and key == proj.sql(dialect=DIALECT):
                    people_index[i] = i  # COUNT(DISTINCT person): the cell is its own count
                    continue
                if single and key in seen:
                    people_index[i] = seen[key]  # the same people behind another cell
                    continue
                people_index[i] = len(analysis.outputs) + len(hidden)
                seen[key] = people_index[i]
                hidden.append(exp.alias_(people, f"{HIDDEN_PREFIX}{i}"))
            if cell_keys:  # one cell key per distinct set of people, after the counts
                keys_at: dict[str, int] = {}
                for i in aggregates:
                    p = people_index[i]
                    counted = (hidden[p - len(analysis.outputs)].unalias()
                               if p >= len(analysis.outputs) else branch.expressions[i].unalias())
                    key_expr = cell_key_of(counted)
                    text = key_expr.sql(dialect=DIALECT)
                    if text not in keys_at or not single:
                        keys_at[text] = len(analysis.outputs) + len(hidden)
                        hidden.append(exp.alias_(key_expr, f"__sdc_key_{i}"))
                    key_index[i] = keys_at[text]
            for h in hidden:
                branch.append("expressions", h)
            hidden_count = len(hidden)
    else:
        people_index = [None] * len(analysis.outputs)
    grouping_index: list[tuple[int, int]] = []
    branch_index = None
    if person_level:
        # Where each row sits in the margins, for secondary suppression.
        width = len(analysis.outputs) + hidden_count
        branches = outer_selects(tree)
        if analysis.margins:
            keys = [i for i, o in enumerate(analysis.outputs) if o.kind == "group_key"]
            for n, i in enumerate(keys):
                key = branches[0].expressions[i].unalias().copy()
                branches[0].append("expressions", exp.alias_(
                    exp.Anonymous(this="GROUPING", expressions=[key]), f"__g{i}"))
                grouping_index.append((i, width + n))
        elif len(branches) > 1:
            for b, branch in enumerate(branches):
                branch.append("expressions", exp.alias_(exp.Literal.number(b), "__branch"))
            branch_index = width
    # The engine's text of each row's keys: what the contributions query's rows are matched
    # on, and what secondary suppression relates margins to their details by (Python's
    # values of a key do not always tell apart what the engine does, nor find equal what it
    # groups together: a NaN inside a tuple key, review round 37).
    key_text_index = None
    keys = [i for i, o in enumerate(analysis.outputs) if o.kind != "aggregate"]
    if keys and ((contributions is not None and contributions.keyed_by_text)
                 or grouping_index or branch_index is not None):
        for branch in outer_selects(tree):  # at the same place in every branch
            key_text_index = len(branch.expressions)
            branch.append("expressions", exp.alias_(key_text(
                [branch.expressions[i].unalias() for i in keys]), "__kt"))
    filter_scans(tree, obligations, catalogue, analysis.columns)
    user = user_limit(tree, row_cap)
    if person_level or user is None:
        tree.set("limit", exp.Limit(expression=exp.Literal.number(row_cap + 1)))
    return Plan(tree.sql(dialect=DIALECT), analysis.outputs, tuple(people_index), person_level,
                row_cap, contributions, tuple(grouping_index), branch_index,
                tuple(key_index) if cell_keys else (), limit=user if person_level else None,
                key_text_index=key_text_index)


def _contributions(
    analysis: Analysis, obligations: Obligations, catalogue: Catalogue, row_cap: int, top_n: int
) -> Contributions | None:
    """Build the per-person contributions query for SUM/AVG-of-measure cells, if any."""
    measures = [i for i, o in enumerate(analysis.outputs) if o.shape == "measure"]
    if not measures:
        return None
    tree = analysis.tree.copy()
    safe_casts(tree)
    if not isinstance(tree, exp.Select):
        raise SqlRejected(
            "sums and averages of measures in a UNION cannot be checked for dominance",
            hint="release each sum or average in a query of its own", code="output_not_allowed")
    scope = next(s for s in traverse_scope(tree) if s.expression is tree)
    rowpid = row_person(scope, catalogue)
    keys = [i for i, o in enumerate(analysis.outputs) if o.kind != "aggregate"]
    group_exprs = [tree.expressions[i].unalias().copy() for i in keys]
    inner = [exp.alias_(e, f"__k{n}") for n, e in enumerate(group_exprs)]
    inner.append(exp.alias_(rowpid.copy(), "__pid"))
    for i in measures:
        node = tree.expressions[i].unalias()
        agg = node.this if isinstance(node, exp.Filter) else node
        total: exp.Expression = exp.Sum(this=agg.this.copy())
        if isinstance(node, exp.Filter):
            total = exp.Filter(this=total, expression=node.expression.copy())
        inner.append(exp.alias_(total, f"__s{i}"))
    tree.set("expressions", inner)
    # constants are not grouped on (a bare integer in GROUP BY would be read as a position)
    grouped = [e.copy() for e in group_exprs if not is_constant(e)]
    tree.set("group", exp.Group(expressions=[*grouped, rowpid.copy()]))
    for arg in ("order", "limit", "having", "distinct"):
        tree.set(arg, None)
    filter_scans(tree, obligations, catalogue, analysis.columns)
    outer = exp.select(
        *[exp.column(f"__k{n}") for n in range(len(keys))],
        *[part for i in measures for part in (
            exp.alias_(exp.Anonymous(this="max", expressions=[
                exp.column(f"__s{i}"), exp.Literal.number(top_n)]), f"__top{i}"),
            exp.alias_(exp.Sum(this=exp.column(f"__s{i}")), f"__total{i}"),
            exp.alias_(exp.Min(this=exp.column(f"__s{i}")), f"__min{i}"),
        )],
    ).from_(exp.Subquery(this=tree, alias=exp.TableAlias(this=exp.to_identifier("__pp"))))
    if keys:
        outer = outer.group_by(*[exp.column(f"__k{n}") for n in range(len(keys))])
        outer = outer.select(exp.alias_(key_text(
            [exp.column(f"__k{n}") for n in range(len(keys))]), "__kt"))
    outer.set("limit", exp.Limit(expression=exp.Literal.number(row_cap + 1)))
    return Contributions(outer.sql(dialect=DIALECT), tuple(keys), tuple(measures),
                         keyed_by_text=bool(keys))


