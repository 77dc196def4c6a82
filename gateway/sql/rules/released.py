"""The released table: every output column an aggregate, a group key or a constant label, in
every UNION branch; what each aggregate column is (a count, a measure, a composite); nothing on
the outer query that acts on exact aggregate values before disclosure control."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from datasets import Catalogue, ColumnClass
from gateway.errors import SqlRejected
from gateway.sql.rules.measures import check_measure_cells, check_measure_rows_once, shape_of
from gateway.sql.rules.people import bare_origin, is_person_key
from gateway.sql.tree import DIALECT, aggregates_of, group_keys, inside_any


@dataclass(frozen=True)
class OutputColumn:
    name: str
    kind: str  # "group_key" | "constant" | "aggregate"
    #: for aggregates: "count" (COUNT, or SUM over a non-measure: a count of cases),
    #: "measure" (SUM or AVG of a measure column), or "composite" (any other expression of
    #: aggregates, such as a ratio). Each regime decides what it can release of each shape.
    shape: str = ""

    #: whether margins of this column add up from its cells (COUNT, SUM): what secondary
    #: suppression must protect
    additive: bool = False

    @property
    def is_count(self) -> bool:
        return self.shape == "count"


def combine(branches: list[tuple[OutputColumn, ...]]) -> tuple[OutputColumn, ...]:
    """One description of the released columns from every branch of a UNION."""
    first = branches[0]
    for b in branches[1:]:
        if len(b) != len(first):
            raise SqlRejected("every branch of a UNION must have the same number of columns")
    combined = []
    for i, col in enumerate(first):
        kinds = {b[i].kind for b in branches}
        if "aggregate" in kinds and kinds != {"aggregate"}:
            raise SqlRejected(f"column {i + 1} is an aggregate in one UNION branch and not in "
                              "another", hint="line up group keys and aggregates in every branch")
        shapes = {b[i].shape for b in branches}
        shape = shapes.pop() if len(shapes) == 1 else "composite"
        kind = "aggregate" if kinds == {"aggregate"} else (
            "constant" if kinds == {"constant"} else "group_key")
        additive = all(b[i].additive for b in branches)
        combined.append(OutputColumn(col.name, kind, shape if kind == "aggregate" else "",
                                     additive if kind == "aggregate" else False))
    return tuple(combined)


def check_union_order(tree: exp.Expression, outers: list[exp.Select]) -> None:
    if not isinstance(tree, exp.Union):
        return
    order = tree.args.get("order")
    for ordered in order.expressions if order else []:
        _refuse_a_subquery_in_order(ordered)
        if any(_names_aggregate(ordered, branch) for branch in outers):
            raise SqlRejected("ORDER BY an aggregate is not allowed on the outer query: the "
                              "order would rank suppressed cells",
                              hint="order by group keys, or sort the released table yourself")


def _refuse_a_subquery_in_order(ordered: exp.Expression) -> None:
    """The released table is ordered by its keys; a subquery has no place there. The engine
    takes an aggregate of the outer query's columns inside one for the outer query's own:
    ``ORDER BY (SELECT SUM(...p.registration_date...))`` sorted the released rows by an exact
    value of each cell, and placed one resident's date among them (review round 40)."""
    if ordered.find(exp.Select) is not None:
        raise SqlRejected("a subquery in ORDER BY of the outer query is not allowed",
                          hint="order by group keys, or sort the released table yourself")


def check_group_keys(tree: exp.Select, scope: Scope, catalogue: Catalogue) -> None:
    """A bare measure as an outer group key would release each exact value (micro-data)."""
    group = tree.args.get("group")
    keys = group_keys(group)
    if group is not None and group.args.get("all"):
        keys += [p.unalias() for p in tree.expressions if not aggregates_of(p, tree)]
    for key in keys:
        while isinstance(key, exp.Paren):
            key = key.this
        if not isinstance(key, exp.Column):
            continue
        origin = bare_origin(key, scope, catalogue)
        if origin and origin[1].cls is ColumnClass.MEASURE:
            raise SqlRejected(
                f"measure {origin[0].name}.{origin[1].name} may not be a group key: each exact "
                "value would be released", hint="aggregate it with SUM or AVG, or band it with "
                "CASE WHEN ... THEN '0-7 days' ...")


