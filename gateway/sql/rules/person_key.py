"""What the person key may do (join, count, partition, test for NULL, be passed on for joining)
and what may compute within one person only: windows, MIN and MAX, DISTINCT ON."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from datasets import Catalogue
from gateway.errors import SqlRejected
from gateway.sql.rules.people import (
    groups_by_person,
    is_person_key,
    may_be_null,
    refuse_a_set_with_null,
)
from gateway.sql.rules.syntax import PER_PERSON_AGGREGATES
from gateway.sql.tree import DIALECT, clause_of, is_in, owning_scope


def _column_is_person_key(col: exp.Column, scopes: dict[int, Scope],
                          catalogue: Catalogue) -> bool:
    """Resolve a column from the select that encloses it (it may sit in a correlated
    subquery below the scope being checked), then up through the scopes that own it."""
    scope = scopes.get(id(col.find_ancestor(exp.Select)))
    if scope is None:
        return False
    if col.table in scope.sources:
        return is_person_key(col, scope, catalogue)
    owner = owning_scope(scope, col.table)
    return owner is not None and is_person_key(col, owner, catalogue)


def _projects_person_key(query: exp.Expression, scopes: dict[int, Scope],
                         catalogue: Catalogue) -> bool:
    select = query.this if isinstance(query, exp.Subquery) else query
    scope = scopes.get(id(select))
    if scope is None or not isinstance(select, exp.Select) or len(select.expressions) != 1:
        return False
    proj = select.expressions[0].unalias()
    if isinstance(proj, exp.Column) and is_person_key(proj, scope, catalogue):
        refuse_a_set_with_null(proj, scope, catalogue)
        return True
    return False


def check_person_key_use(col: exp.Column, scope: Scope, outers: list[exp.Select],
                          scopes: dict[int, Scope], catalogue: Catalogue) -> None:
    """The person key joins and counts; it never leaves, groups, or meets a literal."""
    parent = col.parent
    while isinstance(parent, exp.Paren):
        parent = parent.parent
    select = scope.expression
    if isinstance(parent, exp.EQ):
        other = parent.expression if parent.this is col else parent.this
        if isinstance(other, exp.Column) and _column_is_person_key(other, scopes, catalogue):
            return  # a join or correlation on people
    if isinstance(parent, exp.Count):
        return
    if (isinstance(parent, exp.Distinct) and isinstance(parent.parent, exp.Count)
            and len(parent.expressions) == 1):
        return
    if (isinstance(parent, exp.If) and parent.args.get("true") is col
            and isinstance(parent.parent, exp.Case)
            and isinstance(parent.parent.parent, exp.Distinct)
            and isinstance(parent.parent.parent.parent, exp.Count)
            and _people_or_null(parent.parent, scopes, catalogue)):
        return  # COUNT(DISTINCT CASE WHEN ... THEN person_id END)
    if (isinstance(parent, exp.In) and parent.this is col and parent.args.get("query")
            and _projects_person_key(parent.args["query"], scopes, catalogue)):
        return
    if isinstance(parent, exp.Is) and isinstance(parent.expression, exp.Null):
        return  # IS [NOT] NULL: whether a join matched, never a value
    if isinstance(parent, exp.Window) and is_in(col, parent.args.get("partition_by") or []):
        return  # a window within each person
    if not is_in(select, outers) and _is_source_select(select, scopes, catalogue):
        if parent is select or (isinstance(parent, exp.Alias) and parent.parent is select):
            return  # a per-person or joinable derived table exposes the key for joining
        if isinstance(parent, exp.Group):
            return
        if isinstance(parent, exp.Tuple) and parent.arg_key == "on" and \
                isinstance(parent.parent, exp.Distinct) and parent.parent.parent is select:
            return  # DISTINCT ON (person_id, ...): one row per person (check_distinct_on)
    raise SqlRejected(
        f"the person key {col.sql(dialect=DIALECT)} may only join tables or be counted "
        f"(found in {clause_of(col)})",
        hint="use it in JOIN ... ON, COUNT(DISTINCT person_id), or a per-person subquery",
    )


def _people_or_null(case: exp.Case, scopes: dict[int, Scope], catalogue: Catalogue) -> bool:
    """Whether every result of a CASE is the person key or NULL: then COUNT(DISTINCT) of it
    counts people. Any other value (ELSE -1) is counted beside them, and k such constants
    would pad a small group's count past the threshold by a known k."""
    results = [i.args.get("true") for i in case.args.get("ifs") or []]
    default = case.args.get("default")
    if default is not None:
        results.append(default)
    for r in results:
        while isinstance(r, exp.Paren):
            r = r.this
        if isinstance(r, exp.Null):
            continue
        if not (isinstance(r, exp.Column) and _column_is_person_key(r, scopes, catalogue)):
            return False
    return True


