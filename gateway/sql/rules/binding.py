"""Names bind where the engine binds them. The rules, the policy and the audit see the columns
sqlglot's resolver bound; DuckDB binds every name by its own lights, and where the two
disagree the engine reads what no rule saw (review rounds 37 to 40: a date of birth, an
ungranted column, a summed measure pinned, the person key compared with literals, a hidden
aggregate ordering the released rows). These checks run on the qualified tree and refuse
every disagreement found so far, and every name the resolver left unbound. The narrowed
scans of ``gateway.sql.scans`` are the second line: a name the resolver did not see as a
table's column has no table column to bind to in the engine either.
"""

from __future__ import annotations

from collections import Counter

from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from datasets import Catalogue
from gateway.errors import SqlRejected
from gateway.sql.tree import DIALECT, clause_of, outer_selects


def check_names_bound(tree: exp.Expression, catalogue: Catalogue) -> None:
    """Every column name the engine will bind, the resolver bound first: after qualifying,
    a name left without its table is refused, but for an output column named in ORDER BY or
    DISTINCT ON, which the engine binds to that output too.

    The rules, the policy and the audit see the columns the resolver bound; a name it left
    alone the engine binds by its own lights. Round 37: ``ORDER BY b + 0`` binds b to a
    table's column where one exists (only a whole term ``ORDER BY b`` is the output column),
    and ``c.rn AS date_of_birth ... ORDER BY CASE WHEN MONTH(date_of_birth) ...`` read a
    direct identifier. Round 38: a subquery's HAVING names an enclosing query's column that
    the resolver never qualifies (``EXISTS (SELECT 1 HAVING length_of_stay % 11 = 0)``), and
    pinned a summed measure. Refusing every name left unbound covers the places not yet
    found as well."""
    selects = list(tree.find_all(exp.Select))
    outputs = Counter(n.lower() for s in selects for n in s.named_selects)
    columns = {c.name.lower() for t in tree.find_all(exp.Table)
               if (meta := catalogue.table(t.name)) is not None for c in meta.columns}
    for col in tree.find_all(exp.Column):
        if col.table:
            continue
        holder = col.find_ancestor(exp.Select, exp.Union)
        where, term = _order_term(col, holder)
        names = ([n.lower() for n in outer_selects(holder)[0].named_selects]
                 if isinstance(holder, exp.Union) else
                 [n.lower() for n in holder.named_selects] if holder is not None else [])
        name = col.name.lower()
        if term is not None and name in names:
            if term is col:
                continue  # a whole term: the output column, as the engine reads it too
            own = Counter(names)
            if name not in columns and outputs[name] <= own[name]:
                continue  # no table or derived table has the name: the output, to the engine
            raise SqlRejected(
                f"{col.name!r} in {where} {term.sql(dialect=DIALECT)[:60]} names an output "
                "column inside an expression, where the engine would read a table's column "
                "of that name instead",
                hint=f"order by the output column alone ({where} {col.name}), or name the "
                "table's column with its alias (t.column)")
        raise SqlRejected(
            f"the name {col.name!r} (in {clause_of(col).upper()}) is not bound to a column of "
            "the tables that clause can read",
            hint="name it with its table's alias (t.column); a subquery's HAVING may name "
            "only its own tables' columns")


def check_bound_in_order(tree: exp.Expression, catalogue: Catalogue) -> None:
    """Every qualified name binds where the engine binds it. The resolver gives ``h.c`` to
    the nearest scope with an alias ``h``, wherever ``h`` stands in that scope's FROM; the
    engine reads FROM items left to right, so a derived table, a CTE or a join's ON that
    names ``h`` before ``h`` is joined binds it to an enclosing query's ``h`` instead: a
    correlated reference no rule saw (review round 39: ``(SELECT ... WHERE h.length_of_stay
    % 11 = 0) d JOIN (... year_of_birth AS length_of_stay ...) h`` read the outer query's
    stays, and pinned their sum). So the select each name binds to is worked out as the
    engine does, and a name the two readings give to different selects is refused."""
    scopes = {id(s.expression): s for s in traverse_scope(tree)}
    for col in tree.find_all(exp.Column):
        if not col.table:
            continue  # an output column named in ORDER BY or DISTINCT ON (check_names_bound)
        alias = col.table.lower()
        scope = scopes.get(id(col.find_ancestor(exp.Select)))
        while scope is not None and alias not in {k.lower() for k in scope.sources}:
            scope = scope.parent
        if scope is None:
            # the resolver checks names against sources; one it let through unbound (as in a
            # CTE of a subquery, round 40) is refused here, not looked up
            raise SqlRejected(f"{col.sql(dialect=DIALECT)} names no table of the query",
                              hint="name each column with the alias of a table in its FROM")
        resolved = scope.expression
        if _engine_binding(col, alias) is not resolved:
            raise SqlRejected(
                f"{col.sql(dialect=DIALECT)} (in {clause_of(col).upper()}) names {col.table!r} "
                "where that alias is not yet joined: the engine reads the FROM items left to "
                "right and would bind the name to another query's source",
                hint="give each table a different alias, and name a source only after it is "
                "joined (in a join's ON, or inside a subquery in FROM, only the tables before it)")
        cte = col.find_ancestor(exp.CTE)
        if cte is not None and not _inside(resolved, cte):
            # the resolver leaves a CTE's outer names out of every scope's columns: no rule
            # or policy saw them (review round 40: the person key met literals there)
            raise SqlRejected(
                f"{col.sql(dialect=DIALECT)} inside the CTE {cte.alias_or_name!r} names a table "
                "of a query around it: a CTE may read only its own tables",
                hint="write it as a subquery (EXISTS, IN, or a derived table) instead")
        if not _has_column(scope.sources[next(k for k in scope.sources if k.lower() == alias)],
                           col.name, catalogue):
            # the engine binds h.c to the nearest h that has a column c, and goes further out
            # if it has none (review round 40)
            raise SqlRejected(f"{col.table!r} has no column {col.name!r}",
                              hint="check the column names against GET /v1/catalogue")


