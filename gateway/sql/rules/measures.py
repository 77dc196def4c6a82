"""The rules on summed and averaged measures: where their values come from (lineage), the
uses a summed measure may have elsewhere in the query, rows counted once, and cells of one row
over the same rows."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from datasets import Catalogue, ColumnClass
from gateway.errors import SqlRejected
from gateway.sql.rules.people import bare_origin, one_per_person
from gateway.sql.tree import aggregates_of, group_keys, is_in, outer_selects, owning_scope


def shape_of(node: exp.Expression, scope: Scope, catalogue: Catalogue) -> str:
    """Classify an aggregate output column for the disclosure regimes."""
    agg = node.this if isinstance(node, exp.Filter) else node
    if isinstance(agg, exp.Count):
        return "count"
    if isinstance(agg, exp.Sum | exp.Avg):
        if is_indicator(agg.this):
            # SUM(CASE WHEN ... THEN 1 ELSE 0 END) counts cases; AVG of it is a proportion
            return "count" if isinstance(agg, exp.Sum) else "composite"
        arg = agg.this
        origin = bare_origin(arg, scope, catalogue) if isinstance(arg, exp.Column) else None
        if origin and origin[1].cls is ColumnClass.MEASURE and not isinstance(node, exp.Filter):
            # A magnitude: released after the dominance rules have looked at each person's
            # share. Only a bare measure column: a CASE, arithmetic, a constant offset or a
            # FILTER would let two cells of one row differ by one person, or let everyone
            # contribute the same filler so that one person's value passes dominance.
            return "measure"
    return "composite"


def measure_origin(col: exp.Column, scope: Scope) -> tuple[int, str] | None:
    """The base table reference (the very FROM/JOIN node) and column a column copies, through
    derived tables; None if computed along the way."""
    source = scope.sources.get(col.table)
    if isinstance(source, exp.Table):
        return id(source), col.name
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        for proj in source.expression.expressions:
            if proj.alias_or_name == col.name:
                inner = proj.unalias()
                return measure_origin(inner, source) if isinstance(inner, exp.Column) else None
    return None


def lineage(node: exp.Expression, scope: Scope, depth: int = 0) -> set[tuple[str, str]]:
    """Every base (table, column) an expression is computed from, through derived tables,
    windows and aggregates."""
    out: set[tuple[str, str]] = set()
    if depth > MAX_LINEAGE_DEPTH:
        # never "computed from nothing": past this depth the query is refused
        raise SqlRejected(f"columns are passed through more than {MAX_LINEAGE_DEPTH} derived "
                          "tables or CTEs", code="sql_too_deep",
                          hint="compute the column nearer to where it is used")
    for col in node.find_all(exp.Column):
        owner = scope if col.table in scope.sources else owning_scope(scope, col.table)
        source = owner.sources.get(col.table) if owner is not None else None
        if isinstance(source, exp.Table):
            out.add((source.name.lower(), col.name))
        elif isinstance(source, Scope):
            out |= _scope_column_lineage(source, col.name, depth + 1)
    return out


#: how many derived tables or CTEs a column may be followed through
MAX_LINEAGE_DEPTH = 48


def _scope_column_lineage(source: Scope, name: str, depth: int) -> set[tuple[str, str]]:
    """What a derived table's column is computed from, through every branch of a UNION. Kept
    on the scope per column: a chain of CTEs each reading the one before twice would
    otherwise be walked 2^n times (review round 26: 21 CTEs, minutes)."""
    memo = source.__dict__.setdefault("_sde_lineage", {})
    if name not in memo:
        memo[name] = frozenset(_scope_column_lineage_uncached(source, name, depth))
    return set(memo[name])


def _scope_column_lineage_uncached(source: Scope, name: str,
                                   depth: int) -> set[tuple[str, str]]:
    if isinstance(source.expression, exp.Select):
        for proj in source.expression.expressions:
            if proj.alias_or_name == name:
                return lineage(proj.unalias(), source, depth)
        return set()
    out: set[tuple[str, str]] = set()
    for branch in outer_selects(source.expression) if isinstance(
            source.expression, exp.Union) else []:
        for i, proj in enumerate(branch.expressions):
            first = outer_selects(source.expression)[0].expressions
            if i < len(first) and first[i].alias_or_name == name:
                scope = next((s for s in source.set_operation_scopes
                              if s.expression is branch), source)
                out |= lineage(proj.unalias(), scope, depth)
    return out


def check_measure_filters(tree: exp.Expression, outers: list[exp.Select],
                           catalogue: Catalogue) -> None:
    """In a query that sums or averages a measure, the measure may appear only as the bare
    argument of that SUM/AVG, as the operand of IS [NOT] NULL, or passed through unchanged by
    a derived table. Any other use (a comparison, a simple CASE, NULLIF, a cast, arithmetic)
    could pin its value, and the sum would become an exact count, or reveal one person's value
    by arithmetic. An allow-list of uses, so that new constructs are refused by default."""
    scopes = {id(s.expression): s for s in traverse_scope(tree)}
    summed: set[tuple[str, str]] = set()
    allowed: set[int] = set()
    for select in outers:
        for proj in select.expressions:
            for agg in aggregates_of(proj, select):
                if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column):
                    summed |= lineage(agg.this, scopes[id(select)])
                    allowed.add(id(agg.this))
    if not summed:
        return
    # A measure computed from other columns (a length of stay from two dates) is pinned by
    # them as well: a query that sums it may not use all of its sources.
    used: set[tuple[str, str]] = set()
    for col in tree.find_all(exp.Column):
        scope = scopes.get(id(col.find_ancestor(exp.Select)))
        if id(col) not in allowed and scope is not None:
            used |= lineage(col, scope)
    for table, column in summed:
        meta = catalogue.table(table)
        source = meta.column(column) if meta else None
        if source is not None and source.derived_from and {
                (table, c) for c in source.derived_from} <= used:
            raise SqlRejected(
                f"the measure {column!r} is computed from {', '.join(source.derived_from)}; "
                "a query that sums it may not use all of them, which would fix its value",
                hint="filter on one of them only, or count people by bands of the measure in "
                "a query without the sum")
    for col in tree.find_all(exp.Column):
        if id(col) in allowed:
            continue
        select = col.find_ancestor(exp.Select)
        scope = scopes.get(id(select))
        if scope is None or not lineage(col, scope) & summed:
            continue
        parent = col.parent
        if isinstance(parent, exp.Is) and isinstance(parent.expression, exp.Null):
            continue
        if (parent is select or (isinstance(parent, exp.Alias) and parent.parent is select)) \
                and not is_in(select, outers):
            continue  # a derived table passing the column through unchanged
        raise SqlRejected(
            "a query that sums or averages a measure may use that measure only as the sum's "
            "argument (or in IS [NOT] NULL): anything else could fix its value and turn the "
            "sum into an exact count, or reveal one person's value",
            hint="filter and group on other columns; count people by bands of the measure in "
            "a query without the sum")


def check_measure_rows_once(tree: exp.Select, scope: Scope, catalogue: Catalogue) -> None:
    """A summed measure's rows must each count once: every other source of the query may hold
    at most one row per person (a one-row-per-person table, a lookup on its key, or a derived
    table grouped by the person key). A derived table with two rows per person, tagged apart,
    puts one admission in two cells that share everyone but a chosen person: the difference
    of the two sums is that person's value (review round 12)."""
    measures: list[exp.Column] = []
    for proj in tree.expressions:
        for agg in aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column):
                origin = bare_origin(agg.this, scope, catalogue)
                if origin and origin[1].cls is ColumnClass.MEASURE:
                    measures.append(agg.this)
    if not measures:
        return
    tables = {m.table for m in measures}
    for alias, (_, source) in scope.selected_sources.items():
        if alias not in tables and not one_per_person(source, catalogue):
            _refuse_repeated_rows(alias)
    for col in measures:
        _measure_rows_once_below(col, scope, catalogue)


