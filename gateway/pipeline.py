"""One request, start to finish: authenticate, analyse, decide, rewrite, execute, control, audit.

The stages run in this order and nowhere else; routes only call ``Pipeline.run``. The audit
write wraps the whole, so refusals, denials and failures are recorded as well as releases, and
an entry is durable before anything is returned: if it cannot be written, nothing is released.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from functools import lru_cache
from typing import Any

import structlog
from sqlglot import exp

from audit import AuditTrail, AuditWriteError
from datasets import Catalogue
from gateway.auth import TokenVerifier
from gateway.budget import BudgetLedger, LedgerUnavailable
from gateway.disclosure import dp
from gateway.disclosure.cellkey import SECRET_PARAM, PerturbationTable, apply_cell_key
from gateway.disclosure.secondary import MAX_SEARCH_WORK, RowShape, protect, relations
from gateway.disclosure.threshold import (
    Controlled,
    Dominance,
    SuppressedCell,
    apply_threshold,
    check_outputs,
    hold_reason,
)
from gateway.engine import DuckDBEngine, RawResult
from gateway.errors import (
    AuditUnavailable,
    BudgetExhausted,
    GatewayError,
    PolicyDenied,
    ResultTooLarge,
    SqlRejected,
    Unauthenticated,
)
from gateway.operations import Busy, EngineSlots, Metrics, RateLimited, RateLimiter, StageTimer
from gateway.results import ResultStore
from gateway.settings import Settings
from gateway.sql.analysis import Analysis, analyse
from gateway.sql.dp_rewrite import DpPlan, rewrite_dp
from gateway.sql.rewrite import Plan, rewrite
from gateway.sql.tree import grouping_sets, outer_selects
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
        """Per count column, the scale of its rounding or perturbation.

        Rounding to 5 and a perturbation of at most 2 are sized for a count one person moves
        by one, seen once. A count of rows moves by the most rows one person adds to a cell
        (see rewrite.row_bound; review round 17). And each cell a person is in is one more
        draw of the rounding or perturbation: cells differing by one small group, by the
        hundred, average the draws away (rounds 20 to 23). So past FREE_DRAWS cells a person
        (aggregate columns times grouping sets or UNION branches times the groups their rows
        fall in), every count is made coarser, so that n draws tell no more than FREE_DRAWS
        did: a perturbation (``rounded`` false) by the square root of n / FREE_DRAWS, as
        for noise; a rounding base by n / FREE_DRAWS itself, since the share of pairs that
        round apart pins a group of t people with a variance of base * t / n, not base^2 / n.
        The scale is raised to 1, 2, 5, 10, 20, 50, ..., so that it says little about any
        one person.

        The rows are one figure for the whole query, the most over every column that counts
        rows, and every such column takes it. Per column, a column that counts one chosen
        person's rows (a FILTER on her, and a bit of her registration date) got a scale that
        told whether she had rows in it: sixteen columns, her date (review round 32)."""
        per_cell: dict[int, Any] = {}
        counted: set[int] = set()  # the columns that count rows, known from the query alone
        cells = None  # the most (cell, branch) groups one person's rows fall in, if measured
        if plan.cells_index is not None:  # found by the single pass, per cell
            per_cell = {c: max((row[h] for row in raw.rows if row[h] is not None), default=0)
                        for c, h in plan.row_max_index}
            counted = set(per_cell)
            cells = max((row[plan.cells_index] for row in raw.rows
                         if row[plan.cells_index] is not None), default=0)
        elif plan.row_bound is not None and not plan.row_bound.asks_rows and \
                len(raw.rows) * _aggregates(analysis) <= FREE_DRAWS:
            pass  # no one can be in more cells than the result has: no query needed
        elif plan.row_bound is not None:
            record["row_bound_sql"] = plan.row_bound.sql
            got = self.engine.execute(plan.row_bound.sql, timeout_s=self.settings.query_timeout_s,
                                      row_cap=1, deadline=deadline)
            row = got.rows[0] if got.rows else [None] * (len(plan.row_bound.columns) + 1)
            per_cell = dict(zip(plan.row_bound.columns, row[:-1], strict=True))
            counted = set(plan.row_bound.asked)
            cells = row[-1] or 0
        if cells is None and plan.row_bound is not None:  # not asked: at most every cell
            draws = len(raw.rows) * _aggregates(analysis)
        else:
            draws = _draws_per_person(analysis, cells)
        record["cells_per_person"] = draws
        spread = max(1.0, draws / FREE_DRAWS)
        if not rounded:
            spread = math.sqrt(spread)
        # a float: SUM(CASE ... THEN 1.0 ...) counts as a DECIMAL (review round 36)
        most = max((float(per_cell.get(c) or 1) for c in counted), default=1.0)
        return {c: _band(max(1, most if c in counted else 1) * spread)
                for c, o in enumerate(plan.outputs) if o.is_count}

    def _control(self, analysis: Analysis, plan: Plan, raw: RawResult, decision: Decision,
                 contributions: RawResult | list[dict[int, Any]] | None = None,
                 per_person: dict[int, int] | None = None) -> dict[str, Any]:
        output = decision.obligations.output
        per_person = per_person or {}
        width = len(plan.outputs)
        rows = [[_json_value(v) for v in row[:width]] for row in raw.rows]
        names = [o.name for o in plan.outputs]
        disclosure: dict[str, Any] = {"regime": output.regime, "epsilon_spent": None}
        if not plan.person_level:
            disclosure.update(suppressed=[], rounded_columns=[],
                              note="public reference data only: no people behind the cells")
            return {"columns": names, "rows": rows, "disclosure": disclosure}
        people = [[row[i] if i is not None else None for i in plan.people_index]
                  for row in raw.rows]
        dominance = Dominance(output.nk_n, output.nk_k, output.p_ratio)
        if output.regime == "cell_key":
            return self._control_cell_key(analysis, plan, raw, decision, contributions,
                                          names, rows, people, dominance, per_person)
        bases = {c: output.rounding_base * s for c, s in per_person.items() if s > 1}
        controlled = apply_threshold(
            rows, names, [o.kind for o in plan.outputs], [o.is_count for o in plan.outputs],
            people, min_people=output.min_people, rounding_base=output.rounding_base,
            contributions=_match_contributions(plan, raw, contributions), dominance=dominance,
            column_bases=bases,
        )
        # Small groups are withheld first, and secondary suppression protects what is left,
        # on the released (rounded) values: protecting a withheld row showed that it existed,
        # and choosing the cheapest cell by exact values told which of two was smaller
        # (review round 35).
        controlled, withheld, kept = _withhold_small_groups(
            controlled, people, output.min_people, _keyed_rows(analysis, plan, raw))
        controlled = self._secondary(
            analysis, plan, RawResult(raw.columns, [raw.rows[r] for r in kept]), controlled,
            names)
        controlled = _first(controlled, plan.limit, raw.truncated)
        averages = [c for c, shape in enumerate(_shapes(analysis)) if shape == "average"]
        for row in controlled.rows:  # see _significant
            for c in averages:
                row[c] = _significant(row[c])
        # How many rows were withheld is a count of small groups: for the audit trail only.
        # And whether to hold is judged on what would be released, not on withheld rows.
        controlled = replace(controlled, hold=hold_reason(
            controlled, [o.kind for o in plan.outputs]))
        if controlled.hold:
            disclosure["held_because"] = controlled.hold
        disclosure.update(
            min_people=output.min_people,
            rounding_base=output.rounding_base,
            # counts of rows where one person adds several: rounded to a larger base
            column_rounding_bases={names[c]: b for c, b in sorted(bases.items())},
            dominance={"nk_n": dominance.nk_n, "nk_k": dominance.nk_k,
                       "p_ratio": dominance.p_ratio},
            suppressed=[{"row": s.row, "column": s.column, "rule": s.rule}
                        for s in controlled.suppressed],
            rounded_columns=list(controlled.rounded_columns),
        )
        return {"columns": names, "rows": controlled.rows, "disclosure": disclosure,
                "_rows_withheld": withheld}

    def _control_cell_key(self, analysis: Analysis, plan: Plan, raw: RawResult,
                          decision: Decision, contributions: RawResult | list | None, names: list[str],
                          rows: list[list[Any]], people: list[list[int | None]],
                          dominance: Dominance, per_person: dict[int, int]) -> dict[str, Any]:
        output = decision.obligations.output
        keys = [[row[i] if i is not None else None for i in plan.key_index] for row in raw.rows]
        table = PerturbationTable(output.ck_max_perturbation, output.ck_variance)
        # a count of rows where one person adds up to s: the same table, s times as wide; past
        # CK_MAX_SCALE the counts would be noise, and the table too large (review round 19)
        scaled = {c: PerturbationTable(output.ck_max_perturbation * s, output.ck_variance * s * s)
                  for c, s in per_person.items() if 1 < s <= CK_MAX_SCALE}
        too_wide = {c for c, s in per_person.items() if s > CK_MAX_SCALE}
        controlled = apply_cell_key(
            rows, names, [o.kind for o in plan.outputs], _shapes(analysis), people, keys,
            min_people=output.min_people, table=table,
            magnitude_share=output.ck_magnitude_share,
            contributions=_match_contributions(plan, raw, contributions), dominance=dominance,
            column_tables=scaled)
        if too_wide:
            cut = []
            for r, row in enumerate(controlled.rows):
                for c in sorted(too_wide):
                    if row[c] is not None:
                        row[c] = None
                        cut.append(SuppressedCell(r, names[c], "one person's rows are too many "
                                                  "or in too many cells for this column"))
            controlled = replace(controlled, suppressed=controlled.suppressed + tuple(cut))
        controlled, withheld, _ = _withhold_small_groups(
            controlled, people, output.min_people, _keyed_rows(analysis, plan, raw))
        controlled = _first(controlled, plan.limit, raw.truncated)
        disclosure = {
            "regime": "cell_key", "epsilon_spent": None,
            "min_people": output.min_people,
            "perturbation": {"max": table.max_perturbation, "variance": table.variance,
                             "magnitude_share": output.ck_magnitude_share,
                             "column_max": {names[c]: t.max_perturbation
                                            for c, t in sorted(scaled.items())}},
            "suppressed": [{"row": s.row, "column": s.column, "rule": s.rule}
                           for s in controlled.suppressed],
            "rounded_columns": [],
            "note": "counts are perturbed by at most "
                    f"{table.max_perturbation}, the same way every time for the same cell",
        }
        return {"columns": names, "rows": controlled.rows, "disclosure": disclosure,
                "_rows_withheld": withheld}

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

    def _run_dp(self, req: QueryRequest, caller: Caller, analysis: Analysis,
                decision: Decision, record: dict[str, Any]) -> dict[str, Any]:
        """Plan, price, spend, run, noise. Returns the body, or a stored answer's body."""
        output = decision.obligations.output
        plan = self._dp_plan(analysis, decision)
        epsilon = self._dp_epsilon(req, decision)
        mech = dp.build(plan, epsilon, output.delta_per_query)
        record["executed_sql"] = plan.sql
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
                                  _constants(analysis))
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
        rows = [[_json_value(v) for v in row] for row in released.rows]
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
                        contributions = _inline_contributions(plan, raw)
                    elif plan.contributions is not None:
                        record["contributions_sql"] = plan.contributions.sql
                        contributions = self.engine.execute(
                            plan.contributions.sql, timeout_s=self.settings.query_timeout_s,
                            row_cap=self.settings.row_cap, deadline=deadline)
                    per_person = self._row_bound(analysis, plan, raw, record,
                                                 rounded=not cell_keys, deadline=deadline)
                stage = timer.enter("control")
                body = self._control(analysis, plan, raw, decision, contributions, per_person)
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

    def _secondary(self, analysis: Analysis, plan: Plan, raw: RawResult,
                   controlled: Controlled, names: list[str]) -> Controlled:
        """Protect suppressed cells from recovery through the other cells of the same result.

        Where the relations between the result's cells are known, exactly (ROLLUP, CUBE, or
        GROUPING SETS holding the detail level, with keys Python tells apart), the search of
        secondary.protect runs on them. Elsewhere they are not known: UNION branches may
        read the same rows under other aliases, or rows a WHERE splits; grouping sets
        without their details may group by keys that determine one another. There, a column
        with a suppressed cell releases one level (a branch or a grouping set) only, the one
        with the most cells left, and suppresses the others: the cells of one level are
        disjoint groups, and no sum of some of them gives another away (review round 23)."""
        shapes = _row_shapes(plan, raw)
        if shapes is None:
            return controlled
        complete = _relations_known(shapes)
        rels = relations(shapes) if complete else []
        rows = [list(r) for r in controlled.rows]
        extra = []
        additive = [c for c, out in enumerate(plan.outputs)
                    if out.kind == "aggregate" and out.additive]
        work = sum(len({s.row for s in controlled.suppressed if s.column == names[c]})
                   for c in additive) * len(rels)
        quick = work > MAX_SEARCH_WORK  # bounded work per request, not only per column
        for c in additive:
            hidden = {s.row for s in controlled.suppressed if s.column == names[c]}
            values = [row[c] for row in controlled.rows]  # as released: rounded, or None
            if complete:
                more = protect(values, hidden, rels, quick=quick)
                why = "secondary: protects a suppressed cell from recovery through the margins"
            else:
                more = _one_level_only(shapes, hidden)
                why = ("secondary: the result's other tables could give a suppressed cell "
                       "away; one is released")
            for r in sorted(more):
                rows[r][c] = None
                extra.append(SuppressedCell(r, names[c], why))
        return Controlled(rows, controlled.suppressed + tuple(extra),
                          controlled.rounded_columns, controlled.hold)

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