def _inside(select: exp.Expression | None, node: exp.Expression) -> bool:
    while select is not None:
        if select is node:
            return True
        select = select.parent
    return False


def _has_column(source: object, name: str, catalogue: Catalogue) -> bool:
    """Whether a FROM item has a column of this name: a catalogue table's own, or a derived
    table's or CTE's output (a UNION's first branch's)."""
    if isinstance(source, exp.Table):
        meta = catalogue.table(source.name)
        return meta is not None and meta.column(name) is not None
    expression = getattr(source, "expression", None)
    if isinstance(expression, exp.Union):
        expression = outer_selects(expression)[0]
    return isinstance(expression, exp.Select) and name.lower() in {
        n.lower() for n in expression.named_selects}


def check_aggregate_owners(tree: exp.Expression) -> None:
    """Every aggregate belongs to the select it is written in, to the engine too. The engine
    gives an aggregate whose columns are all an enclosing query's to that query, as
    PostgreSQL does: ``(SELECT SUM(p.x))`` in a subquery is a SUM over the enclosing query's
    group, while every rule here took it for the subquery's (review round 40: in the outer
    ORDER BY it sorted the released rows by an exact value of each cell). So an aggregate
    that reads columns, none of them of its own select's sources, is refused. Its FILTER
    counts with its arguments, as in the engine (review round 41: ``COUNT(*) FILTER (WHERE
    a.x > 1)`` in a subquery is the enclosing query's COUNT); sqlglot keeps the FILTER on a
    parent node, outside the aggregate."""
    for agg in tree.find_all(exp.AggFunc):
        select = agg.find_ancestor(exp.Select)
        if select is None:
            continue
        whole = agg.parent if isinstance(agg.parent, exp.Filter) else agg
        own = [c for c in whole.find_all(exp.Column) if c.find_ancestor(exp.Select) is select]
        if own and all(c.table and _engine_binding(c, c.table.lower()) is not select
                       for c in own):
            raise SqlRejected(
                f"{whole.sql(dialect=DIALECT)[:60]} aggregates only an enclosing query's "
                "columns inside a subquery: the engine would compute it over the enclosing "
                "query's rows",
                hint="aggregate in the query whose rows you mean, or join the subquery's own "
                "tables and aggregate their columns")


def _engine_binding(col: exp.Column, alias: str) -> exp.Select | None:
    """The select whose FROM item the engine binds ``alias`` to, from where ``col`` stands:
    in its select's SELECT, WHERE, GROUP BY, HAVING or ORDER BY every item of its FROM; in a
    join's ON the items up to that join; inside a derived table the items before it; inside a
    CTE none of the select's own items. Then the same, outwards.

    Not emulated: the engine binds ``t.c`` to field ``c`` of a struct *column* ``t`` of a
    nearer select before an enclosing table ``t`` (review round 41). Nothing the allow-list
    accepts makes a struct and no catalogue column is one; a change that lets one in must
    refuse here a ``t`` that is a column name of a select between ``col`` and its source."""
    path: list[exp.Expression] = [col]
    node = col.parent
    while node is not None:
        if isinstance(node, exp.Select):
            child = path[-1]
            items = _from_items(node)
            if child.arg_key in ("with", "with_"):
                visible: list[exp.Expression] = []
            elif isinstance(child, exp.From):
                visible = []
            elif isinstance(child, exp.Join):
                k = next(i for i, item in enumerate(items) if item is child.this)
                through = path[-2] if len(path) > 1 else None
                visible = items[:k + 1] if through is child.args.get("on") else items[:k]
            else:
                visible = items
            if any(item.alias_or_name.lower() == alias for item in visible):
                return node
        path.append(node)
        node = node.parent
    return None


def _from_items(select: exp.Select) -> list[exp.Expression]:
    from_ = select.args.get("from_") or select.args.get("from")
    items = [from_.this] if from_ is not None else []
    return items + [j.this for j in select.args.get("joins") or []]


def _order_term(col: exp.Column, holder: exp.Expression | None
                ) -> tuple[str, exp.Expression] | tuple[None, None]:
    """The ORDER BY or DISTINCT ON term of ``holder`` that ``col`` is in, and which clause."""
    node: exp.Expression = col
    while node.parent is not None and node.parent is not holder:
        if isinstance(node.parent, exp.Ordered) and isinstance(node.parent.parent, exp.Order) \
                and node.parent.parent.parent is holder:
            return "ORDER BY", node
        if isinstance(node.parent, exp.Order) and node.parent.parent is holder:
            return "ORDER BY", node
        if isinstance(node.parent, exp.Tuple) and node.parent.arg_key == "on" \
                and isinstance(node.parent.parent, exp.Distinct):
            return "DISTINCT ON", node
        if node.arg_key == "on" and isinstance(node.parent, exp.Distinct):
            return "DISTINCT ON", node
        node = node.parent
    return None, None