def check_distinct_on(scope: Scope, catalogue: Catalogue) -> None:
    """DISTINCT ON keeps one row per group, chosen by an order. Within a person (the person key
    among its keys) that is a person's first event; across people it picks the first person
    by someone's value, as LIMIT in a subquery would (round 11)."""
    distinct = scope.expression.args.get("distinct")
    on = distinct.args.get("on") if distinct is not None else None
    if on is None:
        return
    keys = on.expressions if isinstance(on, exp.Tuple) else [on]
    # a person key an outer join can pad is NULL on the unmatched rows, one group for
    # everyone: the order then chose across people (review round 25, as windows in 15 and 16)
    if not any(isinstance(k, exp.Column) and is_person_key(k, scope, catalogue)
               and not may_be_null(k, scope, catalogue) for k in keys):
        raise SqlRejected(
            "DISTINCT ON is allowed within a person only: its keys must include person_id, "
            "from a table no outer join pads",
            hint="DISTINCT ON (person_id) ... ORDER BY person_id, event_date picks each "
            "person's first event; across people, choose rows by a condition, not an order")


def _is_source_select(select: exp.Select, scopes: dict[int, Scope],
                      catalogue: Catalogue) -> bool:
    """A select whose rows feed another query, rather than a value in an expression: a CTE,
    a derived table, the set of EXISTS, or the set a person key is tested against by IN.
    Under IN as anything else, the person keys it projects are values: ``(SELECT
    q.person_id ...) IN (1, 2, 3)`` or ``12345 IN (SELECT q.person_id ...)`` compared
    pseudonyms with chosen numbers, and named people (review round 37)."""
    parent = select.parent
    if isinstance(parent, exp.CTE):
        return True
    node = parent if isinstance(parent, exp.Subquery) else select
    holder = node.parent
    if isinstance(holder, exp.From | exp.Join):
        return node is parent
    if isinstance(holder, exp.Exists):
        return True
    if isinstance(holder, exp.In):
        tested = holder.this
        return (holder.args.get("query") is node and isinstance(tested, exp.Column)
                and _column_is_person_key(tested, scopes, catalogue))
    return False


def check_windows(scope: Scope, outers: list[exp.Select], catalogue: Catalogue) -> None:
    """Windows compute within each person (PARTITION BY the person key), never across people,
    and never in the outer query, whose rows are released."""
    select = scope.expression
    for window in select.find_all(exp.Window):
        if window.find_ancestor(exp.Select) is not select:
            continue
        if is_in(select, outers):
            raise SqlRejected("a window function (OVER ...) is not allowed in the outer query",
                              hint="use windows inside a subquery, partitioned by person_id")
        parts = window.args.get("partition_by") or []
        # The key of a source an outer join pads (here, or in a derived table or CTE) is
        # NULL on the padded rows, and NULL is one partition: everyone without a match would
        # share it (review rounds 15 and 16).
        if not any(isinstance(p, exp.Column) and is_person_key(p, scope, catalogue)
                   and not may_be_null(p, scope, catalogue) for p in parts):
            raise SqlRejected("a window must be partitioned by the person key "
                              "(OVER (PARTITION BY person_id ...)): across people it would "
                              "copy one person's values onto another's rows (the key "
                              "must come from a source no outer join pads with NULLs)",
                              hint="PARTITION BY person_id, e.g. to find each person's first "
                              "admission or their previous one")


def check_per_person_aggregates(scope: Scope, outers: list[exp.Select],
                                 catalogue: Catalogue) -> None:
    select = scope.expression
    for agg in select.find_all(*PER_PERSON_AGGREGATES):
        if agg.find_ancestor(exp.Select) is not select or isinstance(agg.parent, exp.Window):
            continue  # windowed aggregates are checked as windows
        if is_in(select, outers) or not groups_by_person(select, scope, catalogue):
            raise SqlRejected(
                f"{agg.sql_name().lower()}() is allowed only inside a per-person subquery "
                "(one that groups by person_id): elsewhere it can copy one person's value out",
                hint="compute it per person in a CTE, then count or average in the outer query",
            )

