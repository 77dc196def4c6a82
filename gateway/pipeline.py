"""One request, start to finish: authenticate, analyse, decide, rewrite, execute, control, audit.

The stages run in this order and nowhere else; routes only call ``Pipeline.run``. The audit
write wraps the whole, so refusals, denials and failures are recorded as well as releases, and
an entry is durable before anything is returned: if it cannot be written, nothing is released.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import structlog

from audit import AuditTrail, AuditWriteError
from datasets import Catalogue
from gateway.auth import TokenVerifier
from gateway.budget import BudgetLedger
from gateway.control import (
    count_scales,
    inline_contributions,
    match_contributions,
    needs_row_bound,
    release,
)
from gateway.disclosure import dp
from gateway.disclosure.cellkey import SECRET_PARAM
from gateway.disclosure.threshold import check_outputs
from gateway.dp_stage import DpStage
from gateway.engine import DuckDBEngine, RawResult
from gateway.errors import (
    AuditUnavailable,
    GatewayError,
    PolicyDenied,
    Unauthenticated,
)
from gateway.operations import EngineSlots, Metrics, RateLimited, RateLimiter, StageTimer
from gateway.records import (
    caller_fields,
    columns_used,
    decision_fields,
    obligation_fields,
    person_level,
    request_record,
)
from gateway.results import ResultStore
from gateway.settings import Settings
from gateway.sql.analysis import Analysis, analyse
from gateway.sql.rewrite import Plan, rewrite
from policies import Caller, Decision, Facts, Obligations, PolicySet, decide

log = structlog.get_logger("sde_gateway.pipeline")


@dataclass(frozen=True)
class QueryRequest:
    request_id: str
    authorization: str | None
    sql: str
    project: str
    purpose: str
    #: dp only: the epsilon to spend (the policy's epsilon_per_query if None)
    epsilon: float | None = None


class StateUnavailable(GatewayError):
    status, code, decision = 503, "state_unavailable", "failed"


class InternalError(GatewayError):
    """A defect in the gateway. Audited; the client gets no detail beyond the request id."""

    status, code, decision = 500, "internal_error", "failed"


class Pipeline:
    def __init__(
        self, settings: Settings, catalogue: Catalogue, policies: PolicySet,
        engine: DuckDBEngine, verifier: TokenVerifier, trail: AuditTrail, results: ResultStore,
        ledger: BudgetLedger, cell_key_secret: str, metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.policies = policies
        self.engine = engine
        self.verifier = verifier
        self.trail = trail
        self.results = results
        self.ledger = ledger
        self._cell_key_secret = cell_key_secret
        self.metrics = metrics or Metrics()
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.slots = EngineSlots(settings.max_concurrent_queries, settings.queue_timeout_s,
                                 self.metrics)
        self.dp = DpStage(settings, catalogue, engine, ledger, self.slots)
        self._analyse = lru_cache(maxsize=1024)(self._analyse_uncached)
        # The rewrite is a pure function of the SQL and the obligations (which people, which
        # regime); under load the same queries come again and again.
        self._rewrite = lru_cache(maxsize=1024)(self._rewrite_uncached)

    def today(self) -> date:
        return self.settings.today or date.today()

    # -- stages -------------------------------------------------------------------------

    def _analyse_uncached(self, sql: str) -> Analysis:
        return analyse(sql, self.catalogue, max_chars=self.settings.max_sql_chars,
                       max_depth=self.settings.max_sql_depth)

    def _rewrite_uncached(self, sql: str, obligations: Obligations, cell_keys: bool) -> Plan:
        return rewrite(self._analyse(sql), obligations, self.catalogue, self.settings.row_cap,
                       cell_keys=cell_keys)

    def _decide(self, caller: Caller, req: QueryRequest, analysis: Analysis) -> Decision:
        facts = Facts(caller=caller, project=req.project, purpose=req.purpose,
                      tables=analysis.tables, columns=analysis.columns, today=self.today())
        return decide(facts, self.policies, self.catalogue)

    def _row_bound(self, analysis: Analysis, plan: Plan, raw: RawResult,
                   record: dict[str, Any], *, rounded: bool,
                   deadline: float | None = None) -> dict[int, int]:
        """Each count column's rounding or perturbation scale (control.count_scales), running
        the plan's row-bound query first where the scales need it."""
        bound = None
        if needs_row_bound(analysis, plan, raw):
            record["row_bound_sql"] = plan.row_bound.sql
            got = self.engine.execute(plan.row_bound.sql, timeout_s=self.settings.query_timeout_s,
                                      row_cap=1, deadline=deadline)
            bound = got.rows[0] if got.rows else [None] * (len(plan.row_bound.columns) + 1)
        scales, record["cells_per_person"] = count_scales(analysis, plan, raw, bound,
                                                          rounded=rounded)
        return scales

    # -- the whole ----------------------------------------------------------------------

    def explain(self, req: QueryRequest) -> dict[str, Any]:
        """The decision for a query, and what would run, without running anything."""
        started = time.perf_counter()
        record = request_record("explain", req)
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(caller_fields(caller))
            self._limit(caller)
            analysis = self._analyse(req.sql)
            record.update(tables=sorted(analysis.tables), columns=columns_used(analysis))
            decision = self._decide(caller, req, analysis)
            record.update(decision_fields(decision))
            body: dict[str, Any] = {
                "query_id": req.request_id,
                "decision": "permit" if decision.permitted else "deny",
                "policy": {"id": decision.policy_id, "legal_basis": decision.legal_basis},
                "reasons": [{"rule": r.rule, "message": r.message} for r in decision.reasons],
                "hint": decision.hint,
                "datasets": list(decision.datasets),
                "tables": sorted(analysis.tables),
                "columns": columns_used(analysis),
                "outputs": [{"name": o.name, "kind": o.kind, "shape": o.shape or None}
                            for o in analysis.outputs],
            }
            if decision.permitted:
                output = decision.obligations.output
                body.update(obligations=obligation_fields(decision), output=output.describe())
                if output.regime == "dp" and person_level(analysis, self.catalogue):
                    plan = self.dp.plan(analysis, decision)
                    mech = dp.build(plan, self.dp.epsilon(req, decision),
                                    output.delta_per_query)
                    body.update(executed_sql=plan.sql, contributions_sql=None,
                                dp=mech.describe(), budget=self.ledger.budget(
                                    req.project, output.epsilon_budget,
                                    output.delta_budget).as_dict())
                else:
                    check_outputs(analysis.outputs)
                    plan = rewrite(analysis, decision.obligations, self.catalogue,
                                   self.settings.row_cap,
                                   cell_keys=output.regime == "cell_key")
                    body.update(executed_sql=plan.sql,
                                contributions_sql=plan.contributions.sql
                                if plan.contributions else None)
        except GatewayError as err:
            self._close(record, started, err.decision, error=err)
            raise
        record["explain_outcome"] = body["decision"]
        self._close(record, started, "explained")
        return body

    def run(self, req: QueryRequest) -> dict[str, Any]:
        started = time.perf_counter()
        record = request_record("query", req)
        caller: Caller | None = None
        auth_error: Unauthenticated | None = None
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(caller_fields(caller))
        except Unauthenticated as err:
            auth_error = err
        # Write-ahead: the request is on record before any work is done for it. If it cannot
        # be written, nothing is done (AuditUnavailable, 503).
        self.audit({**record, "event": "query_received"})
        timer = StageTimer(self.metrics)
        stage = timer.enter("authenticate")
        try:
            if auth_error is not None:
                raise auth_error
            self._limit(caller)
            stage = timer.enter("analyse")
            analysis = self._analyse(req.sql)
            record.update(tables=sorted(analysis.tables), columns=columns_used(analysis))
            stage = timer.enter("decide")
            decision = self._decide(caller, req, analysis)
            record.update(decision_fields(decision))
            if not decision.permitted:
                raise PolicyDenied(
                    "the policy does not permit this query",
                    reasons=[{"rule": r.rule, "message": r.message,
                              "policy": decision.policy_id} for r in decision.reasons],
                    hint=decision.hint,
                )
            output = decision.obligations.output
            record["regime"] = output.regime
            record["obligations"] = obligation_fields(decision)
            if output.regime == "dp" and person_level(analysis, self.catalogue):
                stage = timer.enter("dp")
                body = self.dp.run(req, caller, analysis, decision, record)
            else:
                check_outputs(analysis.outputs)
                stage = timer.enter("rewrite")
                cell_keys = output.regime == "cell_key"
                plan = self._rewrite(req.sql, decision.obligations, cell_keys)
                record["executed_sql"] = plan.sql
                params = {SECRET_PARAM: self._cell_key_secret} if cell_keys and \
                    plan.person_level else None
                stage = timer.enter("execute")
                with self.slots.slot():
                    # one time limit for the request, not for each of its queries (the row
                    # bound ran as long again as the query: review round 24)
                    deadline = time.monotonic() + self.settings.query_timeout_s
                    # a LIMIT is taken after withholding: the rows to the cap, in order
                    raw = self.engine.execute(plan.sql, timeout_s=self.settings.query_timeout_s,
                                              row_cap=self.settings.row_cap, params=params,
                                              deadline=deadline,
                                              keep_first=plan.limit is not None)
                    contributions = None
                    if (plan.contributions is not None
                            and plan.contributions.inline_offset is not None):
                        contributions = inline_contributions(plan, raw)
                    elif plan.contributions is not None:
                        record["contributions_sql"] = plan.contributions.sql
                        contributions = match_contributions(plan, raw, self.engine.execute(
                            plan.contributions.sql, timeout_s=self.settings.query_timeout_s,
                            row_cap=self.settings.row_cap, deadline=deadline))
                    per_person = self._row_bound(analysis, plan, raw, record,
                                                 rounded=not cell_keys, deadline=deadline)
                stage = timer.enter("control")
                body = release(analysis, plan, raw, output, contributions, per_person)
        except GatewayError as err:
            timer.enter("audit")
            self._close(record, started, err.decision, error=err)
            try:
                self._keep(req, caller, err.decision, err.body())
            except StateUnavailable as keep_err:  # the refusal stands; it is audited
                log.error("outcome_not_kept", request_id=req.request_id, error=keep_err.message)
            timer.close()
            raise
        except Exception as exc:  # a defect: audit it, tell the client nothing of it
            log.exception("pipeline_defect", stage=stage, request_id=req.request_id)
            err = InternalError(f"internal error in stage {stage}; quote request id "
                                f"{req.request_id}")
            record["defect"] = type(exc).__name__
            self._close(record, started, "failed", error=err)
            raise err from None
        timer.enter("audit")
        spent = body.pop("_dp", None)  # (fingerprint, mechanisms) of a dp spend
        record["rows_withheld"] = body.pop("_rows_withheld", 0)
        held = "held_because" in body["disclosure"]
        status = "held" if held else "released"
        record.update(rows_released=0 if held else len(body["rows"]),
                      cells_suppressed=[{"row": s["row"], "column": s["column"]}
                                        for s in body["disclosure"]["suppressed"]],
                      epsilon_spent=body["disclosure"].get("epsilon_spent"))
        if held:
            record["held_because"] = body["disclosure"]["held_because"]
        response = {
            "query_id": req.request_id, "status": status, **body,
            "policy": {"id": decision.policy_id, "legal_basis": decision.legal_basis},
        }
        # Keep the result first, then audit it: if the entry cannot be written the kept
        # result is withdrawn, so nothing is ever readable that the trail does not show.
        try:
            self._keep(req, caller, status, response)
        except StateUnavailable as err:
            self.dp.settle(req, spent, None)
            self._close(record, started, "failed", error=err)
            raise
        try:
            entry = self._close(record, started, status)
        except AuditUnavailable:
            self.dp.settle(req, spent, None)
            self.results.delete(req.request_id)
            raise
        self.dp.settle(req, spent, response)
        timer.close()
        regime = body["disclosure"]["regime"]
        self.metrics.suppressed.labels(regime).inc(len(body["disclosure"]["suppressed"]))
        if body["disclosure"].get("epsilon_spent"):
            self.metrics.epsilon.labels(req.project).inc(body["disclosure"]["epsilon_spent"])
        if held:  # nothing leaves until an IG reviewer releases it
            response = {**response, "rows": []}
        response["audit"] = {"seq": entry["seq"], "hash": entry["hash"]}
        return response

    def _keep(self, req: QueryRequest, caller: Caller | None, status: str,
              body: dict[str, Any]) -> None:
        try:
            self.results.put(req.request_id, caller.sub if caller else None, req.project,
                             status, body)
        except sqlite3.Error as exc:
            raise StateUnavailable("the result store cannot be written; nothing is released",
                                   hint="operators: check the state directory's disk") from exc

    def _close(self, record: dict[str, Any], started: float, decision: str,
               error: GatewayError | None = None) -> dict[str, Any]:
        record["decision"] = decision
        if error is not None:
            record.update(error_code=error.code, error=error.message,
                          reasons=record.get("reasons") if decision == "denied"
                          else error.reasons)
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self.metrics.outcomes.labels(record.get("regime") or "none", decision).inc()
        return self.audit(record)

    def _limit(self, caller: Caller) -> None:
        try:
            self.limiter.check(caller.sub)
        except RateLimited:
            self.metrics.rate_limited.inc()
            raise

    def authenticate(self, record: dict[str, Any], authorization: str | None) -> Caller:
        """Verify the token for a read endpoint: the subject and org go into ``record``; a bad
        token (401) or a caller over the rate limit (429) is audited as refused, then raised."""
        try:
            caller = self.verifier.verify(authorization)
        except Unauthenticated as err:
            self.audit({**record, "decision": "refused", "error_code": err.code,
                        "error": err.message})
            raise
        record.update(subject=caller.sub, org=caller.org)
        try:  # reads count against the same per-subject limit as queries
            self._limit(caller)
        except RateLimited as err:
            self.audit({**record, "decision": "refused", "error_code": err.code})
            raise
        return caller

    def audit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one entry durably, or raise AuditUnavailable: the caller releases nothing."""
        t0 = time.perf_counter()
        try:
            entry = self.trail.append(record)
            self.metrics.audit_write.observe(time.perf_counter() - t0)
        except AuditWriteError as exc:
            log.error("audit_write_failed", error=str(exc))
            raise AuditUnavailable("the audit trail cannot be written; nothing is released",
                                   hint="operators: check the state directory's disk") from None
        log.info("audited", seq=entry["seq"], decision=record.get("decision"),
                 kind=record.get("event"), subject=record.get("subject"))
        return entry
