"""The HTTP app, built from settings (no process-global state): ``create_app(settings)``.

Routes are thin: they hand the request to the pipeline and map its typed errors to HTTP.
Every error, validation errors and unknown paths included, leaves in one JSON shape.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit import AuditTrail, EventFilter, to_csv
from datasets import load_catalogue
from gateway import openapi as api
from gateway.auth import DEV_HMAC_KID, TokenVerifier
from gateway.budget import BudgetLedger
from gateway.disclosure.cellkey import load_secret
from gateway.discovery import Discovery
from gateway.engine import DuckDBEngine
from gateway.errors import GatewayError, TooLarge
from gateway.governance import Governance
from gateway.keyset import KeySet
from gateway.logs import configure_logging
from gateway.operations import Metrics
from gateway.pipeline import Pipeline, QueryRequest
from gateway.rendering import JSONResponse, utf8_text
from gateway.results import ResultStore
from gateway.settings import Settings
from gateway.state import ensure_state
from policies import load_policies

log = structlog.get_logger("sde_gateway.http")

class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: str = Field(pattern="^(release|reject)$")
    reason: str = Field(min_length=3, max_length=2000, description="Why; kept in the audit trail.")


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "sql": "SELECT sex, COUNT(DISTINCT person_id) AS people FROM patients GROUP BY sex",
        "project": "JOINT-PLANNING", "purpose": "planning"}]})

    sql: str = Field(description="One aggregate SELECT in the DuckDB dialect.")
    project: str = Field(max_length=100, description="The project the query is made under.")
    purpose: str = Field(max_length=100, description="The declared purpose.")
    epsilon: float | None = Field(
        None, gt=0, le=100, description="Differential privacy only: the epsilon to spend on "
        "this query (the policy's epsilon_per_query if absent). Ignored by other regimes.")


def create_app(settings: Settings) -> FastAPI:
    configure_logging()
    catalogue = load_catalogue(settings.catalogue_dir)
    policies = load_policies(settings.policies_dir, catalogue)
    keys = ensure_state(settings.state_dir)
    trail = AuditTrail(settings.audit_path, keys.audit_key, keys.checkpoint_key)
    recovered = trail.recover()
    if recovered:
        log.warning("audit_trail_recovered", torn_bytes=recovered["torn_bytes"],
                    set_aside_as=recovered["set_aside_as"])
    engine = DuckDBEngine(settings.data_dir, settings.state_dir, catalogue,
                          memory_limit=settings.memory_limit, threads=settings.threads)
    verifier = _verifier(settings, keys.jwks_path)
    results = ResultStore(settings.state_dir / "results.sqlite")
    ledger = BudgetLedger(settings.state_dir / "budget.sqlite")
    interrupted = ledger.recover()
    metrics = Metrics()
    pipeline = Pipeline(settings, catalogue, policies, engine, verifier, trail, results,
                        ledger, load_secret(settings.state_dir / "keys"), metrics)
    if interrupted:
        log.warning("budget_spends_interrupted", count=interrupted)
        pipeline.audit({"event": "budget_recovered", "decision": "recorded",
                        "interrupted_spends": interrupted})
    governance = Governance(pipeline, keys.audit_key, keys.checkpoint_public_key)
    discovery = Discovery(pipeline)

    app = FastAPI(
        title="sde-gateway",
        version="0.1.0",
        description=api.DESCRIPTION, default_response_class=JSONResponse,
    )
    app.state.pipeline = pipeline
    bearer = HTTPBearer(auto_error=False, description="A signed JWT (RS256 or ES256) whose kid "
                        "names a key in the state directory's keys/jwks.json.")

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = {"X-Request-ID": request.state.request_id}
        if exc.status in (429, 503) and exc.reasons and isinstance(exc.reasons[0], dict) \
                and "retry_after_s" in exc.reasons[0]:
            headers["Retry-After"] = str(max(1, round(exc.reasons[0]["retry_after_s"])))
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                   for e in exc.errors()]
        # Where the fault is: the body, or the query string or path of a GET.
        places = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
        if places <= {"body"}:
            err = GatewayError("the request body is not valid", reasons=reasons,
                               hint='send JSON {"sql": ..., "project": ..., "purpose": ...}',
                               code="invalid_request")
        else:
            err = GatewayError("the request's parameters are not valid", reasons=reasons,
                               hint="see the parameters of this route in /docs",
                               code="invalid_request")
        err.status = 422
        try:
            await run_in_threadpool(_audit_rejection, pipeline, request, err)
        except GatewayError as audit_err:
            err = audit_err
        return JSONResponse(err.body(), status_code=err.status,
                            headers={"X-Request-ID": request.state.request_id})

    @app.exception_handler(Exception)
    async def _defect(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(exc).__name__)
        request_id = getattr(request.state, "request_id", "unknown")
        err = GatewayError(f"internal error; quote request id {request_id}",
                           code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = GatewayError(str(exc.detail), code={400: "invalid_request", 404: "not_found",
                                                  405: "method_not_allowed"}
                           .get(exc.status_code, "http_error"))
        status = exc.status_code
        try:  # a probe of unknown paths is a bad input too: on the record
            await run_in_threadpool(_audit_rejection, pipeline, request, err)
        except GatewayError as audit_err:
            err, status = audit_err, audit_err.status
        return JSONResponse(err.body(), status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.post("/v1/queries", tags=["queries"], response_model=None,
              dependencies=[Depends(bearer)],
              responses={**api.ok(api.QueryResponse, "The released table, or a held one"),
                         **api.errors(400, 401, 403, 413, 422, 429, 503, 504)})
    def submit_query(body: QueryBody, request: Request) -> JSONResponse:
        """Run one aggregate query under a project and purpose; returns the released table."""
        # Already plain JSON values (control.json_value): rendered directly, without
        # FastAPI's generic encoder walking the table again.
        return JSONResponse(pipeline.run(QueryRequest(
            request_id=request.state.request_id,
            authorization=request.headers.get("authorization"),
            sql=body.sql, project=body.project, purpose=body.purpose, epsilon=body.epsilon,
        )))

    @app.post("/v1/queries/explain", tags=["queries"], response_model=None,
              dependencies=[Depends(bearer)],
              responses={**api.ok(api.Explanation, "The decision (permit or deny), what would run"),
                         **api.errors(400, 401, 413, 422, 429, 503)})
    def explain_query(body: QueryBody, request: Request) -> dict[str, Any]:
        """The decision and its reasons, the tables and columns touched, and the SQL that would
        run, without running anything. A denial is an answer here (200), not an error."""
        return pipeline.explain(QueryRequest(
            request_id=request.state.request_id,
            authorization=request.headers.get("authorization"),
            sql=body.sql, project=body.project, purpose=body.purpose, epsilon=body.epsilon,
        ))

    @app.get("/v1/catalogue", tags=["catalogue"], response_model=None,
             dependencies=[Depends(bearer)],
             responses={**api.ok(api.Catalogue, "The caller's projects and what each may use"),
                        **api.errors(401, 503)})
    def read_catalogue(request: Request) -> dict[str, Any]:
        """The datasets, tables and columns each of the caller's projects may use today."""
        return discovery.catalogue(request.state.request_id, request.headers.get("authorization"))

    @app.get("/v1/queries/{query_id}", tags=["queries"], response_model=None,
             dependencies=[Depends(bearer)],
             responses={**api.ok(api.QueryRecord, "The query's outcome and its table or refusal"),
                        **api.errors(401, 404, 422, 503)})
    def read_query(query_id: str, request: Request) -> dict[str, Any]:
        """A past query's status and released result: for its submitter and for IG staff."""
        return governance.query(request.state.request_id,
                                request.headers.get("authorization"), query_id)

    @app.get("/v1/projects/{project_id}/budget", tags=["projects"], response_model=None,
             dependencies=[Depends(bearer)],
             responses={**api.ok(api.Budget, "The project's budget: total, spent, left"),
                        **api.errors(401, 404, 422, 503)})
    def project_budget(request: Request, project_id: str = PathParam(examples=["JOINT-PLANNING"])
                       ) -> dict[str, Any]:
        """A project's privacy budget: total, spent and left, for its members and IG staff."""
        return governance.budget(request.state.request_id,
                                 request.headers.get("authorization"), project_id)

    @app.get("/v1/audit/events", tags=["audit"], response_model=None,
             dependencies=[Depends(bearer)], responses={**api.errors(401, 403, 422, 503), 200: {
                 "model": api.AuditPage, "description": "A page of entries: JSON, or CSV with "
                 "format=csv", "content": {"text/csv": {"schema": {"type": "string"}}}}})
    def audit_events(
        request: Request,
        subject: str | None = None, org: str | None = None, project: str | None = None,
        dataset: str | None = None, table: str | None = None, decision: str | None = None,
        event: str | None = None,
        since: str | None = Query(None, description="ISO time or date, inclusive"),
        until: str | None = Query(None, description="ISO time or date, exclusive"),
        after: int = Query(0, ge=0, description="Return entries after this seq (paging)"),
        limit: int = Query(100, ge=1, le=1000),
        format: str = Query("json", pattern="^(json|csv)$"),
    ) -> Any:
        """Search the audit trail (ig_auditor only); page with ``after``=``next_after``."""
        where = EventFilter(subject, org, project, dataset, table, decision, event, since, until)
        page = governance.events(request.state.request_id,
                                 request.headers.get("authorization"), where, after, limit)
        if format == "csv":
            return PlainTextResponse(utf8_text(to_csv(page["events"])), media_type="text/csv",
                                     headers={"X-Next-After": str(page["next_after"] or "")})
        return page

    @app.get("/v1/reviews", tags=["reviews"], response_model=None,
             dependencies=[Depends(bearer)],
             responses={**api.ok(api.ReviewQueue, "The outputs held for review"),
                        **api.errors(401, 403, 503)})
    def list_reviews(request: Request) -> dict[str, Any]:
        """Outputs held for review (ig_auditor only), with the table to judge."""
        return governance.reviews(request.state.request_id, request.headers.get("authorization"))

    @app.post("/v1/reviews/{query_id}", tags=["reviews"], response_model=None,
              dependencies=[Depends(bearer)],
              responses={**api.ok(api.ReviewOutcome, "Released or rejected, and its audit entry"),
                         **api.errors(400, 401, 403, 409, 413, 422, 503)})
    def decide_review(query_id: str, body: ReviewBody, request: Request) -> dict[str, Any]:
        """Release or reject a held output, with a reason (ig_auditor; never your own)."""
        return governance.review(request.state.request_id, request.headers.get("authorization"),
                                 query_id, body.decision, body.reason)

    @app.get("/v1/audit/verify", tags=["audit"], response_model=None,
             dependencies=[Depends(bearer)],
             responses={**api.ok(api.Verification, "Whether the chain is intact, where it breaks"),
                        **api.errors(401, 403, 503)})
    def audit_verify(request: Request) -> dict[str, Any]:
        """Whether the chain is intact, its length, its head, and the first bad entry."""
        return governance.verify(request.state.request_id, request.headers.get("authorization"))

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus metrics: requests, latency per pipeline stage, cells suppressed, budget
        spent, audit write latency, engine slots. Counts and timings only, never data."""
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["operations"], response_model=None,
             responses={**api.ok(api.Health, "Up, and the audit trail can be written"), 503: {
                 "model": api.Health, "description": "Degraded: the audit trail cannot be "
                 "written, so queries get 503"}})
    def healthz() -> JSONResponse:
        """Liveness, and whether the audit trail can be written (if not, queries get 503)."""
        writable = trail.healthy and os.access(settings.audit_path, os.W_OK)
        body = {"status": "ok" if writable else "degraded", "engine": engine.name,
                "audit": "writable" if writable else f"failing: {trail.last_error}"}
        return JSONResponse(body, status_code=200 if writable else 503)

    # Added last = outermost: the request id exists before the body limit can refuse.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, pipeline=pipeline)
    app.add_middleware(RequestContext, metrics=metrics)
    return app


def _verifier(settings: Settings, jwks_path: Path) -> TokenVerifier:
    """The token verifier over the JWKS file, with the HMAC key only if development mode is
    explicitly on, and then said loudly at every start."""
    keyset = KeySet(jwks_path, check_every_s=settings.token_keys_check_s,
                    refresh_unknown_every_s=settings.token_keys_check_s)
    secret = None
    if settings.dev_allow_hs256 and settings.dev_hmac_secret is not None:
        secret = settings.dev_hmac_secret.get_secret_value().encode()
        log.warning("DEVELOPMENT_MODE_HS256_TOKENS_ACCEPTED",
                    message="anyone holding the development HMAC secret can sign any caller's "
                    "token; never run this mode with real data", kid=DEV_HMAC_KID)
    elif settings.dev_hmac_secret is not None:
        log.info("dev_hmac_secret_ignored", reason="dev_allow_hs256 is off: HS256 is refused")
    log.info("token_keys_loaded", jwks=str(jwks_path), kids=sorted(keyset.kids))
    return TokenVerifier(keyset, settings.token_issuer, settings.token_audience,
                         settings.token_leeway_s, dev_hmac_secret=secret)


def _audit_rejection(pipeline: Pipeline, request: Request | None, err: GatewayError,
                     request_id: str | None = None) -> None:
    """Audit a request refused before the pipeline could take it. Raises if the trail is down."""
    pipeline.audit({
        "event": "request_rejected",
        "request_id": request_id or request.state.request_id,
        "path": request.url.path if request else None,
        "decision": "refused", "error_code": err.code, "error": err.message,
    })


class RequestContext:
    """Give every request an id, bind it to the logs, and return it in X-Request-ID; log and
    count each request when it ends (method, route, status, duration: never SQL or data)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            log.info("request", request_id=request_id, method=scope["method"], route=path,
                     status=status, duration_ms=round(elapsed * 1000, 2))


class BodyLimit:
    """Refuse bodies over the limit (413, audited), declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int, pipeline: Pipeline) -> None:
        self.app = app
        self.limit = limit
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        # Read the body here (it is small by definition) so that a streamed body with no
        # declared length is measured before the app sees any of it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id", uuid.uuid4().hex)
        err = TooLarge(f"the request body is over {self.limit} bytes")
        status = err.status
        try:
            await run_in_threadpool(_audit_rejection, self.pipeline, None, err, request_id)
        except GatewayError as audit_err:
            err, status = audit_err, audit_err.status
        body = JSONResponse(err.body(), status_code=status)
        await body(scope, _noop_receive, send)


async def _noop_receive() -> Message:
    return {"type": "http.disconnect"}