def _in_filter_condition(node: exp.Expression, top: exp.Expression) -> bool:
    """Whether a node sits in the WHERE of an aggregate's FILTER clause: it selects rows that
    feed the aggregate (and the same rows feed its people count), it adds no value of its own."""
    child, parent = node, node.parent
    while parent is not None and child is not top:
        if isinstance(parent, exp.Filter) and child is parent.expression:
            return True
        child, parent = parent, parent.parent
    return False


def _names_aggregate(ordered: exp.Expression, tree: exp.Select) -> bool:
    """Whether an ORDER BY term refers (by alias or position) to an aggregate output column."""
    term = ordered.this if isinstance(ordered, exp.Ordered) else ordered
    target = None
    if isinstance(term, exp.Var) and term.name.upper() == "ALL":
        # ORDER BY ALL sorts by every output column, the aggregates too (review round 17)
        return any(aggregates_of(p.unalias(), tree) for p in tree.expressions)
    bare = term
    while isinstance(bare, exp.Paren):  # the engine reads (2) as position 2 (review round 34)
        bare = bare.this
    if isinstance(bare, exp.Literal) and bare.is_int:
        idx = int(bare.this) - 1
        target = tree.expressions[idx] if 0 <= idx < len(tree.expressions) else None
    elif term is not None:
        # a name inside an expression binds to the output column too: ORDER BY c % 5 sorted
        # by the exact count's remainder, which with the rounded count gave it exactly
        # (review round 22)
        for col in [c for c in term.find_all(exp.Column) if not c.table]:
            target = next((p for p in tree.expressions
                           if p.alias_or_name.lower() == col.name.lower()
                           and aggregates_of(p.unalias(), tree)), None)
            if target is not None:
                return True
    return bool(target is not None and aggregates_of(target.unalias(), tree))


def _output_name(proj: exp.Expression, i: int) -> str:
    """The name a person sees: the alias, else the column name, else the expression's text."""
    if isinstance(proj, exp.Alias) and proj.alias:
        return proj.alias
    if isinstance(proj, exp.Column) and proj.name:
        return proj.name
    return proj.sql(dialect=DIALECT).lower() if len(proj.sql()) <= 60 else f"col_{i}"


def counts_people(node: exp.Expression, scope: Scope, catalogue: Catalogue) -> bool:
    """COUNT(DISTINCT ...) [FILTER] of the person key, or of a CASE whose every result is the
    person key or NULL: one per person behind the cell."""
    agg = node.this if isinstance(node, exp.Filter) else node
    if not (isinstance(agg, exp.Count) and isinstance(agg.this, exp.Distinct)):
        return False
    args = agg.this.expressions
    arg = args[0] if len(args) == 1 else None
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Case):
        results = [i.args.get("true") for i in arg.args.get("ifs") or []]
        results += [arg.args["default"]] if arg.args.get("default") is not None else []
        people = [r for r in results if not isinstance(r, exp.Null)]
        return bool(people) and all(
            isinstance(r, exp.Column) and is_person_key(r, scope, catalogue) for r in people)
    return isinstance(arg, exp.Column) and is_person_key(arg, scope, catalogue)


def _check_distinct_count(agg: exp.Expression, scope: Scope, catalogue: Catalogue) -> None:
    """On the outer query COUNT(DISTINCT ...) counts people (``counts_people``). A count of
    distinct other values is not a count of the people behind the cell: a value held by one
    person of a small group counts as much as a value held by thousands, and constants
    padding the count by a known k (ELSE -1, or FILTER (WHERE <small group> OR <k known
    values>)) give the small group's size through the rounding."""
    if not (isinstance(agg, exp.Count) and isinstance(agg.this, exp.Distinct)):
        return
    if counts_people(agg, scope, catalogue):
        return
    raise SqlRejected(
        f"{agg.sql(dialect=DIALECT)[:80]} on the outer query counts something other than "
        "people",
        hint="on the outer query COUNT(DISTINCT person_id) counts people (a CASE may give "
        "person_id or NULL); to count distinct codes, group by the code and count the "
        "released rows, or count codes per person in a subquery grouped by person_id")


