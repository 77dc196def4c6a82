"""Typed errors of the pipeline; the app maps each to its HTTP status and the JSON error shape."""

from __future__ import annotations

from typing import Any


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