def _shapes(analysis: Analysis) -> list[str]:
    """Per output column: "count", "sum" or "average" (cell_key perturbs each its own way)."""
    out = []
    tree = analysis.tree
    first = tree if isinstance(tree, exp.Select) else None
    for i, o in enumerate(analysis.outputs):
        if o.shape != "measure" or first is None:
            out.append("count" if o.is_count else o.shape)
            continue
        node = first.expressions[i].unalias()
        node = node.this if isinstance(node, exp.Filter) else node
        out.append("average" if isinstance(node, exp.Avg) else "sum")
    return out


AVERAGE_DIGITS = 3


def _significant(value: Any) -> Any:
    """An average to 3 significant figures. Released in full, a double is an exact fraction:
    the sum over the count, and so an exact count beside the rounded one (review round 12)."""
    if not isinstance(value, float) or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{AVERAGE_DIGITS}g}")


def _constants(analysis: Analysis) -> dict[int, Any]:
    out = {}
    for i, o in enumerate(analysis.outputs):
        if o.kind == "constant" and isinstance(analysis.tree, exp.Select):
            node = analysis.tree.expressions[i].unalias()
            out[i] = node.to_py() if isinstance(node, exp.Literal) else node.sql()
    return out


#: dp: the smallest epsilon a query may ask for
MIN_EPSILON = 1e-3

