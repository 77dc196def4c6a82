"""SQL analysis: parse, refuse what could leak, resolve every column to its source.

The stages run in order in ``analyse``: parse (one SELECT or UNION), the allow-list and sizes
(rules.syntax, rules.size), resolve every column with sqlglot's qualifier, then the rules on
people (rules.links, rules.person_key), measures (rules.measures) and the released table
(rules.released). Each module states one family of rules; rules.people and gateway.sql.tree
hold the facts they share. The boundary is an allow-list over the syntax tree, not a deny-list
and never a regex; the engine is hardened as well (gateway.engine).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from datasets import Catalogue, ColumnClass
from gateway.errors import SqlParseError, SqlRejected
from gateway.sql.rules.binding import (
    check_aggregate_owners,
    check_bound_in_order,
    check_names_bound,
)
from gateway.sql.rules.links import check_person_links
from gateway.sql.rules.measures import check_measure_filters
from gateway.sql.rules.people import is_person_key
from gateway.sql.rules.person_key import (
    check_distinct_on,
    check_per_person_aggregates,
    check_person_key_use,
    check_windows,
)
from gateway.sql.rules.released import (
    OutputColumn,
    check_group_keys,
    check_outer,
    check_union_order,
    combine,
)
from gateway.sql.rules.size import (
    check_alias_expansion,
    check_expanded_size,
    too_complex_on_recursion,
)
from gateway.sql.rules.syntax import (
    check_depth,
    check_nodes,
    check_output_names,
    check_tables,
    parse_statements,
)
from gateway.sql.tree import (
    DIALECT,
    MARGINS,
    clause_of,
    expand_margin_positions,
    grouping_sets,
    is_in,
    outer_selects,
)
from policies import ColumnUse

#: The most aggregate columns one query may release (see analyse)
MAX_AGGREGATE_COLUMNS = 20


#: The most cells of one result a person's rows may fall in: aggregate columns times grouping
#: sets (ROLLUP of n keys: n + 1, CUBE: 2^n) or UNION branches
MAX_CELLS_PER_PERSON = 32


@dataclass(frozen=True)
class Analysis:
    """What a query touches, clause by clause, and its checked, qualified tree."""

    sql: str
    tree: exp.Select | exp.Union  # qualified; read-only (the rewrite works on a copy)
    tables: frozenset[str]
    columns: tuple[ColumnUse, ...]
    outputs: tuple[OutputColumn, ...]
    #: per outer branch: the kind of each output column there (a UNION's total row is a
    #: constant label where other branches have keys)
    branch_kinds: tuple[tuple[str, ...], ...] = ()
    #: whether the outer query has ROLLUP, CUBE or GROUPING SETS
    margins: bool = False


@too_complex_on_recursion
def analyse(sql: str, catalogue: Catalogue, *, max_chars: int, max_depth: int) -> Analysis:
    if len(sql) > max_chars:
        raise SqlRejected(f"the SQL is {len(sql)} characters; the limit is {max_chars}",
                          code="sql_too_long")
    if not sql.strip():
        raise SqlParseError("the SQL is empty")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise SqlRejected("the SQL is not valid Unicode text (a lone surrogate)",
                          code="sql_not_text") from None
    statements = parse_statements(sql)
    if len(statements) != 1:
        raise SqlRejected(
            f"found {len(statements)} statements; send exactly one SELECT",
            hint="remove the semicolon-separated extra statements",
        )
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.Union):
        kind = type(tree).__name__.upper()
        raise SqlRejected(f"only a SELECT is allowed, not {kind}",
                          hint="the gateway answers read-only aggregate queries; UNION [ALL] "
                          "of aggregate selects is allowed")
    check_depth(tree, max_depth)
    check_nodes(tree)
    ctes = check_tables(tree, catalogue)
    check_expanded_size(tree)
    check_alias_expansion(tree)
    for ident in tree.find_all(exp.Identifier):
        if ident.name.startswith("__"):
            # the rewrite names its own hidden columns and subqueries so (__pid, __pp, ...)
            raise SqlRejected(f"the name {ident.name!r} is reserved: names starting with two "
                              "underscores belong to the gateway", hint="rename it")
    expand_margin_positions(tree)
    original = tree.copy()
    try:
        qualified = qualify(
            tree, schema=catalogue.sql_schema(), dialect=DIALECT, validate_qualify_columns=True,
            quote_identifiers=True, expand_stars=False,
        )
    except OptimizeError as exc:
        raise SqlRejected(f"cannot resolve the query: {exc}",
                          hint="check table and column names against GET /v1/catalogue") from None
    except SqlglotError as exc:
        raise SqlRejected(f"cannot analyse the query: {exc}") from None
    if not isinstance(qualified, exp.Select | exp.Union):
        raise SqlRejected("only a SELECT is allowed")
    whole = next(qualified.find_all(exp.TableColumn), None)
    if whole is not None:
        # a table's name used as a value is its whole row (a struct, every field by name as
        # text): no column of it is resolved, so no rule or policy saw what it read, direct
        # identifiers included (review round 35)
        raise SqlRejected(
            f"{whole.name!r} names a table, not a column: a table's whole row may not be "
            "used as a value", hint="name the columns you need, e.g. p.sex or p.year_of_birth")
    # the resolver may turn names into other nodes: the allow-list holds for what runs too
    check_nodes(qualified)
    check_output_names(qualified)
    check_names_bound(qualified, catalogue)
    check_bound_in_order(qualified, catalogue)
    check_aggregate_owners(qualified)
    outers = outer_selects(qualified)
    columns, tables = _resolve(qualified, catalogue, ctes, outers)
    if not tables:
        raise SqlRejected("the query reads no catalogue table",
                          hint="GET /v1/catalogue lists the tables your project may use")
    per_branch = [check_outer(q, o, catalogue)
                  for q, o in zip(outers, outer_selects(original), strict=True)]
    outputs = combine(per_branch)
    shown: set[str] = set()
    for o in outputs:
        # disclosure control finds a released column by the name the caller sees: two alike
        # (an unnamed long expression is col_<i>) made it suppress the wrong one (round 23)
        if o.name.lower() in shown:
            raise SqlRejected(f"two output columns would both be called {o.name!r}",
                              hint="name each output column with AS, each differently")
        shown.add(o.name.lower())
    aggregates = sum(o.kind == "aggregate" for o in outputs)
    if aggregates > MAX_AGGREGATE_COLUMNS:
        # Each column's rounding (or cell-key perturbation) is one draw; a hundred columns
        # over sets that differ by the same small group average the draws away and count it
        # exactly (review round 20).
        raise SqlRejected(
            f"the query has {aggregates} aggregate columns; at most {MAX_AGGREGATE_COLUMNS} are "
            "allowed in one query", hint="split the table into several queries")
    cells = aggregates * sum(grouping_sets(q) for q in outers)
    if cells > MAX_CELLS_PER_PERSON:
        # One person is in one cell per column per grouping set (or UNION branch): that many
        # separately rounded or perturbed cells. Sets that differ by one small group, by the
        # hundred, average the draws away as columns did (review round 21).
        raise SqlRejected(
            f"one person's rows would be in {cells} cells of the result (aggregate columns "
            "times grouping sets or UNION branches); at most "
            f"{MAX_CELLS_PER_PERSON} are allowed", hint="split the table into several queries")
    check_union_order(qualified, outers)
    check_measure_filters(qualified, outers, catalogue)
    margins = any(isinstance(g, MARGINS) for q in outers
                  for g in (q.args.get("group").expressions if q.args.get("group") else []))
    if margins and len(outers) > 1:
        raise SqlRejected("ROLLUP, CUBE and GROUPING SETS cannot be combined with UNION",
                          hint="use one or the other for total rows")
    return Analysis(sql, qualified, frozenset(tables), tuple(columns), outputs,
                    tuple(tuple(o.kind for o in b) for b in per_branch),
                    margins)


def _resolve(
    tree: exp.Select | exp.Union, catalogue: Catalogue, ctes: set[str],
    outers: list[exp.Select],
) -> tuple[list[ColumnUse], set[str]]:
    """Every column to its source table, and the person-key and measure rules."""
    uses: list[ColumnUse] = []
    tables: set[str] = set()
    all_scopes = traverse_scope(tree)
    scopes = {id(s.expression): s for s in all_scopes}
    for scope in all_scopes:
        if isinstance(scope.expression, exp.Union):
            continue  # its branches are scopes of their own
        if not isinstance(scope.expression, exp.Select):
            raise SqlRejected(f"{type(scope.expression).__name__} is not allowed")
        for source in scope.sources.values():
            if isinstance(source, exp.Table):
                tables.add(source.name.lower())
        check_per_person_aggregates(scope, outers, catalogue)
        check_distinct_on(scope, catalogue)
        check_windows(scope, outers, catalogue)
        check_person_links(scope, catalogue)
        for col in scope.columns:
            source = scope.sources.get(col.table)
            if isinstance(source, exp.Table):
                table = catalogue.table(source.name)
                meta = table.column(col.name) if table else None
                if meta is None:
                    raise SqlRejected(f"unknown column {col.sql()}")
                uses.append(ColumnUse(table.name, meta.name, clause_of(col)))
                if meta.cls in (ColumnClass.DIRECT_IDENTIFIER, ColumnClass.INTERNAL):
                    raise SqlRejected(
                        f"column {table.name}.{meta.name} is a {meta.cls.value.replace('_', ' ')}"
                        f" and may not appear anywhere in a query (found in {clause_of(col)})",
                        hint="use year_of_birth for age, lsoa_code for area",
                    )
            if is_person_key(col, scope, catalogue):
                check_person_key_use(col, scope, outers, scopes, catalogue)
        if is_in(scope.expression, outers):
            check_group_keys(scope.expression, scope, catalogue)
    return uses, tables

