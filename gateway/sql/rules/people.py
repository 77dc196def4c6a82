"""Facts about people in a query: which sources hold people's rows, which columns are (copies
of) the person key, which an outer join can pad with NULLs, which sources hold one row per
person. The rules in links, person_key, measures and released are stated in these terms."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from datasets import Catalogue, ColumnClass
from gateway.errors import SqlRejected
from gateway.sql.tree import DIALECT, MARGINS, conjuncts, group_keys, owning_scope


def is_person_source(source, catalogue: Catalogue) -> bool:
    """A base table about people, or a derived table that passes each row's person_id on."""
    if isinstance(source, exp.Table):
        t = catalogue.table(source.name)
        return bool(t and t.kind.value == "person_level")
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        return any(isinstance(p.unalias(), exp.Column)
                   and is_person_key(p.unalias(), source, catalogue)
                   for p in source.expression.expressions)
    return False


def reads_people(source, catalogue: Catalogue) -> bool:
    if isinstance(source, exp.Table):
        t = catalogue.table(source.name)
        return bool(t and t.kind.value == "person_level")
    if isinstance(source, Scope):
        # kept on the scope: a CTE read twice by each of a chain of CTEs would otherwise be
        # walked 2^n times (review round 26: 13 CTEs, 100 s)
        known = getattr(source, "_sde_reads_people", None)
        if known is None:
            direct = any((t := catalogue.table(tab.name)) is not None
                         and t.kind.value == "person_level"
                         for tab in source.expression.find_all(exp.Table))
            known = direct or any(reads_people(s, catalogue) for s in source.sources.values()
                                  if isinstance(s, Scope))
            source._sde_reads_people = known
        return known
    return False


def may_be_null(col: exp.Column, scope: Scope, catalogue: Catalogue) -> bool:
    """Whether a column can be NULL on some rows: its source is padded by an outer join here,
    or it passes on such a column from a derived table or CTE (followed down), unless the
    select's WHERE says ``col IS NOT NULL``. A person key that can be NULL is no person: NULL
    is one window partition for everyone unmatched, and one NULL in a NOT IN set turns the
    test NULL for every row (review round 16)."""
    if col.table not in scope.sources:
        owner = owning_scope(scope, col.table)
        return owner is None or may_be_null(col, owner, catalogue)
    select = scope.expression
    if not isinstance(select, exp.Select):
        return True
    for cond in conjuncts(select.args["where"]) if select.args.get("where") else []:
        if (isinstance(cond, exp.Not) and isinstance(cond.this, exp.Is)
                and isinstance(cond.this.expression, exp.Null)
                and isinstance(cond.this.this, exp.Column)
                and (cond.this.this.table, cond.this.this.name) == (col.table, col.name)):
            return False
    if col.table in padded_sources(select, scope, catalogue):
        return True
    source = scope.sources[col.table]
    if isinstance(source, exp.Table):
        return False
    if not (isinstance(source, Scope) and isinstance(source.expression, exp.Select)):
        return True  # a UNION, or anything else: not followed, so not trusted
    proj = next((p for p in source.expression.expressions if p.alias_or_name == col.name), None)
    inner = proj.unalias() if proj is not None else None
    return not isinstance(inner, exp.Column) or may_be_null(inner, source, catalogue)


def refuse_a_set_with_null(proj: exp.Column, scope: Scope, catalogue: Catalogue) -> None:
    if may_be_null(proj, scope, catalogue):
        raise SqlRejected(
            f"the person keys of IN (SELECT {proj.sql(dialect=DIALECT)} ...) can be NULL (an "
            "outer join pads them): one NULL turns NOT IN into NULL for everyone",
            hint=f"add WHERE {proj.sql(dialect=DIALECT)} IS NOT NULL to the subquery, or use "
            "[NOT] EXISTS")


def bare_origin(col: exp.Column, scope: Scope, catalogue: Catalogue):
    """The catalogue column that ``col`` is an unchanged copy of, through derived tables.

    Returns (table, column) metadata, or None when the column is computed (an expression, an
    aggregate) somewhere along the way.
    """
    source = scope.sources.get(col.table)
    if isinstance(source, exp.Table):
        table = catalogue.table(source.name)
        meta = table.column(col.name) if table else None
        return (table, meta) if meta else None
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        for proj in source.expression.expressions:
            if proj.alias_or_name == col.name:
                inner = proj.unalias()
                if isinstance(inner, exp.Column):
                    return bare_origin(inner, source, catalogue)
                return None
    return None


def padded_sources(select: exp.Select, scope: Scope, catalogue: Catalogue, *,
                   by_person: bool = False) -> set[str]:
    """The aliases an outer join may fill with NULLs on some rows. With ``by_person``, a join
    on a bare person-key equality does not count: it matches all of a person's rows or none,
    so a column of that source still takes one value (or NULL) per person."""
    from_ = select.args.get("from_") or select.args.get("from")
    seen = [from_.this.alias_or_name] if from_ is not None else []
    padded: set[str] = set()
    for join in select.args.get("joins") or []:
        side = (join.args.get("side") or "").upper()
        name = join.this.alias_or_name
        on = join.args.get("on")
        # ... provided the key it matches is there on every row of the person: a derived
        # table's person key that is NULL on some rows matches some of them (review round 24)
        keyed = (by_person and isinstance(on, exp.EQ)
                 and all(isinstance(c, exp.Column) and is_person_key(c, scope, catalogue)
                         for c in (on.this, on.expression))
                 and not any(c.table != name and may_be_null(c, scope, catalogue)
                             for c in (on.this, on.expression)))
        if not keyed:
            if side in ("LEFT", "FULL"):
                padded.add(name)
            if side in ("RIGHT", "FULL"):
                padded.update(seen)
        seen.append(name)
    return padded


def is_person_key(col: exp.Column, scope: Scope, catalogue: Catalogue) -> bool:
    """Whether a column is a person key, directly or as a derived table's copy of one."""
    origin = bare_origin(col, scope, catalogue)
    return bool(origin and origin[1].cls is ColumnClass.PERSON_KEY)


def groups_by_person(select: exp.Select, scope: Scope, catalogue: Catalogue) -> bool:
    group = select.args.get("group")
    if not group:
        return False
    return any(isinstance(g, exp.Column) and is_person_key(g, scope, catalogue)
               and not may_be_null(g, scope, catalogue) for g in group.expressions)


def one_per_person(source, catalogue: Catalogue) -> bool:
    if isinstance(source, exp.Table):
        table = catalogue.table(source.name)
        return table is not None and (table.grain == "person"
                                      or table.kind.value == "reference")
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        select = source.expression
        keys = group_keys(select.args.get("group"))
        # one row per person: grouped by the person key and nothing else. Any other key, a
        # column or an expression (a CASE, a parenthesised column), gives a row per person
        # per value, tagged apart (review round 26)
        if keys and all(isinstance(k, exp.Column) and is_person_key(k, source, catalogue)
                        and not may_be_null(k, source, catalogue) for k in keys):
            return not select.args.get("group").find(*MARGINS)
        if not select.args.get("group") and len(source.selected_sources) == 1:
            ((_, only),) = source.selected_sources.values()
            return one_per_person(only, catalogue) and \
                not select.find(exp.Join)
    return False

