"""How large a query may grow once its CTEs and aliases are expanded, and a guard for the
checks that walk it recursively: sizes the text limits do not see, which held a request for
longer than the engine's time limit can interrupt."""

from __future__ import annotations

import functools

from sqlglot import exp

from gateway.errors import SqlRejected


def too_complex_on_recursion(stage):
    """A stage that walks the tree recursively refuses, rather than fails, a tree too large
    for the interpreter's stack: 335 CTEs each reading the one before passed the length and
    depth limits and ran out of stack in the size check (review round 33)."""

    @functools.wraps(stage)
    def guarded(*args, **kwargs):
        try:
            return stage(*args, **kwargs)
        except RecursionError:
            raise SqlRejected("the query is too complex to check",
                              hint="fewer CTEs or subqueries, each doing more",
                              code="sql_too_complex") from None

    return guarded


#: how many table scans a query may make once every CTE reference is expanded in place
MAX_EXPANDED_SCANS = 64


def check_expanded_size(tree: exp.Expression) -> None:
    """A CTE read twice by each of a chain of CTEs is 2^n scans to the engine, which plans it
    for longer than any time limit can interrupt (review round 26: twelve CTEs held a
    request past 35 s). Count the scans with every CTE reference expanded, and refuse past
    MAX_EXPANDED_SCANS."""
    bodies: dict[str, list[exp.Expression]] = {}
    for cte in tree.find_all(exp.CTE):
        bodies.setdefault(cte.alias_or_name.lower(), []).append(cte.this)
    sizes: dict[str, int] = {}

    def scans(node: exp.Expression, inside: frozenset[str]) -> int:
        n = 0
        for table in node.find_all(exp.Table):
            name = table.name.lower()
            if name in bodies and name not in inside:
                if name not in sizes:
                    sizes[name] = max(scans(b, inside | {name}) for b in bodies[name])
                n += sizes[name]
            else:
                n += 1
            if n > MAX_EXPANDED_SCANS:
                break
        return n

    main = tree.copy()
    main.set("with_", None)
    if scans(main, frozenset()) > MAX_EXPANDED_SCANS:
        raise SqlRejected(
            f"the query reads more than {MAX_EXPANDED_SCANS} tables once its CTEs are "
            "expanded where they are used", code="sql_too_complex",
            hint="read each CTE fewer times, or join the tables directly")


#: how many syntax nodes a query may come to once every reference to an output column (an
#: alias, a GROUP BY position) is replaced by a copy of its expression, as the resolver does
MAX_EXPANDED_NODES = 20_000


def check_alias_expansion(tree: exp.Expression) -> None:
    """The resolver copies an output column's expression wherever its alias or position is
    used: ``a0 + a0 AS a1, a1 + a1 AS a2, ...`` doubles at each step, and ``GROUP BY 1, 1,
    ...`` copies a long CASE hundreds of times. Every check and the rewrite then work on the
    copies, outside the engine's time limit (review round 27: 331 characters took 44 s and
    2 GB). Count the nodes with every reference expanded, before resolving, and refuse past
    MAX_EXPANDED_NODES."""
    for select in tree.find_all(exp.Select):
        if _expanded_nodes(select) > MAX_EXPANDED_NODES:
            raise SqlRejected(
                "the query is too large once its column aliases and positions are expanded "
                f"(more than {MAX_EXPANDED_NODES:,} syntax nodes)", code="sql_too_complex",
                hint="name each expression once, and group by each key once, not an alias "
                "built from other aliases many times over")


def _expanded_nodes(select: exp.Select) -> int:
    """A select's syntax nodes, each alias or GROUP BY / ORDER BY position counted as the
    expression it stands for (once per alias, kept), stopping past MAX_EXPANDED_NODES."""
    projections = select.expressions
    aliased = {p.alias.lower(): p.this for p in projections
               if isinstance(p, exp.Alias) and p.alias}
    sizes: dict[str, int] = {}

    def size(node: exp.Expression, inside: frozenset[str]) -> int:
        n = 0
        for sub in node.walk():
            n += 1
            if isinstance(sub, exp.Column) and not sub.table:
                name = sub.name.lower()
                if name in aliased and name not in inside:
                    if name not in sizes:
                        sizes[name] = size(aliased[name], inside | {name})
                    n += sizes[name]
            elif (isinstance(sub, exp.Literal) and sub.is_int
                  and sub.find_ancestor(exp.Select) is select
                  and sub.find_ancestor(exp.Group, exp.Order, exp.Select) is not select
                  and 1 <= int(sub.this) <= len(projections)
                  and f"#{sub.this}" not in inside):
                # a position of this select's GROUP BY or ORDER BY: the column it names
                n += size(projections[int(sub.this) - 1], inside | {f"#{sub.this}"})
            if n > MAX_EXPANDED_NODES:
                break
        return n

    total = 0
    for part in [*projections, *(select.args.get(k) for k in
                                 ("where", "group", "having", "order", "qualify"))]:
        total += size(part, frozenset()) if part is not None else 0
        if total > MAX_EXPANDED_NODES:
            break
    return total

