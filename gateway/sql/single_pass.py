"""One query in place of three, for results whose aggregates decompose per person: each
person's partial aggregates per cell, then the cells, with the people, the contributions
and the row bounds beside them."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from datasets import Catalogue, TableKind
from gateway.sql.analysis import Analysis
from gateway.sql.people_behind import counts_rows, one_row_per_person, record_key, row_person
from gateway.sql.plan import HIDDEN_PREFIX, Contributions, Plan, user_limit
from gateway.sql.rules.released import counts_people
from gateway.sql.scans import filter_scans, safe_casts
from gateway.sql.tree import DIALECT, is_constant
from policies import Obligations

_DECOMPOSABLE = (exp.Count, exp.Sum, exp.Avg)


def single_pass(
    analysis: Analysis, obligations: Obligations, catalogue: Catalogue, row_cap: int, top_n: int,
    cell_keys: bool = False,
) -> Plan | None:
    """One query for results with sums or averages of measures, when the aggregates allow it.

    Dominance needs each person's total per cell, which a query grouped by the cell cannot
    give. Rather than a second query, group by (cell, person) first, with partial counts and
    sums, and build every released value, the people behind each cell, and the largest
    per-person totals from those partials. COUNT, COUNT(x), SUM and AVG (with FILTER)
    decompose so; anything else (COUNT(DISTINCT ...), margins, an ORDER BY that is not a key)
    returns None and takes the two-query path. Same answers, about half the work.
    """
    outputs = analysis.outputs
    measures = [i for i, o in enumerate(outputs) if o.shape == "measure"]
    if not isinstance(analysis.tree, exp.Select) or analysis.margins:
        return None
    counts = [i for i, o in enumerate(outputs) if o.kind == "aggregate" and o.shape == "count"]
    if not measures:
        # worth a regrouping if some count can take several rows a person, or if a person
        # can be in several cells, which only a regrouping by (cell, person) counts
        top = next(s for s in traverse_scope(analysis.tree) if s.expression is analysis.tree)
        one_row = one_row_per_person(top, catalogue)
        one_row_each = not cell_keys and one_row
        if one_row and not any(
                not counts_people(p := analysis.tree.expressions[i].unalias(), top, catalogue)
                and not (one_row_each and counts_rows(p)) for i in counts):
            return None
    if not any((t := catalogue.table(n)) and t.kind is TableKind.PERSON_LEVEL
               for n in analysis.tables):
        return None
    tree = analysis.tree.copy()
    safe_casts(tree)
    scope = next(s for s in traverse_scope(tree) if s.expression is tree)
    aggs: dict[int, tuple[exp.Expression, exp.Expression | None]] = {}
    people_counts: set[int] = set()  # COUNT(DISTINCT <the person, or NULL>)
    for i, o in enumerate(outputs):
        if o.kind != "aggregate":
            continue
        node = tree.expressions[i].unalias()
        cond = node.expression.this if isinstance(node, exp.Filter) else None
        agg = node.this if isinstance(node, exp.Filter) else node
        if type(agg) not in _DECOMPOSABLE:
            return None
        if isinstance(agg.this, exp.Distinct):
            # on the outer query a distinct count counts people: the row's person or NULL
            # (analysis), so per (cell, person) it is "any such row", and the cell's value
            # the number of its people with one
            if not (isinstance(agg, exp.Count) and len(agg.this.expressions) == 1
                    and counts_people(node, scope, catalogue)):
                return None
            people_counts.add(i)
        aggs[i] = (agg, cond)
    rowpid = row_person(scope, catalogue)
    keys = [i for i, o in enumerate(outputs) if o.kind == "group_key"]
    key_exprs = {i: tree.expressions[i].unalias().copy() for i in keys}
    order = tree.args.get("order")
    names = [tree.expressions[i].alias_or_name for i in range(len(outputs))]
    new_order = []
    for ordered in order.expressions if order else []:
        term = ordered.this
        if isinstance(term, exp.Literal) and term.is_int:
            new_order.append(ordered.copy())
            continue
        match = next((i for i in keys if key_exprs[i].sql() == term.sql()
                      or (isinstance(term, exp.Column) and not term.table
                          and term.name == names[i])), None)
        if match is None:
            return None
        new_order.append(exp.Ordered(this=exp.column(names[match], quoted=True),
                                     desc=ordered.args.get("desc"),
                                     nulls_first=ordered.args.get("nulls_first")))

    def filtered(e: exp.Expression, extra: exp.Expression | None = None,
                 cond: exp.Expression | None = None) -> exp.Expression:
        parts = [c.copy() for c in (cond, extra) if c is not None]
        return exp.Filter(this=e, expression=exp.Where(this=exp.and_(*parts))) if parts else e

    inner = [exp.alias_(key_exprs[i], f"__k{i}") for i in keys]
    inner.append(exp.alias_(rowpid.copy(), "__pid"))
    outer: list[exp.Expression] = []
    people: list[exp.Expression] = []
    cell_keys_sql: list[exp.Expression] = []
    tops: list[exp.Expression] = []
    for i, o in enumerate(outputs):
        if o.kind == "group_key":
            outer.append(exp.alias_(exp.column(f"__k{i}"), names[i], quoted=True))
            continue
        if o.kind == "constant":
            outer.append(exp.alias_(tree.expressions[i].unalias().copy(), names[i], quoted=True))
            continue
        agg, cond = aggs[i]
        arg = agg.this if not isinstance(agg.this, exp.Star) else None
        if i in people_counts:
            arg = agg.this.expressions[0]
        count = exp.Count(this=arg.copy() if arg is not None else exp.Star())
        inner.append(exp.alias_(filtered(count, cond=cond), f"__c{i}"))
        if isinstance(agg, exp.Sum | exp.Avg):
            inner.append(exp.alias_(filtered(exp.Sum(this=arg.copy()), cond=cond), f"__s{i}"))
        if isinstance(agg, exp.Sum):
            nonzero = exp.NEQ(this=arg.copy(), expression=exp.Literal.number(0))
            inner.append(exp.alias_(filtered(exp.Count(this=arg.copy()), nonzero, cond),
                                    f"__n{i}"))
        total_sum = exp.Sum(this=exp.column(f"__s{i}"))
        if i in people_counts:
            value: exp.Expression = filtered(exp.Count(this=exp.Star()), exp.GT(
                this=exp.column(f"__c{i}"), expression=exp.Literal.number(0)))
        elif isinstance(agg, exp.Count):
            value = exp.Sum(this=exp.column(f"__c{i}"))
        elif isinstance(agg, exp.Sum):
            value = total_sum
        else:
            value = exp.Div(this=exp.Cast(this=total_sum, to=exp.DataType.build("DOUBLE")),
                            expression=exp.Nullif(this=exp.Sum(this=exp.column(f"__c{i}")),
                                                  expression=exp.Literal.number(0)))
        outer.append(exp.alias_(value, names[i], quoted=True))
        who = f"__n{i}" if isinstance(agg, exp.Sum) and i not in measures else f"__c{i}"
        behind = exp.and_(exp.GT(this=exp.column(who), expression=exp.Literal.number(0)),
                          exp.Not(this=exp.Is(this=exp.column("__pid"), expression=exp.Null())))
        people.append(exp.alias_(filtered(exp.Count(this=exp.Star()), behind),
                                 f"{HIDDEN_PREFIX}{i}"))
        if cell_keys:  # one (cell, person) row per person: no DISTINCT needed
            cell_keys_sql.append(exp.alias_(filtered(exp.Anonymous(
                this="bit_xor", expressions=[record_key(exp.column("__pid"))]), behind),
                f"__sdc_key_{i}"))
        if i in measures:
            tops += [exp.alias_(exp.Anonymous(this="max", expressions=[
                         exp.column(f"__s{i}"), exp.Literal.number(top_n)]), f"__top{i}"),
                     exp.alias_(exp.Sum(this=exp.column(f"__s{i}")), f"__total{i}"),
                     exp.alias_(exp.Min(this=exp.column(f"__s{i}")), f"__min{i}")]
    tree.set("expressions", inner)
    # a literal key groups nothing, and in GROUP BY an integer is read as a position
    tree.set("group", exp.Group(expressions=[
        *(key_exprs[i].copy() for i in keys if not is_constant(key_exprs[i])),
        rowpid.copy()]))
    for arg in ("order", "limit"):
        tree.set(arg, None)
    filter_scans(tree, obligations, catalogue, analysis.columns)
    # per cell, the most one person adds to each count column (see row_bound); a count of
    # people takes one from each
    counts = [i for i in counts if i not in people_counts]
    row_max = [exp.alias_(exp.Max(this=exp.Abs(this=exp.column(
        f"__s{i}" if isinstance(aggs[i][0], exp.Sum) else f"__c{i}"))), f"__rows{i}")
        for i in counts]
    # the most cells one person is in: their (cell, person) groups, counted per person (see
    # row_bound, round 22); one scalar beside every row, from the same materialised groups
    someone = exp.Not(this=exp.Is(this=exp.column("__pid"), expression=exp.Null()))
    per_person = exp.select(exp.alias_(exp.Count(this=exp.Star()), "__n")).from_(
        "__pp").where(someone).group_by(exp.column("__pid"))
    cells_max = exp.alias_(exp.Subquery(this=exp.select(exp.Max(this=exp.column("__n"))).from_(
        exp.Subquery(this=per_person, alias=exp.TableAlias(this=exp.to_identifier("__per"))))),
        "__cells")
    query = exp.select(*outer, *people, *tops, *cell_keys_sql, *row_max, cells_max).from_(
        "__pp").with_("__pp", as_=tree)
    if keys:
        query = query.group_by(*[exp.column(f"__k{i}") for i in keys])
    if new_order:
        query.set("order", exp.Order(expressions=new_order))
    query.set("limit", exp.Limit(expression=exp.Literal.number(row_cap + 1)))
    agg_ids = [i for i, o in enumerate(outputs) if o.kind == "aggregate"]
    people_index = [None] * len(outputs)
    for n, i in enumerate(agg_ids):
        people_index[i] = len(outputs) + n
    contributions = Contributions(
        "", tuple(i for i, o in enumerate(outputs) if o.kind != "aggregate"), tuple(measures),
        inline_offset=len(outputs) + len(agg_ids))
    key_index: list[int | None] = [None] * len(outputs)
    start = len(outputs) + len(agg_ids) + len(tops)
    for n, i in enumerate(agg_ids):
        key_index[i] = start + n
    first_max = start + len(cell_keys_sql)
    return Plan(query.sql(dialect=DIALECT), outputs, tuple(people_index), True, row_cap,
                contributions, key_index=tuple(key_index) if cell_keys else (),
                row_max_index=tuple((i, first_max + n) for n, i in enumerate(counts)),
                cells_index=first_max + len(counts),
                limit=user_limit(analysis.tree, row_cap))
