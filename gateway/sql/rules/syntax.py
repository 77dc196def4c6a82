"""The allow-list: which statements, node types, functions, casts, joins and tables a query may
use at all. Anything the gateway does not know is refused, never a deny-list and never a regex;
the engine is hardened as well (gateway.engine), so a gap here is not a gap in the
environment."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError

from datasets import Catalogue
from datasets.catalogue import ENGINE_ONLY
from gateway.errors import SqlParseError, SqlRejected
from gateway.sql.tree import DIALECT, MARGINS, is_in, later_branch, outer_selects

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


_T = exp.DataType.Type


#: Types a CAST may produce: the ones the released table can carry as plain JSON. (sqlglot
#: reads DuckDB's TIMESTAMP as TIMESTAMPNTZ; a time zone is not among them.)
CAST_TYPES = frozenset({_T.INT, _T.BIGINT, _T.SMALLINT, _T.TINYINT, _T.DOUBLE, _T.FLOAT,
                        _T.DECIMAL, _T.VARCHAR, _T.TEXT, _T.CHAR, _T.DATE, _T.TIMESTAMP,
                        _T.TIMESTAMPNTZ, _T.BOOLEAN})


#: Functions sqlglot leaves as Anonymous that are allowed, by lower-case name.
ALLOWED_ANONYMOUS = frozenset({"date_part", "datepart"})


def check_output_names(tree: exp.Expression) -> None:
    """No select may name two of its columns alike. The engine reads a repeated name (in any
    case) as the *first* column so named, and ORDER BY as the last, while the rewrite refers
    to the person key and to each aggregate by its name: ``g.event_date AS k, g.person_id AS
    k`` made the gateway count event dates as the people behind a cell (review round 22)."""
    for select in tree.find_all(exp.Select):
        if later_branch(select):
            continue  # a UNION takes its column names from its first branch
        seen: set[str] = set()
        for name in select.named_selects:
            if name.lower() in seen:
                raise SqlRejected(
                    f"the column name {name!r} is used twice in one SELECT",
                    hint="give each column its own name with AS (a column without one is "
                         "named after its column or its value: 'sex' and p.sex are both sex)")
            seen.add(name.lower())


def parse_statements(sql: str) -> list[exp.Expression]:
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


def check_depth(tree: exp.Expression, max_depth: int) -> None:
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise SqlRejected(f"the query is nested more than {max_depth} levels deep",
                              code="sql_too_deep")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def check_nodes(tree: exp.Select | exp.Union) -> None:
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
        if typ is exp.Select and node.args.get("distinct") and is_in(node, outers):
            raise SqlRejected("SELECT DISTINCT on the outer query returns row-level values",
                              hint="use GROUP BY with COUNT(...)")
        if typ in MARGINS and not is_in(node.find_ancestor(exp.Select), outers):
            raise SqlRejected(f"{typ.__name__.upper()} is allowed on the outer query only")
        if typ is exp.DataType and node.this not in CAST_TYPES:
            raise SqlRejected(f"casting to {node.sql(dialect=DIALECT)} is not allowed",
                              hint="cast to INTEGER, BIGINT, DOUBLE, DECIMAL, VARCHAR, DATE, "
                              "TIMESTAMP or BOOLEAN")
        if typ is exp.Limit:
            n = node.expression
            if not (isinstance(n, exp.Literal) and n.is_int and int(n.this) >= 0):
                raise SqlRejected("LIMIT takes a whole number of rows")
            if is_in(node.parent, outers) and node.parent is not tree:
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
    level = "the outer query" if is_in(parent, outers) else "a subquery"
    return f" (in {clause} of {level})"


def _construct(node: exp.Expression) -> str:
    if isinstance(node.parent, exp.Table) and isinstance(node, exp.Func):
        return f"table function {node.sql_name().lower()}() in FROM"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}()"
    if isinstance(node, exp.Window):
        return "a window function (OVER ...)"
    return f"{type(node).__name__} ({node.sql(dialect=DIALECT)[:60]!r})"


def check_tables(tree: exp.Select, catalogue: Catalogue) -> set[str]:
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

