"""SQL analysis: parse, refuse what could leak, resolve every column to its source.

The boundary is an allow-list over the sqlglot syntax tree (node types, functions, tables), not
a deny-list and never a regex: a construct the gateway does not know is refused. The engine is
hardened as well (gateway.engine), so a gap here is not a gap in the environment.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, OptimizeError, ParseError, SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from datasets import Catalogue, ColumnClass
from datasets.catalogue import ENGINE_ONLY
from gateway.errors import SqlParseError, SqlRejected
from policies import ColumnUse

DIALECT = "duckdb"

#: Aggregates that summarise without copying an individual value out.
SAFE_AGGREGATES = (exp.Count, exp.Sum, exp.Avg)
#: Aggregates allowed only inside a per-person subquery (one that groups by the person key),
#: where they summarise one person's own records (a first diagnosis date) and never leave it.
PER_PERSON_AGGREGATES = (exp.Min, exp.Max)

#: Named refusals for the aggregates that copy values out, so the message says why.
LEAKY = {
    exp.ArrayAgg: "list/array_agg", exp.GroupConcat: "string_agg", exp.First: "first",
    exp.Last: "last", exp.AnyValue: "any_value", exp.ArgMax: "arg_max", exp.ArgMin: "arg_min",
    exp.Quantile: "quantile", exp.Median: "median", exp.Mode: "mode",
    exp.ApproxQuantile: "approx_quantile", exp.Min: "min", exp.Max: "max",
}

#: Every node type a query may contain. Anything else is refused.
ALLOWED_NODES: frozenset[type[exp.Expression]] = frozenset({
    # structure
    exp.Select, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order, exp.Ordered,
    exp.Limit, exp.With, exp.CTE, exp.Subquery, exp.TableAlias, exp.Alias, exp.Column,
    exp.Identifier, exp.Table, exp.Star, exp.Distinct, exp.Filter,
    # values and operators
    exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Tuple, exp.EQ, exp.NEQ, exp.GT, exp.GTE,
    exp.LT, exp.LTE, exp.And, exp.Or, exp.Not, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv,
    exp.Mod, exp.Neg, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Exists, exp.Case,
    exp.If, exp.Cast, exp.TryCast, exp.DataType, exp.Coalesce, exp.Nullif, exp.Interval, exp.Var,
    # scalar functions
    exp.Round, exp.Floor, exp.Ceil, exp.Abs, exp.Least, exp.Greatest, exp.Concat, exp.DPipe,
    exp.Substring, exp.Lower, exp.Upper, exp.Length, exp.Trim,
    # dates
    exp.CurrentDate, exp.Extract, exp.TimestampTrunc, exp.DateTrunc, exp.Year, exp.Month,
    exp.Quarter, exp.Day, exp.DayOfWeek, exp.DateDiff, exp.DateAdd, exp.DateSub,
    exp.DateFromParts, exp.TimeToStr,
    # aggregates (further restricted below)
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max,
    # UNION [ALL] of selects; windows only inside a person (restricted below)
    exp.Union, exp.Window, exp.WindowSpec, exp.RowNumber, exp.Rank, exp.DenseRank, exp.Lag,
    exp.Lead,
    # margins on the outer query (secondary suppression protects them)
    exp.Rollup, exp.Cube, exp.GroupingSets,
})
MARGINS = (exp.Rollup, exp.Cube, exp.GroupingSets)
#: The most aggregate columns one query may release (see analyse)
MAX_AGGREGATE_COLUMNS = 20
#: The most cells of one result a person's rows may fall in: aggregate columns times grouping
#: sets (ROLLUP of n keys: n + 1, CUBE: 2^n) or UNION branches
MAX_CELLS_PER_PERSON = 32
_T = exp.DataType.Type
#: Types a CAST may produce: the ones the released table can carry as plain JSON. (sqlglot
#: reads DuckDB's TIMESTAMP as TIMESTAMPNTZ; a time zone is not among them.)
CAST_TYPES = frozenset({_T.INT, _T.BIGINT, _T.SMALLINT, _T.TINYINT, _T.DOUBLE, _T.FLOAT,
                        _T.DECIMAL, _T.VARCHAR, _T.TEXT, _T.CHAR, _T.DATE, _T.TIMESTAMP,
                        _T.TIMESTAMPNTZ, _T.BOOLEAN})
#: Functions sqlglot leaves as Anonymous that are allowed, by lower-case name.
ALLOWED_ANONYMOUS = frozenset({"date_part", "datepart"})


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
    statements = _parse(sql)
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
    _check_depth(tree, max_depth)
    _check_nodes(tree)
    ctes = _check_tables(tree, catalogue)
    _check_expanded_size(tree)
    _check_alias_expansion(tree)
    for ident in tree.find_all(exp.Identifier):
        if ident.name.startswith("__"):
            # the rewrite names its own hidden columns and subqueries so (__pid, __pp, ...)
            raise SqlRejected(f"the name {ident.name!r} is reserved: names starting with two "
                              "underscores belong to the gateway", hint="rename it")
    _expand_margin_positions(tree)
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
    _check_nodes(qualified)
    _check_output_names(qualified)
    outers = outer_selects(qualified)
    columns, tables = _resolve(qualified, catalogue, ctes, outers)
    if not tables:
        raise SqlRejected("the query reads no catalogue table",
                          hint="GET /v1/catalogue lists the tables your project may use")
    per_branch = [_check_outer(q, o, catalogue)
                  for q, o in zip(outers, outer_selects(original), strict=True)]
    outputs = _combine(per_branch)
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
    _check_union_order(qualified, outers)
    _check_measure_filters(qualified, outers, catalogue)
    margins = any(isinstance(g, MARGINS) for q in outers
                  for g in (q.args.get("group").expressions if q.args.get("group") else []))
    if margins and len(outers) > 1:
        raise SqlRejected("ROLLUP, CUBE and GROUPING SETS cannot be combined with UNION",
                          hint="use one or the other for total rows")
    return Analysis(sql, qualified, frozenset(tables), tuple(columns), outputs,
                    tuple(tuple(o.kind for o in b) for b in per_branch),
                    margins)


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


def _expand_margin_positions(tree: exp.Expression) -> None:
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


def _is_in(node: exp.Expression, nodes) -> bool:
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


def _combine(branches: list[tuple[OutputColumn, ...]]) -> tuple[OutputColumn, ...]:
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


#: how many table scans a query may make once every CTE reference is expanded in place
MAX_EXPANDED_SCANS = 64


def _check_expanded_size(tree: exp.Expression) -> None:
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
    main.set("with", None)
    if scans(main, frozenset()) > MAX_EXPANDED_SCANS:
        raise SqlRejected(
            f"the query reads more than {MAX_EXPANDED_SCANS} tables once its CTEs are "
            "expanded where they are used", code="sql_too_complex",
            hint="read each CTE fewer times, or join the tables directly")


#: how many syntax nodes a query may come to once every reference to an output column (an
#: alias, a GROUP BY position) is replaced by a copy of its expression, as the resolver does
MAX_EXPANDED_NODES = 20_000


def _check_alias_expansion(tree: exp.Expression) -> None:
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


def _check_output_names(tree: exp.Expression) -> None:
    """No select may name two of its columns alike. The engine reads a repeated name (in any
    case) as the *first* column so named, and ORDER BY as the last, while the rewrite refers
    to the person key and to each aggregate by its name: ``g.event_date AS k, g.person_id AS
    k`` made the gateway count event dates as the people behind a cell (review round 22)."""
    for select in tree.find_all(exp.Select):
        if _later_branch(select):
            continue  # a UNION takes its column names from its first branch
        seen: set[str] = set()
        for name in select.named_selects:
            if name.lower() in seen:
                raise SqlRejected(
                    f"the column name {name!r} is used twice in one SELECT",
                    hint="give each column its own name with AS (a column without one is "
                         "named after its column or its value: 'sex' and p.sex are both sex)")
            seen.add(name.lower())


def _later_branch(select: exp.Select) -> bool:
    """Whether a select is a UNION branch other than the first, whose names do not count."""
    node: exp.Expression = select
    while isinstance(node.parent, exp.Union):
        if node.arg_key == "expression":
            return True
        node = node.parent
    return False


def _check_union_order(tree: exp.Expression, outers: list[exp.Select]) -> None:
    if not isinstance(tree, exp.Union):
        return
    order = tree.args.get("order")
    for ordered in order.expressions if order else []:
        if any(_names_aggregate(ordered, branch) for branch in outers):
            raise SqlRejected("ORDER BY an aggregate is not allowed on the outer query: the "
                              "order would rank suppressed cells",
                              hint="order by group keys, or sort the released table yourself")


def _parse(sql: str) -> list[exp.Expression]:
    try:
        parsed = sqlglot.parse(sql, dialect=DIALECT, error_level=ErrorLevel.RAISE)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        line, col = first.get("line"), first.get("col")
        where = f" at line {line}, column {col}" if line else ""
        desc = first.get("description") or str(exc)
        raise SqlParseError(f"the SQL does not parse{where}: {desc}",
                            reasons=[{k: first.get(k) for k in ("line", "col", "description")}]
                            if first else []) from None
    except TokenError as exc:
        raise SqlParseError(f"the SQL does not tokenise: {exc}") from None
    except RecursionError:
        raise SqlRejected("the SQL is nested too deeply", code="sql_too_deep") from None
    except SqlglotError as exc:
        raise SqlParseError(f"the SQL does not parse: {exc}") from None
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        # the parser's own defect on malformed text (the fuzz found '?[/'): still malformed
        # SQL to the caller, a 400 and not a 500
        raise SqlParseError("the SQL does not parse",
                            hint="check the SQL near any unusual characters") from None
    statements = [s for s in parsed if s is not None]
    for statement in statements:  # a comment is no part of a query's meaning
        for node in statement.walk():
            node.comments = None
    return statements


def _check_depth(tree: exp.Expression, max_depth: int) -> None:
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise SqlRejected(f"the query is nested more than {max_depth} levels deep",
                              code="sql_too_deep")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _check_nodes(tree: exp.Select | exp.Union) -> None:
    outers = outer_selects(tree)
    for node in tree.walk():
        typ = type(node)
        if typ in LEAKY and typ not in PER_PERSON_AGGREGATES:
            raise SqlRejected(
                f"aggregate {LEAKY[typ]}(){_location(node, outers)} is not allowed: it can "
                "copy individual values out", hint="use COUNT, COUNT(DISTINCT ...), SUM or AVG",
            )
        if typ is exp.Anonymous:
            name = node.name.lower()
            if name not in ALLOWED_ANONYMOUS:
                raise SqlRejected(f"function {name}(){_location(node, outers)} is not allowed",
                                  hint="see docs/security.md for the functions allowed")
            continue
        if typ not in ALLOWED_NODES:
            raise SqlRejected(f"{_construct(node)}{_location(node, outers)} is not allowed",
                              hint="the gateway accepts one aggregate SELECT with joins, CTEs, "
                              "subqueries, CASE and date functions")
        if typ is exp.Star and not isinstance(node.parent, exp.Count):
            raise SqlRejected("SELECT * is not allowed: name the columns you need",
                              hint="GET /v1/catalogue lists the columns your project may use")
        if typ is exp.Select and node.args.get("distinct") and _is_in(node, outers):
            raise SqlRejected("SELECT DISTINCT on the outer query returns row-level values",
                              hint="use GROUP BY with COUNT(...)")
        if typ in MARGINS and not _is_in(node.find_ancestor(exp.Select), outers):
            raise SqlRejected(f"{typ.__name__.upper()} is allowed on the outer query only")
        if typ is exp.DataType and node.this not in CAST_TYPES:
            raise SqlRejected(f"casting to {node.sql(dialect=DIALECT)} is not allowed",
                              hint="cast to INTEGER, BIGINT, DOUBLE, DECIMAL, VARCHAR, DATE, "
                              "TIMESTAMP or BOOLEAN")
        if typ is exp.Limit:
            n = node.expression
            if not (isinstance(n, exp.Literal) and n.is_int and int(n.this) >= 0):
                raise SqlRejected("LIMIT takes a whole number of rows")
            if _is_in(node.parent, outers) and node.parent is not tree:
                # a UNION branch's LIMIT runs in the engine, before small groups are withheld,
                # and the rows it leaves counted them (review round 34)
                raise SqlRejected("LIMIT in a UNION branch is not allowed",
                                  hint="put one LIMIT after the last branch: it applies to the "
                                  "whole answer")
            if node.parent is not tree:
                # "the first N people by some value" picks people across persons: the pair
                # N, N+1 isolates one of them
                raise SqlRejected("LIMIT is allowed on the outer query only",
                                  hint="choose people by a condition, not by an order")
        if typ is exp.With and node.args.get("recursive"):
            raise SqlRejected("WITH RECURSIVE is not allowed: a recursive query can run without "
                              "end", hint="use plain CTEs")
        if typ is exp.Union and (node.args.get("by_name") or node.args.get("side")
                                 or node.args.get("kind")):
            raise SqlRejected("UNION BY NAME and outer or keyed unions are not allowed")
        if typ is exp.Union and node.args.get("distinct"):
            # it removes rows equal on their exact values (whether two counts tie), and the
            # gateway's hidden columns kept the engine from removing any (review round 34)
            raise SqlRejected("UNION (without ALL) is not allowed: it removes rows by their "
                              "exact values", hint="use UNION ALL")
        if typ is exp.Star and any(node.args.get(k) for k in STAR_MODIFIERS):
            # COUNT(* EXCLUDE (nhs_number)) names columns no rule resolves (review round 36)
            raise SqlRejected("* with EXCLUDE, REPLACE, RENAME or ILIKE is not allowed",
                              hint="COUNT(*) counts rows; name the columns you need elsewhere")
        if typ is exp.Join:
            _check_join(node)
        if typ is exp.Select and any(node.args.get(k) for k in ("into", "locks", "sample")):
            raise SqlRejected("SELECT INTO, locking and sampling clauses are not allowed")


_JOIN_KINDS = {"", "INNER", "OUTER", "CROSS"}
#: the arguments of * that name or match columns
STAR_MODIFIERS = ("except_", "except", "replace", "rename", "ilike")
_JOIN_SIDES = {"", "LEFT", "RIGHT", "FULL"}


def _check_join(join: exp.Join) -> None:
    method = (join.args.get("method") or "").upper()
    kind = (join.args.get("kind") or "").upper()
    side = (join.args.get("side") or "").upper()
    if kind in ("SEMI", "ANTI"):
        # The right side of a SEMI/ANTI join is not among a select's sources (sqlglot leaves it
        # out of selected_sources), so the rules on whose rows a query holds would not see it:
        # ON could tie everyone's rows to one chosen person's values (review round 14).
        raise SqlRejected(f"{kind} JOIN is not allowed",
                          hint="use WHERE [NOT] EXISTS (SELECT 1 FROM ... WHERE x.person_id = "
                          "p.person_id ...) or p.person_id [NOT] IN (SELECT person_id FROM ...)")
    if method or kind not in _JOIN_KINDS or side not in _JOIN_SIDES:
        shown = " ".join(x for x in (method, side, kind) if x)
        raise SqlRejected(f"{shown} JOIN is not allowed",
                          hint="use [LEFT|RIGHT|FULL] [INNER|OUTER] JOIN ... ON, or CROSS JOIN")
    if join.this.args.get("joins"):
        # ``JOIN h JOIN d ON ... ON ...`` hangs d's join under h: the rules on a select's joins
        # read its own list only, and the rewrite's filtered scan of h dropped d (round 31)
        raise SqlRejected("nested joins (JOIN a JOIN b ON ... ON ...) are not allowed",
                          hint="write each join after the one before it: JOIN a ON ... JOIN b "
                          "ON ...")


def _location(node: exp.Expression, outers: list[exp.Select]) -> str:
    """Where a construct sits, in words: the clause, and the outer query or a subquery."""
    child, parent = node, node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        child, parent = parent, parent.parent
    if parent is None:
        return ""
    clause = {"expressions": "the SELECT list", "where": "WHERE", "joins": "a JOIN",
              "from": "FROM", "from_": "FROM", "group": "GROUP BY", "having": "HAVING",
              "order": "ORDER BY",
              "qualify": "QUALIFY"}.get(child.arg_key, child.arg_key)
    level = "the outer query" if _is_in(parent, outers) else "a subquery"
    return f" (in {clause} of {level})"


def _construct(node: exp.Expression) -> str:
    if isinstance(node.parent, exp.Table) and isinstance(node, exp.Func):
        return f"table function {node.sql_name().lower()}() in FROM"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}()"
    if isinstance(node, exp.Window):
        return "a window function (OVER ...)"
    return f"{type(node).__name__} ({node.sql(dialect=DIALECT)[:60]!r})"


def _check_tables(tree: exp.Select, catalogue: Catalogue) -> set[str]:
    names = [cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)]
    ctes = set(names)
    if len(ctes) < len(names):
        # an inner WITH a AS (... FROM a ...) reads the outer a: 2^n scans to the engine,
        # counted as one each by the size check (review round 28)
        raise SqlRejected("a CTE name is defined twice", hint="give each CTE its own name")
    for name in ctes:
        if catalogue.table(name) is not None:
            raise SqlRejected(f"a CTE may not be named after the catalogue table {name!r}")
    for sub in tree.find_all(exp.Subquery):
        if not isinstance(sub.this, exp.Select | exp.Union):
            # ``LEFT JOIN (patients p1) ON ...`` wraps the table: every rule that finds a
            # source by its alias missed it, padded or not (review round 24)
            raise SqlRejected(f"a table in parentheses ({sub.sql(dialect=DIALECT)[:60]}) is not "
                              "allowed", hint="write the table and its joins without parentheses")
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise SqlRejected(
                f"table function or expression {table.this.sql(dialect=DIALECT)[:60]!r} "
                "is not allowed in FROM", hint="read catalogue tables by name",
            )
        if table.args.get("db") or table.args.get("catalog"):
            raise SqlRejected(f"qualified table name {table.sql(dialect=DIALECT)!r} is not "
                              "allowed", hint="name catalogue tables without a schema")
        alias = table.args.get("alias")
        if alias is not None and alias.args.get("columns"):
            # ``lsoa_lookup AS l(icb_code, lsoa_code)`` renames columns by position in the
            # engine, while every rule here reads them by name: the lookup's local authority
            # code passed for its small area, the NHS number for a sex (review round 22)
            raise SqlRejected(
                f"a column list on the table alias {alias.name!r} is not allowed",
                hint=f"write {table.name} AS {alias.name} and rename columns in the SELECT "
                     "list (col AS new_name)")
        name = table.name.lower()
        if name in ctes:
            continue
        known = catalogue.table(name)
        if known is None:
            raise SqlRejected(f"unknown table {table.name!r}",
                              hint="GET /v1/catalogue lists the tables your project may use")
        if known.kind in ENGINE_ONLY:
            raise SqlRejected(f"table {name!r} is read by the engine only",
                              hint="opt-outs and consent are applied for you by the policy")
    return ctes


_CLAUSES = {"expressions": "select", "joins": "join", "where": "where", "group": "group",
            "having": "having", "order": "order", "from": "from", "from_": "from",
            "limit": "limit"}


def _clause(col: exp.Column) -> str:
    node = col
    while node.parent is not None and not isinstance(node.parent, exp.Select):
        node = node.parent
    return _CLAUSES.get(node.arg_key, node.arg_key)


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
        _check_per_person_aggregates(scope, outers, catalogue)
        _check_distinct_on(scope, catalogue)
        _check_windows(scope, outers, catalogue)
        _check_person_links(scope, catalogue)
        for col in scope.columns:
            source = scope.sources.get(col.table)
            if isinstance(source, exp.Table):
                table = catalogue.table(source.name)
                meta = table.column(col.name) if table else None
                if meta is None:
                    raise SqlRejected(f"unknown column {col.sql()}")
                uses.append(ColumnUse(table.name, meta.name, _clause(col)))
                if meta.cls in (ColumnClass.DIRECT_IDENTIFIER, ColumnClass.INTERNAL):
                    raise SqlRejected(
                        f"column {table.name}.{meta.name} is a {meta.cls.value.replace('_', ' ')}"
                        f" and may not appear anywhere in a query (found in {_clause(col)})",
                        hint="use year_of_birth for age, lsoa_code for area",
                    )
            if is_person_key(col, scope, catalogue):
                _check_person_key_use(col, scope, outers, scopes, catalogue)
        if _is_in(scope.expression, outers):
            _check_group_keys(scope.expression, scope, catalogue)
    return uses, tables


def _is_person_source(source, catalogue: Catalogue) -> bool:
    """A base table about people, or a derived table that passes each row's person_id on."""
    if isinstance(source, exp.Table):
        t = catalogue.table(source.name)
        return bool(t and t.kind.value == "person_level")
    if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
        return any(isinstance(p.unalias(), exp.Column)
                   and is_person_key(p.unalias(), source, catalogue)
                   for p in source.expression.expressions)
    return False


