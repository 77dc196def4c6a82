"""Typed errors of the pipeline; the app maps each to its HTTP status and the JSON error shape."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class GatewayError(Exception):
    """A refusal or failure a client can act on. Never carries row data."""

    status = 400
    code = "bad_request"
    #: the audit decision word for this kind of error
    decision = "refused"

    def __init__(
        self, message: str, *, reasons: list[Any] | None = None, hint: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reasons = reasons or []
        self.hint = hint
        if code:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message,
                          "reasons": self.reasons, "hint": self.hint}}


#: what the engine raises when a row pairs two people's sources (gateway/sql/scans.py)
PERSON_LINK_BROKEN = "sde-gateway: one row holds two people"
#: ... and what the caller is told (gateway/engine.py)
PERSON_LINK_MESSAGE = ("a row of the query pairs two different people: some join is not on "
                       "person_id, so one person's values would stand beside other people's")
PERSON_LINK_HINT = ("join person-level tables ON a.person_id = b.person_id; filter with IN or "
                    "EXISTS")


class SqlRejected(GatewayError):
    status, code = 400, "sql_rejected"


class SqlParseError(GatewayError):
    status, code = 400, "sql_parse_error"


class Unauthenticated(GatewayError):
    status, code = 401, "unauthenticated"


class PolicyDenied(GatewayError):
    status, code, decision = 403, "policy_denied", "denied"


class Forbidden(GatewayError):
    status, code, decision = 403, "forbidden", "denied"


class TooLarge(GatewayError):
    status, code = 413, "too_large"


class ResultTooLarge(GatewayError):
    status, code, decision = 413, "result_too_large", "failed"


class QueryTimeout(GatewayError):
    status, code, decision = 504, "query_timeout", "failed"


class QueryFailed(GatewayError):
    """The engine refused the query at run time (a type error, an out-of-range cast)."""

    status, code, decision = 400, "query_failed", "failed"


class BudgetExhausted(GatewayError):
    """The project's privacy budget cannot pay for the query; nothing ran."""

    status, code, decision = 429, "budget_exhausted", "refused"


class AuditUnavailable(GatewayError):
    status, code, decision = 503, "audit_unavailable", "failed"


# -- the shape every error leaves in, for the OpenAPI ----------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="A stable, machine-readable code, e.g. sql_rejected, "
                      "policy_denied, budget_exhausted, rate_limited, audit_unavailable.")
    message: str = Field(description="What was refused or failed, for a person.")
    reasons: list[JsonValue] = Field(description="Structured reasons: the rules of a denial "
                                     "(rule, message, policy), the fields of an invalid "
                                     "request, the figures of a budget refusal.")
    hint: str | None = Field(description="What is allowed instead, or what to do next.")


class ErrorBody(BaseModel):
    """Every error leaves in this shape, whatever its status; never a stack trace."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def _error(code: str, message: str, reasons: list[Any] | None = None,
           hint: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "reasons": reasons or [], "hint": hint}}


#: status -> (description, {example name: example body}); the bodies are real answers.
ERROR_EXAMPLES: dict[int, tuple[str, dict[str, dict[str, Any]]]] = {
    400: ("The SQL does not parse, is not allowed, or the engine refused it; or the body "
          "cannot be read at all (not UTF-8)", {
        "sql_parse_error": _error(
            "sql_parse_error", "the SQL does not parse at line 1, column 14: Invalid "
            "expression / Unexpected token",
            [{"line": 1, "col": 14, "description": "Invalid expression / Unexpected token"}]),
        "sql_rejected": _error(
            "sql_rejected", "SELECT * is not allowed: name the columns you need",
            hint="GET /v1/catalogue lists the columns your project may use"),
        "query_failed": _error(
            "query_failed", "the engine could not run the query (conversion error)",
            hint="check the types and arithmetic of the expressions"),
        "person_link_broken": _error("person_link_broken", PERSON_LINK_MESSAGE,
                                     hint=PERSON_LINK_HINT),
        "invalid_request": _error("invalid_request", "There was an error parsing the body"),
    }),
    401: ("Missing, expired or badly signed bearer token", {
        "unauthenticated": _error("unauthenticated", "missing bearer token",
                                  hint="send 'Authorization: Bearer <token>'"),
    }),
    403: ("The policy does not permit it, or the caller's role may not do it", {
        "policy_denied": _error(
            "policy_denied", "the policy does not permit this query",
            [{"rule": "purpose", "message": "purpose 'marketing' is not permitted",
              "policy": "joint-planning"}], "permitted purposes: ['planning']"),
        "forbidden": _error(
            "forbidden", "audit search is for the ig_auditor role only",
            [{"rule": "role", "message": "roles ['planner']"}],
            "researchers and planners read their own queries at GET /v1/queries/{id}"),
    }),
    404: ("No such query or project that the caller may read (the same answer for both)", {
        "not_found": _error("not_found", "no query 'abc' that you may read"),
    }),
    409: ("The query is not held for review", {
        "conflict": _error("conflict", "query 'abc' is not held for review",
                           hint="GET /v1/reviews lists what is held"),
    }),
    413: ("The request body, or the result, is over its limit", {
        "too_large": _error("too_large", "the request body is over 65536 bytes"),
        "result_too_large": _error("result_too_large", "the result has more than 10000 rows",
                                   hint="aggregate to fewer groups"),
    }),
    422: ("The request does not match its schema (body, query or path parameters)", {
        "invalid_request": _error(
            "invalid_request", "the request body is not valid",
            [{"field": "body.purpose", "message": "Field required"}],
            'send JSON {"sql": ..., "project": ..., "purpose": ...}'),
    }),
    429: ("The privacy budget cannot pay for the query, or the caller's rate limit is reached", {
        "budget_exhausted": _error(
            "budget_exhausted", "project PRJ-0042 has epsilon 0 left; this query needs 1",
            [{"epsilon_requested": 1.0, "delta_requested": 0.0, "project": "PRJ-0042",
              "epsilon_total": 4.0, "epsilon_spent": 4.0, "epsilon_left": 0.0,
              "delta_total": 1e-06, "delta_spent": 0.0, "delta_left": 1e-06,
              "queries_charged": 4}],
            "ask for a smaller epsilon (the answer will be noisier), or ask the data "
            "controller about the project's budget"),
        "rate_limited": _error("rate_limited", "more than 60 requests a minute from p.jones",
                               [{"retry_after_s": 0.95}], "retry in 0.9 s"),
    }),
    503: ("The audit trail or the result store cannot be written (nothing is released), or "
          "no engine slot came free in time", {
        "audit_unavailable": _error(
            "audit_unavailable", "the audit trail cannot be written; nothing is released",
            hint="operators: check the state directory's disk"),
        "engine_busy": _error("engine_busy", "all 4 engine slots are busy; nothing ran",
                              hint="retry shortly"),
    }),
    504: ("The query ran past the time limit", {
        "query_timeout": _error("query_timeout", "the query ran past the time limit of 30 s",
                                hint="narrow the query (fewer joins, a date range)"),
    }),
}