def _measure_rows_once_below(col: exp.Column, scope: Scope, catalogue: Catalogue) -> None:
    """The same rule inside the derived tables and CTEs a measure is read through: a CTE that
    joins the admissions to each person's first two GP events, tagged 1 and 2, repeats every
    admission under two tags, and the outer sum never sees the join (review round 25)."""
    source = scope.sources.get(col.table)
    if not (isinstance(source, Scope) and isinstance(source.expression, exp.Select)):
        return
    select = source.expression
    proj = next((p for p in select.expressions if p.alias_or_name == col.name), None)
    inner = proj.unalias() if proj is not None else None
    if not isinstance(inner, exp.Column):
        return  # not a bare copy of the measure: bare_origin did not take it for one
    for alias, (_, below) in source.selected_sources.items():
        if alias != inner.table and not one_per_person(below, catalogue):
            _refuse_repeated_rows(alias)
    _measure_rows_once_below(inner, source, catalogue)


def _refuse_repeated_rows(alias: str) -> None:
    raise SqlRejected(
        f"{alias!r} can hold several rows per person, so a summed measure joined to it "
        "would count the same rows more than once (and in more than one cell)",
        hint="join tables with one row per person, lookups on their key, or a subquery "
        "grouped by person_id; filter on other rows with EXISTS or IN")


