"""Every row of a query belongs to one person: the static proof that person-level sources are
joined on person_id, that subqueries over people are tied to the outer person, and that
reference tables match at most one row per person row. The engine checks the same on the data
(gateway.sql.rewrite, ``assert_person_links``)."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from datasets import Catalogue
from gateway.errors import SqlRejected
from gateway.sql.rules.people import (
    is_person_key,
    is_person_source,
    padded_sources,
    reads_people,
    refuse_a_set_with_null,
)
from gateway.sql.tree import conjuncts, owning_scope


def check_person_links(scope: Scope, catalogue: Catalogue) -> None:
    """Every row of a query belongs to one person.

    Person-level sources in one select (tables, derived tables that carry person_id, and the
    outer person a correlated subquery refers to) must all be joined on person_id. Otherwise a
    cross join or an attribute join pairs one person's values with other people's rows: the
    cell then seems to rest on many people while its keys or values are one person's. For the
    same reason a subquery over people must be tied to the outer person by person_id, and a
    derived table that aggregates people without person_id cannot be joined to people's rows.
    """
    select = scope.expression
    nodes: dict[tuple[int, str], Scope] = {}
    selected = {alias: source for alias, (_, source) in scope.selected_sources.items()}
    for alias, source in selected.items():
        if is_person_source(source, catalogue):
            nodes[(id(scope), alias)] = scope
        elif reads_people(source, catalogue) and any(
                is_person_source(s, catalogue) for s in selected.values()):
            raise SqlRejected(
                    f"{alias!r} summarises people without person_id and cannot be joined to "
                    "people's rows: its values would not be counted behind the cells",
                    hint="join per-person subqueries (that keep person_id) on person_id")
    for col in scope.external_columns:
        owner = owning_scope(scope, col.table)
        if owner is not None and is_person_source(owner.sources[col.table], catalogue):
            nodes[(id(owner), col.table)] = owner
    parent = {n: n for n in nodes}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def node_of(col: exp.Column):
        if col.table in scope.sources:
            key = (id(scope), col.table)
            return key if key in nodes and is_person_key(col, scope, catalogue) else None
        owner = owning_scope(scope, col.table)
        key = (id(owner), col.table) if owner is not None else None
        return key if key in nodes and is_person_key(col, owner, catalogue) else None

    joins = select.args.get("joins") or []
    if nodes and any((j.args.get("side") or "").upper() in ("RIGHT", "FULL") for j in joins):
        # a RIGHT or FULL join pads the sources before it, whose pairs it keeps whatever its
        # ON says: after a cross join, every pair (review round 28)
        raise SqlRejected("RIGHT and FULL joins are not allowed beside people's rows",
                          hint="write it as a LEFT JOIN, starting FROM the table whose rows "
                          "you keep")
    outer = [j.args.get("on") for j in joins
             if (j.args.get("side") or "").upper() == "LEFT"]
    conditions = [select.args.get("where")] + [j.args.get("on") for j in joins]

    def links(conds) -> list[tuple]:
        # Only an equality that must hold for every row links people: a top-level conjunct.
        # Under OR or NOT it does not (p.person_id = q.person_id OR ... is a cross join).
        out = []
        for cond in conds:
            for eq in conjuncts(cond) if cond is not None else []:
                a, b = (eq.this, eq.expression) if isinstance(eq, exp.EQ) else (None, None)
                if isinstance(a, exp.Column) and isinstance(b, exp.Column):
                    na, nb = node_of(a), node_of(b)
                    if na and nb and na != nb:
                        out.append((na, nb))
        return out

    # WHERE and inner joins' ON filter the rows; an outer join's ON filters nothing on the
    # side it keeps: ``q CROSS JOIN h LEFT JOIN deaths d ON d.person_id = q.person_id AND
    # d.person_id = h.person_id`` pairs every q with every h (review round 27). Its
    # equalities only attach the padded source to the people already joined.
    for na, nb in links([c for c in conditions if not any(c is o for o in outer)]):
        parent[find(na)] = find(nb)
    padded = {(id(scope), a) for a in padded_sources(select, scope, catalogue)}

    def only_padded(n) -> bool:
        root = find(n)
        return all(m in padded for m in nodes if find(m) == root)

    # ... and only the source *that* join pads: a source left unlinked by its own LEFT JOIN
    # (ON TRUE) is a cross join, which a later join's ON cannot undo (review round 29). Its
    # equalities hold only on the rows where that source is there, so they say nothing of
    # how the sources before it are paired: ``LEFT JOIN d ON d.person_id = h.person_id AND
    # d.person_id = q.person_id`` ties d to h *or* to q, never h to q. So each LEFT JOIN, in
    # order (an ON reads only the sources before it), attaches its source's component to one
    # other component at most; merging pair by pair let the first pair make {d, h} and the
    # second carry h onto q (review round 30).
    for j in joins:
        if (j.args.get("side") or "").upper() != "LEFT":
            continue
        mine = (id(scope), j.this.alias_or_name)
        if mine not in nodes:
            continue
        targets = [find(nb if na == mine else na) for na, nb in links([j.args.get("on")])
                   if mine in (na, nb)]
        targets = [t for t in targets if t != find(mine)]
        if targets and only_padded(mine):
            parent[find(mine)] = targets[0]
    own_on = {j.this.alias_or_name: j.args.get("on") for j in joins}
    filtering = [c for c in conditions if not any(c is o for o in outer)]
    _check_lookups(scope, selected, filtering, own_on, catalogue)
    if len({find(n) for n in nodes}) > 1:
        names = sorted(alias for _, alias in nodes)
        raise SqlRejected(
            f"person-level sources {names} are not all joined on person_id: every row must "
            "belong to one person", hint="join them ON a.person_id = b.person_id (use IN or "
            "EXISTS ... WHERE x.person_id = y.person_id to filter)")
    if _is_subquery(scope) and any(reads_people(src, catalogue) for src in selected.values()):
        local = any(k[0] == id(scope) for k in nodes)
        external = any(k[0] != id(scope) for k in nodes)
        if not (local and external) and not _is_person_membership(scope, catalogue):
            raise SqlRejected(
                "a subquery over people must be tied to the outer person by person_id "
                "(person_id IN (SELECT person_id ...), or EXISTS (... WHERE x.person_id = "
                "p.person_id)): otherwise it tests other people's records",
                hint="filter people with person_id IN (SELECT person_id FROM ...)")


def _is_subquery(scope: Scope) -> bool:
    """Whether a select is a subquery in an expression (IN, EXISTS, a scalar), also as a
    branch of a UNION that is one: sqlglot gives a UNION's branches scopes of their own type,
    not the subquery's (review round 15)."""
    while scope.is_set_operation and scope.parent is not None:
        scope = scope.parent
    return scope.is_subquery