def _reads_people(source, catalogue: Catalogue) -> bool:
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
            known = direct or any(_reads_people(s, catalogue) for s in source.sources.values()
                                  if isinstance(s, Scope))
            source._sde_reads_people = known
        return known
    return False


def _owner(scope: Scope, alias: str) -> Scope | None:
    s = scope.parent
    while s is not None and alias not in s.sources:
        s = s.parent
    return s


def _check_person_links(scope: Scope, catalogue: Catalogue) -> None:
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
        if _is_person_source(source, catalogue):
            nodes[(id(scope), alias)] = scope
        elif _reads_people(source, catalogue) and any(
                _is_person_source(s, catalogue) for s in selected.values()):
            raise SqlRejected(
                    f"{alias!r} summarises people without person_id and cannot be joined to "
                    "people's rows: its values would not be counted behind the cells",
                    hint="join per-person subqueries (that keep person_id) on person_id")
    for col in scope.external_columns:
        owner = _owner(scope, col.table)
        if owner is not None and _is_person_source(owner.sources[col.table], catalogue):
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
        owner = _owner(scope, col.table)
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
            for eq in _conjuncts(cond) if cond is not None else []:
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
    if _is_subquery(scope) and any(_reads_people(src, catalogue) for src in selected.values()):
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
    people = {a for a, src in selected.items() if _is_person_source(src, catalogue)}
    if not people:
        return
    for alias, source in selected.items():
        conds = [*filtering, own_on.get(alias)]
        equalities = [eq for cond in conds if cond is not None for eq in _conjuncts(cond)
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


def _conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    while isinstance(cond, exp.Paren | exp.Where):
        cond = cond.this
    if isinstance(cond, exp.And):
        return _conjuncts(cond.this) + _conjuncts(cond.expression)
    return [cond]


def may_be_null(col: exp.Column, scope: Scope, catalogue: Catalogue) -> bool:
    """Whether a column can be NULL on some rows: its source is padded by an outer join here,
    or it passes on such a column from a derived table or CTE (followed down), unless the
    select's WHERE says ``col IS NOT NULL``. A person key that can be NULL is no person: NULL
    is one window partition for everyone unmatched, and one NULL in a NOT IN set turns the
    test NULL for every row (review round 16)."""
    if col.table not in scope.sources:
        owner = _owner(scope, col.table)
        return owner is None or may_be_null(col, owner, catalogue)
    select = scope.expression
    if not isinstance(select, exp.Select):
        return True
    for cond in _conjuncts(select.args["where"]) if select.args.get("where") else []:
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


def _refuse_a_set_with_null(proj: exp.Column, scope: Scope, catalogue: Catalogue) -> None:
    if may_be_null(proj, scope, catalogue):
        raise SqlRejected(
            f"the person keys of IN (SELECT {proj.sql(dialect=DIALECT)} ...) can be NULL (an "
            "outer join pads them): one NULL turns NOT IN into NULL for everyone",
            hint=f"add WHERE {proj.sql(dialect=DIALECT)} IS NOT NULL to the subquery, or use "
            "[NOT] EXISTS")


def _is_person_membership(scope: Scope, catalogue: Catalogue) -> bool:
    """``outer.person_id IN (SELECT person_id FROM ...)``: membership of the same person."""
    node = scope.expression.parent
    if isinstance(node, exp.Subquery):
        node = node.parent
    if not isinstance(node, exp.In) or not isinstance(node.this, exp.Column):
        return False
    owner = _owner(scope, node.this.table)
    projections = scope.expression.expressions
    member = (owner is not None and is_person_key(node.this, owner, catalogue)
              and len(projections) == 1 and isinstance(projections[0].unalias(), exp.Column)
              and is_person_key(projections[0].unalias(), scope, catalogue))
    if member:
        _refuse_a_set_with_null(projections[0].unalias(), scope, catalogue)
    return member


def _check_group_keys(tree: exp.Select, scope: Scope, catalogue: Catalogue) -> None:
    """A bare measure as an outer group key would release each exact value (micro-data)."""
    group = tree.args.get("group")
    keys = group_keys(group)
    if group is not None and group.args.get("all"):
        keys += [p.unalias() for p in tree.expressions if not _aggregates_of(p, tree)]
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


def _column_is_person_key(col: exp.Column, scopes: dict[int, Scope],
                          catalogue: Catalogue) -> bool:
    """Resolve a column from the select that encloses it (it may sit in a correlated
    subquery below the scope being checked), then up through the scopes that own it."""
    scope = scopes.get(id(col.find_ancestor(exp.Select)))
    if scope is None:
        return False
    if col.table in scope.sources:
        return is_person_key(col, scope, catalogue)
    owner = _owner(scope, col.table)
    return owner is not None and is_person_key(col, owner, catalogue)


def _projects_person_key(query: exp.Expression, scopes: dict[int, Scope],
                         catalogue: Catalogue) -> bool:
    select = query.this if isinstance(query, exp.Subquery) else query
    scope = scopes.get(id(select))
    if scope is None or not isinstance(select, exp.Select) or len(select.expressions) != 1:
        return False
    proj = select.expressions[0].unalias()
    if isinstance(proj, exp.Column) and is_person_key(proj, scope, catalogue):
        _refuse_a_set_with_null(proj, scope, catalogue)
        return True
    return False


def _check_person_key_use(col: exp.Column, scope: Scope, outers: list[exp.Select],
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
    if isinstance(parent, exp.Window) and _is_in(col, parent.args.get("partition_by") or []):
        return  # a window within each person
    if not _is_in(select, outers) and _is_source_select(select):
        if parent is select or (isinstance(parent, exp.Alias) and parent.parent is select):
            return  # a per-person or joinable derived table exposes the key for joining
        if isinstance(parent, exp.Group):
            return
        if isinstance(parent, exp.Tuple) and parent.arg_key == "on" and \
                isinstance(parent.parent, exp.Distinct) and parent.parent.parent is select:
            return  # DISTINCT ON (person_id, ...): one row per person (_check_distinct_on)
    raise SqlRejected(
        f"the person key {col.sql(dialect=DIALECT)} may only join tables or be counted "
        f"(found in {_clause(col)})",
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


def _check_distinct_on(scope: Scope, catalogue: Catalogue) -> None:
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


def _is_source_select(select: exp.Select) -> bool:
    """A select whose rows feed another query, rather than a scalar value in an expression."""
    parent = select.parent
    if isinstance(parent, exp.CTE):
        return True
    if isinstance(parent, exp.Subquery):
        return isinstance(parent.parent, exp.From | exp.Join | exp.In)
    return isinstance(parent, exp.In | exp.Exists)


def _groups_by_person(select: exp.Select, scope: Scope, catalogue: Catalogue) -> bool:
    group = select.args.get("group")
    if not group:
        return False
    return any(isinstance(g, exp.Column) and is_person_key(g, scope, catalogue)
               and not may_be_null(g, scope, catalogue) for g in group.expressions)


def _check_windows(scope: Scope, outers: list[exp.Select], catalogue: Catalogue) -> None:
    """Windows compute within each person (PARTITION BY the person key), never across people,
    and never in the outer query, whose rows are released."""
    select = scope.expression
    for window in select.find_all(exp.Window):
        if window.find_ancestor(exp.Select) is not select:
            continue
        if _is_in(select, outers):
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


def _check_per_person_aggregates(scope: Scope, outers: list[exp.Select],
                                 catalogue: Catalogue) -> None:
    select = scope.expression
    for agg in select.find_all(*PER_PERSON_AGGREGATES):
        if agg.find_ancestor(exp.Select) is not select or isinstance(agg.parent, exp.Window):
            continue  # windowed aggregates are checked as windows
        if _is_in(select, outers) or not _groups_by_person(select, scope, catalogue):
            raise SqlRejected(
                f"{agg.sql_name().lower()}() is allowed only inside a per-person subquery "
                "(one that groups by person_id): elsewhere it can copy one person's value out",
                hint="compute it per person in a CTE, then count or average in the outer query",
            )


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
        return any(_aggregates_of(p.unalias(), tree) for p in tree.expressions)
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
                           and _aggregates_of(p.unalias(), tree)), None)
            if target is not None:
                return True
    return bool(target is not None and _aggregates_of(target.unalias(), tree))


def _output_name(proj: exp.Expression, i: int) -> str:
    """The name a person sees: the alias, else the column name, else the expression's text."""
    if isinstance(proj, exp.Alias) and proj.alias:
        return proj.alias
    if isinstance(proj, exp.Column) and proj.name:
        return proj.name
    return proj.sql(dialect=DIALECT).lower() if len(proj.sql()) <= 60 else f"col_{i}"


def _inside_any(node: exp.Expression, ancestors: list[exp.Expression]) -> bool:
    targets = {id(a) for a in ancestors}
    parent = node.parent
    while parent is not None:
        if id(parent) in targets:
            return True
        parent = parent.parent
    return False


def _aggregates_of(node: exp.Expression, select: exp.Select) -> list[exp.AggFunc]:
    return [a for a in node.find_all(exp.AggFunc) if a.find_ancestor(exp.Select) is select]


def _shape(node: exp.Expression, scope: Scope, catalogue: Catalogue) -> str:
    """Classify an aggregate output column for the disclosure regimes."""
    agg = node.this if isinstance(node, exp.Filter) else node
    if isinstance(agg, exp.Count):
        return "count"
    if isinstance(agg, exp.Sum | exp.Avg):
        if _is_indicator(agg.this):
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
        owner = scope if col.table in scope.sources else _owner(scope, col.table)
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


def _check_measure_filters(tree: exp.Expression, outers: list[exp.Select],
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
            for agg in _aggregates_of(proj, select):
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
                and not _is_in(select, outers):
            continue  # a derived table passing the column through unchanged
        raise SqlRejected(
            "a query that sums or averages a measure may use that measure only as the sum's "
            "argument (or in IS [NOT] NULL): anything else could fix its value and turn the "
            "sum into an exact count, or reveal one person's value",
            hint="filter and group on other columns; count people by bands of the measure in "
            "a query without the sum")


def _check_measure_rows_once(tree: exp.Select, scope: Scope, catalogue: Catalogue) -> None:
    """A summed measure's rows must each count once: every other source of the query may hold
    at most one row per person (a one-row-per-person table, a lookup on its key, or a derived
    table grouped by the person key). A derived table with two rows per person, tagged apart,
    puts one admission in two cells that share everyone but a chosen person: the difference
    of the two sums is that person's value (review round 12)."""
    measures: list[exp.Column] = []
    for proj in tree.expressions:
        for agg in _aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column):
                origin = bare_origin(agg.this, scope, catalogue)
                if origin and origin[1].cls is ColumnClass.MEASURE:
                    measures.append(agg.this)
    if not measures:
        return
    tables = {m.table for m in measures}
    for alias, (_, source) in scope.selected_sources.items():
        if alias not in tables and not _one_per_person(source, catalogue):
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
        if alias != inner.table and not _one_per_person(below, catalogue):
            _refuse_repeated_rows(alias)
    _measure_rows_once_below(inner, source, catalogue)


def _refuse_repeated_rows(alias: str) -> None:
    raise SqlRejected(
        f"{alias!r} can hold several rows per person, so a summed measure joined to it "
        "would count the same rows more than once (and in more than one cell)",
        hint="join tables with one row per person, lookups on their key, or a subquery "
        "grouped by person_id; filter on other rows with EXISTS or IN")


def _one_per_person(source, catalogue: Catalogue) -> bool:
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
            return _one_per_person(only, catalogue) and \
                not select.find(exp.Join)
    return False


def _check_measure_cells(tree: exp.Select, scope: Scope) -> None:
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
        for agg in _aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column) \
                    and not _is_indicator(agg.this):
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
        for agg in _aggregates_of(proj, tree):
            if isinstance(agg, exp.Sum | exp.Avg) and isinstance(agg.this, exp.Column):
                summed |= lineage(agg.this, scope)
    if summed:
        for key in group_keys(tree.args.get("group")):
            if lineage(key, scope) & summed:
                raise SqlRejected(
                    "a sum or average may not be grouped by a key computed from the same "
                    "measure: the sum divided by the key gives an exact count",
                    hint="group by other columns, or count people per band with COUNT")