#: cell_key: the widest scale of the perturbation table for a count of rows (D x 100)
CK_MAX_SCALE = 100

#: cells one person may be in before counts are rounded (or perturbed) more coarsely: at
#: this many, four pairs of cells differing by one small group (review round 23)
FREE_DRAWS = 8


def _band(m: Any) -> int:
    """The least of 1, 2, 5, 10, 20, 50, ... that is at least ``m``."""
    m = max(1, math.ceil(float(m or 0)))
    step = 1
    while True:
        for k in (1, 2, 5):
            if k * step >= m:
                return k * step
        step *= 10


def _keyed_rows(analysis: Analysis, plan: Plan, raw: RawResult) -> list[bool]:
    """Per row, whether it carries group keys taken from the data (not only constant labels
    or the NULLs of a margin)."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind == "group_key"]
    out = []
    for row in raw.rows:
        if plan.branch_index is not None:
            kinds = analysis.branch_kinds[row[plan.branch_index]]
            out.append(any(kinds[i] == "group_key" for i in keys))
        elif plan.grouping_index:
            out.append(any(not row[h] for _, h in plan.grouping_index))
        else:
            out.append(bool(keys))
    return out


def _withhold_small_groups(controlled: Controlled, people: list[list[int | None]],
                           min_people: int, keyed: list[bool]
                           ) -> tuple[Controlled, int, list[int]]:
    """A keyed row that no cell shows to rest on at least k people is not released at all: its
    keys alone would describe fewer than k people (a CASE key can carry one person's exact
    date), whatever zero or suppressed cells stand beside them. (Rows without keys, an
    ungrouped total or a constant label, describe nobody and stay.) Returns the rows left,
    how many went, and the positions of those left."""
    drop = {r for r, row in enumerate(people)
            if keyed[r] and max((n or 0 for n in row), default=min_people) < min_people}
    kept = [r for r in range(len(controlled.rows)) if r not in drop]
    if not drop:
        return controlled, 0, kept
    new_index = {}
    rows = []
    for r, row in enumerate(controlled.rows):
        if r not in drop:
            new_index[r] = len(rows)
            rows.append(row)
    cells = tuple(SuppressedCell(new_index[c.row], c.column, c.rule)
                  for c in controlled.suppressed if c.row in new_index)
    return Controlled(rows, cells, controlled.rounded_columns, controlled.hold), len(drop), kept


def _first(controlled: Controlled, limit: int | None, truncated: bool) -> Controlled:
    """The caller's LIMIT, taken from the rows left after withholding (the engine ran to the
    row cap): the rows a LIMIT shows never count the rows withheld (review round 33). If the
    rows read to the cap leave fewer than the LIMIT, and more were left unread, the answer
    would be short by the withheld rows: too large instead."""
    if limit is None:
        return controlled
    if truncated and len(controlled.rows) < limit:
        raise ResultTooLarge(
            f"more than the row cap of groups precede the first {limit} that can be "
            "released", hint="aggregate to fewer groups, or order so that larger groups come "
            "first")
    if len(controlled.rows) <= limit:
        return controlled
    return Controlled(controlled.rows[:limit],
                      tuple(c for c in controlled.suppressed if c.row < limit),
                      controlled.rounded_columns, controlled.hold)


def _row_shapes(plan: Plan, raw: RawResult) -> list[RowShape] | None:
    """Where each row sits: its level (the key columns a grouping set rolls up, or its UNION
    branch, each branch a family of its own) and its keys; None if the result is one
    plain table."""
    keys = [i for i, o in enumerate(plan.outputs) if o.kind != "aggregate"]

    def key_values(row) -> tuple:  # the key columns, aggregate positions blanked
        return tuple(row[i] if i in keys else None for i in range(len(plan.outputs)))

    if plan.grouping_index:
        return [RowShape(0, frozenset(i for i, h in plan.grouping_index if row[h]),
                         key_values(row)) for row in raw.rows]
    if plan.branch_index is None:
        return None
    return [RowShape(row[plan.branch_index], frozenset(), key_values(row)) for row in raw.rows]


def _relations_known(shapes: list[RowShape]) -> bool:
    """Whether every linear relation between the cells is one secondary.relations finds:
    one family of rows (not UNION branches), a level finer than every other (the details,
    of which each cell is then a sum), and no two rows of a level with keys Python cannot
    tell apart (DATE '-infinity' and '0001-01-01' both arrive as date(1, 1, 1))."""
    if len({s.family for s in shapes}) > 1:
        return False
    levels = {s.rolled for s in shapes}
    if not any(all(lv <= other for other in levels) for lv in levels):
        return False
    seen = {(s.rolled, tuple(_hashable_key(v) for v in s.keys)) for s in shapes}
    return len(seen) == len(shapes)


def _hashable_key(v: Any) -> Any:
    return ("nan",) if isinstance(v, float) and v != v else v


def _one_level_only(shapes: list[RowShape], hidden: set[int]) -> set[int]:
    """With a suppressed cell and relations unknown: every level but the one with the most
    cells left to release is suppressed in this column."""
    if not hidden:
        return set()
    level = [(s.family, s.rolled) for s in shapes]
    left = Counter(lv for r, lv in enumerate(level) if r not in hidden)
    if not left:
        return set()
    keep = max(left, key=lambda lv: (left[lv], -level.index(lv)))
    return {r for r, lv in enumerate(level) if lv != keep and r not in hidden}


def _aggregates(analysis: Analysis) -> int:
    return sum(o.kind == "aggregate" for o in analysis.outputs)


def _draws_per_person(analysis: Analysis, cells: int | None) -> int:
    """How many released cells one person can be in: aggregate columns times grouping sets
    or UNION branches, times the groups of the table one person's rows fall in where that
    was measured (``cells``: per person, the (detail cell, branch) groups, summed over
    branches); where it was not, each branch reads one row per person."""
    aggregates = _aggregates(analysis)
    if cells is None:
        return aggregates * sum(grouping_sets(q) for q in outer_selects(analysis.tree))
    return cells * aggregates * (grouping_sets(analysis.tree) if analysis.margins else 1)


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


def _inline_contributions(plan: Plan, raw: RawResult) -> list[dict[int, Any]]:
    """The contributions a single-pass plan returned beside each row: its own, with no keys
    to match (matching on Python's values of the keys took a withheld row's contributions
    for a released row's when the engine told their keys apart and Python did not: round
    33)."""
    c = plan.contributions
    o = c.inline_offset
    return [{col: (row[o + 3 * m] or [], row[o + 3 * m + 1], row[o + 3 * m + 2])
             for m, col in enumerate(c.measure_columns)} for row in raw.rows]


def _match_contributions(plan: Plan, raw: RawResult,
                         result: RawResult | list[dict[int, Any]] | None):
    """Per released row, the contributions behind each SUM/AVG-of-measure cell (by group keys).

    A row without a match gets None for its cells, which the dominance rule treats as
    dominated: unknown contributions are never assumed safe.
    """
    if plan.contributions is None or result is None:
        return None
    if isinstance(result, list):  # a single pass's, row by row already
        return result
    c = plan.contributions
    nkeys = len(c.key_columns)
    by_text = c.keyed_by_text and plan.key_text_index is not None

    def their_key(row) -> tuple:  # a row of the contributions query
        return tuple(row[-1]) if by_text else tuple(row[:nkeys])

    def our_key(row) -> tuple:  # a row of the released query
        return (tuple(row[plan.key_text_index]) if by_text
                else tuple(row[i] for i in c.key_columns))

    by_key = {}
    # Matched on the engine's text of the keys (rewrite.key_text), which tells apart what the
    # engine tells apart. A key seen twice all the same cannot be matched: its cells count as
    # unknown.
    seen = Counter(their_key(row) for row in result.rows)
    seen.update(our_key(row) for row in raw.rows
                if not any(row[h] for _, h in plan.grouping_index))
    for row in result.rows:
        key = their_key(row)
        if seen[key] > 2 or key in by_key:
            by_key[key] = dict.fromkeys(c.measure_columns)
            continue
        by_key[key] = {
            col: (row[nkeys + 3 * m] or [], row[nkeys + 3 * m + 1], row[nkeys + 3 * m + 2])
            for m, col in enumerate(c.measure_columns)
        }
    matched = []
    for row in raw.rows:
        if any(row[h] for _, h in plan.grouping_index):
            # A margin row: its key values (NULLs) can equal a real group's, and the
            # contributions were computed per detail group; unknown, so judged dominated.
            matched.append(dict.fromkeys(c.measure_columns))
            continue
        matched.append(by_key.get(our_key(row), dict.fromkeys(c.measure_columns)))
    return matched


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


def _json_value(value: Any) -> Any:
    """A value of the released table as plain JSON; no type can break the response."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, date | datetime | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _json_value(float(value))
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)