def _check_lookups(scope: Scope, selected: dict, filtering: list, own_on: dict,
                   catalogue: Catalogue) -> None:
    """Beside people's rows, a source without people must match at most one row per person
    row: a reference table joined on its key, by a top-level equality with a person-level
    column, in WHERE, an inner join's ON, or the ON of its own join. Joined any other way
    (OR, IN, a cross join, its key tested in another outer join's ON, which filters nothing:
    review round 28) it makes filtered copies of people's rows, and two cells of one result
    could then differ by one chosen person."""
    people = {a for a, src in selected.items() if is_person_source(src, catalogue)}
    if not people:
        return
    for alias, source in selected.items():
        conds = [*filtering, own_on.get(alias)]
        equalities = [eq for cond in conds if cond is not None for eq in conjuncts(cond)
                      if isinstance(eq, exp.EQ)]
        if alias in people:
            continue
        table = catalogue.table(source.name) if isinstance(source, exp.Table) else None
        if table is None or not table.key:
            raise SqlRejected(
                f"{alias!r} holds no people and cannot be joined to people's rows this way",
                hint="join reference tables directly, on their key (lsoa_lookup on lsoa_code)")
        keyed = False
        for eq in equalities:
            sides = [eq.this, eq.expression]
            if all(isinstance(x, exp.Column) for x in sides):
                mine = [x for x in sides if x.table == alias and x.name == table.key]
                other = [x for x in sides if x.table in people]
                keyed = keyed or bool(mine and other)
        if not keyed:
            raise SqlRejected(
                f"reference table {table.name!r} must be joined on its key {table.key!r} to a "
                "column of a person-level table (ON ref.key = person.column), so that it matches "
                "at most one row per person row", hint=f"e.g. JOIN {table.name} l ON "
                f"l.{table.key} = p.{table.key}")


def _is_person_membership(scope: Scope, catalogue: Catalogue) -> bool:
    """``outer.person_id IN (SELECT person_id FROM ...)``: membership of the same person."""
    node = scope.expression.parent
    if isinstance(node, exp.Subquery):
        node = node.parent
    if not isinstance(node, exp.In) or not isinstance(node.this, exp.Column):
        return False
    owner = owning_scope(scope, node.this.table)
    projections = scope.expression.expressions
    member = (owner is not None and is_person_key(node.this, owner, catalogue)
              and len(projections) == 1 and isinstance(projections[0].unalias(), exp.Column)
              and is_person_key(projections[0].unalias(), scope, catalogue))
    if member:
        refuse_a_set_with_null(projections[0].unalias(), scope, catalogue)
    return member

