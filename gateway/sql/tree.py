"""Small facts about a sqlglot tree that the rules, the rewrite and the pipeline share: the
outer selects, the group keys, the conjuncts of a condition, the aggregates of a select."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from gateway.errors import SqlRejected

DIALECT = "duckdb"


MARGINS = (exp.Rollup, exp.Cube, exp.GroupingSets)


def grouping_sets(select: exp.Select) -> int:
    """How many grouping sets a select's GROUP BY makes: a person is in one row of each."""
    group = select.args.get("group")
    n = 1
    for g in group.expressions if group is not None else []:
        if isinstance(g, exp.Rollup):
            n *= len(g.expressions) + 1
        elif isinstance(g, exp.Cube):
            n *= 2 ** min(len(g.expressions), 16)
        elif isinstance(g, exp.GroupingSets):
            n *= max(1, len(g.expressions))
    return n


def expand_margin_positions(tree: exp.Expression) -> None:
    """GROUP BY ROLLUP (1, 2) means the first two output columns, as GROUP BY 1, 2 does;
    the resolver expands plain positions only, so positions inside margins are expanded here."""
    for select in list(tree.find_all(exp.Select)):
        group = select.args.get("group")
        for lit in list(group.find_all(exp.Literal)) if group else []:
            # a position is a whole item of the margin, or of a tuple in it: ``ROLLUP (1, 2)``,
            # ``GROUPING SETS ((1, 2), (1))``; inside an expression (``CUBE (x % 10)``) an
            # integer is a number, as the engine reads it
            holder = lit.parent.parent if isinstance(lit.parent, exp.Tuple | exp.Paren) else lit.parent
            if (lit.is_int and isinstance(holder, MARGINS) and holder.find_ancestor(exp.Select) is select
                    and 1 <= int(lit.this) <= len(select.expressions)):
                lit.replace(select.expressions[int(lit.this) - 1].unalias().copy())


def is_constant(node: exp.Expression) -> bool:
    """A key that reads no column: the same on every row, so it groups nothing. In a GROUP BY
    the engine reads an integer as a position, and ``-1`` and ``(4)`` as well (review rounds
    25 and 31), so a rewrite that regroups the keys leaves these out."""
    return next(node.find_all(exp.Column), None) is None


def group_keys(group: exp.Group | None) -> list[exp.Expression]:
    """Every grouping expression, through ROLLUP, CUBE and GROUPING SETS."""
    keys: list[exp.Expression] = []
    for g in group.expressions if group else []:
        if isinstance(g, exp.Rollup | exp.Cube):
            keys += g.expressions
        elif isinstance(g, exp.GroupingSets):
            for item in g.expressions:
                inner = item.this if isinstance(item, exp.Paren) else item
                keys += inner.expressions if isinstance(inner, exp.Tuple) else [inner]
        else:
            keys.append(g)
    unique: dict[str, exp.Expression] = {}
    for k in keys:
        unique.setdefault(k.sql(), k)
    return list(unique.values())


def is_in(node: exp.Expression, nodes) -> bool:
    """Membership by identity: sqlglot's == compares structure, and two selects can look alike."""
    return any(node is n for n in nodes)


def outer_selects(tree: exp.Expression) -> list[exp.Select]:
    """The selects whose rows are the released table: the root, or each branch of a root UNION."""
    if isinstance(tree, exp.Union):
        return outer_selects(tree.this) + outer_selects(tree.expression)
    if isinstance(tree, exp.Subquery):
        return outer_selects(tree.this)
    if isinstance(tree, exp.Select):
        return [tree]
    raise SqlRejected(f"{type(tree).__name__} cannot be a branch of the outer query")


def later_branch(select: exp.Select) -> bool:
    """Whether a select is a UNION branch other than the first, whose names do not count."""
    node: exp.Expression = select
    while isinstance(node.parent, exp.Union):
        if node.arg_key == "expression":
            return True
        node = node.parent
    return False


_CLAUSES = {"expressions": "select", "joins": "join", "where": "where", "group": "group",
            "having": "having", "order": "order", "from": "from", "from_": "from",
            "limit": "limit"}


def clause_of(col: exp.Column) -> str:
    node = col
    while node.parent is not None and not isinstance(node.parent, exp.Select):
        node = node.parent
    return _CLAUSES.get(node.arg_key, node.arg_key)


def owning_scope(scope: Scope, alias: str) -> Scope | None:
    s = scope.parent
    while s is not None and alias not in s.sources:
        s = s.parent
    return s


def conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    while isinstance(cond, exp.Paren | exp.Where):
        cond = cond.this
    if isinstance(cond, exp.And):
        return conjuncts(cond.this) + conjuncts(cond.expression)
    return [cond]


def inside_any(node: exp.Expression, ancestors: list[exp.Expression]) -> bool:
    targets = {id(a) for a in ancestors}
    parent = node.parent
    while parent is not None:
        if id(parent) in targets:
            return True
        parent = parent.parent
    return False


def aggregates_of(node: exp.Expression, select: exp.Select) -> list[exp.AggFunc]:
    return [a for a in node.find_all(exp.AggFunc) if a.find_ancestor(exp.Select) is select]