def _is_indicator(node: exp.Expression) -> bool:
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


def _check_outer(tree: exp.Select, original: exp.Select, catalogue: Catalogue
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
        if _aggregates_of(ordered, tree) or _names_aggregate(ordered, tree):
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
        aggs = _aggregates_of(inner, tree)
        name = _output_name(originals[i] if i < len(originals) else proj, i)
        if inner.sql() in keys or (group_all and not aggs):
            outputs.append(OutputColumn(name, "group_key"))
            continue
        if not aggs and not inner.find(exp.Column):
            outputs.append(OutputColumn(name, "constant"))  # a label such as 'Total'
            continue
        units = [a.parent if isinstance(a.parent, exp.Filter) else a for a in aggs]
        bare = [c for c in inner.find_all(exp.Column)
                if not _inside_any(c, units) and c.find_ancestor(exp.Select) is tree]
        if not aggs or bare:
            raise SqlRejected(
                f"output column {name!r} is neither an aggregate nor a group key",
                hint="every output column must be COUNT/SUM/AVG(...) or appear in GROUP BY",
            )
        for agg in aggs:
            _check_distinct_count(agg, scope, catalogue)
        any_agg = True
        shape = _shape(inner, scope, catalogue)
        core = inner.this if isinstance(inner, exp.Filter) else inner
        additive = shape == "count" or (shape == "measure" and isinstance(core, exp.Sum))
        outputs.append(OutputColumn(name, "aggregate", shape, additive))
    _check_measure_cells(tree, scope)
    _check_measure_rows_once(tree, scope, catalogue)
    if not any_agg:
        raise SqlRejected("the query (or a branch of its UNION) has no aggregate: the gateway releases aggregate tables only",
                          hint="add COUNT(DISTINCT person_id) or another aggregate")
    projected = {p.unalias().sql() for p in tree.expressions}
    for key in group_keys(group):
        if _aggregates_of(key, tree):
            raise SqlRejected("an aggregate may not be a group key")
        if not group_all and key.sql() not in projected:
            raise SqlRejected(
                f"GROUP BY {key.sql(dialect=DIALECT)[:60]} is not an output column: every group "
                "key must be released, so that each row's cells are judged on its own group",
                hint="add the expression to the SELECT list")
    return tuple(outputs)
