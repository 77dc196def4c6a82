"""One request, start to finish: authenticate, analyse, decide, rewrite, execute, control, audit.

The stages run in this order and nowhere else; routes only call ``Pipeline.run``. The audit
write wraps the whole, so refusals, denials and failures are recorded as well as releases, and
an entry is durable before anything is returned: if it cannot be written, nothing is released.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

import structlog
from sqlglot import exp

from audit import AuditTrail, AuditWriteError
from datasets import Catalogue
from gateway.auth import TokenVerifier
from gateway.budget import BudgetLedger, LedgerUnavailable
from gateway.control import (
    count_scales,
    inline_contributions,
    json_value,
    match_contributions,
    needs_row_bound,
    release,
)
from gateway.disclosure import dp
from gateway.disclosure.cellkey import SECRET_PARAM
from gateway.disclosure.threshold import check_outputs
from gateway.engine import DuckDBEngine, RawResult
from gateway.errors import (
    AuditUnavailable,
    BudgetExhausted,
    GatewayError,
    PolicyDenied,
    SqlRejected,
    Unauthenticated,
)
from gateway.operations import Busy, EngineSlots, Metrics, RateLimited, RateLimiter, StageTimer
from gateway.results import ResultStore
from gateway.settings import Settings
from gateway.sql.analysis import Analysis, analyse
from gateway.sql.dp_rewrite import DpPlan, rewrite_dp
from gateway.sql.rewrite import Plan, rewrite
from gateway.sql.scans import safe_casts
from gateway.sql.tree import DIALECT
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




    # -- differential privacy -------------------------------------------------------------

    def _dp_plan(self, analysis: Analysis, decision: Decision) -> DpPlan:
        output = decision.obligations.output
        return rewrite_dp(analysis, decision.obligations, self.catalogue,
                          max_cells=output.max_cells_per_person,
                          max_rows=output.max_rows_per_cell, row_cap=self.settings.row_cap)

    def _dp_epsilon(self, req: QueryRequest, decision: Decision) -> float:
        output = decision.obligations.output
        epsilon = req.epsilon if req.epsilon is not None else output.epsilon_per_query
        if not MIN_EPSILON <= epsilon <= output.epsilon_budget:
            # below MIN_EPSILON the noise is meaningless and its scale overflows (review
            # round 28: epsilon 1e-310 made an infinite Laplace scale, a 500)
            raise SqlRejected(f"epsilon {epsilon:g} is outside [{MIN_EPSILON:g}, "
                              f"{output.epsilon_budget:g}] (the project's whole budget)",
                              code="invalid_epsilon",
                              hint=f"ask for an epsilon of at least {MIN_EPSILON:g}, and no "
                              "more than the budget left")
        return epsilon

    def _constants(self, analysis: Analysis) -> dict[int, Any]:
        """The value of each constant label of a dp query, as the engine computes it: the dp
        query leaves them out, and reading them off the syntax tree released ``-1``, ``NULL``
        or ``DATE '2025-01-01'`` as their SQL text (review round 39). They read no column."""
        tree = analysis.tree
        at = [i for i, o in enumerate(analysis.outputs) if o.kind == "constant"]
        if not at or not isinstance(tree, exp.Select):
            return {}
        labels = [tree.expressions[i].unalias() for i in at]
        if any(label.find(exp.Column, exp.Table, exp.Select) for label in labels):
            # the analysis makes a column constant only if it reads nothing; run nothing else
            raise SqlRejected("a constant output column reads data",
                              hint="name each label as a literal")
        select = exp.select(*[exp.alias_(label.copy(), f"c{i}")
                              for i, label in zip(at, labels, strict=True)])
        safe_casts(select)
        got = self.engine.execute(select.sql(dialect=DIALECT),
                                  timeout_s=self.settings.query_timeout_s, row_cap=1)
        return dict(zip(at, got.rows[0], strict=True))

    def _run_dp(self, req: QueryRequest, caller: Caller, analysis: Analysis,
                decision: Decision, record: dict[str, Any]) -> dict[str, Any]:
        """Plan, price, spend, run, noise. Returns the body, or a stored answer's body."""
        output = decision.obligations.output
        plan = self._dp_plan(analysis, decision)
        epsilon = self._dp_epsilon(req, decision)
        mech = dp.build(plan, epsilon, output.delta_per_query)
        record["executed_sql"] = plan.sql
        constants = self._constants(analysis)  # before anything is spent
        fingerprint = hashlib.sha256(json.dumps(
            [req.project, decision.policy_id, req.sql, repr(epsilon), output.delta_per_query,
             self.engine.data_version]).encode()).hexdigest()
        reservation = self.ledger.reserve(
            project=req.project, fingerprint=fingerprint, request_id=req.request_id,
            subject=caller.sub, epsilon=mech.epsilon_spent, delta=mech.delta_spent,
            epsilon_total=output.epsilon_budget, delta_total=output.delta_budget)
        budget = reservation.budget
        if reservation.answer is not None:
            record["repeat_of"] = reservation.answer["query_id"]
            body = {k: reservation.answer[k] for k in ("columns", "rows", "disclosure")}
            body["disclosure"] = {**body["disclosure"], "epsilon_spent": 0.0,
                                  "delta_spent": 0.0, "epsilon_left": budget.epsilon_left,
                                  "repeat_of": reservation.answer["query_id"],
                                  "note": "an identical query was answered before: its answer "
                                  "is returned and nothing is spent"}
            return body
        if not reservation.spent:
            figures = {"epsilon_requested": mech.epsilon_spent,
                       "delta_requested": mech.delta_spent, **budget.as_dict()}
            raise BudgetExhausted(
                f"project {req.project} has epsilon {budget.epsilon_left:.6g} left; this query "
                f"needs {mech.epsilon_spent:.6g}", reasons=[figures],
                hint="ask for a smaller epsilon (the answer will be noisier), or ask the data "
                "controller about the project's budget")
        try:
            self.slots.acquire()
        except Busy:  # the query never reached the engine: take the spend back
            self.ledger.cancel(req.request_id)
            raise
        record["epsilon_spent"] = mech.epsilon_spent
        record["delta_spent"] = mech.delta_spent
        record["dp_fingerprint"] = fingerprint
        try:
            try:
                raw = self.engine.execute(plan.sql, timeout_s=self.settings.query_timeout_s,
                                          row_cap=10 * self.settings.row_cap)
            finally:
                self.slots.release()
            names = [o.name for o in analysis.outputs]
            released = dp.release(mech, raw.rows, names, [o.kind for o in analysis.outputs],
                                  constants)
        except BaseException:
            self._settle(req, (fingerprint, mech), None)
            raise
        disclosure = {
            "regime": "dp", "epsilon_spent": mech.epsilon_spent,
            "delta_spent": mech.delta_spent, "epsilon_left": budget.epsilon_left,
            "delta_left": budget.delta_left, "accuracy": released.accuracy,
            "mechanism": mech.describe(), "suppressed": released.suppressed,
            "rounded_columns": [],
        }
        # as plain JSON like every other regime's values: keys from the data (dates, NaN),
        # constants (1.5 is a Decimal) (review round 30)
        rows = [[json_value(v) for v in row] for row in released.rows]
        return {"columns": names, "rows": rows, "disclosure": disclosure,
                "_dp": (fingerprint, mech)}

    # -- the whole ----------------------------------------------------------------------

    def explain(self, req: QueryRequest) -> dict[str, Any]:
        """The decision for a query, and what would run, without running anything."""
        started = time.perf_counter()
        record = _request_record("explain", req)
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(_caller_fields(caller))
            self._limit(caller)
            analysis = self._analyse(req.sql)
            record.update(tables=sorted(analysis.tables), columns=_columns(analysis))
            decision = self._decide(caller, req, analysis)
            record.update(_decision_fields(decision))
            body: dict[str, Any] = {
                "query_id": req.request_id,
                "decision": "permit" if decision.permitted else "deny",
                "policy": {"id": decision.policy_id, "legal_basis": decision.legal_basis},
                "reasons": [{"rule": r.rule, "message": r.message} for r in decision.reasons],
                "hint": decision.hint,
                "datasets": list(decision.datasets),
                "tables": sorted(analysis.tables),
                "columns": _columns(analysis),
                "outputs": [{"name": o.name, "kind": o.kind, "shape": o.shape or None}
                            for o in analysis.outputs],
            }
            if decision.permitted:
                output = decision.obligations.output
                body.update(obligations=_obligations(decision), output=output.describe())
                if output.regime == "dp" and _person_level(analysis, self.catalogue):
                    plan = self._dp_plan(analysis, decision)
                    mech = dp.build(plan, self._dp_epsilon(req, decision),
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
        record = _request_record("query", req)
        caller: Caller | None = None
        auth_error: Unauthenticated | None = None
        try:
            caller = self.verifier.verify(req.authorization)
            record.update(_caller_fields(caller))
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
            record.update(tables=sorted(analysis.tables), columns=_columns(analysis))
            stage = timer.enter("decide")
            decision = self._decide(caller, req, analysis)
            record.update(_decision_fields(decision))
            if not decision.permitted:
                raise PolicyDenied(
                    "the policy does not permit this query",
                    reasons=[{"rule": r.rule, "message": r.message,
                              "policy": decision.policy_id} for r in decision.reasons],
                    hint=decision.hint,
                )
            output = decision.obligations.output
            record["regime"] = output.regime
            record["obligations"] = _obligations(decision)
            if output.regime == "dp" and _person_level(analysis, self.catalogue):
                stage = timer.enter("dp")
                body = self._run_dp(req, caller, analysis, decision, record)
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
            self._settle(req, spent, None)
            self._close(record, started, "failed", error=err)
            raise
        try:
            entry = self._close(record, started, status)
        except AuditUnavailable:
            self._settle(req, spent, None)
            self.results.delete(req.request_id)
            raise
        self._settle(req, spent, response)
        timer.close()
        regime = body["disclosure"]["regime"]
        self.metrics.suppressed.labels(regime).inc(len(body["disclosure"]["suppressed"]))
        if body["disclosure"].get("epsilon_spent"):
            self.metrics.epsilon.labels(req.project).inc(body["disclosure"]["epsilon_spent"])
        if held:  # nothing leaves until an IG reviewer releases it
            response = {**response, "rows": []}
        response["audit"] = {"seq": entry["seq"], "hash": entry["hash"]}
        return response

    def _settle(self, req: QueryRequest, spent: tuple | None,
                response: dict[str, Any] | None) -> None:
        """Close a dp spend: keep its answer for identical queries, or mark it failed. If the
        ledger cannot take the outcome, the spend stays counted (marked interrupted at the next
        start) and the outcome already decided stands."""
        if spent is None:
            return
        try:
            self.ledger.settle(project=req.project, fingerprint=spent[0],
                               request_id=req.request_id, answer=response)
        except LedgerUnavailable as err:
            log.error("budget_outcome_not_kept", request_id=req.request_id, error=err.message)

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


def _person_level(analysis: Analysis, catalogue: Catalogue) -> bool:
    return any((t := catalogue.table(n)) is not None and t.kind.value == "person_level"
               for n in analysis.tables)








#: dp: the smallest epsilon a query may ask for
MIN_EPSILON = 1e-3
























def _request_record(event: str, req: QueryRequest) -> dict[str, Any]:
    return {"event": event, "request_id": req.request_id, "project": req.project,
            "purpose": req.purpose, "sql": req.sql,
            "sql_sha256": hashlib.sha256(req.sql.encode("utf-8", "replace")).hexdigest()}


def _caller_fields(caller: Caller) -> dict[str, Any]:
    return {"subject": caller.sub, "org": caller.org, "org_type": caller.org_type,
            "roles": list(caller.roles)}


def _decision_fields(decision: Decision) -> dict[str, Any]:
    return {"policy_id": decision.policy_id, "legal_basis": decision.legal_basis,
            "datasets": list(decision.datasets),
            "reasons": [r.__dict__ for r in decision.reasons]}






def _obligations(decision: Decision) -> dict[str, Any]:
    """Which people the query could see: what IG staff search on ("Suffolk residents")."""
    o = decision.obligations
    residence = None
    if o.residence is not None:
        r = o.residence
        where = f"{r.lookup_table}.{r.column}" if r.lookup_table else f"{r.person_table}.{r.column}"
        residence = {"by": where, "values": list(r.values)}
    return {"residents_of": residence, "opt_out_removed": o.remove_opted_out,
            "consent_study": o.consent.study_id if o.consent else None}


def _columns(analysis: Analysis) -> list[dict[str, Any]]:
    clauses: dict[tuple[str, str], set[str]] = {}
    for use in analysis.columns:
        clauses.setdefault((use.table, use.column), set()).add(use.clause)
    return [{"table": t, "column": c, "clauses": sorted(cl)}
            for (t, c), cl in sorted(clauses.items())]