def check_outer(tree: exp.Select, original: exp.Select, catalogue: Catalogue
                 ) -> tuple[OutputColumn, ...]:
    """The released table must be aggregate: each column an aggregate or a group key.

    Nothing in the outer query may act on exact aggregate values before disclosure control:
    HAVING on an aggregate shows exact counts by which rows appear, and ORDER BY an aggregate
    ranks suppressed cells.
    """
    scope = next(s for s in traverse_scope(tree) if s.expression is tree)
    if tree.args.get("having"):
        raise SqlRejected("HAVING on the outer query is not allowed: which rows appear would "
                          "reveal exact counts before disclosure control",
                          hint="filter the released table yourself; HAVING is fine inside a "
                          "per-person subquery")
    order = tree.args.get("order")
    for ordered in order.expressions if order else []:
        _refuse_a_subquery_in_order(ordered)
        if aggregates_of(ordered, tree) or _names_aggregate(ordered, tree):
            raise SqlRejected("ORDER BY an aggregate is not allowed on the outer query: the "
                              "order would rank suppressed cells",
                              hint="order by group keys, or sort the released table yourself")
    group = tree.args.get("group")
    group_all = bool(group and group.args.get("all"))
    keys = {g.sql() for g in group_keys(group)}
    outputs = []
    originals = original.expressions
    any_agg = False
    for i, proj in enumerate(tree.expressions):
        inner = proj.unalias()
        for sub in inner.find_all(exp.Select):
            if not _in_filter_condition(sub, inner):
                raise SqlRejected(
                    "a subquery inside an output column is not allowed: its people would not "
                    "be counted behind the cell", hint="join the subquery in FROM instead; a "
                    "subquery may select rows in COUNT(...) FILTER (WHERE ...)")
        aggs = aggregates_of(inner, tree)
        name = _output_name(originals[i] if i < len(originals) else proj, i)
        if inner.sql() in keys or (group_all and not aggs):
            outputs.append(OutputColumn(name, "group_key"))
            continue
        if not aggs and not inner.find(exp.Column):
            outputs.append(OutputColumn(name, "constant"))  # a label such as 'Total'
            continue
        units = [a.parent if isinstance(a.parent, exp.Filter) else a for a in aggs]
        bare = [c for c in inner.find_all(exp.Column)
                if not inside_any(c, units) and c.find_ancestor(exp.Select) is tree]
        if not aggs or bare:
            raise SqlRejected(
                f"output column {name!r} is neither an aggregate nor a group key",
                hint="every output column must be COUNT/SUM/AVG(...) or appear in GROUP BY",
            )
        for agg in aggs:
            _check_distinct_count(agg, scope, catalogue)
        any_agg = True
        shape = shape_of(inner, scope, catalogue)
        core = inner.this if isinstance(inner, exp.Filter) else inner
        additive = shape == "count" or (shape == "measure" and isinstance(core, exp.Sum))
        outputs.append(OutputColumn(name, "aggregate", shape, additive))
    check_measure_cells(tree, scope)
    check_measure_rows_once(tree, scope, catalogue)
    if not any_agg:
        raise SqlRejected("the query (or a branch of its UNION) has no aggregate: the gateway releases aggregate tables only",
                          hint="add COUNT(DISTINCT person_id) or another aggregate")
    projected = {p.unalias().sql() for p in tree.expressions}
    for key in group_keys(group):
        if aggregates_of(key, tree):
            raise SqlRejected("an aggregate may not be a group key")
        if not group_all and key.sql() not in projected and not _names_a_label(key, tree):
            raise SqlRejected(
                f"GROUP BY {key.sql(dialect=DIALECT)[:60]} is not an output column: every group "
                "key must be released, so that each row's cells are judged on its own group",
                hint="add the expression to the SELECT list")
    return tuple(outputs)


def _names_a_label(key: exp.Expression, tree: exp.Select) -> bool:
    """``GROUP BY 1`` (or the alias) of a constant label: the resolver leaves the position
    as it is, where it names a literal (it would be read as a position again), and the engine
    groups by the label, which groups nothing (review round 39: refused as "not an output
    column", with a hint to add what was there)."""
    if not (isinstance(key, exp.Literal) and key.is_int):
        return False
    n = int(key.this)
    if not 1 <= n <= len(tree.expressions):
        return False
    label = tree.expressions[n - 1].unalias()
    return not aggregates_of(label, tree) and label.find(exp.Column) is None
