"""What every scan of people's rows gets, in every query the pipeline runs: the caller's row
filters (residence, consent cohort, national data opt-out), CAST made TRY_CAST, and the
engine's check that every joined row is one person's."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from datasets import Catalogue, TableKind
from datasets.catalogue import NEVER_QUERYABLE
from gateway.errors import PERSON_LINK_BROKEN, SqlRejected
from gateway.sql.rules.people import is_person_key
from policies import ColumnUse, ConsentCohort, Obligations, ResidenceFilter


def table_person(alias: str, table: exp.Table, catalogue: Catalogue) -> exp.Column | None:
    """A person-level table's person key under its alias; None for any other table."""
    meta = catalogue.table(table.name)
    if meta is None or meta.kind is not TableKind.PERSON_LEVEL:
        return None
    return exp.column(meta.person_key, table=alias, quoted=True)


def safe_casts(tree: exp.Expression) -> None:
    """CAST becomes TRY_CAST: a conversion that fails gives NULL instead of an error, so the
    presence of one person's unconvertible value cannot be read from whether a query fails."""
    for cast in list(tree.find_all(exp.Cast)):
        if type(cast) is exp.Cast:
            cast.replace(exp.TryCast(this=cast.this.copy(), to=cast.args["to"].copy()))


#: the hidden column a derived table passes its rows' person on in, for the link check
ROW_PERSON = "__sdc_pid"


def assert_person_links(tree: exp.Expression, catalogue: Catalogue) -> None:
    """Make the engine check, on every row of every select that reads two or more people's
    sources, what the analysis proved: that they are all the same person (or NULL, where an
    outer join pads one). A row that pairs two people stops the query with an error.

    The analysis refuses joins that are not on person_id (``check_person_links``), and rounds
    25 to 29 each found a join it took for a person link that paired one person's rows with
    everyone else's: a sum by sex came out as N times one woman's stay, resting on thousands.
    This is the same rule checked on the data, so that a mistake in the proof refuses the
    query instead of releasing the pairs. LEAST and GREATEST skip NULLs, so a padded source
    passes; the check sits in WHERE, after the joins, where it costs one comparison a row.

    A derived table is compared by the person its rows come from, not by the person key it
    happens to pass on, which one of its own outer joins can leave NULL beside real values
    (review round 31): each derived person source carries a hidden ``__sdc_pid``, the first
    non-NULL person key of its own sources on the row, and a grouped one checks that each
    group holds one person's rows.
    """
    carried: set[int] = set()
    for scope in traverse_scope(tree):
        if isinstance(scope.expression, exp.Select):
            keys = _row_persons(scope, catalogue, carried)
            if len(keys) >= 2:
                scope.expression.where(_one_person(keys), copy=False)


def _one_person(keys: list[exp.Expression], agg: bool = False) -> exp.Expression:
    """TRUE if the non-NULL keys (over a group: their MIN and MAX) are one person; else the
    engine stops the query."""
    if agg:
        low, high = exp.Min(this=keys[0].copy()), exp.Max(this=keys[0].copy())
    else:
        # DuckDB's own LEAST and GREATEST, which skip NULLs (exp.Least is written out with a
        # CASE that makes any NULL the answer)
        rest = [k.copy() for k in keys[1:]]
        low = exp.Least(this=keys[0].copy(), expressions=rest, ignore_nulls=True)
        high = exp.Greatest(this=keys[0].copy(), expressions=[k.copy() for k in rest],
                            ignore_nulls=True)
    return exp.Case(ifs=[exp.If(this=exp.NEQ(this=low, expression=high), true=exp.Anonymous(
        this="error", expressions=[exp.Literal.string(PERSON_LINK_BROKEN)]))],
        default=exp.true())


def _row_persons(scope: Scope, catalogue: Catalogue, carried: set[int]) -> list[exp.Expression]:
    """The person of each person-level source of a select, on its rows: a table's key, or a
    derived table's hidden ``__sdc_pid`` (added to it here, once)."""
    keys: list[exp.Expression] = []
    for alias, (_, source) in scope.selected_sources.items():
        if isinstance(source, exp.Table):
            if (key := table_person(alias, source, catalogue)) is not None:
                keys.append(key)
        elif (isinstance(source, Scope) and isinstance(source.expression, exp.Select)
              and _carry_person(source, catalogue, carried)):
            keys.append(exp.column(ROW_PERSON, table=alias, quoted=True))
    return keys


def _carry_person(scope: Scope, catalogue: Catalogue, carried: set[int]) -> bool:
    """Give a derived table the hidden column of its rows' person, if it has people's rows:
    one that passes a person key on, or one that reads people row by row without passing
    the key on (the proof refuses it beside people; the check then sees it too, round 32).
    A summary (grouped or DISTINCT) without the key has no person per row and gets none.
    Returns whether it has one."""
    select = scope.expression
    if id(select) in carried:
        return True
    passes_key = any(isinstance(p.unalias(), exp.Column)
                     and is_person_key(p.unalias(), scope, catalogue) for p in select.expressions)
    # an aggregate of this select, not of a subquery in it (a correlated COUNT in the SELECT
    # list does not group the rows: round 32) nor a window
    grouped = (select.args.get("group") is not None or select.args.get("having") is not None
               or any(agg.find_ancestor(exp.Window, exp.Select) is select
                      for p in select.expressions for agg in p.find_all(exp.AggFunc)))
    if not passes_key and (grouped or select.args.get("distinct") is not None):
        return False
    inner = _row_persons(scope, catalogue, carried)
    if not inner:
        return False
    person = inner[0] if len(inner) == 1 else exp.Coalesce(this=inner[0], expressions=inner[1:])
    if grouped:
        # a group is one person's rows, or the check stops the query (GROUP BY a padded key
        # would put everyone's rows under one NULL)
        select.append("expressions", exp.alias_(exp.Min(this=person.copy()), ROW_PERSON))
        select.having(_one_person([person], agg=True), copy=False)
    else:
        select.append("expressions", exp.alias_(person, ROW_PERSON))
    carried.add(id(select))
    return True