def check_measure_cells(tree: exp.Select, scope: Scope) -> None:
    """Sums and averages in one row must add up the same rows, and not both of one column.

    Two magnitudes over differently filtered rows (two LEFT JOINed subqueries, say) differ by
    the people one of them leaves out; SUM and AVG of the same column divide to an exact count.
    Found in review; conditions belong in WHERE or GROUP BY, where they apply to every cell.
    """
    # Compared on where the values really come from (the base table reference and column,
    # through CTEs and aliases): two names for one column, or two references to one table
    # inside a CTE, must not pass as one source or as two columns.
    sources: set[tuple[str, int]] = set()
    seen: dict[tuple[int, str], set[type]] = {}
    for proj in tree.expressions:
        for agg in aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column) \
                    and not is_indicator(agg.this):
                origin = measure_origin(agg.this, scope)
                if origin is None:
                    raise SqlRejected("a sum or average must read a measure column as it is")
                # the same source here (a filtered derived table is a different row set) and the
                # same base reference beneath it (two references inside a CTE can differ)
                sources.add((agg.this.table, origin[0]))
                seen.setdefault(origin, set()).add(type(agg))
    if len({a for a, _ in sources}) > 1 or len({o for _, o in sources}) > 1:
        raise SqlRejected(
            "sums and averages in one query must all read the same table reference: cells "
            "over different rows would differ by the people one leaves out",
            hint="one measure source per query; filter it in WHERE")
    if any(len(kinds) > 1 for kinds in seen.values()):
        raise SqlRejected("SUM and AVG of the same column in one query divide to an exact count",
                          hint="release one of them; the count is released (rounded) by COUNT")
    # A key computed from the summed measure (a per-person total by window or subquery, a
    # one-value band) divides the sum into an exact count of people.
    summed = set()
    for proj in tree.expressions:
        for agg in aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column):
                summed |= lineage(agg.this, scope)
    if summed:
        for key in group_keys(tree.args.get("group")):
            if lineage(key, scope) & summed:
                raise SqlRejected(
                    "a sum or average may not be grouped by a key computed from the same "
                    "measure: the sum divided by the key gives an exact count",
                    hint="group by other columns, or count people per band with COUNT")


def is_indicator(node: exp.Expression) -> bool:
    """1, or a CASE/IF whose every outcome is 0, 1 or NULL: an expression that counts."""
    while isinstance(node, exp.Paren):
        node = node.this

    def zero_one(e) -> bool:
        while isinstance(e, exp.Paren):
            e = e.this
        return e is None or isinstance(e, exp.Null) or (
            isinstance(e, exp.Literal) and _number(e) in (0.0, 1.0))

    if isinstance(node, exp.Literal):
        return _number(node) == 1.0
    if isinstance(node, exp.Case):
        return (all(zero_one(i.args.get("true")) for i in node.args.get("ifs") or [])
                and zero_one(node.args.get("default")))
    if isinstance(node, exp.If):
        return zero_one(node.args.get("true")) and zero_one(node.args.get("false"))
    return False


def _number(literal: exp.Literal) -> float | None:
    """A numeric literal's value; None for a string, or for text sqlglot reads as a number
    that Python does not (``1e``: review round 33)."""
    if literal.is_string:
        return None
    try:
        return float(literal.this)
    except ValueError:
        return None