def filter_scans(tree: exp.Select, obligations: Obligations, catalogue: Catalogue,
                 reads: Iterable[ColumnUse]) -> None:
    """Replace every catalogue table scan by the same table seen through the filters (people's
    tables), narrowed to the columns the analysis resolved and the policy granted (``reads``)
    and the person key; and make every select that pairs people's sources check that it
    pairs one person's rows.

    The narrowing makes the analysis's reading of the query the engine's: a name the
    resolver did not see as a table's column (round 37: inside an ORDER BY expression, where
    it took it for an output alias) cannot reach a column of the table in the engine either,
    a direct identifier or a column the policy does not grant."""
    assert_person_links(tree, catalogue)
    used: dict[str, set[str]] = {}
    for use in reads:
        used.setdefault(use.table, set()).add(use.column)
    for table in list(tree.find_all(exp.Table)):
        meta = catalogue.table(table.name)
        if meta is None:
            continue  # a CTE's name
        names = used.get(meta.name, set())
        conditions: list[exp.Expression] = []
        if meta.kind is TableKind.PERSON_LEVEL:
            key = meta.person_key
            names = names | {key}
            if obligations.residence is not None:
                conditions.append(_residence(key, obligations.residence, catalogue))
            if obligations.consent is not None:
                conditions.append(_consent(key, obligations.consent, catalogue))
            if obligations.remove_opted_out:
                conditions.append(_not_opted_out(key, catalogue))
        columns: list[exp.Expression] = [
            exp.column(c.name, quoted=True) for c in meta.columns
            if c.name in names and c.cls not in NEVER_QUERYABLE]
        if not columns:  # rows, and no column of them: COUNT(*) over a lookup
            columns = [exp.alias_(exp.null(), "__sdc_row", quoted=True)]
        inner = exp.select(*columns).from_(exp.Table(this=exp.to_identifier(meta.name,
                                                                          quoted=True)))
        if conditions:
            inner = inner.where(exp.and_(*conditions))
        alias = table.alias_or_name
        table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(
            this=exp.to_identifier(alias, quoted=True))))


def _residence(key: str, rule: ResidenceFilter, catalogue: Catalogue) -> exp.Expression:
    values = [exp.Literal.string(v) for v in rule.values]
    person_key = catalogue.table(rule.person_table).person_key
    if rule.lookup_table is None:
        people = (exp.select(exp.column(person_key, quoted=True))
                  .from_(exp.to_table(rule.person_table))
                  .where(exp.column(rule.column, quoted=True).isin(*values)))
    else:
        people = (exp.select(exp.column(person_key, table="__p", quoted=True))
                  .from_(exp.alias_(exp.to_table(rule.person_table), "__p", table=True))
                  .join(exp.alias_(exp.to_table(rule.lookup_table), "__l", table=True),
                        on=exp.EQ(this=exp.column(rule.via, table="__p", quoted=True),
                                  expression=exp.column(rule.via, table="__l", quoted=True)))
                  .where(exp.column(rule.column, table="__l", quoted=True).isin(*values)))
    return exp.column(key, quoted=True).isin(query=people)


def _register(catalogue: Catalogue, kind: TableKind):
    table = catalogue.register(kind)
    if table is None:
        raise SqlRejected(f"the catalogue has no {kind.value}; the policy cannot be enforced")
    return table


def _consent(key: str, cohort: ConsentCohort, catalogue: Catalogue) -> exp.Expression:
    reg = _register(catalogue, TableKind.CONSENT_REGISTER)
    as_of = date_literal(cohort.as_of)
    cond = exp.and_(
        exp.column("study_id", quoted=True).eq(exp.Literal.string(cohort.study_id)),
        exp.LTE(this=exp.column("consented_on", quoted=True), expression=as_of.copy()),
        exp.paren(exp.or_(
            exp.Is(this=exp.column("withdrawn_on", quoted=True), expression=exp.Null()),
            exp.GT(this=exp.column("withdrawn_on", quoted=True), expression=as_of.copy()),
        )),
    )
    people = exp.select(exp.column("person_id", quoted=True)).from_(
        exp.to_table(reg.name)).where(cond)
    return exp.column(key, quoted=True).isin(query=people)


def _not_opted_out(key: str, catalogue: Catalogue) -> exp.Expression:
    reg = _register(catalogue, TableKind.OPT_OUT_REGISTER)
    people = (exp.select(exp.column("person_id", quoted=True)).from_(exp.to_table(reg.name))
              .where(exp.Not(this=exp.Is(this=exp.column("person_id", quoted=True),
                                         expression=exp.Null()))))
    return exp.Not(this=exp.column(key, quoted=True).isin(query=people))


def date_literal(d: date) -> exp.Expression:
    return exp.Cast(this=exp.Literal.string(d.isoformat()), to=exp.DataType.build("DATE"))
